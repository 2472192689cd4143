"""Following tasks once submitted: the poller's reports (result files, job states) become settled futures.

The poller thread calls ``poll_files``, ``live_job_ids``, ``apply_states``, ``on_poll_error`` and
``release_if_idle`` (``poller.Tracked``); they only note what happened and hand the blocking work (reading a
result, running the callbacks, cancelling jobs) to the executor's service thread. Cancellation lives here too:
``future.cancel()`` competes with the worker for the call's claim, and a task whose calls were all cancelled has
its job cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping

from oarfutures.backends.base import JobState, JobStatus
from oarfutures.core.futures import JobFuture, callbacks_run_by, cancel_all, mark_running, set_exception, set_result
from oarfutures.core.poller import Poller, get_poller
from oarfutures.core.tasks import Phase, Task, TaskTable, remove_file, settle_guarded
from oarfutures.errors import JobFailedError
from oarfutures.protocol import layout, results

logger = logging.getLogger("oarfutures")

UNSEEN_GRACE = 60.0  # seconds a just-submitted job may stay invisible to the scheduler's queries
FAILED_JOB_GRACE = 5.0  # a job that failed wrote no result as a rule: its future fails after at most this
LATE_RESULT_WATCH = 300.0  # seconds an executor keeps watching for the result of a task that failed without one
ENDED_STATES = tuple(state for state in JobState if state.ended)


class TaskTracker(TaskTable):
    """Settles the futures of submitted tasks from what the poller sees (see the module)."""

    # ------------------------------------------------------------------ called by the poller thread
    def poll_files(self, now: float) -> bool:
        """One directory scan: hand every live task whose result file is there to the service thread; then
        fail the tasks whose job has been over for their grace period without a result. First, the cancels a
        garbage collection asked for (``_cancel_soon``) go to the service thread too."""
        while self._cancel_after_collection:
            self._service.run(cancel_all, self._cancel_after_collection.popleft())
        results_dir = os.path.join(self.folder, layout.RESULTS)
        with os.scandir(results_dir) as entries:
            listed = [e.name for e in entries]
        names = [n[: -len(layout.RESULT_SUFFIX)] for n in listed if n.endswith(layout.RESULT_SUFFIX)]
        self._note_stolen([m for m in map(layout.parse_stolen_marker, listed) if m])
        found, late = [], []
        with self._lock:
            for name in names:
                task = self._tasks.get(name)
                if task is not None and not task.settling:
                    task.settling = True
                    found.append(task)
                elif name in self._failed_ids:
                    late.append(name)
        for task in found:
            self._service.run(self._deliver, task)
        for name in late:
            self._put_away_late_result(name)
        self._fail_overdue(now)
        return bool(found)

    def _fail_overdue(self, now: float) -> None:
        with self._lock:
            overdue = [t for t in self._ended if not t.settling and now - (t.ended_since or now) >= self._grace_of(t)]
            for task in overdue:
                task.settling = True
        for task in overdue:
            if layout.result_on_disk(self.folder, task.batch, task.index):  # by name, not by the last listing
                self._service.run(self._deliver, task)
                continue
            status = None if task.vanished else task.last_status
            error = JobFailedError(
                task.task_id,
                task.job_id,
                status.native_state or status.state.value if status else "UNKNOWN",
                status.exit_code if status else None,
                (status.reason if status else "") or _no_result_reason(status, task.last_status),
                self._log_tail(task.job_id),
            )
            logger.info("%s", error)
            with self._lock:
                self._failed_ids[task.task_id] = now
            self._service.run(self._settle_failure, task, error)

    def _grace_of(self, task: Task) -> float:
        """The long grace only where a result may be on its way: the job completed, or it was last seen running
        before the scheduler forgot it. A job that failed, or vanished while pending, wrote nothing."""
        status = task.last_status
        if status is not None and (
            status.state is JobState.COMPLETED or (task.vanished and status.state is JobState.RUNNING)
        ):
            return self.result_grace
        return min(self.result_grace, FAILED_JOB_GRACE)

    def _put_away_late_result(self, task_id: str) -> None:
        """A result that arrived after its future failed: kept (in delivered/) but out of the scanned folder."""
        source = os.path.join(self.folder, layout.RESULTS, task_id + layout.RESULT_SUFFIX)
        target = os.path.join(self.folder, layout.DELIVERED, task_id + layout.RESULT_SUFFIX)
        logger.warning("oarfutures: the result of task %s arrived after its future failed; kept as %s", task_id, target)
        with contextlib.suppress(OSError):
            os.replace(source, target)
        self._failed_ids.pop(task_id, None)

    def live_job_ids(self) -> tuple[str, ...]:
        """For the poller: the jobs to ask the scheduler about, so that one query serves every executor.

        Listed again only when a job was submitted, retired, followed or stolen (``_by_job.version``): while
        nothing moves it is the same tuple each time, at no cost per job (100,000 pending tasks: ~20 ms a query
        otherwise), and the backend may recognise it (``SlurmBackend.query``). Until then it may still name jobs
        whose task has been settling since (a result is being delivered): asking about them is harmless, and
        ``apply_states`` skips them."""
        with self._lock:
            version = self._by_job.version
            if self._live_ids is None or self._live_ids[0] != version:
                submitted = Phase.SUBMITTED  # a local: a global and an attribute lookup less per task
                live = [t.job_id for t in self._tasks.values() if t.phase is submitted and t.job_id and not t.settling]
                self._live_ids = (version, tuple(live))
            return self._live_ids[1]

    def apply_states(self, statuses: Mapping[str, JobStatus], now: float) -> bool:
        """Act on the backend's answer; True if any job changed state (the poller then queries again sooner)."""
        changed = False
        with self._lock:
            if self.backend.reports_changes_only:  # only the news: no need to look at every task
                tasks = [self._by_job[job_id] for job_id in statuses if job_id in self._by_job]
            else:
                jobs = self._by_job.version
                settled, changed_ids = self._settled_answer, None
                if settled is not None and settled[1] == jobs:
                    if settled[0] is statuses:
                        # the very answer (the backend gives the same object when the queue did not move) already
                        # applied to these very jobs (none submitted, retired, followed or stolen since: O(1), not a
                        # comparison of every job), none of them missing from it: going over them again changes nothing
                        return False
                    # a new answer after a settled one: only the jobs whose rows changed, if the answer can tell
                    # (``slurm_formats.Answer``); every other job has the very status object it was settled with
                    telling = getattr(statuses, "changed_ids", None)
                    changed_ids = telling(settled[0]) if telling is not None else None
                if changed_ids is not None:
                    found = list(map(self._by_job.get, changed_ids))
                    if self._stolen:  # a stolen task is filed under its own job, not the one it follows
                        found += [self._stolen.get(job_id) for job_id in changed_ids]
                    tasks = [t for t in found if t is not None and t.phase is Phase.SUBMITTED]
                else:
                    tasks = [t for t in self._tasks.values() if t.phase is Phase.SUBMITTED]
                    self._stolen = {t.job_id: t for t in tasks if t.own_job_id is not None and t.job_id}
        missing = False
        quiet = (
            JobState.PENDING,
            JobState.RUNNING,
        )  # a job still in one of these, with the status it had, needs nothing
        # every task of a new answer is looked at (100,000 tasks first seen after a map): no Python-level call per
        # task where a comparison will do (a dataclass's != with None, the enum's ``ended`` property)
        ended_states, running_state, get = ENDED_STATES, JobState.RUNNING, statuses.get
        for task in tasks:
            if task.settling:
                continue
            status = get(task.job_id or "")
            last = task.last_status
            if status is last and status is not None and task.ended_since is None and status.state in quiet:
                continue  # the same JobStatus object as last time, queued or (marked) running: nothing to do
            if status is None:  # unknown to the scheduler: purged, or not visible yet after submission
                missing = True
                # sacct may show a new array only after seconds (more under load): a never-seen job gets longer
                grace = min(self.result_grace, FAILED_JOB_GRACE) if last is not None else UNSEEN_GRACE
                if now - task.submitted_at > grace:
                    task.vanished = True
                    self._mark_ended(task, now)
                continue
            task.vanished = False
            if status.follow_up:  # resubmitted under a new job id: follow it
                self._follow(task, status.follow_up)
                changed = True
                continue
            if status is not last and (last is None or status != last):
                changed = True
                task.last_status = status
            state = status.state
            if state in ended_states:
                self._mark_ended(task, now)
                continue
            if task.ended_since is not None:  # else a no-op (only this thread sets it): no lock taken per job
                self._mark_ended(task, None)
            if state is running_state and not task.running:
                task.running = True
                for future in task.futures:
                    mark_running(future)
        if not self.backend.reports_changes_only:  # absent jobs have grace periods running: never settled
            self._settled_answer = None if missing else (statuses, jobs)
        return changed

    def _follow(self, task: Task, job_id: str) -> None:
        with self._lock:
            self._by_job.pop(task.job_id or "", None)
            self._by_job[job_id] = task
            task.job_id = job_id
            for future in task.futures:
                future.job_ids.append(job_id)
        task.record.set_job_ids({task.index: job_id})
        self._save(task.record)
        self._mark_ended(task, None)

    def _mark_ended(self, task: Task, now: float | None) -> None:
        """Start the result grace period of a job that is over (keeping its first time), or cancel it (None)."""
        with self._lock:
            if now is None:
                task.ended_since = None
                self._ended.discard(task)
            elif task.ended_since is None and self._tasks.get(task.task_id) is task:
                task.ended_since = now
                self._ended.add(task)

    def on_poll_error(self, error: BaseException) -> None:
        """A tick of this executor failed. Without its results folder nothing can resolve: fail every future
        (and cancel the jobs) rather than let them wait forever; other errors are logged and retried."""
        if os.path.isdir(os.path.join(self.folder, layout.RESULTS)):
            logger.warning("oarfutures: polling %s failed, will retry: %r", self.folder, error)
            return
        with self._lock:
            first, self._broken = not self._broken, True
        if first:
            logger.error("oarfutures: %s lost its results folder: failing its futures", self.folder)
            reason = f"the job folder {self.folder} lost its results/ folder (removed by another program?)"
            self._service.run(self._stop_all, reason, False)

    def release_if_idle(self, poller: Poller) -> None:
        """For the poller: stop being polled once nothing is left to watch, so that an idle executor costs no
        scheduler query (late results of failed tasks are watched for a while first)."""
        now = time.monotonic()
        with self._lock:
            self._failed_ids = {k: t for k, t in self._failed_ids.items() if now - t < LATE_RESULT_WATCH}
            if self._watched and not self._tasks and not self._cancelled and not self._failed_ids:
                self._watched = False
                self._settled_answer = None  # it holds the last answer and the tasks it was applied to
                self._stolen = {}
                poller.forget(self)

    # ------------------------------------------------------------------ told by the backend
    def job_ended(self, job_id: str) -> None:
        """A backend that sees its jobs end (the local one) says so at once, from its own thread (no lock held): a
        result already there is delivered now, in that thread, without waiting for the poller's next scan nor
        waking the service thread for each call; only the futures' callbacks (to the callbacks thread) and
        bookkeeping that may wait (to the service thread) leave it. A job that ended without a result is the
        poller's to judge (it asks the backend, and starts the grace period)."""
        with self._lock:
            task = self._by_job.get(job_id)
        if task is None or not os.path.exists(layout.result_path(self.folder, task.batch, task.index)):
            get_poller().wake()
            return
        with self._lock:
            if task.settling:  # the poller's scan found it first
                return
            task.settling = True
        with callbacks_run_by(self._run_callbacks):
            self._deliver(task)

    # ------------------------------------------------------------------ settling (service thread)
    def _deliver(self, task: Task) -> None:
        """Read a task's result, settle its futures, then move the file and do the bookkeeping. Whichever thread
        delivers (the service thread, a local slot), a failure of ours fails the task's futures: none stays
        pending, and the thread goes on."""
        try:
            self._deliver_result(task)
        except Exception as exc:
            logger.exception("oarfutures: delivering the result of %s failed", task.task_id)
            self._settle_failure(task, exc)

    def _deliver_result(self, task: Task) -> None:
        path = layout.result_path(self.folder, task.batch, task.index)
        delivered = layout.delivered_path(self.folder, task.batch, task.index)
        try:
            outcomes, resubmissions, stolen_by = results.read_result(path, delivered)
        except results.CorruptResultError as exc:
            self._settle_failure(task, exc)
            return
        if stolen_by:  # (usually known from its marker already)
            self._note_stolen([(task.task_id, stolen_by)], delivering=task)
        if len(outcomes) == 1 and len(task.futures) > 1:  # the task could not even be loaded: same error for all
            outcomes = outcomes * len(task.futures)
        for position, future in enumerate(task.futures):
            future.resubmissions = resubmissions
            try:
                outcome = outcomes[position]
            except IndexError:
                missing = results.CorruptResultError(
                    f"result file {path} holds {len(outcomes)} outcome(s) for {len(task.futures)} call(s)"
                )
                settle_guarded(set_exception, future, missing)
                continue
            if outcome.ok:
                settle_guarded(set_result, future, outcome.value)
            else:
                settle_guarded(set_exception, future, outcome.to_exception())
        # kept until the whole batch is delivered, so that a client re-attaching after a crash gets every result
        with contextlib.suppress(OSError):
            os.replace(path, delivered)
        self._forget_stolen_marker(task)
        self._retire_delivered(task)

    def _settle_failure(self, task: Task, error: BaseException) -> None:
        for future in task.futures:
            settle_guarded(set_exception, future, error)
        self._forget_stolen_marker(task)
        self._retire_delivered(task)

    def _retire_delivered(self, task: Task) -> None:
        """Retire a delivered task. What may then be due (tidying a finished batch, the next wave, closing after a
        shutdown) runs on the service thread: from a local slot's thread (see job_ended), one hand-over per batch
        rather than one per call. (Whoever changes one of these conditions later sees to it: a shutdown closes.)"""
        with self._lock:
            self._retire_locked(task)
            due = bool(self._finished_batches or any(self._waiting) or self._shutdown)
        if due:
            self._service.hand(self._after_retire)

    # ------------------------------------------------------------------ stolen tasks (see worker.stealing)
    def _note_stolen(self, stolen: list[tuple[str, str]], delivering: Task | None = None) -> None:
        """Follow the job that stole a task instead of the task's own job (from now on its state is the task's:
        running, or over without a result, which fails the task naming that job); the own job is left over and
        cancelled soon (``_note_leftover``). ``stolen``: (task id, stealing job id) pairs; ``delivering``: the task
        whose result names its stealer, being delivered (so settling, and perhaps attached without a job)."""
        if not stolen:
            return
        changed = False
        with self._lock:
            for task_id, job_id in stolen:
                task = self._tasks.get(task_id)
                if task is None or task.own_job_id is not None or task.job_id == job_id:
                    continue
                if task is not delivering and (task.settling or task.phase is not Phase.SUBMITTED):
                    continue  # a task still being submitted is seen again on the next scan
                task.own_job_id, task.job_id = task.job_id or "", job_id  # "": it had no job (attached, submitting)
                self._by_job.changed()  # its job id changed: live_job_ids and a settled answer are out of date
                self._stolen[job_id] = task
                task.last_status, task.vanished, task.ended_since = None, False, None
                task.submitted_at = time.monotonic()
                self._ended.discard(task)
                if task.own_job_id:
                    self._note_leftover(task.batch, task.own_job_id)
                for future in task.futures:
                    future.job_ids.append(job_id)
                changed = True
        if changed:  # (markers stay until delivery: only news asks for a query sooner)
            get_poller().query_soon(self)

    def _forget_stolen_marker(self, task: Task) -> None:
        if task.own_job_id is not None and task.job_id:
            remove_file(layout.stolen_marker_path(self.folder, task.batch, task.index, task.job_id))

    # ------------------------------------------------------------------ stopping everything
    def _stop_all(self, reason: str, cancel_futures: bool) -> None:
        """Cancel every unfinished job; futures not yet started are cancelled (``cancel_futures``) or fail."""
        cancel_all(self._gatherer.pending_futures())  # not submitted yet: cancelled, they never will be
        with self._lock:
            tasks = [t for t in self._tasks.values() if not t.settling or t.aborting]
            for task in tasks:
                task.settling = task.aborting = True
            self._waiting.clear()
        job_ids = [t.job_id for t in tasks if t.job_id is not None]
        failure: BaseException | None = None
        try:
            if job_ids:
                self.backend.cancel(job_ids)
        except BaseException as exc:  # the futures must resolve all the same; say why jobs may run
            failure, reason = exc, f"{reason}; cancelling the jobs failed, they may still run ({exc})"
        for task in tasks:
            error = JobFailedError(task.task_id, task.job_id, "CANCELLED", reason=reason)
            for future in task.futures:
                if not (cancel_futures and future.cancel()):
                    settle_guarded(set_exception, future, error)
            self._retire(task, how="aborted" if failure is None else "uncertain")
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------ cancellation
    def _claim_for_cancel(self, future: JobFuture) -> bool:
        """Called by ``future.cancel()`` under the future's transition lock: may it be cancelled?

        A task still in our queue is withdrawn here (nothing can have run it); otherwise the call's claim is taken
        in the folder, competing with the worker: True if we got it (the call will never run), False if a worker
        holds it (the call is running). A call of a chunk whose other calls are still wanted is claimed alone.
        """
        with self._lock:
            task = self._tasks.get(future.task_id)
            if task is None or future not in task.futures:
                return True
            if task.settling and not task.aborting:
                return False  # its result is being delivered: it ran
            if task.phase is Phase.WAITING:
                task.withdrawn.add(future)
                return True
            siblings_wanted = any(
                f is not future and f not in task.withdrawn and not f.cancelled() for f in task.futures
            )
            call = task.futures.index(future) if len(task.futures) > 1 else None
        paths = []
        if not siblings_wanted:
            paths.append(layout.claim_path(self.folder, task.batch, task.index))
        if call is not None:
            paths.append(layout.claim_path(self.folder, task.batch, task.index, call))
        for path in paths:
            try:
                if layout.claim_for_cancel(path):
                    return True
            except OSError as exc:  # the batch's files are gone: no worker can load the call either
                logger.warning(
                    "oarfutures: cannot claim %s for cancel (%s); the task cannot run without its files", path, exc
                )
                return True
        return False

    def _on_future_cancelled(self, future: JobFuture) -> None:
        with self._lock:
            task = self._tasks.get(future.task_id)
            if task is None or task.settling or not task.all_cancelled():
                return  # (a settling task's job is dealt with by whoever settles it: abort, a result)
            self._cancelled.add(task)
        if self.backend.cancel_is_cheap:
            self._process_cancellations()
        else:  # (scancel may hang for minutes)
            self._service.run(self._process_cancellations)

    def _process_cancellations(self) -> None:
        """Cancel the jobs of tasks whose every future was cancelled (one backend call). On the service thread, or
        in the thread that cancelled them when the backend's cancel is cheap: a slot of the local backend must not
        hand a worker a job whose future was cancelled before (the worker would find its claim taken, and say so
        in a log of its own). What may wait (tidying, closing) is the service thread's."""
        with self._lock:
            candidates, self._cancelled = self._cancelled, set()
            to_cancel: list[str] = []
            for task in candidates:
                if task.settling or self._tasks.get(task.task_id) is not task:
                    continue
                if task.phase is Phase.SUBMITTING:
                    self._cancelled.add(task)  # its job id is not known yet: the submitter hands it back
                    continue
                if task.job_id is not None:
                    to_cancel.append(task.job_id)
                self._retire_locked(task)
        self._cancel_jobs(to_cancel)
        self._service.hand(self._after_retire)


def _no_result_reason(status: JobStatus | None, last_seen: JobStatus | None) -> str:
    if status is None:
        seen = f" (last seen {last_seen.native_state or last_seen.state.value})" if last_seen else " (never seen)"
        return f"the scheduler no longer knows the job{seen} and no result was written"
    if status.state is JobState.COMPLETED:
        return "the job completed but its worker wrote no result"
    return "no result was written"
