"""Getting calls to the scheduler: batches written to the folder, submitted in waves under the running cap.

A batch (one ``map``, one ``batch()`` block, or ``submit`` calls gathered together, see ``gathering``) is written
once, then its tasks wait in a queue until ``max_workers`` leaves room; each contiguous run of them goes out as one
array (``backend.submit``). ``attach`` rebuilds the tasks of a folder's unfinished batches after a client died.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, Callable

from oarfutures.backends.base import BatchSubmission
from oarfutures.core import batchfiles, records
from oarfutures.core.futures import JobFuture, set_exception
from oarfutures.core.gathering import Gathering
from oarfutures.core.poller import get_poller
from oarfutures.core.tasks import Phase, Task, Wave, remove_file, settle_guarded
from oarfutures.core.tracking import TaskTracker
from oarfutures.errors import JobFailedError
from oarfutures.protocol import layout

logger = logging.getLogger("oarfutures")

_interpreter_exiting = False


def _refuse_new_work() -> None:
    global _interpreter_exiting
    _interpreter_exiting = True


# Like concurrent.futures' own pools: once the interpreter is exiting, submit() raises instead of queueing work
# that nothing would run. (threading._register_atexit hooks run before non-daemon threads are joined.)
threading._register_atexit(_refuse_new_work)  # type: ignore[attr-defined]


_gathering_executors: weakref.WeakSet[BatchSubmitter] = weakref.WeakSet()


def _gather_at_exit(executor: BatchSubmitter) -> None:
    """Calls gathered when the interpreter exits go out then, as ``ProcessPoolExecutor`` runs its queued work.

    Registered when the first window opens, so it runs before the local backends' drain (hooks run last first).
    """
    global _gathering_registered
    if not _gathering_registered:
        _gathering_registered = True
        threading._register_atexit(_submit_gathered_at_exit)  # type: ignore[attr-defined]
    _gathering_executors.add(executor)


_gathering_registered = False


def _submit_gathered_at_exit() -> None:
    for executor in list(_gathering_executors):
        for gathering in executor._gatherer.take_all():
            executor._submit_gathered(gathering)


class BatchSubmitter(TaskTracker):
    """Writes batches and submits their tasks in waves (see the module)."""

    def _submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict, options: dict[str, Any]) -> JobFuture:
        collected = getattr(self._collecting, "calls", None)
        self._check_open()
        if collected is not None:  # inside batch(): submitted with the others when the block ends
            future = JobFuture()
            collected.append((fn, args, kwargs, options, future))
            return future
        # the parameters as they are now: a call gathered before update_parameters() goes out with these
        options = {**self.backend.parameters, **options}
        if not self.backend.can_gather(options):
            return self._submit_batch([fn], [[(0, args, kwargs)]], options)[0]
        gathered = self._gatherer.gather(options, fn, args, kwargs)
        if gathered is not None:  # a submission with these options is in flight: this call goes out after it
            return gathered
        try:
            return self._submit_batch([fn], [[(0, args, kwargs)]], options)[0]
        finally:
            self._submission_ended(options)

    def _submission_ended(self, options: dict[str, Any], window_over: bool = False) -> None:
        """What was gathered behind a submission goes out next, on the service thread; with nothing gathered, a
        window stays open for the next ``submit`` of a loop, and when it is over the executor may close."""
        window = 0.0 if window_over else self.backend.gather_window()
        gathering = self._gatherer.ended(options, window_over=not window)
        if gathering is not None:
            self._service.run(self._submit_gathered_then_next, gathering)
        elif not window:
            self._close_if_idle()
        else:
            _gather_at_exit(self)  # at exit, what the window would have sent goes out then
            self._service.run_later(window, self._submission_ended, options, True)

    def _submit_gathered_then_next(self, gathering: Gathering) -> None:
        if gathering.pid != os.getpid():  # a forked child's copy of the service queue: the parent submits these
            return
        try:
            self._submit_gathered(gathering)
        finally:
            self._submission_ended(gathering.options)

    def _submit_gathered(self, gathering: Gathering) -> None:
        """Submit gathered calls as one batch; a refusal fails their futures, which were handed out."""
        try:
            kept = gathering.without_cancelled()
            if kept.futures:
                self._submit_batch(kept.functions, kept.tasks, kept.options, kept.futures, accepted=True)
        except BaseException as exc:
            for future in gathering.futures:
                if not future.cancelled():
                    settle_guarded(set_exception, future, exc)
        finally:
            self._gatherer.sent(gathering)

    # ------------------------------------------------------------------ submission
    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _submit_batch(
        self,
        functions: Sequence[Callable[..., Any]],
        tasks: Sequence[batchfiles.Task],
        options: dict,
        futures: list[JobFuture] | None = None,
        accepted: bool = False,
    ) -> list[JobFuture]:
        """Write and submit one batch; ``futures``, one per task, are the ones already handed out (batch(),
        gathered calls). ``accepted``: calls gathered before a shutdown, which go out all the same."""
        if not accepted:
            self._check_open()
        self.backend.expect_batch(self.python)
        batch = layout.new_batch_id()
        batchfiles.write_batch(self.folder, batch, functions, tasks, self.warn_pickle_bytes, self.max_resubmissions)
        checkpointable = any(batchfiles.is_checkpointable(f) for f in functions)
        calls_per_task = [batchfiles.calls_in(calls) for calls in tasks]
        record = records.BatchRecord(batch, self.backend.name, calls_per_task, checkpointable=checkpointable)
        if self.backend.job_ids_are_task_ids:  # known now: the record is saved once, not again after submit()
            record.set_job_ids({index: layout.task_id(batch, index) for index in range(len(tasks))})
        try:
            record.save(self.folder)
        except BaseException:
            batchfiles.remove_batch_files(self.folder, batch)
            raise
        new = [
            self._new_task(record, index, calls, options, futures[index : index + 1] if futures else None)
            for index, calls in enumerate(calls_per_task)
        ]
        with self._lock:
            shut_down = self._shutdown and not accepted  # by another thread meanwhile
            if not shut_down:
                self._register(record, new, new)
        if shut_down:
            self._forget_files(batch)
            raise RuntimeError("cannot schedule new futures after shutdown")
        self._submit_waiting(raise_for=batch)
        return [future for task in new for future in task.futures]

    def _new_task(
        self,
        record: records.BatchRecord,
        index: int,
        calls: int,
        options: dict,
        futures: list[JobFuture] | None = None,
    ) -> Task:
        futures = futures or [JobFuture() for _ in range(calls)]
        for future in futures:
            future.task_id = layout.task_id(record.batch, index)
            future._claim_for_cancel = self._claim_for_cancel
            future._on_cancel = self._on_future_cancelled
        return Task(record.batch, index, futures, options, record, record.checkpointable)

    def _register(self, record: records.BatchRecord, tasks: list[Task], waiting: list[Task]) -> None:
        """Make the batch's tasks live (lock held); ``waiting`` are the ones still to submit."""
        for task in tasks:
            self._tasks[task.task_id] = task
        self._batch_left[record.batch] = len(tasks)
        if waiting:
            self._waiting.append(collections.deque(waiting))
        if not self._watched:
            self._watched = True
            get_poller().watch(self)

    def attach(self) -> list[JobFuture]:
        """Futures for every call of the folder's unfinished batches, after the client that submitted them died.

        Results on disk resolve at once (delivered ones again too, so a map's results are all there, in order);
        jobs still queued or running are followed; a call is never run twice: tasks never submitted (or, locally,
        never started) are submitted now, and a local call whose worker died with its client fails. Processes
        take turns on the folder: a second ``attach()`` follows what the first submitted.
        """
        import filelock  # on first use: it costs ~35 ms to import, and only attach() takes the lock

        attached: list[JobFuture] = []
        with filelock.FileLock(layout.lock_path(self.folder)):
            for record in records.load_all(self.folder):
                futures = self._attach_batch(record)
                if futures:
                    attached += futures
            self._submit_waiting()
        get_poller().query_soon(self)
        return attached

    def _attach_batch(self, record: records.BatchRecord) -> list[JobFuture]:
        with self._lock:
            known = any(t.batch == record.batch for t in self._tasks.values())
        if record.complete or known:
            return []
        if record.backend != self.backend.name:
            logger.warning(
                "not attaching batch %s: it was submitted to %s, not %s",
                record.batch,
                record.backend,
                self.backend.name,
            )
            return []
        if not os.path.exists(layout.batch_path(self.folder, record.batch)):
            return []  # its files were cleaned up: nothing to attach to
        if not self.backend.jobs_outlive_client and record.client and records.client_alive(record.client):
            raise RuntimeError(f"batch {record.batch} of {self.folder} is followed by the live process {record.client}")
        record.client = records.client_name()
        tasks = [self._new_task(record, i, n, {}) for i, n in enumerate(record.calls)]
        waiting, followed, on_disk, lost = [], [], [], []
        for task in tasks:
            owner = layout.claim_owner(layout.claim_path(self.folder, task.batch, task.index))
            run = layout.parse_run_owner(owner)
            job_id = record.job_ids.get(task.index) or (run[0] if run else None)
            if layout.result_on_disk(self.folder, task.batch, task.index):
                on_disk.append(task)
            elif owner == layout.CANCELLED:
                for future in task.futures:
                    future.cancel()
            elif self.backend.jobs_outlive_client and job_id:
                followed.append((task, job_id))
            elif self.backend.jobs_outlive_client or owner is None:
                waiting.append(task)  # never submitted, or (locally) never started: it runs now, once
            else:
                lost.append((task, owner))  # started by a local worker that died with its client
        live = [t for t in tasks if not t.all_cancelled()]
        now = time.monotonic()
        with self._lock:
            if live:
                self._register(record, live, waiting)
            for task, job_id in followed:
                task.job_id, task.phase, task.submitted_at, task.wave = job_id, Phase.SUBMITTED, now, Wave(None, 1)
                self._waves.add(task.wave)
                self._by_job[job_id] = task
                for future in task.futures:
                    future.job_ids.append(job_id)
            for task in on_disk + [t for t, _ in lost]:
                task.settling = True
        if not live:
            self._finish_batch(record, "done")
            return [future for task in tasks for future in task.futures]
        self._save(record)
        for task in on_disk:
            self._service.run(self._deliver, task)
        for task, owner in lost:
            reason = f"its worker ({owner}) died with the client that started it; a call is never run twice"
            self._service.run(self._settle_failure, task, JobFailedError(task.task_id, None, "LOST", reason=reason))
        return [future for task in tasks for future in task.futures]

    def _submit_waiting(self, raise_for: str | None = None) -> None:
        """Submit queued tasks as arrays, as many as the running cap leaves room for (all when uncapped).

        A wave the scheduler refuses fails its futures, or, when it belongs to ``raise_for`` (the batch the
        caller is submitting), is forgotten with its files and the error raised. Futures settle after the
        submission lock is released (their callbacks may submit).
        """
        refused: list[tuple[list[Task], BaseException]] = []
        try:
            with self._submit_lock:
                while True:
                    with self._lock:
                        wave, limit = self._next_wave()
                    if not wave:
                        break
                    try:
                        self._submit_wave(wave, limit)
                    except BaseException as exc:  # sorted out below: raised or settled
                        if wave[0].batch == raise_for:
                            self._forget_batch(raise_for)
                            raise
                        refused.append((wave, exc))
        finally:
            for wave, error in refused:
                for task in wave:
                    self._settle_failure(task, error)
            self._tidy_finished()
        if self._cancelled:  # cancelled while their wave was being submitted
            self._service.run(self._process_cancellations)

    def _next_wave(self) -> tuple[list[Task], int | None]:
        """Take the next contiguous run of waiting tasks of one batch that fits under the cap (lock held).

        Returns the tasks and the running cap to give the scheduler for them (Slurm's ``%N``), if any.
        """
        while self._waiting and not self._waiting[0]:
            self._waiting.popleft()
        if not self._waiting:
            return [], None
        queue = self._waiting[0]
        room, limit = len(queue), None
        if self._throttle is not None and not self.backend.caps_all_jobs:
            free = self._throttle - sum(w.slots() for w in self._waves)
            if free <= 0:
                return [], None
            if self.backend.throttles:
                limit = free  # the whole run goes, the scheduler keeps it to what is free
            else:
                room = free
        wave: list[Task] = []
        while queue and len(wave) < room:
            task = queue.popleft()
            if task.all_cancelled():
                self._retire_locked(task)
                continue
            if wave and task.index != wave[-1].index + 1:
                queue.appendleft(task)
                break
            task.phase = Phase.SUBMITTING
            wave.append(task)
        if not wave:
            return self._next_wave()
        limit = limit if limit is not None and limit < len(wave) else None
        group = Wave(limit, len(wave))
        self._waves.add(group)
        for task in wave:
            task.wave = group
        return wave, limit

    def _submit_wave(self, wave: list[Task], limit: int | None) -> None:
        first = wave[0]
        for task in wave:  # calls cancelled before submission, in a task whose other calls go: claim them
            for future in task.withdrawn:
                layout.claim(
                    layout.claim_path(self.folder, task.batch, task.index, task.futures.index(future)), layout.CANCELLED
                )
        submission = BatchSubmission(
            batch=first.batch,
            first=first.index,
            count=len(wave),
            folder=self.folder,
            python=self.python,
            max_running=limit,
            options=first.options,
            checkpointable=first.checkpointable,
        )
        job_ids = self.backend.submit(submission)
        now = time.monotonic()
        orphans = []
        with self._lock:
            for task, job_id in zip(wave, job_ids):
                if task.settling or self._tasks.get(task.task_id) is not task:
                    orphans.append(job_id)  # aborted while it was being submitted: nothing follows it
                    continue
                task.job_id, task.submitted_at, task.phase = job_id, now, Phase.SUBMITTED
                self._by_job[job_id] = task
                for future in task.futures:
                    future.job_ids.append(job_id)
                if task.all_cancelled():
                    self._cancelled.add(task)
        if first.record.set_job_ids({task.index: job_id for task, job_id in zip(wave, job_ids)}):
            self._save(first.record)
        if orphans:
            self.backend.cancel(orphans)
        get_poller().query_soon(self)
        logger.info("submitted %d task(s) of batch %s as %s..%s", len(wave), first.batch, job_ids[0], job_ids[-1])

    def _forget_batch(self, batch: str) -> None:
        """Undo a batch the scheduler refused: nothing of it runs, its files go."""
        with self._lock:
            for task in [t for t in self._tasks.values() if t.batch == batch]:
                self._tasks.pop(task.task_id)
                self._by_job.pop(task.job_id or "", None)
                if task.wave is not None:
                    self._waves.discard(task.wave)
            self._waiting = collections.deque(q for q in self._waiting if not q or q[0].batch != batch)
            self._batch_left.pop(batch, None)
        self._forget_files(batch)

    def _forget_files(self, batch: str) -> None:
        batchfiles.remove_batch_files(self.folder, batch)
        remove_file(layout.record_path(self.folder, batch))
