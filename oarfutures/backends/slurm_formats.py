"""Slurm's text, read and written without running anything: states, ``sacct``/``squeue`` rows, array task lists, times.

``SlurmBackend`` runs the commands; everything here is a pure function of their text, so it is tested without a
cluster (tests/unit/test_slurm_parsing.py) on outputs the real Slurm printed. ``sacct`` and ``squeue`` print an
array's pending tasks as one collapsed row (``123_[5-999%4]``); ``statuses`` expands it, and the tasks of a
collapsed row share one ``JobStatus``. ``ranges`` collapses task ids the other way, for ``scancel``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from oarfutures.backends.base import JobState, JobStatus

#: the common state of each Slurm state word (the first of ``CANCELLED by 0``); a word not here counts as pending
STATES = {
    "PENDING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
    "PREEMPTED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "REVOKED": JobState.CANCELLED,
    "CANCELLED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
}

#: one JobStatus per distinct answer, shared by every task (and query) that has it: a queue that did not move
#: gives the core the very objects it saw last time, and costs no object per task
_STATUS_CACHE: dict[tuple[str, str | None, str], JobStatus] = {}


def _status(state: str, exit_code: str | None, reason: str) -> JobStatus:
    key = (state, exit_code, reason)
    status = _STATUS_CACHE.get(key)
    if status is None:
        word = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0"
        common = STATES.get(word, JobState.PENDING)
        status = JobStatus(common, state, exit_code, "" if reason in ("None", "(null)") else reason)
        if len(_STATUS_CACHE) >= 10_000:  # reasons and exit codes are few; never grow without bound
            _STATUS_CACHE.clear()
        _STATUS_CACHE[key] = status
    return status


def sacct_rows(out: str) -> Iterable[tuple[str, JobStatus]]:
    for row in out.splitlines():
        fields = row.split("|")
        if len(fields) < 3:
            continue
        reason = fields[3] if len(fields) > 3 else ""
        yield fields[0], _status(fields[1], fields[2], reason)


def squeue_rows(out: str) -> Iterable[tuple[str, JobStatus]]:
    for row in out.splitlines():
        fields = [field.strip() for field in row.split("|")]
        if len(fields) >= 4:
            status = int(fields[3]) if fields[3].isdigit() else None  # a raw wait status: say it as sacct does
            exit_code = None if status is None else f"{status >> 8}:{status & 0x7F}"
            yield fields[0], _status(fields[1], exit_code, fields[2])


class Answer(dict):
    """A query's answer: a plain dict (job id -> status) that can be referred to weakly, and knows the rows it was
    read from (``rows``: one per job, task or collapsed array of tasks), so that the jobs whose status may have
    changed since another answer are found from the few rows that differ (``changed_ids``), not from every job."""

    __slots__ = ("__weakref__", "rows")

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, JobStatus] | None = None

    def changed_ids(self, previous: object) -> list[str] | None:
        """The job ids whose status may differ from ``previous``'s (an answer of the same query): every job of a
        row that is new, gone or of another status. None if that cannot be told (look at every job)."""
        rows, old = self.rows, getattr(previous, "rows", None)
        if rows is None or old is None:
            return None
        specs = [spec for spec, status in rows.items() if old.get(spec) is not status]
        specs += [spec for spec in old if spec not in rows]
        ids: list[str] = []
        try:
            for spec in specs:
                ids += expand(spec)
        except ValueError:
            return None
        return ids


def statuses(rows: Iterable[tuple[str, JobStatus]]) -> tuple[Answer, set[str]]:
    """job id -> status from squeue/sacct rows, and the arrays whose collapsed row was cut short.

    A collapsed row (``12_[4-6,9%2]``) gives its one status to each of its tasks; rows of single jobs or tasks
    come last, so a task's own row wins over a collapsed row that still lists it (sacct lags behind slurmctld).
    """
    statuses = Answer()
    statuses.rows = read = {}
    own = []
    cut: set[str] = set()
    for job, status in rows:
        read[job] = status
        if not job.endswith("]") and "_[" not in job:
            own.append((job, status))
            continue
        try:
            statuses.update(dict.fromkeys(expand(job), status))
        except ValueError:
            cut.add(job.partition("_")[0])
    statuses.update(own)
    return statuses, cut


def expand(job: str) -> Iterable[str]:
    """'12_3' -> ['12_3']; '12_[4-6,9%2]' (pending tasks, collapsed) -> [12_4, 12_5, 12_6, 12_9];
    '12_[0-198:2]' (every other task) -> 12_0, 12_2, ... 12_198. ValueError if the list was cut short
    (``12_[0-2,4-5,`` or ``12_[0-2,4...]``)."""
    array, _, spec = job.partition("_")
    if not spec.startswith("["):
        return [job]
    if not spec.endswith("]") or "..." in spec:
        raise ValueError(f"task list cut short: {job}")
    prefix = array + "_"
    ids: list[str] = []
    for part in spec[1:-1].split("%")[0].split(","):
        if not part:
            continue
        span, _, step = part.partition(":")
        low, _, high = span.partition("-")
        # C-level iteration: a 100,000-task row costs no Python bytecode per task
        ids += map(prefix.__add__, map(str, range(int(low), int(high or low) + 1, int(step or 1))))
    return ids


#: scancel refuses a range of more tasks ("_parse_single_range: Too many hosts in range `0-99999'"): 0-65535 passes
MAX_SPAN = 65536


def ranges(job_ids: Sequence[str]) -> list[str]:
    """['7_0', '7_1', '7_2', '7_5', '9'] -> ['9', '7_[0-2,5]']; spans of at most MAX_SPAN tasks."""
    tasks: dict[str, list[int]] = {}
    plain = []
    for job_id in job_ids:
        array, _, task = job_id.partition("_")
        if task.isdigit():
            tasks.setdefault(array, []).append(int(task))
        else:
            plain.append(job_id)
    for array, indices in tasks.items():
        indices.sort()
        spans, start = [], indices[0]
        for previous, current in zip(indices, indices[1:]):
            if current != previous + 1 or previous - start + 1 >= MAX_SPAN:
                spans.append(f"{start}-{previous}" if previous != start else str(start))
                start = current
        spans.append(f"{start}-{indices[-1]}" if indices[-1] != start else str(start))
        plain.append(f"{array}_[{','.join(spans)}]")
    return plain


def parse_slurm_time(text: str) -> int | None:
    """Seconds of a Slurm time: "MM", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS"; None if unreadable."""
    found = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not found:
        return None
    days, first, second, third = found.groups()
    a, b, c = int(first), int(second or 0), int(third or 0)
    if days:  # D-HH[:MM[:SS]]
        return int(days) * 86400 + a * 3600 + b * 60 + c
    if third:  # HH:MM:SS
        return a * 3600 + b * 60 + c
    return a * 60 + b  # MM[:SS]


def slurm_time(seconds: int) -> str:
    minutes = -(-seconds // 60)  # Slurm counts whole minutes
    return f"{minutes // 1440}-{minutes % 1440 // 60:02d}:{minutes % 60:02d}:00"
