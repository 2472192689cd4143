"""How soon a future learns what happened to its job: result on disk -> done, job killed -> failed.

Three measurements, each in a child process (the CI venv interpreter):

* **result file -> future done, Slurm** (``files``): M held tasks (``begin=now+3600``, one ``submit`` each, so the
  jobs stay pending and the poller idles as it would while a cluster works); then this process writes each task's
  result file itself, as the worker would (``oarfutures.protocol.results.dump_result``, a temp file, ``os.replace`` into
  ``results/``), at Poisson-distributed moments (mean gap 0.5 s). Latency = the future's done-callback time minus
  the moment just before ``os.replace``. The jobs are then cancelled (resolved futures no longer own them).
* **result file -> future done, local** (``local``): ``LocalPoolExecutor(max_workers=2, keep_files=True)``, M quick
  calls; latency = done-callback wall clock minus the result file's mtime (written, fsync'd, then renamed by the
  worker: the fsync and the worker's exit are included; ext4 timestamps, ~1 ms resolution).
* **scancel -> future failed, Slurm** (``kill``): K tasks sleeping 600 s; once all are RUNNING, each is killed
  with ``scancel JOBID`` at random 1-6 s intervals; latency = the failure callback minus ``scancel``'s return. It is
  bounded below by design: a job that ended without a result gets ``result_grace`` (5 s on Slurm) for its result
  file to appear on a shared filesystem before the future fails.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time

from benchmarks import common

NAME = "latency"
SIDES = ("files", "local", "kill")


def noop(x):
    return x


# ---------------------------------------------------------------------- child
def measure(args: dict) -> dict:
    side = args["side"]
    out: dict = {"side": side, "load_start": common.load()}
    rng = random.Random(args.get("seed", 1))
    out.update({"files": _files, "local": _local, "kill": _kill}[side](args, rng))
    return out


def _done_times(futures, clock, times=None):
    """future -> the clock reading in its done callback (runs in the thread that resolves it: the poller)."""
    times, lock = ({} if times is None else times), threading.Lock()

    def record(future):
        t = clock()
        with lock:
            times[future] = t

    for future in futures:
        future.add_done_callback(record)
    return times


def _files(args, rng):
    import oarfutures
    from oarfutures.protocol import layout, results

    m = args["m"]
    ex = oarfutures.SlurmPoolExecutor(
        folder=os.path.abspath("jobs"),
        python=args["python"],
        name=args["name"],
        additional_parameters={"begin": "now+3600"},
    )
    futures = [ex.submit(noop, i) for i in range(m)]
    job_ids = [f.job_id for f in futures]
    done = _done_times(futures, time.perf_counter)
    time.sleep(2.0)  # the poller settles into its idle rhythm
    landed = {}
    try:
        for i, future in enumerate(futures):
            time.sleep(rng.expovariate(1 / args["mean_gap"]))
            batch, _, index = future.task_id.rpartition("_")
            final = layout.result_path(ex.folder, batch, int(index))
            temp = f"{final}.tmp-bench"
            with open(temp, "wb") as f:
                f.write(results.dump_result([("ok", i)]))
            landed[future] = time.perf_counter()
            os.replace(temp, final)
        deadline = time.monotonic() + 30
        while len(done) < m and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        subprocess.run(["scancel", *sorted({j.split("_")[0] for j in job_ids if j})], capture_output=True)
        ex.shutdown(wait=False, cancel_futures=True)
    wrong = sum(
        1 for i, f in enumerate(futures) if f.done() and not f.cancelled() and f.exception() is None and f.result() != i
    )
    return {
        "m": m,
        "latencies": [done[f] - landed[f] for f in futures if f in done and f in landed],
        "resolved": len(done),
        "wrong_results": wrong,
    }


def _local(args, rng):
    import oarfutures

    m = args["m"]
    folder = os.path.abspath("jobs")
    ex = oarfutures.LocalPoolExecutor(max_workers=2, folder=folder, python=args["python"], keep_files=True)
    futures, done = [], {}
    for i in range(m):  # the callback right after each submit: early results land while later calls are submitted
        futures.append(ex.submit(noop, i))
        _done_times(futures[-1:], time.time, done)
    ex.shutdown(wait=True)
    mtimes = {}
    for root, _dirs, names in os.walk(os.path.join(folder, "results")):
        for name in names:
            if name.endswith(".pkl"):
                mtimes[name[:-4]] = os.stat(os.path.join(root, name)).st_mtime_ns / 1e9
    latencies = [done[f] - mtimes[f.task_id] for f in futures if f in done and f.task_id in mtimes]
    return {
        "m": m,
        "latencies": latencies,
        "resolved": len(done),
        "result_files_found": len(mtimes),
        "ok": all(f.result() == i for i, f in enumerate(futures)),
    }


def _kill(args, rng):
    import oarfutures

    k = args["k"]
    ex = oarfutures.SlurmPoolExecutor(
        folder=os.path.abspath("jobs"), python=args["python"], name=args["name"], walltime="0:15:0"
    )
    futures = [ex.submit(time.sleep, 600) for _ in range(k)]
    failed = _done_times(futures, time.perf_counter)
    out: dict = {"k": k}
    try:
        deadline = time.monotonic() + 120
        while not all(f.running() for f in futures) and time.monotonic() < deadline:
            time.sleep(0.1)
        out["all_running"] = all(f.running() for f in futures)
        killed = {}
        for future in rng.sample(futures, k):
            time.sleep(rng.uniform(1, 6))
            subprocess.run(["scancel", future.job_id], check=True)
            killed[future] = time.perf_counter()
        deadline = time.monotonic() + 60
        while len(failed) < k and time.monotonic() < deadline:
            time.sleep(0.05)
        out["latencies"] = [failed[f] - killed[f] for f in futures if f in failed and f in killed]
        out["errors"] = sorted(
            {
                type(f.exception()).__name__ + ": " + str(f.exception())[:120]
                for f in futures
                if f.done() and not f.cancelled() and f.exception() is not None
            }
        )[:3]
    finally:
        ex.abort("benchmark over")
    return out


# ---------------------------------------------------------------------- orchestrator
def run(ctx) -> dict:
    sizes = {"files": 15, "local": 50, "kill": 3} if ctx.quick else {"files": 60, "local": 200, "kill": 8}
    runs = []
    for side in SIDES:
        folder = common.scratch(f"{NAME}-{side}")
        name = f"bench-lat-{os.getpid()}-{side}"
        print(f"  {NAME}: {side} (load {common.load():.1f})", flush=True)
        args = {
            "side": side,
            "python": ctx.python,
            "name": name,
            "m": sizes["files" if side == "files" else "local"],
            "k": sizes["kill"],
            "mean_gap": 0.5,
        }
        res = ctx.run_child(NAME, args, folder=folder, wrappers=ctx.wrappers, timeout=400)
        if side != "local":
            subprocess.run(["scancel", "-n", name], capture_output=True)
        res["slurm_config"] = common.slurm_config()
        runs.append(res)
        ctx.cleanup(folder)
    return {"name": NAME, "runs": runs, "rows": rows(runs)}


def rows(runs: list) -> list:
    out = []
    titles = {
        "files": "result file -> done, Slurm (poller scan)",
        "local": "result file -> done, local",
        "kill": "scancel -> future failed, Slurm",
    }
    for r in runs:
        side = r.get("side", "?")
        lat = r.get("latencies") or []
        case = f"latency {side} ({len(lat)} samples)"
        note = r.get("error", "")
        if side == "kill" and "errors" in r:
            note = note or f"futures failed with {r['errors'][0] if r['errors'] else '?'}"
        load = common.load_range(r)
        if side != "local":
            note = "; ".join(x for x in (common.slurm_brief(r.get("slurm_config") or {}), note) if x)
        out.append(
            common.row(
                case,
                f"{titles.get(side, side)}: median [s]",
                common.median(lat),
                "",
                None,
                unit="s",
                load=load,
                note=note,
            )
        )
        out.append(
            common.row(
                case, f"{titles.get(side, side)}: p99 [s]", common.percentile(lat, 99), "", None, unit="s", load=load
            )
        )
    return out


if __name__ == "__main__":
    common.child_main(measure)
