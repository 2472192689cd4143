"""The local backend against ``concurrent.futures.ProcessPoolExecutor``: N calls of 10 ms, ``max_workers=2``.

Each contender in its own child (the CI venv interpreter); wall time from creating the executor to the last
result of ``list(ex.map(work, range(N)))`` (pool start-up included on both sides), then ``shutdown``:

* ``ProcessPoolExecutor(max_workers=2).map(work, ...)`` (chunksize 1, its default);
* ``LocalPoolExecutor(max_workers=2).map(work, ...)``: one worker process per task (chunksize 1, the default);
* the same with ``chunksize=25``: 25 calls per worker process, the knob that amortises start-up.

``work`` sleeps 10 ms, so the floor is N x 10 ms / 2 workers.
"""

from __future__ import annotations

import os
import time

from benchmarks import common

NAME = "local_vs_pool"
SIDES = ("process_pool", "local", "local_chunked")
CHUNK = 25


def work(x):
    time.sleep(0.01)
    return x


# ---------------------------------------------------------------------- child
def measure(args: dict) -> dict:
    import concurrent.futures as cf

    side, n = args["side"], args["n"]
    out: dict = {"side": side, "calls": n, "load_start": common.load()}
    t0 = time.perf_counter()
    if side == "process_pool":
        ex = cf.ProcessPoolExecutor(max_workers=2)
        values = list(ex.map(work, range(n)))
    else:
        import oarfutures

        ex = oarfutures.LocalPoolExecutor(max_workers=2, folder=os.path.abspath("jobs"), python=args["python"])
        values = list(ex.map(work, range(n), chunksize=CHUNK if side == "local_chunked" else 1))
    out["wall_seconds"] = time.perf_counter() - t0
    ex.shutdown()
    out["ok"] = values == list(range(n))
    out["cpu_seconds_children"] = sum(os.times()[2:4])
    out["cpu_seconds_self"] = sum(os.times()[0:2])
    return out


# ---------------------------------------------------------------------- orchestrator
def run(ctx) -> dict:
    n = 200 if ctx.quick else 1000
    repeats = 1  # the chunksize=1 run alone takes ~30-60 s here
    runs = []
    for r in range(repeats):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            folder = common.scratch(f"{NAME}-{side}")
            print(f"  {NAME}: {side} N={n} (load {common.load():.1f})", flush=True)
            res = common.run_child(NAME, {"side": side, "n": n, "python": ctx.python}, folder=folder, timeout=600)
            res["repeat"] = r
            runs.append(res)
            ctx.cleanup(folder)
    return {"name": NAME, "calls": n, "floor_seconds": n * 0.01 / 2, "runs": runs, "rows": rows(runs, n)}


def rows(runs: list, n: int) -> list:
    by = {side: [r for r in runs if r.get("side") == side and "error" not in r] for side in SIDES}
    wall = {side: common.median([r["wall_seconds"] for r in by[side]]) for side in SIDES}
    cpu = {side: common.median([r["cpu_seconds_children"] + r["cpu_seconds_self"] for r in by[side]]) for side in SIDES}
    case = f"local_vs_pool N={n} x 10 ms"
    load = common.load_range(*runs)
    out = [
        common.row(
            case,
            "wall, chunksize=1 [s]",
            wall["local"],
            "ProcessPoolExecutor",
            wall["process_pool"],
            unit="s",
            runs=len(by["local"]),
            load=load,
            note=f"floor {n * 0.01 / 2:.1f} s",
        ),
        common.row(
            case,
            f"wall, chunksize={CHUNK} [s]",
            wall["local_chunked"],
            "ProcessPoolExecutor",
            wall["process_pool"],
            unit="s",
            runs=len(by["local_chunked"]),
            load=load,
        ),
        common.row(
            case,
            "CPU, chunksize=1 (all processes) [s]",
            cpu["local"],
            "ProcessPoolExecutor",
            cpu["process_pool"],
            unit="s",
            runs=len(by["local"]),
            load=load,
        ),
    ]
    failed = [f"{r.get('side')}: {r.get('error') or 'wrong results'}" for r in runs if "error" in r or not r.get("ok")]
    if failed:
        out[0]["note"] += "; " + "; ".join(failed)
    return out


if __name__ == "__main__":
    common.child_main(measure)
