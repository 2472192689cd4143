"""N trivial calls on the real Slurm: oarfutures ``SlurmPoolExecutor.map`` vs a plain ``sbatch --array`` vs submitit.

Three contenders, each in its own child process, all with the same interpreter (the job python of
``common.job_python``: the CI venv built from /usr/bin/python3) for the client *and* the jobs:

* **floor**: ``sbatch --parsable --array=0-(N-1) --wrap '<python> -c pass'`` (default ``slurm-%A_%a.out`` logs), then
  ``squeue -h -r -t all -j ARRAY -o %T`` every 0.25 s until no task is pending or running: what Slurm itself needs
  to start N interpreters. Its own polling is counted too, but it is a measuring device, not a design.
* **oarfutures**: ``list(SlurmPoolExecutor(python=<python>).map(noop, range(N)))`` (stealing on, the default);
  **nosteal**: the same with ``steal_seconds=0``; **oarfutures-1s** / **nosteal-1s**: the same two with calls
  that sleep 1 s (stealing must not serialise what Slurm would run in parallel). Choose contenders with
  ``OARF_BENCH_SLURM_SIDES=floor,oarfutures,...`` (default: all).
* **submitit**: ``[j.result() for j in SlurmExecutor(folder, python=<python>).map_array(noop, range(N))]``
  (its defaults: ``srun`` inside the batch script, ``--time=5``, ``%256`` array throttle, above our 16 slots).
  Note: submitit's ``map_array`` builds a fresh executor without ``python=`` (slurm.py, ``array_ex =
  SlurmExecutor(self.folder, self.max_num_timeout)``), so its jobs run the *client's* ``sys.executable``; the
  child's interpreter *is* the job python, so the comparison stays fair.

Before each contender starts, the benchmark waits (up to 90 s) until nobody else's tasks are pending, so that no
contender queues behind another user's array; the queue it started with is recorded. Wall time runs from just
before the submission to the moment every result is in the client (floor: every task
is out of the queue). Scheduler calls (squeue, sacct, scontrol, sbatch, scancel) are counted by the PATH
wrappers of ``common``. ``noop`` is a ``__main__`` function, pickled by value by both libraries.
"""

from __future__ import annotations

import os
import subprocess
import time

from benchmarks import common

NAME = "slurm_array"
SIDES = ("floor", "oarfutures", "nosteal", "oarfutures-1s", "nosteal-1s", "submitit")
POLL = 0.25  # floor: seconds between squeue calls
FLOOR_TARGET = 0.5  # issue 13: trivial calls take at most half the bare array's time
SLOW_CALLS_TARGET = 1.0  # issue 13: with 1 s calls, stealing is no worse than not stealing
ACTIVE = {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "SUSPENDED"}


def noop(x, seconds=0.0):
    if seconds:
        time.sleep(seconds)
    return x


# ---------------------------------------------------------------------- child: one contender
def measure(args: dict) -> dict:
    side, n, python, name = args["side"], args["n"], args["python"], args["name"]
    out: dict = {"side": side, "calls": n, "load_start": common.load(), "python": python}
    limit = args.get("limit", 400)
    if side == "floor":
        t0 = time.perf_counter()
        array = (
            subprocess.run(
                ["sbatch", "--parsable", "-J", name, f"--array=0-{n - 1}", "--wrap", f"{python} -c pass"],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .split(";")[0]
        )
        out["submit_seconds"] = time.perf_counter() - t0
        states: dict = {}
        while time.perf_counter() - t0 < limit:
            lines = subprocess.run(
                ["squeue", "-h", "-r", "-t", "all", "-j", array, "-o", "%T"], capture_output=True, text=True
            ).stdout.split()
            states = {s: lines.count(s) for s in set(lines)}
            if lines and not ACTIVE & set(lines):
                break
            time.sleep(POLL)
        out["wall_seconds"] = time.perf_counter() - t0
        out["final_states"] = states
        out["ok"] = states.get("COMPLETED") == n
    elif side.startswith(("oarfutures", "nosteal")):
        import oarfutures
        from oarfutures.backends.slurm import SlurmBackend

        out["oarfutures_file"] = oarfutures.__file__
        steal = {"steal_seconds": 0} if side.startswith("nosteal") else {}
        seconds = 1.0 if side.endswith("-1s") else 0.0
        with common.StateQueries(SlurmBackend) as queries:
            ex = oarfutures.SlurmPoolExecutor(folder=os.path.abspath("jobs"), python=python, name=name, **steal)
            t0 = time.perf_counter()
            results = ex.map(noop, range(n), [seconds] * n, timeout=limit)
            out["submit_seconds"] = time.perf_counter() - t0
            values = list(results)
            out["wall_seconds"] = time.perf_counter() - t0
            ex.shutdown()
        out["ok"] = values == list(range(n))
        out["poller_queries"] = queries.count
        out["tasks_started"] = _tasks_started(name)
    elif side == "submitit":
        import submitit
        from submitit.slurm.slurm import SlurmJob

        out["submitit_version"] = submitit.__version__
        ex = submitit.SlurmExecutor(folder=os.path.abspath("submitit"), python=python)
        ex.update_parameters(job_name=name)
        t0 = time.perf_counter()
        jobs = ex.map_array(noop, range(n))
        out["submit_seconds"] = time.perf_counter() - t0
        values = [job.result() for job in jobs]
        out["wall_seconds"] = time.perf_counter() - t0
        out["ok"] = values == list(range(n))
        out["watcher_calls"] = SlurmJob.watcher.num_calls
    return out


def _tasks_started(name: str) -> int:
    """How many array tasks of the job named ``name`` Slurm started: with stealing, the others' calls ran in a
    stealer, and their own tasks were cancelled while pending (such a task is no longer listed on its own, and
    MinJobAge keeps the others listed)."""
    listed = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-n", name, "-o", "%i"], capture_output=True, text=True
    ).stdout.split()
    return sum("_" in job_id for job_id in listed)


# ---------------------------------------------------------------------- orchestrator
def run(ctx) -> dict:
    n = 100 if ctx.quick else 1000
    repeats = ctx.repeats(quick=1, full=1)
    runs = []
    sides = tuple(x for x in os.environ.get("OARF_BENCH_SLURM_SIDES", ",".join(SIDES)).split(",") if x in SIDES)
    for r in range(repeats):
        order = (
            sides[r % len(sides) :] + sides[: r % len(sides)]
        )  # rotate, so no contender always runs on the busiest minute
        for side in order:
            folder = common.scratch(f"{NAME}-{side}")
            name = f"bench-{side}-{os.getpid()}-{r}"  # (unique per side: tasks are counted by name)
            quiet = common.wait_for_quiet(common.slurm_queue, ("PENDING",))
            before = {"slurm_queue": quiet["queue_at_start"], "slurm_config": common.slurm_config(), **quiet}
            calls = os.path.join(folder, "calls.log")
            print(
                f"  {NAME}: {side} with {n} calls (load {common.load():.1f}, queue {before['slurm_queue']})", flush=True
            )
            res = ctx.run_child(
                NAME,
                {"side": side, "n": n, "python": ctx.python, "name": name},
                folder=folder,
                wrappers=ctx.wrappers,
                calls=calls,
                timeout=600,
            )
            res.update(before, repeat=r, scheduler_calls=common.count_calls(calls))
            subprocess.run(["scancel", "-n", name], capture_output=True)  # leftovers of a failed run only
            runs.append(res)
            ctx.cleanup(folder)
    return {"name": NAME, "calls": n, "runs": runs, "rows": rows(runs, n)}


def _poll_calls(res: dict) -> int:
    calls = res.get("scheduler_calls") or {}
    return sum(calls.get(c, 0) for c in ("squeue", "sacct", "scontrol"))


def rows(runs: list, n: int) -> list:
    by = {side: [r for r in runs if r.get("side") == side and "error" not in r] for side in SIDES}
    wall = {side: common.median([r["wall_seconds"] for r in by[side]]) for side in SIDES}
    polls = {side: common.median([_poll_calls(r) for r in by[side]]) for side in SIDES}
    case = f"slurm_array N={n}"
    every = lambda side: by[side] + by["oarfutures"]  # noqa: E731
    out = [
        common.row(
            case,
            "submit -> all done [s]",
            wall["oarfutures"],
            "sbatch --array floor",
            wall["floor"],
            unit="s",
            runs=len(by["oarfutures"]),
            load=common.load_range(*every("floor")),
            target=FLOOR_TARGET,
        ),
        common.row(
            case,
            "submit -> all done [s]",
            wall["oarfutures"],
            "submitit map_array",
            wall["submitit"],
            unit="s",
            runs=len(by["submitit"]),
            load=common.load_range(*every("submitit")),
        ),
        common.row(
            case,
            "squeue+sacct+scontrol calls",
            polls["oarfutures"],
            "submitit map_array",
            polls["submitit"],
            load=common.load_range(*every("submitit")),
            note=f"floor polled {polls['floor']} times (every {POLL} s, measuring device)",
        ),
    ]
    if by["nosteal"] and by["oarfutures"]:
        out.insert(
            1,
            common.row(
                case,
                "submit -> all done, stealing vs steal_seconds=0 [s]",
                wall["oarfutures"],
                "steal_seconds=0",
                wall["nosteal"],
                unit="s",
                runs=len(by["oarfutures"]),
                load=common.load_range(*every("nosteal")),
            ),
        )
    if by["nosteal-1s"] and by["oarfutures-1s"]:
        out.insert(
            2,
            common.row(
                case,
                "1 s calls: submit -> all done [s]",
                wall["oarfutures-1s"],
                "steal_seconds=0",
                wall["nosteal-1s"],
                unit="s",
                runs=len(by["oarfutures-1s"]),
                load=common.load_range(*by["oarfutures-1s"], *by["nosteal-1s"]),
                target=SLOW_CALLS_TARGET,
            ),
        )
    started = {side: common.median([r["tasks_started"] for r in by[side] if "tasks_started" in r]) for side in SIDES}
    started_rows = (("array tasks started", "oarfutures"), ("1 s calls: array tasks started", "oarfutures-1s"))
    for measure_name, side in started_rows:
        baseline = side.replace("oarfutures", "nosteal")
        if by[side] and by[baseline] and started[side] is not None:
            out.append(
                common.row(
                    case,
                    measure_name,
                    started[side],
                    "steal_seconds=0",
                    started[baseline],
                    runs=len(by[side]),
                    load=common.load_range(*by[side], *by[baseline]),
                    note="the tasks whose call a stealer ran were cancelled before they started",
                )
            )
    queues = "; ".join(f"{r['side']}: {r.get('slurm_queue')}" for r in runs)
    configs = sorted({common.slurm_brief(r.get("slurm_config") or {}) for r in runs})
    out[0]["note"] = (
        f"{'; '.join(configs)}. Slurm tasks (everyone's) pending/running at each start, after "
        f"waiting up to 90 s for others' pending ones: {queues}"
    )
    failed = [f"{r.get('side')}: {r['error']}" for r in runs if "error" in r]
    failed += [f"{r.get('side')}: wrong results" for r in runs if "error" not in r and not r.get("ok")]
    if failed:
        out[0]["note"] = "; ".join(failed) + "; " + out[0]["note"]
    return out


if __name__ == "__main__":
    common.child_main(measure)
