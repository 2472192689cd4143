"""dask on Slurm: ``dask.compute`` of 200 tasks with ``scheduler=SlurmPoolExecutor(max_workers=4)``.

dask submits one task at a time, as tasks become ready; without gathering each ``submit`` was one ``sbatch``.
The child builds 200 independent ``dask.delayed(work)(i)`` and their ``sum``, computes it, and reports:

* ``sbatch`` calls (the PATH wrappers of ``common``), against the one call per task it would take unbatched,
  and issue 13's target of at most 10;
* the most calls running at once, from the start and end times each call records in a shared folder, against
  ``max_workers=4`` (the cap must hold across all the arrays the gathered submissions make);
* the wall time from the executor's creation to its ``shutdown()``.

``work`` sleeps 0.2 s, so that calls overlap for long enough to see a cap that does not hold.
"""

from __future__ import annotations

import os
import time

from benchmarks import common

NAME = "dask_slurm"
MAX_WORKERS = 4
SBATCH_TARGET = 10


def work(x, folder):
    start = time.time()
    time.sleep(0.2)
    with open(os.path.join(folder, f"{x}"), "w") as f:
        f.write(f"{start} {time.time()}")
    return x


def most_at_once(folder: str) -> int:
    events = []
    for name in os.listdir(folder):
        with open(os.path.join(folder, name)) as f:
            start, end = map(float, f.read().split())
        events += [(start, 1), (end, -1)]
    running = most = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        most = max(most, running)
    return most


# ---------------------------------------------------------------------- child
def measure(args: dict) -> dict:
    import dask

    import oarfutures

    n = args["n"]
    intervals = os.path.abspath("intervals")
    os.makedirs(intervals)
    parts = [dask.delayed(work)(i, intervals) for i in range(n)]
    total = dask.delayed(sum)(parts)
    out: dict = {"calls": n, "load_start": common.load()}
    t0 = time.perf_counter()
    with oarfutures.SlurmPoolExecutor(
        MAX_WORKERS, folder=os.path.abspath("jobs"), python=args["python"], name=args["name"], walltime="0:10:00"
    ) as ex:
        (value,) = dask.compute(total, scheduler=ex)
    out["wall_seconds"] = time.perf_counter() - t0
    out["ok"] = value == sum(range(n))
    out["most_at_once"] = most_at_once(intervals)
    out["load_end"] = common.load()
    return out


# ---------------------------------------------------------------------- orchestrator
def run(ctx) -> dict:
    import subprocess

    n = 50 if ctx.quick else 200
    folder = common.scratch(NAME)
    calls = os.path.join(folder, "calls.log")
    name = f"bench-dask-{os.getpid()}"
    print(f"  {NAME}: {n} dask tasks on Slurm, max_workers={MAX_WORKERS} (load {common.load():.1f})", flush=True)
    res = ctx.run_child(
        NAME,
        {"n": n, "python": ctx.python, "name": name},
        folder=folder,
        wrappers=ctx.wrappers,
        calls=calls,
        timeout=900,
    )
    res["scheduler_calls"] = common.count_calls(calls)
    subprocess.run(["scancel", "-n", name], capture_output=True)  # leftovers of a failed run only
    ctx.cleanup(folder)
    return {"name": NAME, "calls": n, "runs": [res], "rows": rows(res, n)}


def rows(res: dict, n: int) -> list:
    case = f"dask_slurm {n} tasks, max_workers={MAX_WORKERS}"
    if "error" in res:
        return [common.row(case, "(failed)", None, "", None, note=res["error"])]
    load = common.load_range(res)
    sbatch = res["scheduler_calls"].get("sbatch", 0)
    out = [
        common.row(
            case,
            "sbatch calls",
            sbatch,
            "one per task",
            n,
            runs=1,
            load=load,
            note=f"wall {res['wall_seconds']:.1f} s",
            target=f"≤{SBATCH_TARGET} calls {'met' if sbatch <= SBATCH_TARGET else 'missed'}",
        ),
        common.row(
            case,
            "most calls running at once",
            res["most_at_once"],
            "max_workers",
            MAX_WORKERS,
            runs=1,
            load=load,
            target=f"≤{MAX_WORKERS} {'met' if res['most_at_once'] <= MAX_WORKERS else 'missed'}",
        ),
    ]
    if not res.get("ok"):
        out[0]["note"] += "; the sum was wrong!"
    return out


if __name__ == "__main__":
    common.child_main(measure)
