"""The executor core: ``concurrent.futures.Executor`` semantics on top of any ``Backend``.

::

    user thread                  poller thread (one per process)        service thread (one per executor)   job
    -----------                  -------------------------------        ---------------------------------   ---
    submit/map --> batch files ----------------------------------------------------------------------> worker:
               +-> backend.submit (one array per call)                                                 claims,
                                 one scandir of results/ per tick ---> read result, settle futures <-- runs,
                                 one backend.query per group, on a      (callbacks: another thread),   writes
                                 thread of its own, less often          cancel jobs, next wave         results/
    [executor, submitting]       [poller -> tracking]                   [tracking, tasks, submitting]

``JobExecutor`` is one class in four layers, one module each, every one using only those below it:

    executor.JobExecutor         the ``Executor`` API: submit, map, batch(), options(), shutdown, abort, attach
    submitting.BatchSubmitter    batches written once, submitted in waves under ``max_workers``; gathering
    tracking.TaskTracker         the poller's side (``poller.Tracked``): results and job states settle futures;
                                 cancellation
    tasks.TaskTable              the state they share (Task, Wave, Phase, the locks), retiring tasks, tidying

Its arguments are checked before it exists (``settings.CoreSettings``), and the public executors
(``oarfutures.executors``) build it on their scheduler's backend.

The core knows no scheduler: it writes files, keeps the futures of live tasks, and turns what the backend says
(running, ended) and what lands in ``results/`` into future transitions. A job that ended with no result file
within its grace period fails its futures with ``JobFailedError``: no future waits forever.

Who runs a call is decided once, in the folder: the worker *claims* a task (and each call of a chunk) before it
runs it, and ``cancel()`` competes for the same claim (``layout.claim``), so "cancelled" and "ran" exclude each
other on every backend, and ``attach()`` never runs again a call that started. On a cluster, a job that has run
its own task may claim and run pending tasks of its array (``worker.stealing``): it leaves a marker in ``results/``,
and the core then follows the stealer's job for that task.

``submit`` calls that come while a submission with the same options is in flight are gathered (``gathering``) and
go out together as the next batch, from the service thread.

Lock order (outer first; never take an outer lock while holding an inner one):

    future._transition  ->  executor._submit_lock  ->  executor._tidy_lock  ->  executor._lock
                        ->  poller, record, backend locks

No user callback runs under any of them, nor on a thread that settles futures: futures settle on the service
thread (a local backend's: on the slot that relayed the call) with no package lock held, their callbacks run on the
executor's callbacks thread, and ``futures.py`` defers callbacks until a future's own transition lock is released.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from concurrent import futures as cf
from typing import Any, Callable, Literal

from oarfutures.backends.base import Backend
from oarfutures.core import batchfiles, retention
from oarfutures.core.futures import JobFuture, cancel_all, set_exception
from oarfutures.core.settings import CoreSettings
from oarfutures.core.submitting import BatchSubmitter
from oarfutures.protocol import layout

logger = logging.getLogger("oarfutures")

SUBMITTED_AHEAD = 1024  # calls dask and joblib keep submitted to a cluster executor (its _max_workers)
#: calls dask keeps submitted to the local pool per worker: a worker's next call already waits in the pool's queue
#: when one ends (ProcessPoolExecutor prefetches into its call queue likewise), instead of a round trip through
#: dask first; 200 dask tasks of 5 ms took 1.5 s with 1 per worker, 1.05 s with 4, 1.1 s with 16
SUBMITTED_AHEAD_PER_LOCAL_WORKER = 4
TIDY_WAIT = 30.0  # seconds shutdown(wait=True) waits, after the futures settled, for their files to be tidied

_executors: weakref.WeakSet[JobExecutor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for executor in list(_executors):
        executor._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


class JobExecutor(BatchSubmitter, cf.Executor):
    """Scheduler-agnostic executor; ``LocalPoolExecutor``, ``SlurmPoolExecutor``, ``OarPoolExecutor`` build on it.

    ``result_grace``: seconds a job that ended normally may take to show its result file (shared filesystems
    cache directory listings; NFS's attribute cache holds them up to a minute by default). A job that failed, was
    cancelled or timed out gets at most ``FAILED_JOB_GRACE`` seconds. Before failing a future the result file is
    looked up by name, which NFS revalidates.
    """

    def __init__(self, backend: Backend, settings: CoreSettings) -> None:
        """Made by the public executors, which check the arguments (``CoreSettings.check``) and build ``backend``."""
        super().__init__(backend, settings)
        #: what dask and joblib read as the pool size: how many calls they keep submitted at once. A cluster
        #: queues calls beyond the running cap at no cost, and calls submitted together go out as one array, so
        #: they see at least SUBMITTED_AHEAD whatever the cap (dask with max_workers=4 would otherwise make one
        #: sbatch per call: it submits the next one as each ends); the local pool sets its own.
        self._max_workers = max(settings.max_workers or 0, SUBMITTED_AHEAD)
        # an executor dropped without shutdown() still releases its backend (the local pool's threads)
        weakref.finalize(self, backend.close)
        _executors.add(self)
        if settings.default_folder:  # one more default folder: the old finished ones go (see retention)
            retention.clean_default_folders_soon(os.path.dirname(self.folder))

    # ------------------------------------------------------------------ the Executor API
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> JobFuture:
        """Run ``fn(*args, **kwargs)`` as one job; the future stays PENDING while the job is queued."""
        return self._submit(fn, args, kwargs, {})

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """One array for all calls (``chunksize`` calls per array task), results in input order.

        Everything is submitted before this returns; ``timeout`` is one deadline for the whole iteration; closing
        the iterator early cancels the calls not yet returned.
        """
        return self._map(fn, iterables, timeout, chunksize, {})

    def map_futures(self, fn: Callable[..., Any], *iterables: Iterable[Any], chunksize: int = 1) -> list[JobFuture]:
        """``map``'s one array, but its futures, in input order, instead of an iterator of results.

        Everything is submitted before this returns, and each future carries its array task's ``job_id`` once
        that task is submitted (at once, unless ``max_workers`` holds it back on OAR) and its ``task_id``: keep
        them, cancel some, ``wait``/``as_completed`` on them, without a ``batch()`` block. submitit's
        ``map_array``, which returns its jobs, is the same call (and an alias).
        """
        return self._map_futures(fn, iterables, chunksize, {})

    map_array = map_futures

    def _map(
        self,
        fn: Callable[..., Any],
        iterables: Sequence[Iterable[Any]],
        timeout: float | None,
        chunksize: int,
        options: dict,
    ) -> Iterator[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        return _results_in_order(self._map_futures(fn, iterables, chunksize, options), deadline, self._cancel_soon)

    def _map_futures(
        self, fn: Callable[..., Any], iterables: Sequence[Iterable[Any]], chunksize: int, options: dict
    ) -> list[JobFuture]:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        calls: list[batchfiles.Call] = [(0, args, {}) for args in zip(*iterables)]
        tasks = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
        return self._submit_batch([fn], tasks, options) if tasks else []

    # ------------------------------------------------------------------ parameters, per-call options, batches
    def update_parameters(self, **parameters: Any) -> None:
        """Change parameters for later submissions; unknown names are rejected with the list of valid ones.

        Generic names (walltime, timeout_min, nodes, tasks_per_node, cpus_per_task, gpus_per_node, mem_gb, name,
        setup) mean the same on every backend; ``oar_``/``slurm_`` prefixed ones apply only on that scheduler.
        """
        self.backend.parameters.update(self.backend.validate(parameters))

    def options(self, **parameters: Any) -> ExecutorOptions:
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
        calls: list[tuple[Callable[..., Any], tuple, dict, dict[str, Any], JobFuture]] = []
        self._collecting.calls = calls
        try:
            yield
        except BaseException:
            for *_, future in calls:
                future.cancel()
            raise
        finally:
            self._collecting.calls = None
        groups: dict[str, list] = {}  # one array per distinct set of options
        for call in calls:
            if not call[4].cancelled():
                groups.setdefault(repr(sorted(call[3].items())), []).append(call)
        first_error: BaseException | None = None
        for group in groups.values():
            functions: list[Callable[..., Any]] = []
            tasks = []
            for fn, args, kwargs, _, _ in group:
                if not any(fn is known for known in functions):
                    functions.append(fn)
                tasks.append([(next(i for i, known in enumerate(functions) if known is fn), args, kwargs)])
            handed_out = [call[4] for call in group]
            try:
                self._submit_batch(functions, tasks, group[0][3], handed_out)
            except BaseException as exc:  # the futures were handed out: they must not stay PENDING
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
            cancel_all(live)
        if wait:
            cf.wait(live)
        self._close_if_idle()
        # the futures are settled; their files are tidied right after, and their callbacks run: wait for that, as
        # ProcessPoolExecutor's shutdown does, not forever (and not for the thread we are on)
        if wait and not self._service.on_this_thread() and not self._closed_event.wait(TIDY_WAIT):
            logger.warning("oarfutures: %s still tidying %d task(s) at shutdown", self.folder, len(self._tasks))
        if wait and not self._callbacks.on_this_thread() and not self._callbacks.wait_until_idle(TIDY_WAIT):
            logger.warning("oarfutures: %s: a callback still runs at shutdown", self.folder)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
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

    def interrupt(self, future: JobFuture) -> None:
        """Send the checkpoint signal to the job running ``future``, as a preemption would (to test checkpointing)."""
        if future.job_id is None or future.done():
            raise RuntimeError(f"task {future.task_id} is not running: nothing to interrupt")
        self.backend.interrupt(future.job_id)

    def logs(self, future: JobFuture) -> str:
        """stdout and stderr of every job that ran this future's task, in order (resubmissions included)."""
        # a task another job of its array ran (stolen) has logs of its own: that job's are another call's output
        stolen = (
            [p for p in layout.stolen_log_paths(self.folder, future.task_id) if os.path.exists(p)]
            if future.task_id
            else []
        )
        job_ids = future.job_ids[:-1] if stolen else future.job_ids
        parts = []
        for path in [p for job_id in dict.fromkeys(job_ids) for p in self.backend.log_paths(job_id)] + stolen:
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    parts.append(f"==> {path} <==\n{f.read()}")
        return "\n".join(parts)

    def status(self) -> dict[str, int]:
        """How many calls of this executor are pending (queued) and running now."""
        with self._lock:
            live = [f for task in self._tasks.values() for f in task.futures]
        return {
            "pending": sum(1 for f in live if not f.running() and not f.done()),
            "running": sum(1 for f in live if f.running()),
        }


def _results_in_order(
    futures: list[JobFuture], deadline: float | None, cancel_soon: Callable[[list[JobFuture]], None]
) -> Iterator[Any]:
    """Yield results in submission order; on early close, error or timeout, cancel what was not returned.

    An iterator dropped in a reference cycle is closed by the garbage collector, in whichever thread allocated
    at the wrong moment, perhaps one of ours holding this executor's lock, which ``cancel()`` takes: from there
    it only asks for the cancels (``cancel_soon``), which take no lock."""
    futures.reverse()
    try:
        while futures:
            # yielded straight from the call: a suspended generator must not keep the last result alive
            yield _result_or_cancel(futures.pop(), deadline)
    finally:
        if futures and getattr(_collection, "running", False):
            cancel_soon(futures)
        else:
            cancel_all(futures)


#: ``running``: this thread is in a garbage collection (set by ``_note_collection``)
_collection = threading.local()


def _note_collection(phase: str, info: dict[str, Any]) -> None:
    _collection.running = phase == "start"


gc.callbacks.append(_note_collection)


def _result_or_cancel(future: JobFuture, deadline: float | None) -> Any:
    try:
        return future.result(None if deadline is None else deadline - time.monotonic())
    except BaseException:
        future.cancel()
        raise


class ExecutorOptions:
    """What ``executor.options(...)`` returns: ``submit`` and ``map`` with other parameters, same executor."""

    def __init__(self, executor: JobExecutor, options: dict[str, Any]) -> None:
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
        self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[Any]:
        """``executor.map`` with this view's parameters."""
        return self._executor._map(fn, iterables, timeout, chunksize, self._options)

    def map_futures(self, fn: Callable[..., Any], *iterables: Iterable[Any], chunksize: int = 1) -> list[JobFuture]:
        """``executor.map_futures`` with these parameters: one array, its futures in input order."""
        return self._executor._map_futures(fn, iterables, chunksize, self._options)

    map_array = map_futures
