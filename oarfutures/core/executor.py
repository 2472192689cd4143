"""The executor core: ``concurrent.futures.Executor`` semantics on top of any ``Backend``.

::

    user thread                  poller thread (one per process)        service thread (one per executor)   job
    -----------                  -------------------------------        ---------------------------------   ---
    submit/map --> batch files ----------------------------------------------------------------------> worker:
               +-> backend.submit (one array per call)                                                 claims,
                                 one scandir of results/ per tick ---> read result, settle futures <-- runs,
                                 one backend.query per group, on a      (callbacks), cancel jobs,      writes
                                 thread of its own, less often          submit the next wave           results/

The core knows no scheduler: it writes files, keeps the futures of live tasks, and turns what the backend says
(running, ended) and what lands in ``results/`` into future transitions. A job that ended with no result file
within its grace period fails its futures with ``JobFailedError``: no future waits forever.

Who runs a call is decided once, in the folder: the worker *claims* a task (and each call of a chunk) before it
runs it, and ``cancel()`` competes for the same claim (``layout.claim``), so "cancelled" and "ran" exclude each
other on every backend, and ``attach()`` never runs again a call that started. On a cluster, a job that has run
its own task may claim and run pending tasks of its array (``worker.steal``): it leaves a marker in ``results/``,
and the core then follows the stealer's job for that task.

``submit`` calls that come while a submission with the same options is in flight are gathered (``gathering``) and
go out together as the next batch, from the service thread.

Lock order (outer first; never take an outer lock while holding an inner one):

    future._transition  ->  executor._submit_lock  ->  executor._tidy_lock  ->  executor._lock
                        ->  poller, record, backend locks

No user callback runs under any of them: futures settle on the service thread with no package lock held, and
``futures.py`` defers callbacks until a future's own transition lock is released.
"""
from __future__ import annotations

import collections
import contextlib
import enum
import logging
import os
import secrets
import shutil
import sys
import threading
import time
import weakref
from concurrent import futures as cf
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import filelock

from oarfutures.core import batchfiles, records
from oarfutures.protocol import layout, variables
from oarfutures.backends.base import Backend, BatchSubmission, JobState, JobStatus
from oarfutures.errors import JobFailedError
from oarfutures.core.futures import JobFuture, mark_running, set_exception, set_result
from oarfutures.core.gathering import Gatherer, Gathering
from oarfutures.core.poller import Poller, get_poller
from oarfutures.core.service import ServiceThread

logger = logging.getLogger("oarfutures")
logger.addHandler(logging.NullHandler())  # a library prints nothing unless its user configures logging

LOG_TAIL_BYTES = 2000
UNSEEN_GRACE = 60.0  # seconds a just-submitted job may stay invisible to the scheduler's queries
FAILED_JOB_GRACE = 5.0
SUBMITTED_AHEAD = 1024  # calls dask and joblib keep submitted to a cluster executor (its _max_workers)
LATE_RESULT_WATCH = 300.0  # seconds an executor keeps watching for the result of a task that failed without one
TIDY_WAIT = 30.0  # seconds shutdown(wait=True) waits, after the futures settled, for their files to be tidied  # a job that failed wrote no result as a rule: its future fails after at most this


class Phase(enum.Enum):
    WAITING = "waiting"  # in our queue (the running cap leaves no room yet)
    SUBMITTING = "submitting"  # its wave is being handed to the scheduler
    SUBMITTED = "submitted"


@dataclass(eq=False)
class Wave:
    """Tasks submitted together; they hold slots of ``max_workers`` until they end.

    With a scheduler cap of its own (Slurm's ``%N``) a wave holds at most ``limit`` slots whatever its size.
    """

    limit: Optional[int]
    unfinished: int

    def slots(self) -> int:
        return self.unfinished if self.limit is None else min(self.limit, self.unfinished)


@dataclass(eq=False)
class Task:
    """One array element: its calls' futures and the job that runs it."""

    batch: str
    index: int
    futures: List[JobFuture]
    options: Dict[str, object]
    record: records.BatchRecord
    checkpointable: bool = False
    job_id: Optional[str] = None
    phase: Phase = Phase.WAITING
    wave: Optional[Wave] = None
    settling: bool = False  # one path (result, failure, cancellation, abort) has taken it: others keep off
    aborting: bool = False  # taken by abort(): its futures may still be cancelled
    withdrawn: Set[JobFuture] = field(default_factory=set)  # cancelled before submission
    submitted_at: float = 0.0
    ended_since: Optional[float] = None  # when the backend first said the job is over (result not seen yet)
    last_status: Optional[JobStatus] = None
    running: bool = False
    vanished: bool = False  # the scheduler stopped reporting the job (purged, or never seen)
    own_job_id: Optional[str] = None  # set when another job of its array stole it: the job it was submitted as ("": none)

    @property
    def task_id(self) -> str:
        return layout.task_id(self.batch, self.index)

    def all_cancelled(self) -> bool:
        return all(f in self.withdrawn or f.cancelled() for f in self.futures)


_interpreter_exiting = False


def _refuse_new_work() -> None:
    global _interpreter_exiting
    _interpreter_exiting = True


# Like concurrent.futures' own pools: once the interpreter is exiting, submit() raises instead of queueing work
# that nothing would run. (threading._register_atexit hooks run before non-daemon threads are joined.)
threading._register_atexit(_refuse_new_work)  # type: ignore[attr-defined]


_executors: "weakref.WeakSet[JobExecutor]" = weakref.WeakSet()
_gathering_executors: "weakref.WeakSet[JobExecutor]" = weakref.WeakSet()


def _gather_at_exit(executor: "JobExecutor") -> None:
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


def _after_fork_in_child() -> None:
    for executor in list(_executors):
        executor._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def folder_path(folder: Optional[str], kind: str) -> str:
    """The absolute job folder, not created yet; by default a new one under $OARFUTURES_FOLDER or ~/.oarfutures.

    Constructors check every argument against this path first and create the folder last, so that a refused
    argument leaves nothing behind."""
    if folder is None:
        folder = os.path.join(default_base(), f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}")
    return os.path.abspath(os.fspath(folder))


def default_base() -> str:
    """Where executors without ``folder=`` make their folders."""
    return os.environ.get(variables.FOLDER) or os.path.join(os.path.expanduser("~"), ".oarfutures")


def resolve_folder(folder: Optional[str], kind: str) -> str:
    """The absolute job folder, created (private) if need be; by default a new one (see ``folder_path``)."""
    folder = folder_path(folder, kind)
    layout.make_folder(folder)
    return folder


def interpreter_path(python: Optional[str], must_run_here: bool = False) -> str:
    """An absolute path for the jobs' interpreter: a bare name is looked up on PATH (not in the job's fresh
    environment), and symlinks are kept, since a venv's bin/python is one. ``must_run_here``: it must be an
    executable file on this machine (the local backend); a cluster's may exist on its nodes only."""
    if python is None:
        return sys.executable
    found = shutil.which(python) if os.sep not in python else python
    if found is None:
        raise ValueError(f"python={python!r} is not an interpreter found on PATH")
    path = os.path.abspath(found)
    if must_run_here and not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ValueError(f"python={python!r}: {path} is not an executable file")
    return path


def check_max_workers(max_workers: Optional[int]) -> None:
    if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)):
        raise TypeError(f"max_workers must be a positive int or None, got {max_workers!r}")
    if max_workers is not None and max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")


class JobExecutor(cf.Executor):
    """Scheduler-agnostic executor; ``LocalPoolExecutor``, ``SlurmPoolExecutor``, ``OarPoolExecutor`` build on it.

    ``result_grace``: seconds a job that ended normally may take to show its result file (shared filesystems
    cache directory listings; NFS's attribute cache holds them up to a minute by default). A job that failed, was
    cancelled or timed out gets at most ``FAILED_JOB_GRACE`` seconds. Before failing a future the result file is
    looked up by name, which NFS revalidates.
    """

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
    ) -> None:
        check_max_workers(max_workers)
        self.backend = backend
        self._throttle = max_workers
        #: what dask and joblib read as the pool size: how many calls they keep submitted at once. A cluster
        #: queues calls beyond the running cap at no cost, and calls submitted together go out as one array, so
        #: they see at least SUBMITTED_AHEAD whatever the cap (dask with max_workers=4 would otherwise make one
        #: sbatch per call: it submits the next one as each ends); the local pool sets its worker count.
        self._max_workers = max(max_workers or 0, SUBMITTED_AHEAD)
        self.python = interpreter_path(python, must_run_here=not backend.jobs_outlive_client)
        self.result_grace = _grace(backend.result_grace if result_grace is None else result_grace)
        self.folder = resolve_folder(folder, backend.name)  # last: a refused argument leaves no folder behind
        self.keep_files = keep_files
        self.warn_pickle_bytes = warn_pickle_bytes
        self.max_resubmissions = max_resubmissions
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()  # one wave at a time, so the running cap is counted right
        self._tidy_lock = threading.Lock()  # taken before _lock: finished batches are being tidied
        self._folder_lock = filelock.FileLock(layout.lock_path(self.folder))
        self._service = ServiceThread(f"oarfutures-service-{backend.name}")
        self._tasks: Dict[str, Task] = {}
        self._waiting: Deque[Deque[Task]] = collections.deque()  # per batch, tasks not submitted yet
        self._waves: Set[Wave] = set()
        self._batch_left: Dict[str, int] = {}
        self._by_job: Dict[str, Task] = {}  # live submitted tasks by their current job id
        # the last answer apply_states found nothing left to do with, and the jobs it had then (see there)
        self._settled_answer: Optional[Tuple[Dict[str, JobStatus], Dict[str, Task]]] = None
        self._collecting = threading.local()  # the calls of an open batch() block, per thread
        self._gatherer = Gatherer()  # submit() calls waiting for a submission with the same options to end
        self._cancelled: Set[Task] = set()  # tasks whose futures were all cancelled: their jobs go
        self._ended: Set[Task] = set()  # tasks whose job is over while their result is not in yet
        self._failed_ids: Dict[str, float] = {}  # task ids failed for lack of a result: a late one is put away
        self._leftovers: Dict[str, List[str]] = {}  # per batch, the own jobs of stolen tasks: cancelled at its end
        self._watched = False
        self._broken = False  # its folder is gone: every future failed
        self._finished_batches: List[Tuple[records.BatchRecord, str]] = []  # to tidy, outside the lock
        self._shutdown = False
        self._closed = False
        self._closed_event = threading.Event()
        # an executor dropped without shutdown() still releases its backend (the local pool's threads)
        weakref.finalize(self, backend.close)
        _executors.add(self)

    def _after_fork_in_child(self) -> None:
        """The parent's other threads are gone in a forked child: a lock they held would stay held forever.
        (Taking the locks around every fork instead would serialise every local worker's start.)"""
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._tidy_lock = threading.Lock()
        self._service = self._service.copy_for_child()
        # the parent submits what it gathered; the child's copy must not go out a second time
        self._gatherer = Gatherer()

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

    def map_futures(self, fn: Callable[..., Any], *iterables: Iterable[Any], chunksize: int = 1) -> List[JobFuture]:
        """``map``'s one array, but its futures, in input order, instead of an iterator of results.

        Everything is submitted before this returns, and each future carries its array task's ``job_id`` once
        that task is submitted (at once, unless ``max_workers`` holds it back on OAR) and its ``task_id``: keep
        them, cancel some, ``wait``/``as_completed`` on them, without a ``batch()`` block. submitit's
        ``map_array``, which returns its jobs, is the same call (and an alias).
        """
        return self._map_futures(fn, iterables, chunksize, {})

    map_array = map_futures

    def _submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict, options: Dict[str, Any]) -> JobFuture:
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

    def _submission_ended(self, options: Dict[str, Any], window_over: bool = False) -> None:
        """What was gathered behind a submission goes out next, on the service thread; with nothing gathered, a
        window stays open for the next ``submit`` of a loop, and when it is over the executor may close."""
        window = 0.0 if window_over else self.backend.gather_window()
        gathering = self._gatherer.ended(options, window_over=not window)
        if gathering is not None:
            self._service.run(self._submit_gathered_then_next, gathering)
        elif not window:
            self._close_if_idle()
        else:
            _gather_at_exit(self)
            timer = threading.Timer(window, self._submission_ended, (options, True))
            timer.daemon = True  # at exit, _submit_gathered_at_exit submits what it would have
            timer.start()

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
        except BaseException as exc:  # noqa: B036
            for future in gathering.futures:
                if not future.cancelled():
                    _guarded(set_exception, future, exc)
        finally:
            self._gatherer.sent(gathering)

    def _map(
        self, fn: Callable[..., Any], iterables: Sequence[Iterable[Any]], timeout: Optional[float], chunksize: int, options: Dict
    ) -> Iterator[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        return _results_in_order(self._map_futures(fn, iterables, chunksize, options), deadline)

    def _map_futures(
        self, fn: Callable[..., Any], iterables: Sequence[Iterable[Any]], chunksize: int, options: Dict
    ) -> List[JobFuture]:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        calls: List[batchfiles.Call] = [(0, args, {}) for args in zip(*iterables)]
        tasks = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
        return self._submit_batch([fn], tasks, options) if tasks else []

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

        Functions may differ; an exception in the block submits nothing and cancels the collected futures. Calls
        with different ``options()`` go out as one array each; if one of those submissions fails, its futures
        fail with the error, the others are still submitted, and the first error is raised.
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
        first_error: Optional[BaseException] = None
        for group in groups.values():
            functions: List[Callable[..., Any]] = []
            tasks = []
            for fn, args, kwargs, _, _ in group:
                if not any(fn is known for known in functions):
                    functions.append(fn)
                tasks.append([(next(i for i, known in enumerate(functions) if known is fn), args, kwargs)])
            handed_out = [call[4] for call in group]
            try:
                self._submit_batch(functions, tasks, group[0][3], handed_out)
            except BaseException as exc:  # noqa: B036 - the futures were handed out: they must not stay PENDING
                for future in handed_out:
                    set_exception(future, exc)
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more calls; with ``wait``, return once every future is settled and its files tidied.

        Calls already accepted still run (also those gathered but not submitted yet), unless
        ``cancel_futures`` cancels those no worker has started. Calling it again does nothing more.
        """
        with self._lock:
            self._shutdown = True
            live = [f for task in self._tasks.values() for f in task.futures]
        live += self._gatherer.pending_futures()  # accepted before the shutdown: they go out all the same
        if cancel_futures:
            for future in live:
                future.cancel()
        if wait:
            cf.wait(live)
        self._close_if_idle()
        if wait and not self._service.on_this_thread():  # (from a callback, the tidying would wait for us)
            # the futures are settled; their files are tidied right after: wait for that, not forever
            if not self._closed_event.wait(TIDY_WAIT):
                logger.warning("oarfutures: %s still tidying %d task(s) at shutdown", self.folder, len(self._tasks))

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
        self._stop_all(reason, cancel_futures=True)

    def _stop_all(self, reason: str, cancel_futures: bool) -> None:
        """Cancel every unfinished job; futures not yet started are cancelled (``cancel_futures``) or fail."""
        for future in self._gatherer.pending_futures():  # not submitted yet: cancelled, they never will be
            future.cancel()
        with self._lock:
            tasks = [t for t in self._tasks.values() if not t.settling or t.aborting]
            for task in tasks:
                task.settling = task.aborting = True
            self._waiting.clear()
        job_ids = [t.job_id for t in tasks if t.job_id is not None]
        failure: Optional[BaseException] = None
        try:
            if job_ids:
                self.backend.cancel(job_ids)
        except BaseException as exc:  # noqa: B036 - the futures must resolve all the same; say why jobs may run
            failure, reason = exc, f"{reason}; cancelling the jobs failed, they may still run ({exc})"
        for task in tasks:
            error = JobFailedError(task.task_id, task.job_id, "CANCELLED", reason=reason)
            for future in task.futures:
                if not (cancel_futures and future.cancel()):
                    _guarded(set_exception, future, error)
            self._retire(task, how="aborted" if failure is None else "uncertain")
        if failure is not None:
            raise failure

    def interrupt(self, future: JobFuture) -> None:
        """Send the checkpoint signal to the job running ``future``, as a preemption would (to test checkpointing)."""
        if future.job_id is None or future.done():
            raise RuntimeError(f"task {future.task_id} is not running: nothing to interrupt")
        self.backend.interrupt(future.job_id)

    def logs(self, future: JobFuture) -> str:
        """stdout and stderr of every job that ran this future's task, in order (resubmissions included)."""
        # a task another job of its array ran (stolen) has logs of its own: that job's are another call's output
        stolen = [p for p in layout.stolen_log_paths(self.folder, future.task_id) if os.path.exists(p)] if future.task_id else []
        job_ids = future.job_ids[:-1] if stolen else future.job_ids
        parts = []
        for path in [p for job_id in dict.fromkeys(job_ids) for p in self.backend.log_paths(job_id)] + stolen:
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
    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _submit_batch(
        self,
        functions: Sequence[Callable[..., Any]],
        tasks: Sequence[batchfiles.Task],
        options: Dict,
        futures: Optional[List[JobFuture]] = None,
        accepted: bool = False,
    ) -> List[JobFuture]:
        """Write and submit one batch; ``futures``, one per task, are the ones already handed out (batch(),
        gathered calls). ``accepted``: calls gathered before a shutdown, which go out all the same."""
        if not accepted:
            self._check_open()
        batch = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
        batchfiles.write_batch(self.folder, batch, functions, tasks, self.warn_pickle_bytes, self.max_resubmissions)
        checkpointable = any(batchfiles.is_checkpointable(f) for f in functions)
        calls_per_task = [batchfiles.calls_in(calls) for calls in tasks]
        record = records.BatchRecord(batch, self.backend.name, calls_per_task, checkpointable=checkpointable)
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
        self, record: records.BatchRecord, index: int, calls: int, options: Dict, futures: Optional[List[JobFuture]] = None
    ) -> Task:
        futures = futures or [JobFuture() for _ in range(calls)]
        for future in futures:
            future.task_id = layout.task_id(record.batch, index)
            future._claim_for_cancel = self._claim_for_cancel
            future._on_cancel = self._on_future_cancelled
        return Task(record.batch, index, futures, options, record, record.checkpointable)

    def _register(self, record: records.BatchRecord, tasks: List[Task], waiting: List[Task]) -> None:
        """Make the batch's tasks live (lock held); ``waiting`` are the ones still to submit."""
        for task in tasks:
            self._tasks[task.task_id] = task
        self._batch_left[record.batch] = len(tasks)
        if waiting:
            self._waiting.append(collections.deque(waiting))
        if not self._watched:
            self._watched = True
            get_poller().watch(self)

    def attach(self) -> List[JobFuture]:
        """Futures for every call of the folder's unfinished batches, after the client that submitted them died.

        Results on disk resolve at once (delivered ones again too, so a map's results are all there, in order);
        jobs still queued or running are followed; a call is never run twice: tasks never submitted (or, locally,
        never started) are submitted now, and a local call whose worker died with its client fails. Processes
        take turns on the folder: a second ``attach()`` follows what the first submitted.
        """
        attached: List[JobFuture] = []
        with self._folder_lock:
            for record in records.load_all(self.folder):
                futures = self._attach_batch(record)
                if futures:
                    attached += futures
            self._submit_waiting()
        get_poller().query_soon(self)
        return attached

    def _attach_batch(self, record: records.BatchRecord) -> List[JobFuture]:
        with self._lock:
            known = any(t.batch == record.batch for t in self._tasks.values())
        if record.complete or known:
            return []
        if record.backend != self.backend.name:
            logger.warning("not attaching batch %s: it was submitted to %s, not %s", record.batch, record.backend, self.backend.name)
            return []
        if not os.path.exists(layout.functions_path(self.folder, record.batch)):
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

    def _submit_waiting(self, raise_for: Optional[str] = None) -> None:
        """Submit queued tasks as arrays, as many as the running cap leaves room for (all when uncapped).

        A wave the scheduler refuses fails its futures, or, when it belongs to ``raise_for`` (the batch the
        caller is submitting), is forgotten with its files and the error raised. Futures settle after the
        submission lock is released (their callbacks may submit).
        """
        refused: List[Tuple[List[Task], BaseException]] = []
        try:
            with self._submit_lock:
                while True:
                    with self._lock:
                        wave, limit = self._next_wave()
                    if not wave:
                        break
                    try:
                        self._submit_wave(wave, limit)
                    except BaseException as exc:  # noqa: B036 - sorted out below: raised or settled
                        if wave[0].batch == raise_for:
                            self._forget_batch(raise_for)
                            raise
                        refused.append((wave, exc))
        finally:
            for wave, exc in refused:
                for task in wave:
                    self._settle_failure(task, exc)
            self._tidy_finished()
        if self._cancelled:  # cancelled while their wave was being submitted
            self._service.run(self._process_cancellations)

    def _next_wave(self) -> Tuple[List[Task], Optional[int]]:
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
        wave: List[Task] = []
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

    def _submit_wave(self, wave: List[Task], limit: Optional[int]) -> None:
        first = wave[0]
        for task in wave:  # calls cancelled before submission, in a task whose other calls go: claim them
            for future in task.withdrawn:
                layout.claim(layout.claim_path(self.folder, task.batch, task.index, task.futures.index(future)), layout.CANCELLED)
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
        first.record.set_job_ids({task.index: job_id for task, job_id in zip(wave, job_ids)})
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
        _remove(layout.record_path(self.folder, batch))

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
            siblings_wanted = any(f is not future and f not in task.withdrawn and not f.cancelled() for f in task.futures)
            call = task.futures.index(future) if len(task.futures) > 1 else None
        paths = []
        if not siblings_wanted:
            paths.append(layout.claim_path(self.folder, task.batch, task.index))
        if call is not None:
            paths.append(layout.claim_path(self.folder, task.batch, task.index, call))
        for path in paths:
            try:
                if layout.claim(path, layout.CANCELLED) or layout.claim_owner(path) == layout.CANCELLED:
                    return True
            except OSError as exc:  # the batch's files are gone: no worker can load the call either
                logger.warning("oarfutures: cannot claim %s for cancel (%s); the task cannot run without its files", path, exc)
                return True
        return False

    def _on_future_cancelled(self, future: JobFuture) -> None:
        with self._lock:
            task = self._tasks.get(future.task_id)
            if task is None or task.settling or not task.all_cancelled():
                return  # (a settling task's job is dealt with by whoever settles it: abort, a result)
            self._cancelled.add(task)
        self._service.run(self._process_cancellations)

    def _process_cancellations(self) -> None:
        """Cancel the jobs of tasks whose every future was cancelled (one backend call). Service thread."""
        with self._lock:
            candidates, self._cancelled = self._cancelled, set()
            to_cancel: List[str] = []
            for task in candidates:
                if task.settling or self._tasks.get(task.task_id) is not task:
                    continue
                if task.phase is Phase.SUBMITTING:
                    self._cancelled.add(task)  # its job id is not known yet: the submitter hands it back
                    continue
                if task.job_id is not None:
                    to_cancel.append(task.job_id)
                self._retire_locked(task)
        if to_cancel:
            try:
                self.backend.cancel(to_cancel)
                logger.info("cancelled %d job(s)", len(to_cancel))
            except Exception as exc:  # their calls are claimed: at worst the jobs start and exit at once
                logger.warning("oarfutures: cancelling %d job(s) failed: %s", len(to_cancel), exc)
        self._after_retire()

    # ------------------------------------------------------------------ called by the poller thread
    def poll_files(self, now: float) -> bool:
        """One directory scan: hand every live task whose result file is there to the service thread; then
        fail the tasks whose job has been over for their grace period without a result."""
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
        if status is not None and (status.state is JobState.COMPLETED or (task.vanished and status.state is JobState.RUNNING)):
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

    def live_job_ids(self) -> List[str]:
        """For the poller: the jobs to ask the scheduler about, so that one query serves every executor."""
        with self._lock:
            submitted = Phase.SUBMITTED  # a local: a global and an attribute lookup less per task
            return [t.job_id for t in self._tasks.values() if t.phase is submitted and t.job_id and not t.settling]

    def apply_states(self, statuses: Dict[str, JobStatus], now: float) -> bool:
        """Act on the backend's answer; True if any job changed state (the poller then queries again sooner)."""
        changed = False
        with self._lock:
            if self.backend.reports_changes_only:  # only the news: no need to look at every task
                tasks = [self._by_job[job_id] for job_id in statuses if job_id in self._by_job]
            elif self._settled_answer is not None and self._settled_answer[0] is statuses and self._settled_answer[1] == self._by_job:
                # the very answer (the backend gives the same object when the queue did not move) already applied to
                # these very jobs, none of them missing from it: going over them again would change nothing
                return False
            else:
                tasks = [t for t in self._tasks.values() if t.phase is Phase.SUBMITTED]
                jobs = dict(self._by_job)
        missing = False
        quiet = (JobState.PENDING, JobState.RUNNING)  # a job still in one of these, with the status it had, needs nothing
        for task in tasks:
            if task.settling:
                continue
            status = statuses.get(task.job_id or "")
            if status is task.last_status and status is not None and task.ended_since is None and status.state in quiet:
                continue  # the same JobStatus object as last time, queued or (marked) running: nothing to do
            if status is None:  # unknown to the scheduler: purged, or not visible yet after submission
                missing = True
                # sacct may show a new array only after seconds (more under load): a never-seen job gets longer
                grace = min(self.result_grace, FAILED_JOB_GRACE) if task.last_status is not None else UNSEEN_GRACE
                if now - task.submitted_at > grace:
                    task.vanished = True
                    self._mark_ended(task, now)
                continue
            task.vanished = False
            if status.follow_up:  # resubmitted under a new job id: follow it
                self._follow(task, status.follow_up)
                changed = True
                continue
            if status != task.last_status:
                changed = True
                task.last_status = status
            if status.state.ended:
                self._mark_ended(task, now)
                continue
            if task.ended_since is not None:  # else a no-op (only this thread sets it): no lock taken per job
                self._mark_ended(task, None)
            if status.state is JobState.RUNNING and not task.running:
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

    def _mark_ended(self, task: Task, now: Optional[float]) -> None:
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
                poller.forget(self)

    # ------------------------------------------------------------------ settling (service thread)
    def _deliver(self, task: Task) -> None:
        """Read a task's result, settle its futures, then move the file and do the bookkeeping."""
        path = layout.result_path(self.folder, task.batch, task.index)
        delivered = layout.delivered_path(self.folder, task.batch, task.index)
        try:
            outcomes, resubmissions, stolen_by = batchfiles.read_result_and_runner(path, delivered)
        except batchfiles.CorruptResultError as exc:
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
                missing = batchfiles.CorruptResultError(f"result file {path} holds {len(outcomes)} outcome(s) for {len(task.futures)} call(s)")
                _guarded(set_exception, future, missing)
                continue
            if outcome[0] == "ok":
                _guarded(set_result, future, outcome[1])
            else:
                _guarded(set_exception, future, batchfiles.outcome_to_exception(outcome))
        # kept until the whole batch is delivered, so that a client re-attaching after a crash gets every result
        with contextlib.suppress(OSError):
            os.replace(path, delivered)
        self._forget_stolen_marker(task)
        self._retire(task)

    def _settle_failure(self, task: Task, error: BaseException) -> None:
        for future in task.futures:
            _guarded(set_exception, future, error)
        self._forget_stolen_marker(task)
        self._retire(task)

    # ------------------------------------------------------------------ stolen tasks (see worker.steal)
    def _note_stolen(self, stolen: List[Tuple[str, str]], delivering: Optional[Task] = None) -> None:
        """Follow the job that stole a task instead of the task's own job (from now on its state is the task's:
        running, or over without a result, which fails the task naming that job); the own job is left over and
        cancelled once its batch is done. ``stolen``: (task id, stealing job id) pairs; ``delivering``: the task
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
                task.last_status, task.vanished, task.ended_since = None, False, None
                task.submitted_at = time.monotonic()
                self._ended.discard(task)
                if task.own_job_id:
                    self._leftovers.setdefault(task.batch, []).append(task.own_job_id)
                for future in task.futures:
                    future.job_ids.append(job_id)
                changed = True
        if changed:  # (markers stay until delivery: only news asks for a query sooner)
            get_poller().query_soon(self)

    def _forget_stolen_marker(self, task: Task) -> None:
        if task.own_job_id is not None and task.job_id:
            _remove(layout.stolen_marker_path(self.folder, task.batch, task.index, task.job_id))

    def _cancel_leftovers(self, batch: str) -> None:
        """Every task of the batch is settled: its stolen tasks' own jobs have nothing to run, one cancel for all
        (Slurm: ranges of one array). Those that started already exited at once (their claim was taken)."""
        with self._lock:
            leftovers = self._leftovers.pop(batch, [])
        if leftovers:
            try:
                self.backend.cancel(leftovers)
                logger.info("cancelled %d leftover job(s) of batch %s (their tasks were stolen)", len(leftovers), batch)
            except Exception as exc:  # they exit at once if they start: their claims are taken
                logger.warning("oarfutures: cancelling the leftover jobs of batch %s failed: %s", batch, exc)

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
            if self._service.on_this_thread():
                self._submit_waiting()
            else:
                self._service.run(self._submit_waiting)
        self._close_if_idle()

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
                batchfiles.remove_batch_files(self.folder, record.batch, len(record.calls))
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
                except OSError:  # not there (a local call that printed nothing, a job that never started)
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


def _grace(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"result_grace must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _guarded(settle: Callable[[JobFuture, Any], None], future: JobFuture, value: Any) -> None:
    """Settle one future; whatever its callbacks raise, the next future is still settled."""
    try:
        settle(future, value)
    except BaseException:  # noqa: B036 - e.g. a callback raising SystemExit
        logger.exception("oarfutures: a callback of future %s raised", future.task_id)


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
        """Made by ``executor.options(...)``, which checks the parameters first.

        Args:
            executor: The executor the calls go to: they share its folder, ``max_workers`` and futures.
            options: The validated parameters that override the executor's for these calls.
        """
        self._executor = executor
        self._options = options

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> JobFuture:
        """``executor.submit`` with this view's parameters."""
        return self._executor._submit(fn, args, kwargs, self._options)

    def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: Optional[float] = None, chunksize: int = 1
    ) -> Iterator[Any]:
        """``executor.map`` with this view's parameters."""
        return self._executor._map(fn, iterables, timeout, chunksize, self._options)

    def map_futures(self, fn: Callable[..., Any], *iterables: Iterable[Any], chunksize: int = 1) -> List[JobFuture]:
        """``executor.map_futures`` with these parameters: one array, its futures in input order."""
        return self._executor._map_futures(fn, iterables, chunksize, self._options)

    map_array = map_futures
