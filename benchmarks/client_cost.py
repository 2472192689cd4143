"""Client cost of ``map`` over many tiny calls, at 10,000 and 100,000 calls (1,000 too in a full run, for the plot).

Two comparisons, each contender in its own child process (the CI venv interpreter):

* **local**: ``LocalPoolExecutor(max_workers=1).map(inc, range(N))`` vs ``ProcessPoolExecutor(max_workers=1).map``
  with its only worker first blocked by a call that waits for a flag file, so that all calls stay pending (``inc``
  is so cheap that a free worker would finish 10,000 of them in about a second; the oarfutures worker runs one
  subprocess at a time, which keeps ~all its calls pending anyway): time until ``map`` returns (both submit
  eagerly: the client-side submission cost), bytes written, RSS per pending call (freed memory handed back to the
  OS before the baseline), CPU of the thread that resolves futures (the poller, or the pool's management thread)
  over a window that starts 0.5 s after ``map`` returned, and the poller's ticks and queries in that window.
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

import concurrent.futures as cf
import gc
import os
import shutil
import tempfile
import threading
import time

from benchmarks import common

NAME = "client_cost"
SETTLE = 0.5  # seconds between map() returning and the CPU window: lets either side finish digesting the submission


def inc(x):
    return x + 1


def wait_for_file(path, limit=120.0):
    """Keeps the baseline's only worker busy until ``path`` exists (polls in the worker process, not ours)."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


# ---------------------------------------------------------------------- child: the local comparison
def local(n: int, window: float) -> dict:
    import oarfutures
    from oarfutures.backends.local import LocalBackend
    from oarfutures.core.poller import get_poller

    base = tempfile.mkdtemp(prefix="oarf-bench-")
    folder = os.path.join(base, "jobs")
    out: dict = {"calls": n}
    try:
        poller = get_poller()  # started before the RSS baseline: one thread per process, not per future
        common.release_memory()
        rss0, w0 = common.rss_bytes(), common.wchar()
        ex = oarfutures.LocalPoolExecutor(max_workers=1, folder=folder)
        t0, c0 = time.perf_counter(), time.thread_time()
        it = ex.map(inc, range(n))
        out["map_seconds"] = time.perf_counter() - t0
        out["map_main_thread_cpu_seconds"] = time.thread_time() - c0
        out["process_write_bytes"] = common.wchar() - w0
        out["folder_bytes"], out["folder_files"] = common.folder_bytes(folder)
        gc.collect()
        out["rss_growth_bytes"] = common.rss_bytes() - rss0
        out["status_before_window"] = ex.status()
        pending = out["status_before_window"]["pending"] or 1
        out["rss_bytes_per_pending_call"] = out["rss_growth_bytes"] / pending

        time.sleep(SETTLE)
        with common.StateQueries(LocalBackend) as queries, common.TickCounter(poller) as ticks:
            thread_s, process_s, wall = common.cpu_window(poller._thread, window)
        out["window_seconds"] = wall
        out["resolver_cpu_per_second"] = thread_s / wall
        out["process_cpu_per_second"] = process_s / wall
        out["poller_ticks_per_second"] = ticks.ticks / wall
        out["poller_ms_per_tick"] = 1000 * ticks.tick_seconds / ticks.ticks if ticks.ticks else None
        out["poller_queries_per_second"] = queries.count / wall
        out["status_after_window"] = ex.status()

        t0 = time.perf_counter()
        ex.abort("benchmark over")
        ex.shutdown(wait=True)
        out["abort_shutdown_seconds"] = time.perf_counter() - t0
        del it
        # let the killed worker be reaped before its folder goes (read-only look at the backend's process table)
        deadline = time.monotonic() + 5
        while getattr(ex.backend, "_processes", None) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # the poller gets a chance to close the backend once shut down and idle
        out["backend_threads_left_after_shutdown"] = sum(
            t.is_alive() for t in threading.enumerate() if t.name.startswith("oarfutures-local")
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    out["temp_folder_removed"] = not os.path.exists(base)
    return out


def _manager_thread(ex: cf.ProcessPoolExecutor):
    for thread in threading.enumerate():
        if type(thread).__name__ == "_ExecutorManagerThread":
            return thread
    return getattr(ex, "_executor_manager_thread", None)


def process_pool(n: int, window: float) -> dict:
    flag_dir = tempfile.mkdtemp(prefix="ppe-bench-")
    flag = os.path.join(flag_dir, "release")
    out: dict = {"calls": n}
    ex = cf.ProcessPoolExecutor(max_workers=1)
    try:
        blocker = ex.submit(wait_for_file, flag)  # occupies the only worker, so the map's calls stay pending
        blocker_started = time.monotonic()
        while not blocker.running() and time.monotonic() - blocker_started < 30:
            time.sleep(0.01)
        time.sleep(0.2)  # let the worker actually pick it up
        common.release_memory()
        rss0, w0 = common.rss_bytes(), common.wchar()
        t0, c0 = time.perf_counter(), time.thread_time()
        it = ex.map(inc, range(n))
        out["map_seconds"] = time.perf_counter() - t0
        out["map_main_thread_cpu_seconds"] = time.thread_time() - c0
        out["process_write_bytes"] = common.wchar() - w0
        out["folder_bytes"], out["folder_files"] = None, None
        gc.collect()
        out["rss_growth_bytes"] = common.rss_bytes() - rss0
        out["rss_bytes_per_pending_call"] = out["rss_growth_bytes"] / n

        time.sleep(SETTLE)
        manager = _manager_thread(ex)
        out["resolver_thread"] = type(manager).__name__ if manager else None
        thread_s, process_s, wall = common.cpu_window(manager, window)
        out["window_seconds"] = wall
        if manager is None:  # fall back: whole process, the main thread only sleeps
            thread_s = process_s
        out["resolver_cpu_per_second"] = thread_s / wall
        out["process_cpu_per_second"] = process_s / wall
        out["still_pending_after_window"] = not blocker.done()

        t0 = time.perf_counter()
        open(flag, "w").close()
        ex.shutdown(wait=True, cancel_futures=True)
        out["abort_shutdown_seconds"] = time.perf_counter() - t0
        del it
    finally:
        open(flag, "a").close()
        ex.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(flag_dir, ignore_errors=True)
    out["temp_folder_removed"] = not os.path.exists(flag_dir)
    return out


# ---------------------------------------------------------------------- child
def measure(args: dict) -> dict:
    side, n = args["side"], args["n"]
    out: dict = {"side": side, "calls": n, "load_start": common.load()}
    if side in ("local", "process_pool"):
        out.update((local if side == "local" else process_pool)(n, args["window"]))
        return out
    folder = os.path.abspath(side)
    common.release_memory()
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
                res = ctx.run_child(
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
