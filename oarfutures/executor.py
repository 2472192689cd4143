"""The executor core: ``concurrent.futures.Executor`` semantics on top of any ``Backend``.

::

    user thread                          poller thread (one per process)            job
    -----------                          -------------------------------            ---
    submit/map --> batch files --------------------------------------------------> python -m oarfutures.worker
               +-> backend.submit (one array per call)                              runs the calls, writes
    futures <------ resolve <-- one scandir of results/ per tick <------------------ results/<task>.pkl
                           +--- one backend.query per group for all live jobs, less often than file scans

The core knows no scheduler: it writes files, keeps the futures of live tasks, and turns what the backend says
(running, ended) and what lands in ``results/`` into future transitions. A job that ended with no result file
within ``result_grace`` seconds fails its futures with ``JobFailedError``: no future waits forever.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import secrets
import shutil
import sys
import threading
import time
from concurrent import futures as cf
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from oarfutures import batchfiles, layout, records
from oarfutures.backend import Backend, BatchSubmission, JobState, JobStatus
from oarfutures.errors import JobFailedError
from oarfutures.futures import JobFuture, mark_running, set_exception, set_result
from oarfutures.poller import get_poller

logger = logging.getLogger("oarfutures")
logger.addHandler(logging.NullHandler())  # a library prints nothing unless its user configures logging

LOG_TAIL_BYTES = 2000
UNSEEN_GRACE = 60.0  # seconds a just-submitted job may stay invisible to the scheduler's queries


@dataclass(eq=False)
class Task:
    """One array element: its calls' futures and the job that runs it."""

    batch: str
    index: int
    futures: List[JobFuture]
    options: Dict[str, object]
    checkpointable: bool = False
    job_id: Optional[str] = None
    phase: str = "waiting"  # waiting (in our queue) -> submitting -> submitted
    submitted_at: float = 0.0
    ended_since: Optional[float] = None  # when the backend first said the job is over (result not seen yet)
    last_status: Optional[JobStatus] = None
    running: bool = False
    vanished: bool = False  # the scheduler stopped reporting the job (purged, or never seen)

    @property
    def task_id(self) -> str:
        return layout.task_id(self.batch, self.index)


@dataclass(eq=False)
class _Waiting:
    """Tasks of one batch not submitted yet (the backend cannot cap running tasks, so we submit in waves)."""

    batch: str
    tasks: Deque[Task] = field(default_factory=collections.deque)


_interpreter_exiting = False


def _refuse_new_work() -> None:
    global _interpreter_exiting
    _interpreter_exiting = True


# Like concurrent.futures' own pools: once the interpreter is exiting, submit() raises instead of queueing work
# that nothing would run. (threading._register_atexit hooks run before non-daemon threads are joined.)
getattr(threading, "_register_atexit", __import__("atexit").register)(_refuse_new_work)


def resolve_folder(folder: Optional[str], kind: str) -> str:
    """The absolute job folder, created private; by default a new one under $OARFUTURES_FOLDER or ~/.oarfutures."""
    if folder is None:
        base = os.environ.get("OARFUTURES_FOLDER") or os.path.join(os.path.expanduser("~"), ".oarfutures")
        folder = os.path.join(base, f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}")
    folder = os.path.abspath(os.fspath(folder))
    layout.make_folder(folder)
    return folder


def interpreter_path(python: Optional[str]) -> str:
    """An absolute path for the jobs' interpreter: a bare name is looked up on PATH (not in the job's fresh
    environment), and symlinks are kept, since a venv's bin/python is one."""
    if python is None:
        return sys.executable
    found = shutil.which(python) if os.sep not in python else python
    if found is None:
        raise ValueError(f"python={python!r} is not an interpreter found on PATH")
    return os.path.abspath(found)


def check_max_workers(max_workers: Optional[int]) -> None:
    if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)):
        raise TypeError(f"max_workers must be a positive int or None, got {max_workers!r}")
    if max_workers is not None and max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")


class JobExecutor(cf.Executor):
    """Scheduler-agnostic executor; ``LocalPoolExecutor``, ``SlurmPoolExecutor``, ``OarPoolExecutor`` build on it."""

    def __init__(
        self,
        backend: Backend,
        max_workers: Optional[int],
        folder: Optional[str],
        python: Optional[str],
        keep_files: bool = False,
        result_grace: Optional[float] = None,
        warn_pickle_bytes: int = 100_000_000,
        max_resubmissions: int = 3,
        default_max_workers: int = 1024,
    ) -> None:
        check_max_workers(max_workers)
        self.backend = backend
        self._throttle = max_workers
        #: what dask and joblib read as the pool size; a positive int even when no cap is set
        self._max_workers = max_workers or default_max_workers
        self.folder = resolve_folder(folder, backend.name)
        self.python = interpreter_path(python)
        self.keep_files = keep_files
        self.result_grace = backend.result_grace if result_grace is None else float(result_grace)
        self.warn_pickle_bytes = warn_pickle_bytes
        self.max_resubmissions = max_resubmissions
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()  # serialises waves of throttled submissions
        self._tasks: Dict[str, Task] = {}
        self._waiting: Deque[_Waiting] = collections.deque()
        self._batch_left: Dict[str, int] = {}
        self._records: Dict[str, records.BatchRecord] = {}
        self._by_job: Dict[str, Task] = {}  # live submitted tasks by their current job id
        self._collecting = threading.local()  # the calls of an open batch() block, per thread
        self._cancelled: Set[Task] = set()
        self._ended: Set[Task] = set()  # tasks whose job is over while their result is not in yet
        self._shutdown = False
        self._closed = False
        self.query_wait = backend.query_interval[0]
        self.next_query = 0.0

    # ------------------------------------------------------------------ the Executor API
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> JobFuture:
        """Run ``fn(*args, **kwargs)`` as one job; the future stays PENDING while the job is queued."""
        return self._submit(fn, args, kwargs, {})

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """One array for all calls (``chunksize`` calls per array task), results in input order.

        Everything is submitted before this returns; ``timeout`` is one deadline for the whole iteration; closing
        the iterator early cancels the calls not yet returned.
        """
        return self._map(fn, iterables, timeout, chunksize, {})

    def _submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict, options: Dict[str, Any]) -> JobFuture:
        collected = getattr(self._collecting, "calls", None)
        if collected is not None:  # inside batch(): submitted with the others when the block ends
            future = JobFuture()
            collected.append((fn, args, kwargs, options, future))
            return future
        return self._submit_batch([fn], [[(0, args, kwargs)]], options)[0]

    def _map(
        self, fn: Callable[..., Any], iterables: Sequence[Iterable[Any]], timeout: Optional[float], chunksize: int, options: Dict
    ) -> Iterator[Any]:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        deadline = None if timeout is None else time.monotonic() + timeout
        calls: List[batchfiles.Call] = [(0, args, {}) for args in zip(*iterables)]
        tasks = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
        futures = self._submit_batch([fn], tasks, options) if tasks else []
        return _results_in_order(futures, deadline)

    # ------------------------------------------------------------------ parameters, per-call options, batches
    def update_parameters(self, **parameters: Any) -> None:
        """Change parameters for later submissions; unknown names are rejected with the list of valid ones.

        Generic names (walltime, timeout_min, nodes, tasks_per_node, cpus_per_task, gpus_per_node, mem_gb, name,
        setup) mean the same on every backend; ``oar_``/``slurm_`` prefixed ones apply only on that scheduler.
        """
        self.backend.parameters.update(self.backend.validate(parameters))

    def options(self, **parameters: Any) -> "ExecutorOptions":
        """A view of this executor whose ``submit``/``map`` use these parameters, e.g.
        ``ex.options(cpus_per_task=8).submit(f, x)``; no keyword of ``f`` is reserved."""
        return ExecutorOptions(self, self.backend.validate(parameters))

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Collect the ``submit`` calls of this thread in the block and submit them as one array when it ends.

        Functions may differ; an exception in the block submits nothing and cancels the collected futures.
        """
        if getattr(self._collecting, "calls", None) is not None:
            raise RuntimeError("batch() blocks do not nest")
        calls: List[Tuple[Callable[..., Any], tuple, dict, Dict[str, Any], JobFuture]] = []
        self._collecting.calls = calls
        try:
            yield
        except BaseException:
            for *_, future in calls:
                future.cancel()
            raise
        finally:
            self._collecting.calls = None
        groups: Dict[str, list] = {}  # one array per distinct set of options
        for call in calls:
            if not call[4].cancelled():
                groups.setdefault(repr(sorted(call[3].items())), []).append(call)
        for group in groups.values():
            functions: List[Callable[..., Any]] = []
            tasks = []
            for fn, args, kwargs, _, _ in group:
                if not any(fn is known for known in functions):
                    functions.append(fn)
                tasks.append([(next(i for i, known in enumerate(functions) if known is fn), args, kwargs)])
            self._submit_batch(functions, tasks, group[0][3], [call[4] for call in group])

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            live = [f for task in self._tasks.values() for f in task.futures]
        if cancel_futures:
            for future in live:
                future.cancel()
        if wait:
            cf.wait(live)
        self._close_if_idle()
        get_poller().wake()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        """Leaving the block by an exception (KeyboardInterrupt included) cancels every unfinished job first."""
        if exc_type is not None:
            try:
                self.abort(f"the with block raised {exc_type.__name__}")
            except Exception:  # the user's exception is the one to see; the jobs' fate is logged
                logger.exception("cancelling the jobs of %s failed", self.folder)
        self.shutdown(wait=True)
        return False

    # ------------------------------------------------------------------ beyond the Executor API
    def abort(self, reason: str = "aborted") -> None:
        """Cancel every unfinished job of this executor now, queued or running; their futures fail or cancel."""
        with self._lock:
            tasks = list(self._tasks.values())
            batches = list(self._records.values())
            self._tasks.clear()
            self._by_job.clear()
            self._waiting.clear()
            self._ended.clear()
            self._batch_left.clear()
            self._records.clear()
        job_ids = [t.job_id for t in tasks if t.job_id is not None]
        failure: Optional[BaseException] = None
        try:
            if job_ids:
                self.backend.cancel(job_ids)
        except BaseException as exc:  # the futures must resolve all the same; say why the jobs may still run
            failure, reason = exc, f"{reason}; cancelling the jobs failed, they may still run ({exc})"
        for task in tasks:
            for future in task.futures:
                if not future.cancel():
                    set_exception(future, JobFailedError(task.task_id, task.job_id, "CANCELLED", reason=reason))
        for record in batches:
            if failure is None:  # nothing of them will run: nothing to attach to later
                if not self.keep_files:
                    batchfiles.remove_batch_files(self.folder, record.batch, len(record.calls))
                record.complete = True
                record.save(self.folder)
        self._close_if_idle()
        if failure is not None:
            raise failure

    def interrupt(self, future: JobFuture) -> None:
        """Send the checkpoint signal to the job running ``future``, as a preemption would (to test checkpointing)."""
        if future.job_id is None or future.done():
            raise RuntimeError(f"task {future.task_id} is not running: nothing to interrupt")
        self.backend.interrupt(future.job_id)

    def logs(self, future: JobFuture) -> str:
        """stdout and stderr of every job that ran this future's task, in order (resubmissions included)."""
        parts = []
        for job_id in dict.fromkeys(future.job_ids):
            for path in self.backend.log_paths(job_id):
                if os.path.exists(path):
                    with open(path, errors="replace") as f:
                        parts.append(f"==> {path} <==\n{f.read()}")
        return "\n".join(parts)

    def status(self) -> Dict[str, int]:
        """How many calls of this executor are pending (queued) and running now."""
        with self._lock:
            live = [f for task in self._tasks.values() for f in task.futures]
        return {
            "pending": sum(1 for f in live if not f.running() and not f.done()),
            "running": sum(1 for f in live if f.running()),
        }

    # ------------------------------------------------------------------ submission
    def _submit_batch(
        self,
        functions: Sequence[Callable[..., Any]],
        tasks: Sequence[Sequence[batchfiles.Call]],
        options: Dict,
        futures: Optional[List[JobFuture]] = None,
    ) -> List[JobFuture]:
        """Write and submit one batch; ``futures``, one per task, are the ones batch() already handed out."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        batch = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
        batchfiles.write_batch(self.folder, batch, functions, tasks, self.warn_pickle_bytes, self.max_resubmissions)
        checkpointable = any(batchfiles.is_checkpointable(f) for f in functions)
        record = records.BatchRecord(batch, self.backend.name, [len(calls) for calls in tasks], checkpointable=checkpointable)
        record.save(self.folder)
        new = [
            self._new_task(batch, index, len(calls), options, checkpointable, futures[index : index + 1] if futures else None)
            for index, calls in enumerate(tasks)
        ]
        with self._lock:
            shut_down = self._shutdown  # by another thread meanwhile
            if not shut_down:
                self._register(record, new, new)
        if shut_down:
            batchfiles.remove_batch_files(self.folder, batch)
            _remove(layout.record_path(self.folder, batch))
            raise RuntimeError("cannot schedule new futures after shutdown")
        self._submit_waiting(raise_for=batch)
        self._poll_soon()
        return [future for task in new for future in task.futures]

    def _new_task(
        self, batch: str, index: int, calls: int, options: Dict, checkpointable: bool, futures: Optional[List[JobFuture]] = None
    ) -> Task:
        futures = futures or [JobFuture() for _ in range(calls)]
        for future in futures:
            future.task_id = layout.task_id(batch, index)
            future._on_cancel = self._on_future_cancelled
        return Task(batch, index, futures, options, checkpointable)

    def _register(self, record: records.BatchRecord, tasks: List[Task], waiting: List[Task]) -> None:
        """Make the batch's tasks live (lock held); ``waiting`` are the ones still to submit."""
        for task in tasks:
            self._tasks[task.task_id] = task
        self._records[record.batch] = record
        self._batch_left[record.batch] = len(tasks)
        self._waiting.append(_Waiting(record.batch, collections.deque(waiting)))
        get_poller().watch(self)

    def _poll_soon(self) -> None:
        self.query_wait = self.backend.query_interval[0]
        self.next_query = min(self.next_query, time.monotonic() + self.query_wait)
        get_poller().wake()

    def attach(self) -> List[JobFuture]:
        """Futures for every call of the folder's unfinished batches, after the client that submitted them died.

        Results that arrived while no client ran resolve at once (delivered ones again too, so a map's results are
        all there, in order); jobs still queued or running are followed; tasks never submitted are submitted now.
        """
        attached: List[JobFuture] = []
        for record in records.load_all(self.folder):
            if record.complete or record.batch in self._records:
                continue
            if record.backend != self.backend.name:
                logger.warning("not attaching batch %s: it was submitted to %s, not %s", record.batch, record.backend, self.backend.name)
                continue
            if not os.path.exists(layout.functions_path(self.folder, record.batch)):
                continue  # its files were cleaned up: nothing to attach to
            tasks = [self._new_task(record.batch, i, n, {}, record.checkpointable) for i, n in enumerate(record.calls)]
            waiting = []
            now = time.monotonic()
            for task in tasks:
                delivered = layout.delivered_path(self.folder, task.batch, task.index)
                if os.path.exists(delivered):  # read by the dead client: deliver again from where it was put
                    os.replace(delivered, layout.result_path(self.folder, task.batch, task.index))
                if task.index in record.job_ids and self.backend.jobs_outlive_client:
                    task.job_id, task.phase, task.submitted_at = record.job_ids[task.index], "submitted", now
                    self._by_job[task.job_id] = task
                    for future in task.futures:
                        future.job_ids.append(task.job_id)
                else:
                    waiting.append(task)
            with self._lock:
                self._register(record, tasks, waiting)
            attached += [future for task in tasks for future in task.futures]
        self._submit_waiting()
        self._poll_soon()
        return attached

    def _submit_waiting(self, raise_for: Optional[str] = None) -> None:
        """Submit queued tasks as arrays, as many as the running cap leaves room for (all when uncapped).

        A wave the scheduler refuses is forgotten with its files; the error is raised when it belongs to
        ``raise_for`` (the batch the caller is submitting), else it fails that wave's futures.
        """
        with self._submit_lock:
            while True:
                with self._lock:
                    wave = self._next_wave()
                if not wave:
                    return
                first = wave[0]
                submission = BatchSubmission(
                    batch=first.batch,
                    first=first.index,
                    count=len(wave),
                    folder=self.folder,
                    python=self.python,
                    max_running=self._throttle,
                    options=first.options,
                    checkpointable=first.checkpointable,
                )
                try:
                    job_ids = self.backend.submit(submission)
                except BaseException as exc:
                    if first.batch == raise_for:
                        self._forget_batch(first.batch)
                        raise
                    for task in wave:
                        self._finish(task, lambda future, e=exc: set_exception(future, e))
                    continue
                now = time.monotonic()
                record = self._records[first.batch]
                for task, job_id in zip(wave, job_ids):
                    task.job_id, task.submitted_at, task.phase = job_id, now, "submitted"
                    self._by_job[job_id] = task
                    record.job_ids[task.index] = job_id
                    for future in task.futures:
                        future.job_ids.append(job_id)
                record.save(self.folder)
                logger.info("submitted %d task(s) of batch %s as %s..%s", len(wave), first.batch, job_ids[0], job_ids[-1])

    def _next_wave(self) -> List[Task]:
        """Take the next contiguous run of waiting tasks of one batch that fits under the cap (lock held)."""
        while self._waiting and not self._waiting[0].tasks:
            self._waiting.popleft()
        if not self._waiting:
            return []
        room = len(self._waiting[0].tasks)
        if self._throttle is not None and not self.backend.throttles:
            busy = sum(1 for t in self._tasks.values() if t.phase != "waiting")
            room = min(room, self._throttle - busy)
        queue = self._waiting[0].tasks
        wave: List[Task] = []
        while queue and len(wave) < room:
            task = queue.popleft()
            if all(f.cancelled() for f in task.futures):
                self._drop(task)
                continue
            if wave and task.index != wave[-1].index + 1:
                queue.appendleft(task)
                break
            task.phase = "submitting"
            wave.append(task)
        return wave

    def _forget_batch(self, batch: str) -> None:
        """Undo a batch the scheduler refused: nothing of it runs, its files go."""
        with self._lock:
            for task_id in [k for k, t in self._tasks.items() if t.batch == batch]:
                self._by_job.pop(self._tasks.pop(task_id).job_id or "", None)
            self._waiting = collections.deque(w for w in self._waiting if w.batch != batch)
            self._batch_left.pop(batch, None)
            self._records.pop(batch, None)
        batchfiles.remove_batch_files(self.folder, batch)
        _remove(layout.record_path(self.folder, batch))

    def _on_future_cancelled(self, future: JobFuture) -> None:
        with self._lock:
            task = self._tasks.get(future.task_id)
            if task is not None:
                self._cancelled.add(task)
        get_poller().wake()

    # ------------------------------------------------------------------ called by the poller thread
    def has_work(self) -> bool:
        with self._lock:
            return bool(self._tasks) or bool(self._cancelled)

    def live_job_ids(self) -> List[str]:
        with self._lock:
            return [t.job_id for t in self._tasks.values() if t.phase == "submitted" and t.job_id is not None]

    def collect_results(self) -> int:
        """One directory scan; resolve every live task whose result file is there. Returns how many."""
        results_dir = os.path.join(self.folder, layout.RESULTS)
        found = []
        with os.scandir(results_dir) as entries:
            names = [e.name for e in entries if e.name.endswith(layout.RESULT_SUFFIX)]
        with self._lock:
            for name in names:
                task = self._tasks.get(name[: -len(layout.RESULT_SUFFIX)])
                if task is not None:
                    found.append(task)
        for task in found:
            self._resolve_from_file(task)
        return len(found)

    def _resolve_from_file(self, task: Task) -> None:
        path = layout.result_path(self.folder, task.batch, task.index)
        try:
            outcomes, resubmissions = batchfiles.read_result(path)
        except batchfiles.CorruptResultError as exc:
            self._finish(task, lambda future, error=exc: set_exception(future, error))
            return
        if len(outcomes) == 1 and len(task.futures) > 1:  # the task could not even be loaded: same error for all
            outcomes = outcomes * len(task.futures)
        pairs = dict(zip(task.futures, outcomes))

        def resolve(future: JobFuture) -> None:
            outcome = pairs[future]
            future.resubmissions = resubmissions
            if outcome[0] == "ok":
                set_result(future, outcome[1])
            else:
                set_exception(future, batchfiles.outcome_to_exception(outcome))

        # out of the scanned folder before the futures resolve (whoever waits on them finds it tidy), kept until
        # the whole batch is delivered so that a client re-attaching after a crash gets every result
        try:
            os.replace(path, layout.delivered_path(self.folder, task.batch, task.index))
        except FileNotFoundError:
            pass
        self._finish(task, resolve)

    def apply_states(self, statuses: Dict[str, JobStatus], now: float) -> bool:
        """Act on the backend's answer; True if any job changed state (the poller then queries again sooner)."""
        changed = False
        with self._lock:
            if self.backend.reports_changes_only:  # only the news: no need to look at every task
                tasks = [self._by_job[job_id] for job_id in statuses if job_id in self._by_job]
            else:
                tasks = [t for t in self._tasks.values() if t.phase == "submitted"]
        for task in tasks:
            status = statuses.get(task.job_id or "")
            if status is None:  # unknown to the scheduler: purged, or not visible yet after submission
                # sacct may show a new array only after seconds (more under load): a never-seen job gets longer
                grace = self.result_grace if task.last_status is not None else max(UNSEEN_GRACE, self.result_grace)
                if now - task.submitted_at > grace:
                    task.vanished = True
                    self._mark_ended(task, now)
                continue
            task.vanished = False
            if status.follow_up:  # resubmitted under a new job id: follow it
                with self._lock:
                    self._by_job.pop(task.job_id or "", None)
                    self._by_job[status.follow_up] = task
                task.job_id = status.follow_up
                for future in task.futures:
                    future.job_ids.append(status.follow_up)
                record = self._records.get(task.batch)
                if record is not None:
                    record.job_ids[task.index] = status.follow_up
                    record.save(self.folder)
                self._mark_ended(task, None)
                changed = True
                continue
            if status != task.last_status:
                changed = True
                task.last_status = status
            if status.state.ended:
                self._mark_ended(task, now)
                continue
            self._mark_ended(task, None)
            if status.state is JobState.RUNNING and not task.running:
                task.running = True
                for future in task.futures:
                    mark_running(future)
        return changed

    def _mark_ended(self, task: Task, now: Optional[float]) -> None:
        """Start the result grace period of a job that is over (keeping its first time), or cancel it (None)."""
        with self._lock:
            if now is None:
                task.ended_since = None
                self._ended.discard(task)
            elif task.ended_since is None and task.task_id in self._tasks:
                task.ended_since = now
                self._ended.add(task)

    def fail_ended_jobs(self, now: float) -> None:
        """Fail tasks whose job has been over for ``result_grace`` seconds without a result file."""
        with self._lock:
            overdue = [t for t in self._ended if now - t.ended_since >= self.result_grace]  # type: ignore[operator]
        for task in overdue:
            if os.path.exists(layout.result_path(self.folder, task.batch, task.index)):
                self._resolve_from_file(task)  # landed after the last directory scan
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
            self._finish(task, lambda future: set_exception(future, error))

    def process_cancellations(self) -> None:
        """Cancel the jobs of tasks whose every future was cancelled (one backend call)."""
        with self._lock:
            candidates, self._cancelled = self._cancelled, set()
            to_cancel, retry = [], set()
            for task in candidates:
                if task.task_id not in self._tasks or not all(f.cancelled() for f in task.futures):
                    continue
                if task.phase == "submitting":
                    retry.add(task)  # the job id is not known yet
                elif task.phase == "submitted":
                    to_cancel.append(task)
                    self._drop(task)
                else:
                    self._drop(task)
            self._cancelled |= retry
        if to_cancel:
            self.backend.cancel([t.job_id for t in to_cancel if t.job_id])
            logger.info("cancelled %d job(s)", len(to_cancel))

    def refill(self) -> None:
        """Submit the next wave when capped tasks finished; close the backend once shut down and idle."""
        with self._lock:
            pending_waves = any(w.tasks for w in self._waiting)
        if pending_waves:
            self._submit_waiting()
        self._close_if_idle()

    # ------------------------------------------------------------------ bookkeeping
    def _finish(self, task: Task, resolve: Callable[[JobFuture], None]) -> None:
        with self._lock:
            if self._tasks.pop(task.task_id, None) is None:
                return  # resolved by another path meanwhile
            self._by_job.pop(task.job_id or "", None)
            self._ended.discard(task)
            self._release_batch(task.batch)
        for future in task.futures:  # outside the lock: callbacks may submit
            resolve(future)

    def _drop(self, task: Task) -> None:
        """Forget a task that will never run (lock held)."""
        if self._tasks.pop(task.task_id, None) is not None:
            self._by_job.pop(task.job_id or "", None)
            self._ended.discard(task)
            self._release_batch(task.batch)

    def _release_batch(self, batch: str) -> None:
        self._batch_left[batch] -= 1
        if self._batch_left[batch] == 0:
            del self._batch_left[batch]
            record = self._records.pop(batch)
            if not self.keep_files:  # kept files keep the batch attachable (the command line's `results` relies on it)
                batchfiles.remove_batch_files(self.folder, batch, len(record.calls))
                record.complete = True
                record.save(self.folder)

    def _close_if_idle(self) -> None:
        with self._lock:
            idle = self._shutdown and not self._tasks and not self._closed
            if idle:
                self._closed = True
        if idle:
            self.backend.close()

    def _log_tail(self, job_id: Optional[str]) -> str:
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


def _no_result_reason(status: Optional[JobStatus], last_seen: Optional[JobStatus]) -> str:
    if status is None:
        seen = f" (last seen {last_seen.native_state or last_seen.state.value})" if last_seen else " (never seen)"
        return f"the scheduler no longer knows the job{seen} and no result was written"
    if status.state is JobState.COMPLETED:
        return "the job completed but its worker wrote no result"
    return "no result was written"


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _results_in_order(futures: List[JobFuture], deadline: Optional[float]) -> Iterator[Any]:
    """Yield results in submission order; on early close, error or timeout, cancel what was not returned."""
    futures.reverse()
    try:
        while futures:
            # yielded straight from the call: a suspended generator must not keep the last result alive
            yield _result_or_cancel(futures.pop(), deadline)
    finally:
        for future in futures:
            future.cancel()


def _result_or_cancel(future: JobFuture, deadline: Optional[float]) -> Any:
    try:
        return future.result(None if deadline is None else deadline - time.monotonic())
    except BaseException:
        future.cancel()
        raise


class ExecutorOptions:
    """What ``executor.options(...)`` returns: ``submit`` and ``map`` with other parameters, same executor."""

    def __init__(self, executor: JobExecutor, options: Dict[str, Any]) -> None:
        self._executor = executor
        self._options = options

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> JobFuture:
        return self._executor._submit(fn, args, kwargs, self._options)

    def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: Optional[float] = None, chunksize: int = 1
    ) -> Iterator[Any]:
        return self._executor._map(fn, iterables, timeout, chunksize, self._options)
