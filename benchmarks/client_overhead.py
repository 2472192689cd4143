"""Client-side overhead of ``map`` over many tiny calls: oarfutures LocalPoolExecutor vs ProcessPoolExecutor.

Run: ``python benchmarks/client_overhead.py [--calls 10000] [--window 3]``

Measured in one process, for ``map(inc, range(N))`` with one worker (so ~all calls stay pending):

* wall time until ``map`` returns (both executors submit eagerly: this is the client-side submission cost);
* bytes written to the job folder (oarfutures only) and bytes written by the process (``wchar`` of /proc/self/io);
* resident memory growth (VmRSS) per pending call;
* CPU of the thread that resolves futures, from 0.5 s after ``map`` returned, (the oarfutures poller / the ProcessPoolExecutor management thread) per
  wall second over a window while the calls are pending, plus the CPU of the whole process over the same window.

For the baseline the single worker process is first blocked by a call that waits for a flag file, so its calls
really stay pending during the window (``inc`` is so cheap that a free worker would finish 10,000 of them in about
a second); the oarfutures worker runs one subprocess at a time, which keeps ~all its calls pending anyway.

Freed memory is handed back to the OS (``gc.collect`` + ``malloc_trim``) before each RSS baseline, so the second
measurement does not reuse the first one's heap. Raw numbers go to ``benchmarks/results/client_overhead.json``, keyed by the number of calls.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import ctypes
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time

import oarfutures
from oarfutures.core.poller import get_poller

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
SETTLE = 0.5  # seconds between map() returning and the CPU window: lets either side finish digesting the submission


def inc(x):
    return x + 1


def wait_for_file(path, limit=120.0):
    """Keeps the baseline's only worker busy until ``path`` exists (polls in the worker process, not ours)."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return None


# ---------------------------------------------------------------------- measurement helpers
def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_bytes() -> int:
    return _proc_status_kb("VmRSS") * 1024


def wchar() -> int:
    """Bytes this process passed to write()-like syscalls so far (0 when /proc/self/io is unreadable)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


_libc = None


def release_memory() -> None:
    """Collect garbage and return free heap pages to the OS, so RSS deltas measure only what is live."""
    global _libc
    gc.collect()
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def folder_bytes(folder: str):
    total, files = 0, 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(root, name))
                files += 1
            except OSError:
                pass
    return total, files


def thread_cpu(thread: threading.Thread) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def cpu_window(thread, seconds: float):
    """(thread CPU s, process CPU s, wall s) over ``seconds`` while this (main) thread sleeps."""
    t0, p0, w0 = thread_cpu(thread) if thread else 0.0, time.process_time(), time.perf_counter()
    time.sleep(seconds)
    t1, p1, w1 = thread_cpu(thread) if thread else 0.0, time.process_time(), time.perf_counter()
    return t1 - t0, p1 - p0, w1 - w0


class TickCounter:
    """Counts and times the poller's ticks during the window (wraps the instance's ``_tick``, then restores it)."""

    def __init__(self, poller) -> None:
        self.poller, self.ticks, self.tick_seconds = poller, 0, 0.0
        self._orig = poller._tick

    def __enter__(self):
        orig = self._orig

        def counted():
            t = time.thread_time()
            try:
                return orig()
            finally:
                self.tick_seconds += time.thread_time() - t
                self.ticks += 1

        self.poller._tick = counted
        return self

    def __exit__(self, *exc):
        try:
            del self.poller._tick
        except AttributeError:
            pass
        return False


# ---------------------------------------------------------------------- the two runs
def run_oarfutures(n: int, window: float) -> dict:
    base = tempfile.mkdtemp(prefix="oarf-bench-")
    folder = os.path.join(base, "jobs")
    out: dict = {"calls": n}
    try:
        poller = get_poller()  # started before the RSS baseline: one thread per process, not per future
        release_memory()
        rss0, w0 = rss_bytes(), wchar()
        ex = oarfutures.LocalPoolExecutor(max_workers=1, folder=folder)
        t0, c0 = time.perf_counter(), time.thread_time()
        it = ex.map(inc, range(n))
        out["map_seconds"] = time.perf_counter() - t0
        out["map_main_thread_cpu_seconds"] = time.thread_time() - c0
        out["process_write_bytes"] = wchar() - w0
        out["folder_bytes"], out["folder_files"] = folder_bytes(folder)
        gc.collect()
        out["rss_growth_bytes"] = rss_bytes() - rss0
        out["status_before_window"] = ex.status()
        pending = out["status_before_window"]["pending"] or 1
        out["rss_bytes_per_pending_call"] = out["rss_growth_bytes"] / pending

        time.sleep(SETTLE)
        q0 = poller.query_count
        with TickCounter(poller) as ticks:
            thread_s, process_s, wall = cpu_window(poller._thread, window)
        out["window_seconds"] = wall
        out["resolver_cpu_per_second"] = thread_s / wall
        out["process_cpu_per_second"] = process_s / wall
        out["poller_ticks_per_second"] = ticks.ticks / wall
        out["poller_ms_per_tick"] = 1000 * ticks.tick_seconds / ticks.ticks if ticks.ticks else None
        out["poller_queries_per_second"] = (poller.query_count - q0) / wall
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


def _find_manager_thread(ex: cf.ProcessPoolExecutor):
    for thread in threading.enumerate():
        if type(thread).__name__ == "_ExecutorManagerThread":
            return thread
    return getattr(ex, "_executor_manager_thread", None)


def run_process_pool(n: int, window: float) -> dict:
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
        release_memory()
        rss0, w0 = rss_bytes(), wchar()
        t0, c0 = time.perf_counter(), time.thread_time()
        it = ex.map(inc, range(n))
        out["map_seconds"] = time.perf_counter() - t0
        out["map_main_thread_cpu_seconds"] = time.thread_time() - c0
        out["process_write_bytes"] = wchar() - w0
        out["folder_bytes"], out["folder_files"] = None, None
        gc.collect()
        out["rss_growth_bytes"] = rss_bytes() - rss0
        out["rss_bytes_per_pending_call"] = out["rss_growth_bytes"] / n

        time.sleep(SETTLE)
        manager = _find_manager_thread(ex)
        out["resolver_thread"] = type(manager).__name__ if manager else None
        thread_s, process_s, wall = cpu_window(manager, window)
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


# ---------------------------------------------------------------------- report
ROWS = [
    ("map() returns [s]", "map_seconds", "{:.3f}"),
    ("map() main-thread CPU [s]", "map_main_thread_cpu_seconds", "{:.3f}"),
    ("us per call submitted", "us_per_call", "{:.1f}"),
    ("folder bytes", "folder_bytes", "{:,}"),
    ("bytes written by process", "process_write_bytes", "{:,}"),
    ("RSS growth [MB]", "rss_growth_mb", "{:.1f}"),
    ("RSS per pending call [B]", "rss_bytes_per_pending_call", "{:,.0f}"),
    ("resolver thread CPU s/s", "resolver_cpu_per_second", "{:.4f}"),
    ("process CPU s/s (window)", "process_cpu_per_second", "{:.4f}"),
    ("abort+shutdown [s]", "abort_shutdown_seconds", "{:.3f}"),
]


def table(ours: dict, base: dict) -> str:
    for d in (ours, base):
        d["us_per_call"] = 1e6 * d["map_seconds"] / d["calls"]
        d["rss_growth_mb"] = d["rss_growth_bytes"] / 2**20
    lines = [f"{'metric':<27}| {'oarfutures':>14} | {'ProcessPoolExecutor':>19} | {'ratio':>9}", "-" * 78]
    for label, key, fmt in ROWS:
        a, b = ours.get(key), base.get(key)
        sa = fmt.format(a) if a is not None else "n/a"
        sb = fmt.format(b) if b is not None else "n/a"
        ratio = f"{a / b:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "n/a"
        lines.append(f"{label:<27}| {sa:>14} | {sb:>19} | {ratio:>9}")
    lines.append("-" * 78)
    lines.append(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall times suffer under load)")
    lines.append(
        f"oarfutures poller during window: {ours['poller_ticks_per_second']:.1f} ticks/s, "
        f"{ours['poller_ms_per_tick'] or 0:.3f} ms CPU/tick, {ours['poller_queries_per_second']:.1f} queries/s; "
        f"status before {ours['status_before_window']}, after {ours['status_after_window']}"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000, help="number of tiny calls to map (default 10000)")
    parser.add_argument("--window", type=float, default=3.0, help="seconds of CPU sampling while pending")
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, "client_overhead.json"))
    args = parser.parse_args(argv)

    started = time.perf_counter()
    print(f"map(inc, range({args.calls:,})) with max_workers=1; CPU window {args.window:g} s", flush=True)
    ours = run_oarfutures(args.calls, args.window)
    print(f"  oarfutures done ({time.perf_counter() - started:.1f} s)", flush=True)
    base = run_process_pool(args.calls, args.window)
    print(f"  ProcessPoolExecutor done ({time.perf_counter() - started:.1f} s)\n", flush=True)
    print(table(ours, base))

    record = {
        "calls": args.calls,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "window_seconds": args.window,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "oarfutures_version": oarfutures.__version__,
        "total_seconds": time.perf_counter() - started,
        "loadavg_1min_at_end": os.getloadavg()[0],
        "oarfutures": ours,
        "process_pool": base,
    }
    # one file for all sizes: this run replaces the previous run with the same --calls, others are kept
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    try:
        with open(args.output) as f:
            saved = json.load(f)
        runs = saved["runs"] if isinstance(saved, dict) and isinstance(saved.get("runs"), dict) else {}
    except (OSError, ValueError):
        runs = {}
    runs[str(args.calls)] = record
    with open(args.output, "w") as f:
        json.dump({"latest": str(args.calls), "runs": runs}, f, indent=2, sort_keys=True)
    print(f"\nraw numbers: {os.path.relpath(args.output)}  (total {record['total_seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
