"""The state of each task of a folder, from its files first and then one query per scheduler: the rows that
``status``, ``cancel`` and ``clean`` act on."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from oarfutures.backends.base import JobInspector, JobState, JobStatus
from oarfutures.cli.folder import mtime, result_files, stolen_tasks
from oarfutures.cli.inspectors import FolderInspectors
from oarfutures.cli.resultfile import result_errors
from oarfutures.core import records
from oarfutures.protocol import layout

#: what ``status`` calls a task, in the order its summary counts them (the scheduler's own word is its native state)
TASK_STATES = ("done", "failed", "cancelled", "running", "pending", "ended-without-result", "unknown")
#: a job the scheduler does not know is "not visible yet" for this long after its record was last written
VISIBILITY_GRACE = 15.0


@dataclass
class TaskRow:
    record: records.BatchRecord
    index: int
    job_id: str | None = None
    state: str = "pending"
    native: str = ""
    detail: str = ""
    runtime: float | None = None
    started: float | None = None  # when the run that wrote the result began (older results do not say)
    result: str | None = None  # the result file, if there is one
    status: JobStatus | None = None  # what the scheduler said

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

    def as_json(self) -> dict[str, Any]:
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


def estimate_runtime(inspectors: FolderInspectors, row: TaskRow, now: float) -> float | None:
    """Seconds the latest run took (or has taken so far), from file times: no scheduler call.

    A result says when its run began, and its file's mtime is the end. Without one: a cluster job's log files
    are created when it starts and the worker seldom writes to both, so the older of their mtimes approximates
    the start; a local call has log files only if it printed, but its claim is linked as it starts. For a job
    still running the end is now.
    """
    if row.job_id is None:
        return None
    if row.started is not None and row.result is not None:
        end = mtime(row.result)
        return None if end is None else max(0.0, end - row.started)
    logs = [t for t in (mtime(p) for p in inspectors.log_paths(row.record.backend, row.job_id)) if t is not None]
    if not logs:
        claimed = layout.claim_time(layout.claim_path(inspectors.folder, row.batch, row.index))
        if claimed is None:
            return None
        logs = [claimed]
    start = min(logs)
    if row.result is not None:
        end = mtime(row.result)
    elif row.state == "running":
        end = now
    else:  # over without a result: its last write to a log is all there is, if it wrote after starting
        end = max(logs) if max(logs) > start + 1.0 else None
    return None if end is None else max(0.0, end - start)


def task_rows(folder: str, inspectors: FolderInspectors, batches: Sequence[records.BatchRecord]) -> list[TaskRow]:
    """The state of every task of these (unfinished) batches: result files first, then one query per scheduler.
    A stolen task's state is its stealer's (its own job has nothing to run)."""
    results = result_files(folder)
    stolen = stolen_tasks(folder)
    rows: list[TaskRow] = []
    for record in batches:
        for index in range(len(record.calls)):
            task = layout.task_id(record.batch, index)
            row = TaskRow(record, index, stolen.get(task) or record.job_ids.get(index))
            row.result = results.get(row.task_id)
            if row.result is not None:
                classify_result(row)
            rows.append(row)
    query_schedulers(folder, inspectors, [r for r in rows if r.result is None])
    late = result_files(folder)  # a job may have written its result while we asked the scheduler
    now = time.time()
    for row in rows:
        if row.result is None and row.state != "running" and late.get(row.task_id):
            row.result = late[row.task_id]
            classify_result(row)
        if row.result is None and row.state != "running":
            note_cancelled(folder, row)
        row.runtime = estimate_runtime(inspectors, row, now)
    return rows


def note_cancelled(folder: str, row: TaskRow) -> None:
    """A task without a result whose claim a ``cancel()`` took will never run: it is cancelled, whatever its job
    still does (it exits at once when it starts)."""
    if layout.claim_owner(layout.claim_path(folder, row.batch, row.index)) == layout.CANCELLED:
        row.state, row.detail = "cancelled", "cancelled: it never runs"


def classify_result(row: TaskRow) -> None:
    try:
        calls, errors, row.started = result_errors(row.result)  # type: ignore[arg-type]
    except FileNotFoundError:  # delivered and removed meanwhile by a client: it was there, so it is done
        row.state, row.detail = "done", ""
        return
    if errors:
        row.state = "failed"
        failed = f"{len(errors)}/{max(calls, len(errors))} calls failed, first: {errors[0]}"
        row.detail = errors[0] if len(errors) == 1 else failed
    else:
        row.state, row.detail = "done", ""


def query_schedulers(folder: str, inspectors: FolderInspectors, rows: Sequence[TaskRow]) -> None:
    """Set the state of tasks without a result: one query per scheduler for all of them (plus one per level of
    resubmissions to follow, batched too)."""
    by_scheduler: dict[str, list[TaskRow]] = {}
    for row in rows:
        if row.job_id is None:
            row.state, row.native = "pending", "not submitted"
            row.detail = "not submitted yet (a live client submits it when earlier tasks end)"
        else:
            by_scheduler.setdefault(row.record.backend, []).append(row)
    now = time.time()
    for name, group in by_scheduler.items():
        inspector = inspectors.get(name)
        if inspector is None:
            for row in group:
                row.state, row.detail = "unknown", f"no backend named {name!r} in this version of oarfutures"
            continue
        try:
            statuses = _query_following(inspector, [r.job_id for r in group])  # type: ignore[misc]
        except Exception as exc:  # the scheduler is down, a command is missing: say so, show the rest
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"oarfutures: cannot query {name}: {message}", file=sys.stderr)
            for row in group:
                row.state, row.detail = "unknown", f"{name} could not be queried: {message}"
            continue
        record_times: dict[str, float | None] = {}
        for row in group:
            latest, status = statuses.get(row.job_id, (row.job_id, None))  # type: ignore[arg-type]
            row.job_id, row.status = latest, status  # only a listed job is live: cancel() can reach it
            if status is None:
                status = inspector.unlisted_status(row.batch, row.index)
            if status is not None:
                show_status(row, status)
                continue
            # unknown to the scheduler: purged, or not visible yet just after submission
            path = layout.record_path(folder, row.batch)
            if path not in record_times:
                record_times[path] = mtime(path)
            written = record_times[path]
            if written is not None and now - written < VISIBILITY_GRACE:
                row.state, row.detail = "pending", "just submitted, not visible to the scheduler yet"
            else:
                row.state, row.detail = "ended-without-result", "the scheduler no longer knows the job"


def show_status(row: TaskRow, status: JobStatus) -> None:
    """The row's state, native state and detail, from what the scheduler (or the folder) says of its job."""
    row.native = status.native_state
    if status.state is JobState.PENDING:
        row.state = "pending"
        row.detail = status.reason
    elif status.state is JobState.RUNNING:
        row.state = "running"
    else:
        row.state = "ended-without-result"
        row.detail = _ended_detail(status)


def _query_following(inspector: JobInspector, job_ids: list[str]) -> dict[str, tuple[str, JobStatus | None]]:
    """job id -> (latest job id, its status): follows resubmissions under new ids (``JobStatus.follow_up``), one
    batched query per level."""
    answer: dict[str, tuple[str, JobStatus | None]] = {}
    current = {j: j for j in job_ids}  # original -> job id to ask about
    for _ in range(20):
        if not current:
            break
        statuses = inspector.query(sorted(set(current.values())))
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
