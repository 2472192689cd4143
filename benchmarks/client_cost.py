"""Client cost of ``map`` over many tiny calls, at 10,000 and 100,000 calls (1,000 too in a full run, for the plot).

Two comparisons, each contender in its own child process (the CI venv interpreter):

* **local** (``client_overhead.py``, reused as is): ``LocalPoolExecutor(max_workers=1).map(inc, range(N))`` vs
  ``ProcessPoolExecutor(max_workers=1).map`` with its only worker blocked, so all calls stay pending: time until
  ``map`` returns, RSS per pending call, CPU of the thread that resolves futures over a 3 s window.
* **slurm submission**: oarfutures ``SlurmPoolExecutor.map(inc, ...)`` vs submitit ``SlurmExecutor.map_array(inc,
  ...)``, both as they would submit to the real Slurm (``scontrol show config`` is real), except that ``sbatch``,
  ``scancel`` and ``squeue`` are stubs first on ``PATH``: ``sbatch`` prints a job id and submits nothing. Both
  libraries then do all their client work (pickle N calls, write files and the script, parse the id, build N
  futures/jobs) and nothing runs. A real ``sbatch`` of one array costs ~25 ms more, the same for both.

Why this pairing: submitit's ``LocalExecutor`` starts one process per job at once, with no cap, so a local
comparison at 100,000 calls would measure 100,000 forks rather than client cost. Real held arrays
(``--begin=now+1hour``, then ``scancel``) measure the same thing but are not fit for a shared cluster at this size:
Slurm counts every task of a cancelled array toward ``MaxJobCount`` (200,000 here) for ``MinJobAge`` (1 hour), so
2 x 100,000 held tasks would fill the job table and make everyone's ``sbatch`` wait (it did, once). ``inc`` is a
``__main__`` function here (pickled by value, as a user's script would be).
"""

from __future__ import annotations

import os
import time

from benchmarks import common

NAME = "client_cost"


def inc(x):
    return x + 1


# ---------------------------------------------------------------------- child
def measure(args: dict) -> dict:
    side, n = args["side"], args["n"]
    out: dict = {"side": side, "calls": n, "load_start": common.load()}
    if side in ("local", "process_pool"):
        from benchmarks import client_overhead

        run = client_overhead.run_oarfutures if side == "local" else client_overhead.run_process_pool
        out.update(run(n, args["window"]))
        out["load_start"] = out.get("load_start")
        return out
    folder = os.path.abspath(side)
    client_overhead = __import__("benchmarks.client_overhead", fromlist=["release_memory"])
    client_overhead.release_memory()
    if side == "slurm_oarfutures":
        import oarfutures

        ex = oarfutures.SlurmPoolExecutor(folder=folder, python=args["python"], name=args["name"])
        rss0, t0, c0 = common.rss_bytes(), time.perf_counter(), time.thread_time()
        it = ex.map(inc, range(n))
        out["map_seconds"] = time.perf_counter() - t0
        out["map_main_thread_cpu_seconds"] = time.thread_time() - c0
        out["rss_growth_bytes"] = common.rss_bytes() - rss0
        out["folder_bytes"], out["folder_files"] = common.folder_bytes(folder)
        out["array_ids"] = sorted({j.split("_")[0] for j in ex.live_job_ids()})
        del it  # the child exits now: nothing was submitted
    else:
        import submitit

        ex = submitit.SlurmExecutor(folder=folder, python=args["python"])
        ex.update_parameters(job_name=args["name"])
        rss0, t0, c0 = common.rss_bytes(), time.perf_counter(), time.thread_time()
        jobs = ex.map_array(inc, range(n))
        out["map_seconds"] = time.perf_counter() - t0
        out["map_main_thread_cpu_seconds"] = time.thread_time() - c0
        out["rss_growth_bytes"] = common.rss_bytes() - rss0
        out["folder_bytes"], out["folder_files"] = common.folder_bytes(folder)
        out["array_ids"] = sorted({j.job_id.split("_")[0] for j in jobs})
    out["us_per_call"] = 1e6 * out["map_seconds"] / n
    out["rss_bytes_per_call"] = out["rss_growth_bytes"] / n
    return out


# ---------------------------------------------------------------------- orchestrator
STUBS = {
    "sbatch": 'case " $* " in *" --parsable "*) echo 999999999 ;; *) echo "Submitted batch job 999999999" ;; esac',
    "scancel": "exit 0",
    "squeue": "exit 0",
}


def make_stubs(folder: str) -> str:
    """``sbatch``/``scancel``/``squeue`` that accept everything and touch no cluster."""
    os.makedirs(folder, exist_ok=True)
    for name, body in STUBS.items():
        path = os.path.join(folder, name)
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\n# benchmark stub: nothing reaches Slurm\n{body}\n")
        os.chmod(path, 0o755)
    return folder


def run(ctx) -> dict:
    sizes = (1_000, 10_000) if ctx.quick else (1_000, 10_000, 100_000)
    window = 1.5 if ctx.quick else 3.0
    stubs = make_stubs(os.path.join(common.SCRATCH, "stubs"))
    runs = []
    for n in sizes:
        repeats = 3 if n == 10_000 and not ctx.quick else 1
        for r in range(repeats):
            for side in ("local", "process_pool", "slurm_oarfutures", "slurm_submitit"):
                folder = common.scratch(f"{NAME}-{side}")
                name = f"bench-cc-{os.getpid()}-{r}"
                print(f"  {NAME}: {side} N={n:,} (load {common.load():.1f})", flush=True)
                res = common.run_child(
                    NAME,
                    {"side": side, "n": n, "window": window, "python": ctx.python, "name": name},
                    folder=folder,
                    timeout=600,
                    wrappers=stubs if side.startswith("slurm") else None,
                )
                res.update(repeat=r, n=n, slurm_config=common.slurm_config() if side.startswith("slurm") else {})
                runs.append(res)
                ctx.cleanup(folder)
    return {"name": NAME, "sizes": sizes, "runs": runs, "rows": rows(runs, sizes)}


def summarize(runs: list, side: str, n: int, key: str):
    return common.median([r.get(key) for r in runs if r.get("side") == side and r.get("n") == n and "error" not in r])


def rows(runs: list, sizes) -> list:
    out = []
    for n in sizes:
        if n not in (10_000, 100_000) and len(sizes) > 2:
            continue  # 1,000 is for the plot only
        case = f"client_cost N={n:,}"
        sel = [r for r in runs if r.get("n") == n and "error" not in r]
        load = common.load_range(*sel)
        count = len([r for r in sel if r["side"] == "local"])
        for key, measure, unit in (
            ("map_seconds", "local: map() returns [s]", "s"),
            ("rss_bytes_per_pending_call", "local: RSS per pending call [B]", "B"),
            ("resolver_cpu_per_second", "local: resolver thread CPU [s/s]", "s/s"),
        ):
            out.append(
                common.row(
                    case,
                    measure,
                    summarize(runs, "local", n, key),
                    "ProcessPoolExecutor",
                    summarize(runs, "process_pool", n, key),
                    unit=unit,
                    runs=count,
                    load=load,
                )
            )
        configs = sorted({common.slurm_brief(r["slurm_config"]) for r in sel if r.get("slurm_config")})
        for key, measure in (
            ("map_seconds", "slurm (stub sbatch): map() returns [s]"),
            ("rss_bytes_per_call", "slurm (stub sbatch): RSS per call [B]"),
            ("folder_files", "slurm (stub sbatch): files written"),
        ):
            out.append(
                common.row(
                    case,
                    measure,
                    summarize(runs, "slurm_oarfutures", n, key),
                    "submitit map_array",
                    summarize(runs, "slurm_submitit", n, key),
                    runs=count,
                    load=load,
                    note="; ".join(configs) if key == "folder_files" else "",
                )
            )
    failed = [f"{r.get('side')} N={r.get('n')}: {r.get('error')}" for r in runs if "error" in r]
    if failed and out:
        out[0]["note"] = "; ".join(failed)[:600]
    return out


if __name__ == "__main__":
    common.child_main(measure)
