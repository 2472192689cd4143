"""The executor's table of live tasks: what a task is, the state every layer of ``JobExecutor`` shares, and how a
task leaves the table (retired, its batch tidied once every task of it is done).

``JobExecutor`` is built in layers on this one (see ``executor``). Lock order: see ``executor``.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from oarfutures.backends.base import Backend, JobState, JobStatus
from oarfutures.core import batchfiles, records
from oarfutures.core.futures import JobFuture
from oarfutures.core.gathering import Gatherer
from oarfutures.core.service import ServiceThread
from oarfutures.core.settings import CoreSettings
from oarfutures.protocol import layout

logger = logging.getLogger("oarfutures")
logger.addHandler(logging.NullHandler())  # a library prints nothing unless its user configures logging

LOG_TAIL_BYTES = 2000
LEFTOVERS = "leftover job(s) (their tasks were stolen)"  # the own jobs of stolen tasks, as the logs name them


class Phase(enum.Enum):
    WAITING = "waiting"  # in our queue (the running cap leaves no room yet)
    SUBMITTING = "submitting"  # its wave is being handed to the scheduler
    SUBMITTED = "submitted"


@dataclass(eq=False)
class Wave:
    """Tasks submitted together; they hold slots of ``max_workers`` until they end.

    With a scheduler cap of its own (Slurm's ``%N``) a wave holds at most ``limit`` slots whatever its size.
    """

    limit: int | None
    unfinished: int

    def slots(self) -> int:
        return self.unfinished if self.limit is None else min(self.limit, self.unfinished)


class JobIndex(dict[str, "Task"]):
    """Live submitted tasks by their current job id: a dict that counts its changes (``version``), so that the
    poller's steady questions (which jobs to ask about; is this answer already applied to these very jobs?) cost
    nothing per job while nothing is submitted, retired or followed. Every way of changing it counts."""

    __slots__ = ("version",)

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def changed(self) -> None:
        """Something the index does not see changed a task's job id (a stolen task): count it too."""
        self.version += 1

    def __setitem__(self, key: str, value: Task) -> None:
        super().__setitem__(key, value)
        self.version += 1

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.version += 1

    def pop(self, *args: Any) -> Any:
        self.version += 1
        return super().pop(*args)

    def popitem(self) -> tuple[str, Task]:
        self.version += 1
        return super().popitem()

    def setdefault(self, *args: Any) -> Any:
        self.version += 1
        return super().setdefault(*args)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.version += 1
        super().update(*args, **kwargs)

    def clear(self) -> None:
        self.version += 1
        super().clear()

    def __ior__(self, other: Any) -> JobIndex:  # type: ignore[override,misc]
        self.update(other)
        return self


@dataclass(eq=False)
class Task:
    """One array element: its calls' futures and the job that runs it."""

    batch: str
    index: int
    futures: list[JobFuture]
    options: dict[str, object]
    record: records.BatchRecord
    checkpointable: bool = False
    job_id: str | None = None
    phase: Phase = Phase.WAITING
    wave: Wave | None = None
    settling: bool = False  # one path (result, failure, cancellation, abort) has taken it: others keep off
    aborting: bool = False  # taken by abort(): its futures may still be cancelled
    withdrawn: set[JobFuture] = field(default_factory=set)  # cancelled before submission
    submitted_at: float = 0.0
    ended_since: float | None = None  # when the backend first said the job is over (result not seen yet)
    last_status: JobStatus | None = None
    running: bool = False
    vanished: bool = False  # the scheduler stopped reporting the job (purged, or never seen)
    own_job_id: str | None = None  # set when another job of its array stole it: the job it was submitted as ("": none)

    @property
    def task_id(self) -> str:
        return layout.task_id(self.batch, self.index)

    def all_cancelled(self) -> bool:
        return all(f in self.withdrawn or f.cancelled() for f in self.futures)


class TaskTable:
    """The live tasks of one executor and their bookkeeping; the base of ``JobExecutor`` (see the module)."""

    def __init__(self, backend: Backend, settings: CoreSettings) -> None:
        self.backend = backend
        self._throttle = settings.max_workers
        self.python = settings.python
        self.result_grace = settings.result_grace
        self.folder = settings.folder
        layout.make_folder(self.folder)  # after every check (CoreSettings, the backend's): a refusal leaves no folder
        self.keep_files = settings.keep_files
        self.warn_pickle_bytes = settings.warn_pickle_bytes
        self.max_resubmissions = settings.max_resubmissions
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()  # one wave at a time, so the running cap is counted right
        self._tidy_lock = threading.Lock()  # taken before _lock: finished batches are being tidied
        self._callbacks = ServiceThread(f"oarfutures-callbacks-{backend.name}")
        self._service = ServiceThread(f"oarfutures-service-{backend.name}", self._run_callbacks)
        self._tasks: dict[str, Task] = {}
        self._waiting: collections.deque[collections.deque[Task]] = (
            collections.deque()
        )  # per batch, tasks not submitted yet
        self._waves: set[Wave] = set()
        self._batch_left: dict[str, int] = {}
        self._by_job = JobIndex()  # live submitted tasks by their current job id
        # the last answer apply_states found nothing left to do with, and the version of _by_job it had then
        self._settled_answer: tuple[Mapping[str, JobStatus], int] | None = None
        self._live_ids: tuple[int, tuple[str, ...]] | None = None  # live_job_ids' list, and the version it is of
        self._stolen: dict[str, Task] = {}  # stolen tasks by the job that stole them (their key in _by_job: their own)
        self._collecting = threading.local()  # the calls of an open batch() block, per thread
        self._gatherer = Gatherer()  # submit() calls waiting for a submission with the same options to end
        self._cancelled: set[Task] = set()  # tasks whose futures were all cancelled: their jobs go
        #: futures to cancel, asked for by a garbage collection (see _cancel_soon)
        self._cancel_after_collection: collections.deque[list[JobFuture]] = collections.deque()
        self._ended: set[Task] = set()  # tasks whose job is over while their result is not in yet
        self._failed_ids: dict[str, float] = {}  # task ids failed for lack of a result: a late one is put away
        self._leftovers: dict[str, list[str]] = {}  # per batch, the own jobs of stolen tasks, not cancelled yet
        self._leftover_cancel_due = False  # a cancel of the leftovers noticed so far waits on the service thread
        self._last_leftover_cancel = -math.inf  # (monotonic): at most one per longest query interval
        self._watched = False
        self._broken = False  # its folder is gone: every future failed
        self._finished_batches: list[tuple[records.BatchRecord, str]] = []  # to tidy, outside the lock
        self._shutdown = False
        self._closed = False
        self._closed_event = threading.Event()

    def _after_fork_in_child(self) -> None:
        """The parent's other threads are gone in a forked child: a lock they held would stay held forever.
        (Taking the locks around every fork instead would serialise every local worker's start.)"""
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._tidy_lock = threading.Lock()
        self._callbacks = self._callbacks.copy_for_child()
        self._service = self._service.copy_for_child()
        # the parent submits what it gathered; the child's copy must not go out a second time
        self._gatherer = Gatherer()

    def _submit_waiting(self, raise_for: str | None = None) -> None:
        """Submit what waits for room under the running cap (``submitting.BatchSubmitter``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ bookkeeping
    def _retire(self, task: Task, how: str = "done") -> None:
        """Forget a settled task; tidy its batch once every task is done. Never raises: futures are settled."""
        with self._lock:
            self._retire_locked(task, how)
        self._after_retire()

    def _retire_locked(self, task: Task, how: str = "done") -> None:
        """Forget a task (lock held). ``how`` the batch ends if this was its last task: "done" (every result
        delivered), "aborted" (nothing more will run) or "uncertain" (jobs may still run: keep it attachable)."""
        if self._tasks.get(task.task_id) is not task:
            return
        del self._tasks[task.task_id]
        task.settling = True
        # saved with the batch: `oarfutures status` shows it once the result files are gone
        killed = task.last_status is not None and task.last_status.state is JobState.CANCELLED
        task.record.note_outcome(task.index, task.futures, job_cancelled=killed)
        if self._by_job.get(task.job_id or "") is task:
            del self._by_job[task.job_id or ""]
        self._ended.discard(task)
        if task.wave is not None:
            task.wave.unfinished -= 1
            if task.wave.unfinished <= 0:
                self._waves.discard(task.wave)
        self._batch_left[task.batch] -= 1
        if not self._batch_left[task.batch]:
            del self._batch_left[task.batch]
            self._finished_batches.append((task.record, how))

    def _after_retire(self) -> None:
        """Tidy finished batches; submit the next wave if room freed up; close the backend once shut down and idle."""
        self._tidy_finished()
        with self._lock:
            more = any(self._waiting)
        if more:
            self._service.hand(self._submit_waiting)
        self._close_if_idle()

    def _cancel_soon(self, futures: list[JobFuture]) -> None:
        """Cancel these futures soon: the poller's next scan hands them to the service thread. For a finalizer run
        by the garbage collector, which may run in a thread that holds any of our locks: it takes none (a deque's
        append is atomic)."""
        self._cancel_after_collection.append(futures)

    def _run_callbacks(self, invoke: Callable[[], None]) -> None:
        """Run the callbacks of a future that one of our threads settled (``invoke`` runs them) on the callbacks
        thread, never where futures are settled: a callback that blocks, or waits for this executor's calls, must
        not stop their results. (A method, not the thread's own: a forked child replaces the thread.)"""
        self._callbacks.hand(invoke)

    def _tidy_finished(self) -> None:
        with self._tidy_lock:  # held until tidied: shutdown(wait=True) returns only after that
            with self._lock:
                finished, self._finished_batches = self._finished_batches, []
            for record, how in finished:
                self._finish_batch(record, how)

    def _finish_batch(self, record: records.BatchRecord, how: str) -> None:
        self._cancel_leftovers(record.batch)
        record.note_cancelled_claims(self.folder)  # before the claims go: `oarfutures status` shows it
        # kept files keep a delivered batch attachable (the command line's `results` relies on it)
        if how == "uncertain":
            return
        if how == "done" and self.keep_files:
            record.client = ""  # no longer followed by anyone: another process may attach to it
            self._save(record)
            return
        try:
            if not self.keep_files:
                batchfiles.remove_batch_files(self.folder, record.batch, len(record.calls), record.checkpointable)
                if self.backend.leaves_empty_logs:
                    self._remove_empty_logs(record)
            record.complete = True
            record.save(self.folder)
        except OSError as exc:
            logger.warning("oarfutures: tidying batch %s failed: %s", record.batch, exc)

    def _remove_empty_logs(self, record: records.BatchRecord) -> None:
        """A scheduler creates both log files of every job, and most stay empty: a map of 100,000 quiet calls
        would leave 200,000 empty files. The logs that hold output are kept."""
        for job_id in record.job_ids.values():
            for path in self.backend.log_paths(job_id):
                try:
                    if os.path.getsize(path) == 0:
                        os.remove(path)
                except OSError:  # not there (a job that never started)
                    pass

    def _save(self, record: records.BatchRecord) -> None:
        try:
            record.save(self.folder)
        except OSError as exc:  # the record only serves re-attaching: say so, lose nothing else
            logger.warning("oarfutures: saving the record of batch %s failed: %s", record.batch, exc)

    def _close_if_idle(self) -> None:
        with self._tidy_lock, self._lock:
            idle = self._shutdown and not self._tasks and not self._finished_batches and not self._closed
            idle = idle and not self._gatherer.busy()
            if idle:
                self._closed = True
        if idle:
            self.backend.close()
            self._closed_event.set()

    def _log_tail(self, job_id: str | None) -> str:
        parts = []
        for path in self.backend.log_paths(job_id) if job_id else []:
            try:
                with open(path, "rb") as f:
                    f.seek(max(0, os.path.getsize(path) - LOG_TAIL_BYTES))
                    text = f.read().decode(errors="replace").strip()
            except OSError:
                continue
            if text:
                parts.append(f"[{os.path.basename(path)}]\n{text}")
        return "\n".join(parts)

    def _note_leftover(self, batch: str, job_id: str) -> None:
        """The own job of a task another job stole (lock held): nothing is left for it to run. Stealers take the
        tasks the scheduler would start last, but a long call can keep a batch open while a stealer that is done
        frees its place: its array's leftovers would then start one by one, each only to exit. So they are
        cancelled as they are noticed, not when the batch ends: the first at once, then in one command per longest
        query interval at most (Slurm: 5 s; 1,000 calls of 1 s then need 14 commands instead of 62 at 1 s, with
        no more leftovers started)."""
        self._leftovers.setdefault(batch, []).append(job_id)
        if self._leftover_cancel_due:
            return
        self._leftover_cancel_due = True
        due_in = self._last_leftover_cancel + self.backend.query_interval[1] - time.monotonic()
        try:
            self._service.run_later(max(0.0, due_in), self._cancel_noticed_leftovers)
        except RuntimeError:  # no new thread at interpreter shutdown: their batch's end cancels them
            self._leftover_cancel_due = False

    def _cancel_noticed_leftovers(self) -> None:
        with self._lock:
            self._leftover_cancel_due = False
            self._last_leftover_cancel = time.monotonic()
            leftovers, self._leftovers = self._leftovers, {}
        self._cancel_jobs([job_id for job_ids in leftovers.values() for job_id in job_ids], LEFTOVERS)

    def _cancel_leftovers(self, batch: str) -> None:
        """Every task of the batch is settled: the leftovers not cancelled yet go now, in one command."""
        with self._lock:
            leftovers = self._leftovers.pop(batch, [])
            if leftovers:
                self._last_leftover_cancel = time.monotonic()
        self._cancel_jobs(leftovers, LEFTOVERS)

    def _cancel_jobs(self, job_ids: list[str], what: str = "job(s)") -> None:
        """One cancel for all (Slurm: ranges of each array). A failure is logged, not raised: their calls are
        claimed, so at worst the jobs start and exit at once."""
        if not job_ids:
            return
        try:
            self.backend.cancel(job_ids)
            logger.info("cancelled %d %s", len(job_ids), what)
        except Exception as exc:
            logger.warning("oarfutures: cancelling %d %s failed: %s", len(job_ids), what, exc)


def settle_guarded(settle: Callable[[JobFuture, Any], None], future: JobFuture, value: Any) -> None:
    """Settle one future; whatever its callbacks raise, the next future is still settled."""
    try:
        settle(future, value)
    except BaseException:  # e.g. a callback raising SystemExit
        logger.exception("oarfutures: a callback of future %s raised", future.task_id)


def remove_file(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
