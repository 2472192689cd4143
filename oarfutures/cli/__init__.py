"""The command line over a job folder: ``python -m oarfutures {status,logs,cancel,clean,results} FOLDER``.

It reads what the executors leave in the folder (see ``layout`` and ``records``) and asks each scheduler once per
command about every unfinished job of the folder (one ``backend.query`` per backend, one ``backend.cancel`` per
backend), never once per job. The local backend has no scheduler to ask: its workers are found in ``/proc``.

Exit status: 0 on success, 1 when the command could not do what was asked (not a job folder, unknown task, no
logs, cancellation declined), 2 for a usage error.
"""
from __future__ import annotations

import argparse
import filelock
import json
import logging
import os
import pickle
import signal
import sys
import time
from concurrent import futures as cf
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from oarfutures.protocol import layout
from oarfutures.core import records
from oarfutures.backends.base import Backend, BatchSubmission, JobState, JobStatus

STATES = ("done", "failed", "cancelled", "running", "pending", "ended-without-result", "unknown")
#: a job the scheduler does not know is "not visible yet" for this long after its record was last written
VISIBILITY_GRACE = 15.0
WORKER_MODULE = b"oarfutures.worker"
RESIDENT_MODULE = b"oarfutures.worker.resident"


class CliError(Exception):
    """Stops the command with this message on stderr and exit status 1."""


# ---------------------------------------------------------------------------------------------- the folder
def open_folder(path: str) -> str:
    folder = os.path.abspath(path)
    if not os.path.isdir(folder):
        raise CliError(f"{path}: no such directory")
    missing = [sub for sub in (layout.JOBS, layout.TASKS, layout.RESULTS) if not os.path.isdir(os.path.join(folder, sub))]
    if missing:
        raise CliError(
            f"{path} is not an oarfutures job folder (it has no {', '.join(m + '/' for m in missing)} "
            "directory; give the folder= of an executor)"
        )
    return folder


def split_task_id(task: str) -> Tuple[str, int]:
    batch, _, index = task.rpartition("_")
    if not batch or not index.isdigit():
        raise CliError(f"{task!r} is not a task id: expected <batch>_<index> (BATCH and TASK of status, joined by '_')")
    return batch, int(index)


def result_files(folder: str) -> Dict[str, str]:
    """task id -> its result file, delivered or not (two directory scans for the whole folder)."""
    found: Dict[str, str] = {}
    for sub in (layout.DELIVERED, layout.RESULTS):  # a fresh result wins over a delivered copy
        directory = os.path.join(folder, sub)
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.endswith(layout.RESULT_SUFFIX) and entry.is_file():
                        found[entry.name[: -len(layout.RESULT_SUFFIX)]] = entry.path
        except FileNotFoundError:
            pass
    return found


# ---------------------------------------------------------------------------------------------- result files
class _Opaque:
    """Stands for any object of a result while only its structure is read (no user class is imported)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Opaque":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _SkeletonUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _Opaque

    def persistent_load(self, pid: Any) -> Any:
        return None


def result_errors(path: str) -> Tuple[int, List[str]]:
    """(number of calls, "Type: message" of each failed call) of a result file, without running its code.

    The outcomes' values are not rebuilt (their classes may not even be importable here): only the tags and the
    error texts the worker stored as plain strings are read. An unreadable file counts as one failure.
    """
    try:
        with open(path, "rb") as f:
            data = _SkeletonUnpickler(f).load()
        outcomes = list(data["outcomes"])
        errors = [f"{o[2]}: {o[3]}" for o in outcomes if o[0] == "error"]
        return len(outcomes), errors
    except FileNotFoundError:
        raise
    except Exception as exc:
        return 0, [f"CorruptResultError: result file cannot be read ({exc!r})"]


# ---------------------------------------------------------------------------------------------- backends
class LocalWorkers(Backend):
    """The local backend seen from outside its client: a task runs while its worker process exists.

    Job ids are task ids (what ``LocalBackend`` returns). The workers are found by their command line,
    ``python -u -m oarfutures.worker FOLDER BATCH INDEX``, in one pass over ``/proc``.
    """

    name = "local"

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def workers(self, job_ids: Sequence[str]) -> Dict[str, List[int]]:
        """task id -> pids of the processes running it: the worker (one-shot or resident) and a multi-task job's ranks.

        One-shot workers and ranks name their task on their command line, ``python -u -m oarfutures.worker
        FOLDER BATCH INDEX``; a resident worker (``oarfutures.worker.resident``) serves task after task, and the claim
        of a task without a result names the one running it.
        """
        named, residents = self._scan()
        for job_id in job_ids:
            pid = self._resident_running(job_id)
            if pid in residents:
                named[job_id] = [pid] + named.get(job_id, [])  # the worker first: it would report its ranks' deaths
        return named

    def _scan(self) -> Tuple[Dict[str, List[int]], Set[int]]:
        """One pass over /proc: the workers and ranks of this folder by task id, and every resident worker."""
        real = os.path.realpath(self.folder)
        named: Dict[str, List[int]] = {}
        residents = set()
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            return named, residents
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if RESIDENT_MODULE in args:
                residents.add(int(pid))
            if WORKER_MODULE not in args:
                continue
            at = args.index(WORKER_MODULE)
            if len(args) < at + 4 or not args[at + 3].isdigit():
                continue
            folder, batch, index = (a.decode(errors="replace") for a in args[at + 1 : at + 4])
            if os.path.realpath(folder) == real:
                named.setdefault(layout.task_id(batch, int(index)), []).append(int(pid))
        for pids_of_task in named.values():
            pids_of_task.sort()
        return named, residents

    def _resident_running(self, job_id: str) -> Optional[int]:
        """The pid of the process of this machine that claimed the task, while the task has no result."""
        batch, _, index = job_id.rpartition("_")
        if not index.isdigit() or os.path.exists(layout.result_path(self.folder, batch, int(index))):
            return None
        run = layout.runner(self.folder, batch, int(index))
        return run[2] if run is not None and run[1] == os.uname().nodename else None

    def query(self, job_ids: Sequence[str]) -> Dict[str, JobStatus]:
        running = self.workers(job_ids)
        return {
            j: JobStatus(JobState.RUNNING, "RUNNING", reason=f"pid {min(running[j])}") for j in job_ids if j in running
        }

    def cancel(self, job_ids: Sequence[str]) -> None:
        named, residents = self._scan()
        refused = []
        for job_id in job_ids:
            pids = named.get(job_id, [])
            resident = self._resident_running(job_id)  # read just before the kill: a resident moves on to other tasks
            if resident in residents:
                pids = [resident] + pids  # the worker first: it would report its ranks' deaths
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                except PermissionError:
                    refused.append(job_id)
        if refused:
            raise PermissionError(f"not allowed to kill the workers of {', '.join(sorted(set(refused)))}")

    parameters: Dict[str, Any] = {}

    def validate(self, values: Any) -> Dict[str, Any]:
        return dict(values)

    def submit(self, submission: BatchSubmission) -> List[str]:
        raise NotImplementedError("the command line submits nothing")

    def log_paths(self, job_id: str) -> List[str]:
        base = os.path.join(self.folder, layout.LOGS, job_id)
        return [base + ".out", base + ".err"]


def make_backend(name: str, folder: str) -> Optional[Backend]:
    """A backend able to query, cancel and name log files (default parameters: nothing is submitted)."""
    if name == "local":
        return LocalWorkers(folder)
    if name == "slurm":
        from oarfutures.backends.slurm import SlurmBackend

        return SlurmBackend(folder, {})
    if name == "oar":
        from oarfutures.backends.oar import OarBackend

        return OarBackend(folder, {})
    return None


class Backends:
    """One backend per scheduler name met in the folder, made on first use."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._made: Dict[str, Optional[Backend]] = {}

    def get(self, name: str) -> Optional[Backend]:
        if name not in self._made:
            self._made[name] = make_backend(name, self.folder)
        return self._made[name]

    def log_paths(self, name: str, job_id: str) -> List[str]:
        backend = self.get(name)
        if backend is not None:
            return backend.log_paths(job_id)
        base = os.path.join(self.folder, layout.LOGS, job_id)
        return [base + ".out", base + ".err"]


def oar_runs(job_ids: Sequence[str]) -> Dict[str, List[str]]:
    """Every OAR job that ran the same task as each of these jobs (resubmissions), oldest first; one oarstat.

    A resubmitted job keeps its array id and array index under a new job id, so the runs of a task are the jobs
    sharing the (array_id, array_index) of any one of them. Raises SchedulerCommandError when OAR cannot say.
    """
    from oarfutures.backends import commands

    ids = sorted({j for j in job_ids if j.isdigit()}, key=int)
    if not ids:
        return {}
    where = (
        "(array_id, array_index) IN (SELECT array_id, array_index FROM jobs WHERE job_id IN ("
        + ", ".join(ids)
        + "))"
    )
    out = commands.run(["oarstat", "-J", "--sql", where])
    jobs = json.loads(out) if out.strip() else {}
    groups: Dict[Tuple[Any, Any], List[str]] = {}
    key_of: Dict[str, Tuple[Any, Any]] = {}
    for job_id, job in jobs.items():
        key = (job.get("array_id"), job.get("array_index"))
        groups.setdefault(key, []).append(str(job_id))
        key_of[str(job_id)] = key
    return {j: sorted(groups[key_of[j]], key=int) if j in key_of else [j] for j in ids}


def runs_of(
    backends: Backends, batches: Sequence[records.BatchRecord], follow_oar: bool = True
) -> Dict[Tuple[str, int], List[str]]:
    """(batch, index) -> every job id that ran the task, oldest first (the record keeps only the latest).

    Slurm requeues a task under the same id and appends to the same logs; local tasks run under their task id.
    OAR resubmits a checkpointed task under a new id with its own logs: those are found with one oarstat for all
    the batches (``follow_oar=False``: only for checkpointable batches, the only ones OAR resubmits).
    """
    runs: Dict[Tuple[str, int], List[str]] = {}
    to_follow: Dict[Tuple[str, int], str] = {}
    for record in batches:
        for index in range(len(record.calls)):
            key = (record.batch, index)
            if record.backend == "local":
                runs[key] = [layout.task_id(record.batch, index)]
            elif index in record.job_ids:
                runs[key] = [record.job_ids[index]]
                if record.backend == "oar" and (follow_oar or record.checkpointable):
                    to_follow[key] = record.job_ids[index]
    if to_follow:
        from oarfutures.backends.commands import SchedulerCommandError

        try:
            chains = oar_runs(list(to_follow.values()))
        except (SchedulerCommandError, ValueError) as exc:
            print(f"oarfutures: cannot ask OAR for earlier runs, using the latest job only: {exc}", file=sys.stderr)
            chains = {}
        for key, job_id in to_follow.items():
            runs[key] = chains.get(job_id, [job_id])
    return runs


# ---------------------------------------------------------------------------------------------- task states
@dataclass
class TaskRow:
    record: records.BatchRecord
    index: int
    job_id: Optional[str] = None
    state: str = "pending"
    native: str = ""
    detail: str = ""
    runtime: Optional[float] = None
    result: Optional[str] = None  # the result file, if there is one
    status: Optional[JobStatus] = None  # what the scheduler said

    @property
    def batch(self) -> str:
        return self.record.batch

    @property
    def task_id(self) -> str:
        return layout.task_id(self.record.batch, self.index)

    @property
    def calls(self) -> int:
        return self.record.calls[self.index]

    @property
    def live(self) -> bool:
        """Queued or running on the scheduler: what ``cancel`` cancels."""
        return self.status is not None and not self.status.state.ended and self.job_id is not None

    def as_json(self) -> Dict[str, Any]:
        return {
            "batch": self.batch,
            "index": self.index,
            "task_id": self.task_id,
            "calls": self.calls,
            "backend": self.record.backend,
            "job_id": self.job_id,
            "state": self.state,
            "native_state": self.native or None,
            "detail": self.detail or None,
            "runtime": None if self.runtime is None else round(self.runtime, 3),
        }


def _mtime(path: str) -> Optional[float]:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _ran(folder: str, batch: str, index: int) -> bool:
    """Whether the task started: a worker claimed it, or its result is there (the claims of a tidied batch go)."""
    return layout.runner(folder, batch, index) is not None or layout.result_on_disk(folder, batch, index)


def _claim_time(path: str) -> Optional[float]:
    try:
        return os.lstat(path).st_mtime  # the claim itself, a symbolic link, not what it names
    except OSError:
        return None


def estimate_runtime(backends: Backends, row: TaskRow, now: float) -> Optional[float]:
    """Seconds the latest run took (or has taken so far), from file times: no scheduler call.

    A cluster job's log files are created when it starts and the worker seldom writes to both, so the older of
    their mtimes approximates the start; a local call has log files only if it printed, but its claim is made
    as it starts. The result file's mtime is the end (for a job still running: now).
    """
    if row.job_id is None:
        return None
    logs = [t for t in (_mtime(p) for p in backends.log_paths(row.record.backend, row.job_id)) if t is not None]
    if not logs:
        claimed = _claim_time(layout.claim_path(backends.folder, row.batch, row.index))
        if claimed is None:
            return None
        logs = [claimed]
    start = min(logs)
    if row.result is not None:
        end = _mtime(row.result)
    elif row.state == "running":
        end = now
    else:  # over without a result: its last write to a log is all there is, if it wrote after starting
        end = max(logs) if max(logs) > start + 1.0 else None
    return None if end is None else max(0.0, end - start)


def stolen_tasks(folder: str) -> Dict[str, str]:
    """task id -> the job that stole it (another task of its array runs it), from the markers in results/."""
    try:
        names = os.listdir(os.path.join(folder, layout.RESULTS))
    except OSError:
        return {}
    return dict(found for found in map(layout.parse_stolen_marker, names) if found)


def task_rows(folder: str, backends: Backends, batches: Sequence[records.BatchRecord]) -> List[TaskRow]:
    """The state of every task of these (unfinished) batches: result files first, then one query per backend.
    A stolen task's state is its stealer's (its own job has nothing to run)."""
    results = result_files(folder)
    stolen = stolen_tasks(folder)
    rows: List[TaskRow] = []
    for record in batches:
        for index in range(len(record.calls)):
            task = layout.task_id(record.batch, index)
            row = TaskRow(record, index, stolen.get(task) or record.job_ids.get(index))
            row.result = results.get(row.task_id)
            if row.result is not None:
                classify_result(row)
            rows.append(row)
    query_schedulers(folder, backends, [r for r in rows if r.result is None])
    late = result_files(folder)  # a job may have written its result while we asked the scheduler
    now = time.time()
    for row in rows:
        if row.result is None and row.state != "running" and late.get(row.task_id):
            row.result = late[row.task_id]
            classify_result(row)
        if row.result is None and row.state != "running":
            note_cancelled(folder, row)
        row.runtime = estimate_runtime(backends, row, now)
    return rows


def note_cancelled(folder: str, row: TaskRow) -> None:
    """A task without a result whose claim a ``cancel()`` took will never run: it is cancelled, whatever its job
    still does (it exits at once when it starts)."""
    if layout.claim_owner(layout.claim_path(folder, row.batch, row.index)) == layout.CANCELLED:
        row.state, row.detail = "cancelled", "cancelled: it never runs"


def classify_result(row: TaskRow) -> None:
    try:
        calls, errors = result_errors(row.result)  # type: ignore[arg-type]
    except FileNotFoundError:  # delivered and removed meanwhile by a client: it was there, so it is done
        row.state, row.detail = "done", ""
        return
    if errors:
        row.state = "failed"
        row.detail = errors[0] if len(errors) == 1 else f"{len(errors)}/{max(calls, len(errors))} calls failed, first: {errors[0]}"
    else:
        row.state, row.detail = "done", ""


def query_schedulers(folder: str, backends: Backends, rows: Sequence[TaskRow]) -> None:
    """Set the state of tasks without a result: one query per backend for all of them (plus one per level of
    OAR resubmissions to follow, batched too)."""
    by_backend: Dict[str, List[TaskRow]] = {}
    for row in rows:
        if row.job_id is None:
            row.state, row.native = "pending", "not submitted"
            row.detail = "not submitted yet (a live client submits it when earlier tasks end)"
        else:
            by_backend.setdefault(row.record.backend, []).append(row)
    now = time.time()
    for name, group in by_backend.items():
        backend = backends.get(name)
        if backend is None:
            for row in group:
                row.state, row.detail = "unknown", f"no backend named {name!r} in this version of oarfutures"
            continue
        try:
            statuses = _query_following(backend, [r.job_id for r in group])  # type: ignore[misc]
        except Exception as exc:  # the scheduler is down, a command is missing: say so, show the rest
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"oarfutures: cannot query {name}: {message}", file=sys.stderr)
            for row in group:
                row.state, row.detail = "unknown", f"{name} could not be queried: {message}"
            continue
        record_times: Dict[str, Optional[float]] = {}
        for row in group:
            latest, status = statuses.get(row.job_id, (row.job_id, None))  # type: ignore[arg-type]
            row.job_id, row.status = latest, status
            if status is not None:
                row.native = status.native_state
                if status.state is JobState.PENDING:
                    row.state = "pending"
                    row.detail = status.reason
                elif status.state is JobState.RUNNING:
                    row.state = "running"
                else:
                    row.state = "ended-without-result"
                    row.detail = _ended_detail(status)
                continue
            if name == "local":
                local_state(folder, row)
                continue
            # unknown to the scheduler: purged, or not visible yet just after submission
            path = layout.record_path(folder, row.batch)
            if path not in record_times:
                record_times[path] = _mtime(path)
            written = record_times[path]
            if written is not None and now - written < VISIBILITY_GRACE:
                row.state, row.detail = "pending", "just submitted, not visible to the scheduler yet"
            else:
                row.state, row.detail = "ended-without-result", "the scheduler no longer knows the job"


def _query_following(backend: Backend, job_ids: List[str]) -> Dict[str, Tuple[str, Optional[JobStatus]]]:
    """job id -> (latest job id, its status): follows OAR resubmissions, one batched query per level."""
    answer: Dict[str, Tuple[str, Optional[JobStatus]]] = {}
    current = {j: j for j in job_ids}  # original -> job id to ask about
    for _ in range(20):
        if not current:
            break
        statuses = backend.query(sorted(set(current.values())))
        following = {}
        for original, job_id in current.items():
            status = statuses.get(job_id)
            if status is not None and status.follow_up:
                following[original] = status.follow_up
            else:
                answer[original] = (job_id, status)
        current = following
    for original, job_id in current.items():
        answer[original] = (job_id, None)
    return answer


def _ended_detail(status: JobStatus) -> str:
    parts = []
    if status.exit_code not in (None, ""):
        parts.append(f"exit code {status.exit_code}")
    if status.reason:
        parts.append(status.reason)
    if status.state is JobState.COMPLETED:
        parts.append("the job completed but its worker wrote no result")
    return ", ".join(parts)


def local_state(folder: str, row: TaskRow) -> None:
    """A local task with no result and no worker process: never started, to run again, or over."""
    started = layout.runner(folder, row.batch, row.index) is not None
    if os.path.exists(layout.resume_path(folder, row.batch, row.index)):
        row.state, row.native, row.detail = "pending", "checkpointed", "checkpointed: waits to run again"
    elif not started:
        row.state, row.native, row.detail = "pending", "not started", "queued by its client (or its client is gone)"
    else:
        row.state, row.native = "ended-without-result", "no worker"
        row.detail = "its worker process is gone (killed, crashed, or its client died)"


# ---------------------------------------------------------------------------------------------- output helpers
def table(rows: List[List[str]], right: Set[int] = frozenset()) -> str:  # type: ignore[assignment]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{count} bytes" if unit == "bytes" else f"{count} bytes ({value:.1f} {unit})"
        value /= 1000
    return f"{count} bytes"


def one_line(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def confirm(question: str) -> bool:
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        return False
    return answer.strip().lower() in ("y", "yes")


# ---------------------------------------------------------------------------------------------- status
@dataclass
class Snapshot:
    """What ``status`` shows: the folder's batches, the task rows listed, and the count of tasks per state."""

    folder: str
    batches: List[records.BatchRecord]
    rows: List[TaskRow]
    counts: Dict[str, int]
    summarised: List[records.BatchRecord]  # complete batches shown as one line (no --all)

    @property
    def total_tasks(self) -> int:
        return sum(len(r.calls) for r in self.batches)

    @property
    def total_calls(self) -> int:
        return sum(sum(r.calls) for r in self.batches)

    @property
    def unfinished(self) -> int:
        """Tasks still queued or running: what a ``--watch`` waits for."""
        return self.counts["pending"] + self.counts["running"]

    def summary(self) -> str:
        shown = ", ".join(f"{self.counts[s]} {s}" for s in STATES if self.counts[s])
        return f"{self.total_tasks} task(s), {self.total_calls} call(s) in {len(self.batches)} batch(es): {shown}"


def take_snapshot(folder: str, backends: Backends, show_all: bool) -> Snapshot:
    """Read the records and result files, ask each scheduler once, and count the tasks per state."""
    batches = records.load_all(folder)
    listed = [r for r in batches if show_all or not r.complete]
    rows = task_rows(folder, backends, [r for r in listed if not r.complete])
    for record in listed:  # --all: tasks of complete batches, whose results were delivered and removed
        if record.complete:
            for index in range(len(record.calls)):
                row = TaskRow(record, index, record.job_ids.get(index), record.outcome(index), detail="complete batch")
                rows.append(row)
    order = {record.batch: n for n, record in enumerate(batches)}
    rows.sort(key=lambda r: (order[r.batch], r.index))
    counts = {state: 0 for state in STATES}
    for row in rows:
        counts[row.state] += 1
    summarised = [r for r in batches if r.complete and not show_all]
    for record in summarised:
        for index in range(len(record.calls)):
            counts[record.outcome(index)] += 1
    return Snapshot(folder, batches, rows, counts, summarised)


def status_document(snapshot: Snapshot) -> Dict[str, Any]:
    return {
        "folder": snapshot.folder,
        "batches": [
            {
                "batch": r.batch,
                "backend": r.backend,
                "tasks": len(r.calls),
                "calls": sum(r.calls),
                "complete": r.complete,
                "checkpointable": r.checkpointable,
                "created": r.created,
            }
            for r in snapshot.batches
        ],
        "tasks": [row.as_json() for row in snapshot.rows],
        "counts": snapshot.counts,
        "total": {"batches": len(snapshot.batches), "tasks": snapshot.total_tasks, "calls": snapshot.total_calls},
    }


def status_table(snapshot: Snapshot) -> str:
    if not snapshot.batches:
        return f"no batches in {snapshot.folder}"
    lines = [["BATCH", "TASK", "CALLS", "BACKEND", "JOB", "STATE", "RUNTIME", "DETAIL"]]
    summarised_names = {r.batch for r in snapshot.summarised}
    for record in snapshot.batches:
        if record.batch in summarised_names:
            lines.append([record.batch, "all", str(sum(record.calls)), record.backend, "-", batch_state(record), "-",
                          f"complete: {outcome_summary(record)}, results delivered or cleaned"])
            continue
        for row in (r for r in snapshot.rows if r.record is record):
            native = f"[{row.native}]" if row.native and row.native.lower() not in (row.state, "completed") else ""
            detail = one_line(" ".join(x for x in (native, row.detail) if x))
            job = row.job_id or "-"
            if record.backend == "local":  # its job ids are task ids: show the worker's pid instead
                job = row.status.reason if row.status is not None else "-"
            lines.append([row.batch, str(row.index), str(row.calls), record.backend, job, row.state,
                          duration(row.runtime), detail])
    return table(lines, right={1, 2, 6}) + "\n" + snapshot.summary()


def cmd_status(args: argparse.Namespace) -> int:
    folder = open_folder(args.folder)
    backends = Backends(folder)
    if args.watch:
        return watch_status(folder, backends, args)
    snapshot = take_snapshot(folder, backends, args.all)
    print(json.dumps(status_document(snapshot), indent=2) if args.json else status_table(snapshot))
    return 0


#: the shortest ``--watch`` interval: each refresh asks the schedulers once, and their controllers are shared
MIN_WATCH_SECONDS = 1.0
CLEAR_SCREEN = "\x1b[H\x1b[2J"


def watch_status(folder: str, backends: Backends, args: argparse.Namespace) -> int:
    """Refresh until no task is queued or running (or Ctrl-C): on a terminal the table, redrawn in place; else
    one line of counts per refresh (with ``--json``, one JSON object per line), for logs and scripts."""
    on_terminal = sys.stdout.isatty() and not args.json
    try:
        while True:
            snapshot = take_snapshot(folder, backends, args.all)
            if args.json:
                line = {"time": round(time.time(), 3), "counts": snapshot.counts, "total": snapshot.total_tasks}
                print(json.dumps(line), flush=True)
            elif on_terminal:
                stamp = time.strftime("%H:%M:%S")
                heading = f"{stamp}  every {args.interval:g} s, Ctrl-C to stop"
                print(f"{CLEAR_SCREEN}{heading}\n{status_table(snapshot)}", flush=True)
            else:
                print(f"{time.strftime('%H:%M:%S')} {snapshot.summary()}", flush=True)
            if snapshot.batches and not snapshot.unfinished:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:  # the usual way to leave a watch: not an error
        return 0


def watch_seconds(text: str) -> float:
    """``--interval`` value: seconds between ``--watch`` refreshes, at least ``MIN_WATCH_SECONDS``."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not MIN_WATCH_SECONDS <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds between refreshes, at least {MIN_WATCH_SECONDS:g}")
    return value


def batch_state(record: records.BatchRecord) -> str:
    """The state shown for a whole complete batch: its worst task's (failed, then cancelled, then done)."""
    outcomes = set(record.outcomes.values())
    return next((state for state in ("failed", "cancelled") if state in outcomes), "done")


def outcome_summary(record: records.BatchRecord) -> str:
    """"3 task(s): 1 done, 1 failed, 1 cancelled" for a complete batch."""
    tally = {state: 0 for state in ("done", "failed", "cancelled")}
    for index in range(len(record.calls)):
        tally[record.outcome(index)] += 1
    parts = ", ".join(f"{n} {state}" for state, n in tally.items() if n)
    return f"{len(record.calls)} task(s): {parts}"


# ---------------------------------------------------------------------------------------------- logs
def cmd_logs(args: argparse.Namespace) -> int:
    folder = open_folder(args.folder)
    batch, index = split_task_id(args.task)
    path = layout.record_path(folder, batch)
    if not os.path.exists(path):
        raise CliError(f"no task {args.task} in {folder}: there is no batch {batch}")
    record = records.load(path)
    if index >= len(record.calls):
        raise CliError(f"no task {args.task}: batch {batch} has {len(record.calls)} task(s), 0..{len(record.calls) - 1}")
    backends = Backends(folder)
    job_ids = runs_of(backends, [record]).get((batch, index), [])
    if not job_ids:
        raise CliError(f"task {args.task} was never submitted: it has no logs")
    shown = 0
    out = sys.stdout.buffer
    # a task another job of its array ran (stolen) has logs of its own, written by that job
    stolen = [p for p in layout.stolen_log_paths(folder, layout.task_id(batch, index)) if os.path.exists(p)]
    for log in [p for job_id in job_ids for p in backends.log_paths(record.backend, job_id)] + stolen:
        try:
            with open(log, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        out.write(f"==> {log} <==\n".encode())
        out.write(data)
        if data and not data.endswith(b"\n"):
            out.write(b"\n")
        shown += 1
    out.flush()
    if not shown and (record.complete or _ran(folder, batch, index)):  # a quiet call leaves no log file
        print(f"oarfutures: task {args.task} left no output: it printed nothing (empty logs are not kept)", file=sys.stderr)
    elif not shown:
        raise CliError(f"no log files for task {args.task} (job {', '.join(job_ids)}): it has not started, or they were removed")
    return 0


# ---------------------------------------------------------------------------------------------- cancel
def require_known(rows: Sequence[TaskRow], consequence: str) -> None:
    """Stop when a scheduler could not say which jobs still run: acting blind could leave jobs behind."""
    unknown = [r for r in rows if r.state == "unknown"]
    if unknown:
        raise CliError(f"the state of {len(unknown)} task(s) is unknown ({unknown[0].detail}): {consequence}")


def cancel_live(backends: Backends, rows: Sequence[TaskRow]) -> List[TaskRow]:
    """Cancel the queued and running jobs among these tasks: one cancel call per backend. Returns them."""
    live = [r for r in rows if r.live]
    by_backend: Dict[str, List[TaskRow]] = {}
    for row in live:
        by_backend.setdefault(row.record.backend, []).append(row)
    done: List[TaskRow] = []
    for name, group in by_backend.items():
        backend = backends.get(name)
        assert backend is not None  # a live row was queried through it
        backend.cancel(sorted({r.job_id for r in group}))  # type: ignore[type-var]
        done += group
    return done


def queued_rows(rows: Sequence[TaskRow]) -> List[TaskRow]:
    """Tasks no scheduler holds yet: calls waiting in their client's queue (local calls not started, cluster calls
    not submitted yet because of max_workers). Only their claim can stop them."""
    return [r for r in rows if r.state == "pending" and not r.live and r.native != "checkpointed"]


def cancel_queued(folder: str, rows: Sequence[TaskRow]) -> Tuple[List[TaskRow], List[TaskRow]]:
    """Take the claim of each queued task for a cancellation, as ``future.cancel()`` does: its worker then never
    runs it (it exits at once when its client starts or submits it, and the future fails with JobFailedError).
    Returns the tasks cancelled and those a worker claimed first (they are running now)."""
    cancelled, started = [], []
    for row in rows:
        path = layout.claim_path(folder, row.batch, row.index)
        try:
            won = layout.claim(path, layout.CANCELLED) or layout.claim_owner(path) == layout.CANCELLED
        except FileNotFoundError:  # its files were removed meanwhile: nothing can run it
            won = True
        (cancelled if won else started).append(row)
    return cancelled, started


def cmd_cancel(args: argparse.Namespace) -> int:
    folder = open_folder(args.folder)
    backends = Backends(folder)
    unfinished = [r for r in records.load_all(folder) if not r.complete]
    rows = task_rows(folder, backends, unfinished)
    require_known(rows, "nothing cancelled")
    live = [r for r in rows if r.live]
    queued = queued_rows(rows)
    if not live and not queued:
        print("nothing to cancel: no call of this folder is queued or running")
        return 0
    lines = [["BACKEND", "JOB", "TASK", "WAS"]]
    lines += [[r.record.backend, r.job_id or "-", r.task_id, r.state] for r in live]
    lines += [[r.record.backend, "-", r.task_id, f"queued ({r.native})"] for r in queued]
    if not args.yes:
        print(table(lines), file=sys.stderr)
        if not confirm(f"cancel these {len(live) + len(queued)} task(s)?"):
            print("nothing cancelled", file=sys.stderr)
            return 1
    cancelled_queued, started = cancel_queued(folder, queued)  # first: a queued call must not start meanwhile
    cancelled = cancel_live(backends, live)
    shown = [[r.record.backend, r.job_id or "-", r.task_id, r.state] for r in cancelled]
    shown += [[r.record.backend, "-", r.task_id, f"queued ({r.native})"] for r in cancelled_queued]
    print(table(lines[:1] + shown))
    print(f"cancelled {len(cancelled)} job(s)" + (f" and {len(cancelled_queued)} queued task(s), which will never run "
          "(their client's futures fail with JobFailedError)" if cancelled_queued else ""))
    if started:
        print(f"{len(started)} queued task(s) started meanwhile and were not cancelled: run cancel again")
    return 0


# ---------------------------------------------------------------------------------------------- clean
def batch_files(folder: str, batch: str, logs: Iterable[str], with_record: bool) -> List[str]:
    """The files of a batch: task files, results (fresh, delivered, temporary), and logs/record when asked."""
    prefixes = (batch + ".", batch + "_")
    paths = []
    # results/ranks/<task>/<rank>.pkl: what the ranks of a multi-task job left (a launcher that was killed)
    for sub in (layout.TASKS, layout.RESULTS, layout.DELIVERED, layout.RANKS):
        directory = os.path.join(folder, sub)
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if not entry.name.startswith(prefixes):
                        continue
                    if not entry.is_dir(follow_symlinks=False):
                        paths.append(entry.path)
                    elif sub.endswith("ranks"):
                        paths += [os.path.join(entry.path, name) for name in os.listdir(entry.path)] + [entry.path]
        except FileNotFoundError:
            pass
    paths += list(logs)
    if with_record:
        jobs = os.path.join(folder, layout.JOBS)
        with os.scandir(jobs) as entries:
            # the record (and its temp files) and the submission scripts jobs/<batch>-<first>.sh
            paths += [e.path for e in entries if e.name.startswith((batch + ".json", batch + "-")) and not e.is_dir()]
    return paths


def remove(paths: Iterable[str]) -> Tuple[int, int]:
    count = freed = 0
    for path in dict.fromkeys(paths):
        try:
            info = os.lstat(path)
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
                continue
            os.remove(path)
        except FileNotFoundError:
            continue
        except OSError as exc:  # a directory something wrote into meanwhile: leave it
            print(f"oarfutures: cannot remove {path}: {exc.strerror}", file=sys.stderr)
            continue
        count += 1
        freed += info.st_size
    return count, freed


def unchanged_for(folder: str, record: records.BatchRecord, days: float) -> bool:
    """Whether a batch's record was last written (submitted, followed, completed) more than ``days`` days ago."""
    written = _mtime(layout.record_path(folder, record.batch))
    return written is not None and time.time() - written > days * 86400


def days(text: str) -> float:
    """``--older`` value: a number of days >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days >= 0")
    return value


def cmd_clean(args: argparse.Namespace) -> int:
    folder = open_folder(args.folder)
    with filelock.FileLock(layout.lock_path(folder)):  # not while attach() reads the folder
        return _clean(folder, args)


def _clean(folder: str, args: argparse.Namespace) -> int:
    backends = Backends(folder)
    batches = records.load_all(folder)
    targets = [r for r in batches if r.complete or args.all]
    if args.older is not None:
        targets = [r for r in targets if unchanged_for(folder, r, args.older)]
    unfinished = [r for r in targets if not r.complete]
    cancelled: List[TaskRow] = []
    if unfinished:
        rows = task_rows(folder, backends, unfinished)
        require_known(rows, "nothing removed")
        cancelled = cancel_live(backends, rows)
        for row in cancelled:
            print(f"cancelled {row.record.backend} job {row.job_id} (task {row.task_id}, {row.state})")
        cancel_queued(folder, queued_rows(rows))  # their task files go: a client must not start them
        note_outcomes(rows)
    runs = runs_of(backends, targets, follow_oar=False) if args.logs else {}
    files = freed = 0
    for record in targets:
        logs: List[str] = []
        for index in range(len(record.calls)):
            for job_id in runs.get((record.batch, index), []):
                logs += backends.log_paths(record.backend, job_id)
        if not args.logs and not record.complete:  # keep the record with the logs, marked: nothing to attach to
            record.complete = True
            record.save(folder)
        n, size_ = remove(batch_files(folder, record.batch, logs, with_record=args.logs))
        files, freed = files + n, freed + size_
    kept = len(batches) - len(targets)
    print(
        f"cleaned {len(targets)} batch(es) ({len(cancelled)} job(s) cancelled first), removed {files} file(s), "
        f"freed {size(freed)}" + (f"; {kept} unfinished batch(es) kept (--all removes them)" if kept else "")
    )
    return 0


def note_outcomes(rows: Sequence[TaskRow]) -> None:
    """Record how the tasks of batches ``clean --all`` ends ended, as an executor does (status reads it): those
    that did not finish are cancelled."""
    for row in rows:
        if row.state != "done":
            failed = row.state in ("failed", "ended-without-result")
            row.record.outcomes[row.index] = "failed" if failed else "cancelled"


# ---------------------------------------------------------------------------------------------- results
def _error_parts(exc: BaseException) -> Tuple[str, str]:
    from oarfutures.errors import RemoteError

    if isinstance(exc, RemoteError):
        return exc.type_name, exc.message
    return type(exc).__name__, str(exc)


def _traceback_text(exc: BaseException) -> Optional[str]:
    cause = exc.__cause__
    return getattr(cause, "text", None)


def _jsonable(value: Any) -> Tuple[bool, Any]:
    try:
        json.dumps(value, allow_nan=False)
        return True, value
    except (TypeError, ValueError, RecursionError):
        return False, None


def _picklable(item: Any) -> Any:
    try:
        pickle.dumps(item)
        return item
    except Exception:
        from oarfutures.errors import RemoteError

        if isinstance(item, BaseException):
            name, message = _error_parts(item)
            return RemoteError(name, message, _traceback_text(item) or "")
        return RemoteError(type(item).__qualname__, f"cannot pickle {type(item).__qualname__}: {item!r}"[:500], "")


def make_executor(name: str, folder: str) -> Any:
    """An executor on the folder that keeps its files: printing results twice gives them twice."""
    if name == "local":
        from oarfutures.backends.local import LocalPoolExecutor

        return LocalPoolExecutor(folder=folder, keep_files=True)
    if name == "slurm":
        from oarfutures.backends.slurm import SlurmPoolExecutor

        return SlurmPoolExecutor(folder=folder, keep_files=True)
    if name == "oar":
        from oarfutures.backends.oar import OarPoolExecutor

        return OarPoolExecutor(folder=folder, keep_files=True)
    raise CliError(f"batches of backend {name!r} cannot be re-attached by this version of oarfutures")


def cmd_results(args: argparse.Namespace) -> int:
    folder = open_folder(args.folder)
    unfinished = [r for r in records.load_all(folder) if not r.complete and os.path.exists(layout.functions_path(folder, r.batch))]
    names = sorted({r.backend for r in unfinished})
    if len(names) > 1:
        raise CliError(f"the unfinished batches of {folder} were submitted to several backends ({', '.join(names)}): "
                       "re-attach from Python, one executor per backend")
    if not unfinished:
        print("no unfinished batch to re-attach: the results of complete batches were delivered and removed", file=sys.stderr)
    items: List[Any] = []
    documents: List[Dict[str, Any]] = []
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    executor = make_executor(names[0], folder) if names else None
    try:
        futures = executor.attach() if executor is not None else []
        position: Dict[str, int] = {}
        for future in futures:
            call = position[future.task_id] = position.get(future.task_id, -1) + 1
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                error = future.exception(timeout)
            except cf.TimeoutError:
                raise CliError(f"timed out after {args.timeout:g} s waiting for task {future.task_id}") from None
            except cf.CancelledError as exc:
                error = exc
            if error is not None:
                name, message = _error_parts(error)
                items.append(error)
                documents.append({"task_id": future.task_id, "call": call, "ok": False, "type": name,
                                  "message": message, "traceback": _traceback_text(error)})
                if not args.json and not args.pickle:
                    first = message.splitlines()[0] if message else ""
                    print(f"ERROR {name}: {first}", flush=True)
                continue
            value = future.result()
            items.append(value)
            ok, jsonable = _jsonable(value)
            documents.append({"task_id": future.task_id, "call": call, "ok": True, "repr": repr(value),
                              **({"value": jsonable} if ok else {})})
            if not args.json and not args.pickle:
                print(repr(value), flush=True)
    finally:
        if executor is not None:
            # Cluster jobs outlive us and stay for the next attach: leave them alone (cancelling a future cancels
            # its job). Local workers are ours: stop them rather than wait for them at exit.
            local = names[0] == "local"
            if local:
                executor.backend.cancel(executor.live_job_ids())
            executor.shutdown(wait=False, cancel_futures=local)
    if args.pickle:
        with open(args.pickle, "wb") as f:
            pickle.dump([_picklable(item) for item in items], f)
        print(f"wrote {len(items)} result(s) to {args.pickle}", file=sys.stderr)
    if args.json:
        print(json.dumps(documents, indent=2))
    return 0


# ---------------------------------------------------------------------------------------------- entry point
def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m oarfutures",
        description="Inspect and manage an oarfutures job folder (the folder= of an executor).",
    )
    top.add_argument("-v", "--verbose", action="store_true", help="log what oarfutures does on stderr")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("status", help="a table of the folder's tasks and their states")
    p.add_argument("folder")
    p.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    p.add_argument("--all", action="store_true", help="list the tasks of complete batches too")
    p.add_argument("--watch", action="store_true", help="refresh until no task is queued or running (Ctrl-C stops)")
    p.add_argument("--interval", metavar="SECONDS", type=watch_seconds, default=5.0,
                   help="seconds between --watch refreshes (default 5, at least 1: each asks the schedulers)")
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("logs", help="stdout and stderr of a task, every run of it")
    p.add_argument("folder")
    p.add_argument("task", help="a task id, <batch>_<index> (the BATCH and TASK columns of status)")
    p.set_defaults(run=cmd_logs)

    p = sub.add_parser("cancel", help="cancel every queued or running job of the folder")
    p.add_argument("folder")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(run=cmd_cancel)

    p = sub.add_parser("clean", help="remove the task and result files of complete batches")
    p.add_argument("folder")
    p.add_argument("--logs", action="store_true", help="remove their logs, records and scripts too")
    p.add_argument("--all", action="store_true", help="unfinished batches too, after cancelling their jobs")
    p.add_argument("--older", metavar="DAYS", type=days,
                   help="only batches whose record was last written more than DAYS days ago (fractions allowed)")
    p.set_defaults(run=cmd_clean)

    p = sub.add_parser(
        "results",
        help="re-attach to the unfinished batches and print their results in order",
        description="Re-attach to the folder's unfinished batches (as executor.attach() does: tasks never submitted "
        "are submitted now, local tasks without a result run again) and print every call's result in order. The "
        "folder keeps its files: the results can be printed again.",
    )
    p.add_argument("folder")
    p.add_argument("--json", action="store_true", help="a JSON list (value when JSON can hold it, repr always)")
    p.add_argument("--pickle", metavar="OUT", help="pickle the list of results and exceptions to OUT")
    p.add_argument("--timeout", type=float, help="give up after this many seconds (exit status 1)")
    p.set_defaults(run=cmd_results)
    return top


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    logger = logging.getLogger("oarfutures")
    if args.verbose:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False  # nothing by default, not even warnings through logging's last resort
    try:
        return args.run(args)
    except CliError as exc:
        print(f"oarfutures: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("oarfutures: interrupted", file=sys.stderr)
        return 130
