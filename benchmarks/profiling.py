"""Where the time goes when a ratio is bad: ``python -m benchmarks.profiling SCENARIO [--n N]``.

Scenarios (py-spy samples a child process started like the benchmark's own; 100 samples/s, blocking mode):

  poller    the poller thread with N (default 100,000) pending Slurm tasks, 20 s after ``map`` returned
  abort     ``executor.abort()`` of N (default 10,000) held Slurm tasks, and one ``scancel`` of N task ids vs one
            of the array id (3 N held task records: Slurm keeps them MinJobAge, counted toward MaxJobCount)
  map       ``SlurmPoolExecutor.map`` of N calls (held array), the client's submission
  worker    ``python -X importtime -m oarfutures.worker`` on a trivial task: the imports it pays for
  local     the poller thread with N (default 100,000) calls pending on ``LocalPoolExecutor(max_workers=1)``
  imports   Slurm arrays of N (default 300) tasks running ``python -c pass``, then the worker's imports only
            (``import oarfutures.worker.running``, then ``+ cloudpickle``), then the real worker on a trivial task:
            how much of the slurm_array gap to the floor is interpreter start-up

Prints the functions with the most samples, as ``function (file:line)``: *own* (the frame was on top) and
*total* (the frame was anywhere on the stack), restricted to the thread of interest. Raw py-spy output is kept in
``benchmarks/results/profile-<scenario>.txt``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time

from benchmarks import common

PY_SPY = shutil.which("py-spy") or "py-spy"


def _child(module: str, args: dict, folder: str, wrappers: str):
    """Start a benchmark child without waiting (like common.run_child), stdout piped for its markers."""
    import json

    args_path = os.path.join(folder, "args.json")
    with open(args_path, "w") as f:
        json.dump(args, f)
    boot = common._BOOT.format(module=f"benchmarks.{module}", repo=common.REPO)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYENV"))}
    env["PATH"] = f"{wrappers}:{env.get('PATH', '')}"
    env["OARF_BENCH_ANNOUNCE"] = "1"
    return subprocess.Popen(
        [common.job_python(), "-c", boot, "--child", args_path, os.path.join(folder, "out.json")],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def _wait_for(process, marker: str, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"child ended before printing {marker!r}")
        if line.strip() == marker:
            return
    raise RuntimeError(f"no {marker!r} within {limit} s")


def record(pid: int, seconds: float, out: str, idle: bool = False) -> str:
    """py-spy samples; ``idle`` keeps the samples of waiting threads (time spent waiting on a subprocess)."""
    subprocess.run(
        [
            PY_SPY,
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            "100",
            "-f",
            "raw",
            "--threads",
            *(["--idle"] if idle else []),
            "-o",
            out,
        ],
        check=True,
        capture_output=True,
    )
    return out


def top(raw: str, must_contain: str = "", limit: int = 12) -> str:
    """Own and total samples per frame from py-spy's folded output, for stacks containing ``must_contain``."""
    own, total, samples = collections.Counter(), collections.Counter(), 0
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if must_contain and must_contain not in stack:
                continue
            frames = [fr for fr in stack.split(";") if not fr.startswith(("thread (", "process "))]
            n = int(count)
            samples += n
            if frames:
                own[_short(frames[-1])] += n
            for frame in {_short(fr) for fr in frames}:
                total[frame] += n
    lines = [f"{samples} samples" + (f" in stacks with {must_contain!r}" if must_contain else "")]
    for title, counter in (("own (on top of the stack)", own), ("total (anywhere on the stack)", total)):
        lines.append(f"  {title}:")
        for frame, n in counter.most_common(limit):
            lines.append(f"    {100 * n / max(samples, 1):5.1f}%  {frame}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    """'f (/long/site-packages/oarfutures/x.py:12)' -> 'f (oarfutures/x.py:12)'."""
    return re.sub(
        r"\(\S*/(site-packages|lib/python3\.\d+|benchmarks)/",
        lambda m: "(" + ("benchmarks/" if m.group(1) == "benchmarks" else ""),
        frame,
    )


# ---------------------------------------------------------------------- scenarios
def poller(n: int, folder: str, wrappers: str) -> str:
    process = _child(
        "poller_cost", {"n": n, "window": 25, "python": common.job_python(), "name": "bench-prof"}, folder, wrappers
    )
    _wait_for(process, "MAPPED")
    time.sleep(2)
    raw = record(process.pid, 20, os.path.join(common.RESULTS_DIR, "profile-poller.txt"))
    process.wait()
    subprocess.run(["scancel", "-n", "bench-prof"], capture_output=True)
    return top(raw, "oarfutures/poller.py")


def abort(n: int, folder: str, wrappers: str) -> str:
    process = _child(
        "poller_cost", {"n": n, "window": 1, "python": common.job_python(), "name": "bench-prof"}, folder, wrappers
    )
    _wait_for(process, "ABORTING")
    raw = record(process.pid, 60, os.path.join(common.RESULTS_DIR, "profile-abort.txt"), idle=True)
    process.wait()
    subprocess.run(["scancel", "-n", "bench-prof"], capture_output=True)
    lines = [top(raw, "abort (oarfutures/executor.py")]
    # the scheduler side of it: one scancel of every task id vs one of the array ids (split as MaxArraySize forces)
    step = int(common.slurm_config().get("MaxArraySize", "1001")) - 1 or 1
    for form in ("task ids", "array ids"):
        arrays = []
        for first in range(0, n, step):
            count = min(step, n - first)
            arrays.append(
                (
                    subprocess.run(
                        [
                            "sbatch",
                            "--parsable",
                            "-J",
                            "bench-prof",
                            f"--array=0-{count - 1}",
                            "--begin=now+3600",
                            "-o",
                            "/dev/null",
                            "--wrap",
                            "true",
                        ],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout.strip(),
                    count,
                )
            )
        ids = [f"{a}_{i}" for a, c in arrays for i in range(c)] if form == "task ids" else [a for a, _ in arrays]
        t0 = time.perf_counter()
        try:
            subprocess.run(["scancel", *ids], capture_output=True, check=False)
            lines.append(f"one scancel of {len(ids):,} {form}: {time.perf_counter() - t0:.2f} s")
        except OSError as exc:
            lines.append(f"one scancel of {len(ids):,} {form}: {exc}")
            subprocess.run(["scancel", *[a for a, _ in arrays]], capture_output=True)
    return "\n".join(lines)


def map_(n: int, folder: str, wrappers: str) -> str:
    process = _child(
        "poller_cost", {"n": n, "window": 1, "python": common.job_python(), "name": "bench-prof"}, folder, wrappers
    )
    _wait_for(process, "MAPPING")
    raw = record(process.pid, 30, os.path.join(common.RESULTS_DIR, "profile-map.txt"))
    process.wait()
    subprocess.run(["scancel", "-n", "bench-prof"], capture_output=True)
    return top(raw, "map (oarfutures/executor.py")


def worker(n: int, folder: str, wrappers: str) -> str:
    from benchmarks import worker_startup

    batch = worker_startup.make_task(folder)
    done = subprocess.run(
        [common.job_python(), "-X", "importtime", "-u", "-m", "oarfutures.worker", folder, batch, "0"],
        capture_output=True,
        text=True,
        cwd=folder,
    )
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(2)), int(m.group(1)), len(m.group(3)), m.group(4)))
    top_level = sorted((r for r in rows if r[2] <= 2), reverse=True)[:12]
    total = sum(r[1] for r in rows)
    out = [
        f"worker imports: {len(rows)} modules, {total / 1000:.1f} ms of import time in all (self times summed)",
        "  cumulative ms  module (top-level imports only)",
    ]
    out += [f"  {cum / 1000:12.1f}  {name}" for cum, _self, _depth, name in top_level]
    return "\n".join(out)


def inc(x):
    return x + 1


def _local_child(args: dict) -> dict:
    """Child of the ``local`` scenario: N calls pending on one local worker, for py-spy to watch."""
    import oarfutures

    ex = oarfutures.LocalPoolExecutor(max_workers=1, folder=os.path.abspath("jobs"), python=args["python"])
    it = ex.map(inc, range(args["n"]))
    print("MAPPED", flush=True)
    time.sleep(args["seconds"])
    ex.abort("profile over")
    del it
    return {}


def local(n: int, folder: str, wrappers: str) -> str:
    process = _child("profiling", {"n": n, "seconds": 16, "python": common.job_python()}, folder, wrappers)
    _wait_for(process, "MAPPED")
    time.sleep(2)
    raw = record(process.pid, 12, os.path.join(common.RESULTS_DIR, "profile-local.txt"))
    process.wait()
    return top(raw, "oarfutures/poller.py")


def imports(n: int, folder: str, wrappers: str) -> str:
    from benchmarks import slurm_array

    python = common.job_python()
    n = min(n, 1000)
    commands = {
        "python -c pass": f"{python} -c pass",
        "import oarfutures.worker.running": f"{python} -c 'import oarfutures.worker.running'",
        "import oarfutures.worker.running, cloudpickle": f"{python} -c 'import oarfutures.worker.running, cloudpickle'",
    }
    lines = [f"Slurm arrays of {n} tasks, submit -> all tasks out of the queue (load {common.load():.1f}):"]
    for label, command in commands.items():
        t0 = time.perf_counter()
        array = (
            subprocess.run(
                [
                    "sbatch",
                    "--parsable",
                    "-J",
                    "bench-prof",
                    f"--array=0-{n - 1}",
                    "-o",
                    "/dev/null",
                    "--wrap",
                    command,
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=folder,
            )
            .stdout.strip()
            .split(";")[0]
        )
        while True:
            states = subprocess.run(
                ["squeue", "-h", "-r", "-t", "all", "-j", array, "-o", "%T"], capture_output=True, text=True
            ).stdout.split()
            if states and not slurm_array.ACTIVE & set(states):
                break
            time.sleep(slurm_array.POLL)
        lines.append(f"  {time.perf_counter() - t0:6.1f} s  {label}")
    import oarfutures

    t0 = time.perf_counter()
    with oarfutures.SlurmPoolExecutor(folder=os.path.join(folder, "jobs"), python=python, name="bench-prof") as ex:
        list(ex.map(abs, range(n)))  # abs: pickled by reference, so the worker needs no cloudpickle
    lines.append(
        f"  {time.perf_counter() - t0:6.1f} s  oarfutures map(abs, ...) (by-reference function, "
        f"no cloudpickle in the worker)"
    )
    return "\n".join(lines)


SCENARIOS = {"poller": poller, "abort": abort, "map": map_, "worker": worker, "imports": imports, "local": local}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--n", type=int, default=None, help="default 100,000 (imports: 300)")
    args = parser.parse_args(argv)
    args.n = args.n or {"imports": 300, "abort": 10_000, "worker": 1}.get(args.scenario, 100_000)
    held = {"poller": args.n, "abort": 3 * args.n, "map": args.n}.get(args.scenario, 0)
    room = common.slurm_room() if held else {}
    if held and room["room"] - held < 20_000:
        sys.exit(
            f"not now: Slurm holds {room['records']:,} task records (MaxJobCount {room['max_job_count']:,}, "
            f"ended ones stay MinJobAge); {held:,} more would leave others under 20,000"
        )
    folder = common.scratch(f"profile-{args.scenario}")
    wrappers = common.make_wrappers(os.path.join(common.SCRATCH, "wrappers"), common.SLURM_COMMANDS)
    os.makedirs(common.RESULTS_DIR, exist_ok=True)
    print(f"profiling {args.scenario} (N={args.n:,}, load {common.load():.1f})", flush=True)
    try:
        print(SCENARIOS[args.scenario](args.n, folder, wrappers))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"load {common.load():.1f}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        common.child_main(_local_child)
    sys.exit(main())
