"""What the poller thread costs while N futures wait in the Slurm queue (1,000 / 10,000 / 100,000 pending tasks).

One child per N (the CI venv interpreter) maps ``inc`` over ``range(N)`` with
``SlurmPoolExecutor(additional_parameters={"begin": "now+3600"})``: one held array (MaxArraySize is 100001 here,
checked with ``scontrol show config`` and recorded; a smaller value would split it), whose tasks stay pending.
Then, for a window of ~20 s starting when ``map`` returns (what a user waiting on the futures pays, the first
quick queries after a submission included):

* CPU seconds per wall second of the poller thread (``pthread_getcpuclockid``), of the whole client process, and
  of the scheduler commands it ran (``RUSAGE_CHILDREN``: squeue's own CPU, on this same machine);
* state queries per minute (``common.StateQueries``) and squeue/sacct/scontrol calls per minute (PATH wrappers);
* wall and poller-thread CPU time of each ``backend.query`` and of each poller tick (wrapped for the window).

Slurm keeps every task of a held-then-cancelled array in its job table for MinJobAge (1 h here), counted toward
MaxJobCount (200,000 here): a size that would leave fewer than 20,000 free records for others is skipped, with
a note. Then ``executor.abort()`` cancels the array, and its duration is compared with one ``scancel ARRAY_ID...`` of
held arrays of the same sizes (``sbatch --wrap true``, split as MaxArraySize forces, as oarfutures does).
"""

from __future__ import annotations

import os
import resource
import subprocess
import time

from benchmarks import common

NAME = "poller_cost"
MARGIN = 20_000  # task records left free in slurmctld's job table for others (MaxJobCount)


def inc(x):
    return x + 1


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------- child
def _announcer():
    """Markers on stdout for ``benchmarks.profiling`` (which attaches py-spy at the right moment); silent otherwise."""
    if not os.environ.get("OARF_BENCH_ANNOUNCE"):
        return lambda marker, pause=0: None

    def announce(marker, pause=1.5):
        print(marker, flush=True)
        time.sleep(pause)  # py-spy needs a moment to attach

    return announce


def measure(args: dict) -> dict:
    import oarfutures
    from oarfutures.backends.slurm import SlurmBackend
    from oarfutures.core.poller import get_poller

    n, window = args["n"], args["window"]
    out: dict = {"calls": n, "load_start": common.load(), "window_requested": window}
    poller = get_poller()
    ex = oarfutures.SlurmPoolExecutor(
        folder=os.path.abspath("jobs"),
        python=args["python"],
        name=args["name"],
        additional_parameters={"begin": "now+3600"},
    )
    queries = []
    original_query = ex.backend.query

    def timed_query(job_ids):
        w, c = time.perf_counter(), time.thread_time()
        try:
            return original_query(job_ids)
        finally:
            queries.append((time.perf_counter() - w, time.thread_time() - c, len(job_ids)))

    ex.backend.query = timed_query  # instance attribute: the poller calls executors[0].backend.query
    announce = _announcer()
    rss0 = common.rss_bytes()
    announce("MAPPING")
    t0 = time.perf_counter()
    it = ex.map(inc, range(n))
    out["map_seconds"] = time.perf_counter() - t0
    announce("MAPPED", pause=0)
    out["max_array_size"] = ex.backend.max_array_size
    out["arrays"] = len({f.split("_")[0] for f in ex.live_job_ids()})
    calls_file = os.environ.get(common.CALLS_VARIABLE, "")
    calls0 = common.count_calls(calls_file)
    with common.StateQueries(SlurmBackend) as state_queries, common.TickCounter(poller) as ticks:
        th0, p0, ch0, w0 = common.thread_cpu(poller._thread), time.process_time(), _children_cpu(), time.perf_counter()
        time.sleep(window)
        th1, p1, ch1, w1 = common.thread_cpu(poller._thread), time.process_time(), _children_cpu(), time.perf_counter()
    wall = w1 - w0
    calls1 = common.count_calls(calls_file)
    polls = sum(calls1.get(c, 0) - calls0.get(c, 0) for c in ("squeue", "sacct", "scontrol"))
    out.update(
        window_seconds=wall,
        poller_cpu_per_second=(th1 - th0) / wall,
        process_cpu_per_second=(p1 - p0) / wall,
        scheduler_command_cpu_per_second=(ch1 - ch0) / wall,  # squeue's own CPU (reaped children)
        queries_per_minute=60 * state_queries.count / wall,
        scheduler_calls_per_minute=60 * polls / wall,
        scheduler_calls_in_window={c: calls1.get(c, 0) - calls0.get(c, 0) for c in calls1},
        ticks_per_second=ticks.ticks / wall,
        ms_cpu_per_tick=1000 * ticks.tick_seconds / ticks.ticks if ticks.ticks else None,
        query_wall_seconds=[q[0] for q in queries],
        query_poller_cpu_seconds=[q[1] for q in queries],
        query_ids=[q[2] for q in queries],
        status=ex.status(),
        rss_growth_bytes=common.rss_bytes() - rss0,
    )
    announce("ABORTING")
    t0 = time.perf_counter()
    try:
        ex.abort("benchmark over")
    except Exception as exc:
        out["abort_error"] = f"{type(exc).__name__}: {exc}"[:500]
    out["abort_seconds"] = time.perf_counter() - t0
    del it
    # the baseline: held arrays of the same sizes (split as MaxArraySize forces), cancelled by array id, one scancel;
    # only if the job table has room for N more records (the aborted ones stay there for MinJobAge)
    room = common.slurm_room()
    if room["room"] - n < MARGIN:
        out["scancel_array_skipped"] = f"no room in Slurm's job table for the baseline's {n:,} more records ({room})"
        return out
    step, arrays = out["max_array_size"], []
    try:
        for first in range(0, n, step):
            count = min(step, n - first)
            arrays.append(
                subprocess.run(
                    [
                        "sbatch",
                        "--parsable",
                        "-J",
                        args["name"],
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
                )
                .stdout.strip()
                .split(";")[0]
            )
        t0 = time.perf_counter()
        subprocess.run(["scancel", *arrays], capture_output=True, check=True)
        out["scancel_array_seconds"] = time.perf_counter() - t0
        out["scancel_array_ids"] = len(arrays)
    except subprocess.CalledProcessError as exc:  # e.g. others restarted Slurm with a smaller MaxArraySize meanwhile
        out["scancel_array_skipped"] = f"baseline submission failed: {exc.stderr.strip()[-300:]}"
        subprocess.run(["scancel", *arrays], capture_output=True)
    return out


# ---------------------------------------------------------------------- orchestrator
def run(ctx) -> dict:
    sizes = (100, 1_000, 10_000) if ctx.quick else (1_000, 10_000, 100_000)
    window = 5.0 if ctx.quick else 20.0
    runs = []
    for n in sizes:
        room = common.slurm_room()
        if room["room"] - n < MARGIN:  # leave the job table room for everybody else's tests
            print(
                f"  {NAME}: {n:,} skipped, Slurm holds {room['records']:,} task records "
                f"(MaxJobCount {room['max_job_count']:,})",
                flush=True,
            )
            runs.append(
                {
                    "n": n,
                    "error": f"skipped: Slurm's job table holds {room['records']:,} task records "
                    f"(MaxJobCount {room['max_job_count']:,}; ended ones stay MinJobAge); "
                    f"{n:,} more would leave under {MARGIN:,} for others",
                    "slurm_room": room,
                }
            )
            continue
        folder = common.scratch(f"{NAME}-{n}")
        name = f"bench-poll-{os.getpid()}-{n}"
        config = common.slurm_config()
        print(
            f"  {NAME}: {n:,} pending tasks, {window:g} s window (load {common.load():.1f}, "
            f"MaxArraySize {config.get('MaxArraySize')}, {config.get('AccountingStorageType')})",
            flush=True,
        )
        res = ctx.run_child(
            NAME,
            {"n": n, "window": window, "python": ctx.python, "name": name},
            folder=folder,
            wrappers=ctx.wrappers,
            calls=os.path.join(folder, "calls.log"),
            timeout=600,
        )
        res.update(n=n, slurm_config=config, slurm_queue=common.slurm_queue(), slurm_room=room)
        subprocess.run(["scancel", "-n", name], capture_output=True)
        runs.append(res)
        ctx.cleanup(folder)
    return {"name": NAME, "sizes": sizes, "runs": runs, "rows": rows(runs)}


def rows(runs: list) -> list:
    out = []
    for r in runs:
        case = f"poller_cost N={r['n']:,} pending"
        if "error" in r:
            out.append(common.row(case, "(failed)", None, "", None, note=r["error"]))
            continue
        load = common.load_range(r)
        q = r["query_wall_seconds"]
        out += [
            common.row(
                case,
                "poller thread CPU [s/s]",
                r["poller_cpu_per_second"],
                "",
                None,
                load=load,
                note=f"{common.slurm_brief(r.get('slurm_config') or {})}: {r.get('arrays')} array(s)",
            ),
            common.row(
                case,
                "squeue/sacct calls per minute",
                r["scheduler_calls_per_minute"],
                "",
                None,
                load=load,
                note=f"{len(q)} queries in {r['window_seconds']:.0f} s, median {1000 * common.median(q):.0f} ms "
                f"wall each; the scheduler command's own CPU {r['scheduler_command_cpu_per_second']:.3f} s/s",
            ),
            common.row(
                case,
                "executor.abort() [s]",
                r["abort_seconds"],
                "scancel ARRAY_ID(s)",
                r.get("scancel_array_seconds"),
                load=load,
                note=r.get("abort_error", "") or r.get("scancel_array_skipped", ""),
            ),
        ]
    return out


if __name__ == "__main__":
    common.child_main(measure)
