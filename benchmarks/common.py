"""Shared plumbing of the benchmarks: child processes, scheduler-call counting, machine facts, small statistics.

Every measurement runs in a *child* process started by ``python -m benchmarks`` (the orchestrator), so that one
case's poller thread, submitit's class-level state or leftover memory never leaks into the next one, and so that
the OAR case can run as the unprivileged user OAR requires. A child is::

    <job python> -c "<append the repository to sys.path; run benchmarks.<case> as __main__>" --child ARGS.json OUT.json

with its working directory in a scratch folder. The repository is *appended* to ``sys.path``: ``import oarfutures``
finds the copy installed in the job interpreter's venv (the same copy the jobs' workers run), and functions defined
in a case module are ``__main__`` functions, which cloudpickle (used by both oarfutures and submitit) pickles by
value, as it would a user's script.

Scheduler calls are counted by wrapper scripts placed first on the child's ``PATH``: each appends its name to the
file named by ``$OARF_BENCH_CALLS`` and ``exec``s the real binary (one ``sh`` start per call, the same for every
contender). Slurm jobs inherit that ``PATH``; OAR jobs get a fresh one.
"""

from __future__ import annotations

import collections
import json
import math
import os
import platform
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")
SCRATCH = os.environ.get("OARF_BENCH_SCRATCH", "/var/tmp/oarf-bench")  # big (100,000-call folders): not /tmp
# the venv tests/run-all.sh makes (OARFUTURES_CI_DIR as there), and the normal user its OAR phase submits as
CI_PYTHON = os.path.join(os.environ.get("OARFUTURES_CI_DIR", "/var/tmp/oarfutures-ci"), "venv", "bin", "python")
OAR_USER = os.environ.get("OARF_BENCH_OAR_USER", "alice")

SLURM_COMMANDS = ("squeue", "sacct", "scontrol", "sbatch", "scancel")
OAR_COMMANDS = ("oarstat", "oarsub", "oardel")
CALLS_VARIABLE = "OARF_BENCH_CALLS"


def job_python() -> str:
    """The interpreter used for every client and every job: the CI venv (built from /usr/bin/python3), else ours."""
    python = os.environ.get("OARF_BENCH_PYTHON")
    if python:
        return python
    return CI_PYTHON if os.access(CI_PYTHON, os.X_OK) else sys.executable


# ---------------------------------------------------------------------- load and machine facts
def load() -> float:
    return round(os.getloadavg()[0], 2)


def stolen_seconds() -> float | None:
    """CPU time the hypervisor gave to other guests so far (the steal column of ``/proc/stat``, all CPUs), None
    where there is none to read. On a shared VM it slows one run of a pair and not the other: the load average
    does not show it, the per-repeat ratios do, and this says why."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def machine(python: str | None = None) -> dict[str, Any]:
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    python = python or job_python()
    return {
        "host": socket.gethostname(),
        "nproc": os.cpu_count(),
        "ram_gb": round(mem_kb / 2**20, 1),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "orchestrator_python": sys.version.split()[0],
        "job_python": python,
        "job_python_version": _out([python, "-c", "import sys; print(sys.version.split()[0])"]),
        "slurm": _out(["sinfo", "--version"]),
        "oar": _out(["oarsub", "-V"]).splitlines()[0] if _out(["oarsub", "-V"]) else "",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def code_version(python: str) -> dict[str, Any]:
    """Which oarfutures is measured: the repository's commit and edits, and the copy the job python imports."""
    import hashlib

    def digest(folder: str) -> str:
        """Of every .py file of the package, its subpackages' too (a change in core/ must reinstall)."""
        h = hashlib.sha256()
        paths = sorted(os.path.join(root, n) for root, _, names in os.walk(folder) for n in names if n.endswith(".py"))
        for path in paths:
            with open(path, "rb") as f:
                h.update(os.path.relpath(path, folder).encode() + f.read())
        return h.hexdigest()[:12]

    installed = _out([python, "-c", "import oarfutures, os; print(os.path.dirname(oarfutures.__file__))"], cwd="/")
    return {
        "git_head": _out(["git", "-C", REPO, "log", "-1", "--format=%h %s"]),
        "git_dirty": _out(["git", "-C", REPO, "status", "--porcelain", "--", "oarfutures"]).splitlines(),
        "repo_sha": digest(os.path.join(REPO, "oarfutures")),
        "installed": installed,
        "installed_sha": digest(installed) if installed else "",
    }


def refresh_install(python: str) -> str:
    """Install the working tree into the job python's venv when the copy there differs (the CI venv's pip)."""
    version = code_version(python)
    if version["installed_sha"] == version["repo_sha"]:
        return "up to date"
    pip = os.path.join(os.path.dirname(python), "pip")
    if not os.access(pip, os.X_OK):
        return f"differs from the repository, and no pip next to {python}"
    done = subprocess.run(
        [pip, "install", "-q", "--disable-pip-version-check", "--no-deps", "--upgrade", REPO],
        capture_output=True,
        text=True,
    )
    return "refreshed" if done.returncode == 0 else f"pip failed: {_tail(done.stderr, 3)}"


def _out(command: Sequence[str], timeout: float = 30, cwd: str | None = None) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def slurm_config() -> dict[str, str]:
    """The Slurm settings that change what the benchmarks mean (others may restart Slurm with other ones)."""
    text = _out(["scontrol", "show", "config"])
    keys = ("MaxArraySize", "AccountingStorageType", "MinJobAge", "MaxJobCount", "SchedulerParameters")
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in keys:
            found[key.strip()] = value.strip()
    return found


def slurm_brief(config: dict[str, str]) -> str:
    """'MaxArraySize 100001, no accounting (squeue)': the two settings others' test runs flip."""
    if not config:
        return "Slurm config unknown"
    accounting = config.get("AccountingStorageType", "?")
    mode = "no accounting (squeue)" if accounting.endswith("none") else "accounting (sacct)"
    return f"MaxArraySize {config.get('MaxArraySize', '?')}, {mode}"


def slurm_queue() -> dict[str, int]:
    """Jobs (array tasks expanded) pending/running on Slurm now, everyone's: how busy the shared cluster is."""
    lines = _out(["squeue", "-h", "-r", "-t", "PENDING,RUNNING,COMPLETING", "-o", "%T"]).split()
    return dict(collections.Counter(lines))


def wait_for_quiet(queue: Callable[[], dict[str, int]], busy: Sequence[str], limit: float = 90) -> dict[str, Any]:
    """Wait (up to ``limit`` s) until nobody's jobs wait in the queue, so a contender does not start behind someone
    else's array; return what the queue held when we started and how long we waited."""
    t0 = time.monotonic()
    while True:
        now = queue()
        if not any(now.get(state) for state in busy) or time.monotonic() - t0 > limit:
            return {"queue_at_start": now, "waited_for_quiet_seconds": round(time.monotonic() - t0, 1)}
        time.sleep(2)


def slurm_room() -> dict[str, int]:
    """How many more tasks slurmctld accepts: MaxJobCount minus every task record it holds (ended ones included,
    for MinJobAge). A submission beyond it makes ``sbatch`` wait and retry, for everyone on the cluster."""
    config = slurm_config()
    try:
        limit = int(config.get("MaxJobCount", "10000").split()[0])
    except ValueError:
        limit = 10000
    held = len(_out(["squeue", "-h", "-r", "-t", "all", "-o", "%i"], timeout=120).split())
    return {"max_job_count": limit, "records": held, "room": limit - held}


def oar_queue() -> dict[str, int]:
    lines = _out(["oarstat"]).splitlines()[2:]
    return dict(collections.Counter(line.split()[1] for line in lines if len(line.split()) > 1))


# ---------------------------------------------------------------------- counting scheduler calls
def make_wrappers(folder: str, commands: Iterable[str]) -> str:
    """Write ``folder/<cmd>`` scripts that log their name and exec the real binary; return ``folder``."""
    os.makedirs(folder, exist_ok=True)
    os.chmod(folder, 0o755)
    for command in commands:
        real = shutil.which(command, path=os.environ.get("PATH", "").replace(folder, ""))
        if real is None:
            continue
        path = os.path.join(folder, command)
        with open(path, "w") as f:
            f.write(
                f'#!/bin/sh\n[ -n "${CALLS_VARIABLE}" ] && echo {command} >> "${CALLS_VARIABLE}"\nexec {real} "$@"\n'
            )
        os.chmod(path, 0o755)
    return folder


def count_calls(path: str) -> dict[str, int]:
    try:
        with open(path) as f:
            return dict(collections.Counter(line.strip() for line in f if line.strip()))
    except FileNotFoundError:
        return {}


# ---------------------------------------------------------------------- child processes
def scratch(name: str, user: str | None = None) -> str:
    """A fresh scratch folder (owned by ``user`` when given, mode 0700 then: OAR jobs run in it)."""
    os.makedirs(SCRATCH, exist_ok=True)
    os.chmod(SCRATCH, 0o755)
    folder = os.path.join(SCRATCH, f"{name}-{time.strftime('%H%M%S')}-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    os.makedirs(folder)
    if user:
        info = pwd.getpwnam(user)
        os.chown(folder, info.pw_uid, info.pw_gid)
        os.chmod(folder, 0o700)
    return folder


_BOOT = (
    "import sys, runpy; sys.argv[0] = {module!r}; sys.path.append({repo!r}); "
    "runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
)


def run_child(
    module: str,
    args: dict[str, Any],
    *,
    folder: str,
    wrappers: str | None = None,
    user: str | None = None,
    timeout: float = 600,
    python: str | None = None,
    calls: str | None = None,
) -> dict[str, Any]:
    """Run ``benchmarks.<module>`` as a child in ``folder``; return what it wrote (or an ``error`` entry).

    With ``calls`` (a file name), the wrappers log every scheduler command the child and its jobs run there.
    """
    result = _run_child_once(
        module, args, folder=folder, wrappers=wrappers, user=user, timeout=timeout, python=python, calls=calls
    )
    if "No module named oarfutures" in json.dumps(result, default=str):
        # others' test runs reinstall the package in the shared CI venv: a job started during that window fails
        time.sleep(10)
        result = _run_child_once(
            module, args, folder=folder, wrappers=wrappers, user=user, timeout=timeout, python=python, calls=calls
        )
        result["retried"] = "the first attempt found no oarfutures in the venv (being reinstalled by someone)"
    if "side" in args:
        result.setdefault("side", args["side"])
    return result


def _run_child_once(
    module: str,
    args: dict[str, Any],
    *,
    folder: str,
    wrappers: str | None,
    user: str | None,
    timeout: float,
    python: str | None,
    calls: str | None,
) -> dict[str, Any]:
    python = python or job_python()
    if calls:
        open(calls, "w").close()
    args_path = os.path.join(folder, f"args-{time.monotonic_ns()}.json")
    out_path = args_path.replace("args-", "out-")
    with open(args_path, "w") as f:
        json.dump(args, f)
    boot = _BOOT.format(module=f"benchmarks.{module}", repo=REPO)
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    if wrappers:
        path = f"{wrappers}:{path}"
    if user:
        info = pwd.getpwnam(user)
        for owned in (args_path, calls):
            if owned:
                os.chown(owned, info.pw_uid, info.pw_gid)
        env_args = [
            "env",
            "-i",
            f"HOME={info.pw_dir}",
            f"USER={user}",
            f"LOGNAME={user}",
            f"PATH={path}",
            "LANG=C.UTF-8",
        ]
        if calls:
            env_args.append(f"{CALLS_VARIABLE}={calls}")
        command = ["runuser", "-u", user, "--", *env_args, python, "-c", boot, "--child", args_path, out_path]
        env = None
    else:
        command = [python, "-c", boot, "--child", args_path, out_path]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYENV"))}
        env["PATH"] = path
        env.pop(CALLS_VARIABLE, None)
        if calls:
            env[CALLS_VARIABLE] = calls
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"child {module} timed out after {timeout:.0f} s", "stderr": _tail(exc.stderr)}
    result: dict[str, Any] = {}
    try:
        with open(out_path) as f:
            result = json.load(f)
    except (OSError, ValueError):
        result = {"error": f"child {module} exited {done.returncode} without a result"}
    if done.returncode != 0 and "error" not in result:
        result["error"] = f"child {module} exited {done.returncode}"
    if "error" in result:
        result["stderr"] = _tail(done.stderr)
    result.setdefault("child_seconds", time.perf_counter() - started)
    return result


def _tail(text: Any, lines: int = 25) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


def child_main(measure: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Entry point of a child: ``--child ARGS.json OUT.json``; ``measure(args)`` returns a JSON-able dict."""
    if len(sys.argv) != 4 or sys.argv[1] != "--child":
        sys.exit(f"{sys.argv[0]}: run the benchmarks with `python -m benchmarks` (this module is a child of it)")
    with open(sys.argv[2]) as f:
        args = json.load(f)
    try:
        result = measure(args)
    except BaseException as exc:  # report, do not hide: the orchestrator prints it in the table
        import traceback

        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result.setdefault("load_end", load())
    with open(sys.argv[3], "w") as f:
        json.dump(result, f, indent=1, default=str)
    os._exit(0)  # do not wait for executors' daemon threads or atexit hooks of half-torn-down libraries


# ---------------------------------------------------------------------- statistics
def median(values: Sequence[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100): with few samples p99 is simply the maximum."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[rank - 1]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def row(
    case: str,
    measure: str,
    ours: Any,
    baseline: str,
    base: Any,
    *,
    unit: str = "",
    runs: Any = 1,
    load: Any = None,
    ratio_: float | None = "auto",
    note: str = "",
    target: float | str | None = None,
) -> dict[str, Any]:  # type: ignore[assignment]
    """One line of the summary table: oarfutures' median against one baseline's median. ``target``: issue 13's
    upper bound on the ratio, or a bound on something else said in words (most rows have none)."""
    if ratio_ == "auto":
        ratio_ = ratio(ours, base) if isinstance(ours, (int, float)) and isinstance(base, (int, float)) else None
    note = " ".join(str(note).split())
    line = {
        "case": case,
        "measure": measure,
        "oarfutures": ours,
        "baseline": baseline,
        "baseline_value": base,
        "ratio": ratio_,
        "unit": unit,
        "runs": runs,
        "load": load,
        "note": note if len(note) <= 300 else note[:297] + "...",
    }
    if target is not None:
        line["target"] = target
    return line


def load_range(*results: dict[str, Any]) -> str:
    values = [r.get(k) for r in results for k in ("load_start", "load_end") if isinstance(r.get(k), (int, float))]
    if not values:
        return "?"
    low, high = min(values), max(values)
    return f"{low:.1f}" if abs(high - low) < 0.05 else f"{low:.1f}-{high:.1f}"


def save(name: str, record: dict[str, Any]) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
    return path


def thread_cpu(thread: Any) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


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


def release_memory() -> None:
    """Collect garbage and return free heap pages to the OS, so that RSS deltas measure only what is live (the
    second measurement of a process would otherwise reuse the first one's heap)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_window(thread: Any, seconds: float) -> list[float]:
    """[thread CPU s, process CPU s, wall s] over ``seconds`` while the calling thread sleeps."""
    t0, p0, w0 = thread_cpu(thread) if thread else 0.0, time.process_time(), time.perf_counter()
    time.sleep(seconds)
    t1, p1, w1 = thread_cpu(thread) if thread else 0.0, time.process_time(), time.perf_counter()
    return [t1 - t0, p1 - p0, w1 - w0]


class TickCounter:
    """Counts and times the poller's ticks inside a ``with`` block (wraps the instance's ``_tick``, then restores
    the class's)."""

    def __init__(self, poller: Any) -> None:
        self.poller, self.ticks, self.tick_seconds = poller, 0, 0.0
        self._orig = poller._tick

    def __enter__(self) -> TickCounter:
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

    def __exit__(self, *exc: Any) -> bool:
        try:
            del self.poller._tick
        except AttributeError:
            pass
        return False


class StateQueries:
    """Counts the state queries this process makes of ``backend_class`` inside a ``with`` block (wraps the class's
    ``query``, then restores it): the poller's, one per tick for all live jobs of that scheduler."""

    def __init__(self, backend_class: Any) -> None:
        self.count = 0
        self._class, self._query = backend_class, backend_class.__dict__["query"]

    def __enter__(self) -> StateQueries:
        def counted(backend: Any, job_ids: Any) -> Any:
            self.count += 1
            return self._query(backend, job_ids)

        self._class.query = counted
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._class.query = self._query
        return False


def folder_bytes(folder: str) -> list[int]:
    total, files = 0, 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(root, name))
                files += 1
            except OSError:
                pass
    return [total, files]


# ---------------------------------------------------------------------- CPU of a process tree
def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``), so that a
    worker whose parent exited stays in our tree and :func:`tree_cpu` still sees it. False where unsupported."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # fields from the state on (the name may hold spaces)
    except (OSError, IndexError):
        return None


def unreaped_descendants() -> list[dict[str, Any]]:
    """Descendants of this process not yet waited for (alive or zombie), each with the CPU seconds /proc gives it
    (its own plus its waited-for children's): what ``RUSAGE_CHILDREN`` does not count yet."""
    parents: dict[int, int] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                parents[int(entry)], stats[int(entry)] = int(fields[1]), fields
    me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
    found = []
    for pid in stats:
        ancestor, seen = parents.get(pid), 0
        while ancestor and ancestor != me and seen < 64:
            ancestor, seen = parents.get(ancestor), seen + 1
        if ancestor == me:
            fields = stats[pid]  # state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
            cpu = sum(int(x) for x in fields[11:15]) / tick
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
            except OSError:
                command = ""
            found.append({"pid": pid, "state": fields[0], "cpu_seconds": cpu, "command": command})
    return found


def tree_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of this process, its waited-for descendants and its unreaped ones."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    unreaped = unreaped_descendants()
    return {
        "self": own.ru_utime + own.ru_stime,
        "children": children.ru_utime + children.ru_stime,
        "unreaped": sum(p["cpu_seconds"] for p in unreaped),
        "unreaped_processes": len(unreaped),
    }
