"""Standard futures that know their job, and the only code that moves them between states.

Three threads may touch a future at once: the user's (``cancel``), the poller (running) and the executor's
delivery thread (result, error). ``set_running_or_notify_cancel`` must be called exactly once per future, or
``wait``/``as_completed`` hang on a cancelled future (never notified) or it raises (notified twice); every
transition therefore goes through the helpers below under the future's own ``_transition`` lock.

Two rules keep this deadlock-free (the package's lock order is written in ``executor.py``):

* ``cancel()`` first competes for the call's *claim* in the job folder (see ``layout.claim``): a worker that won
  it is running the call, so the future cannot be cancelled; a won claim means no worker will ever run it. The
  claim and the state change happen under ``_transition``, so the poller cannot mark the future RUNNING between
  them.
* No user callback runs while ``_transition`` is held: callbacks that ``Future`` would run inside a transition
  are deferred until the lock is released, in the same thread. A callback may therefore cancel or wait on other
  futures, or ``submit`` more work (joblib and dask do).

The executor's own threads never run user code (``callbacks_run_by``): its service thread and a local backend's
slots hand the callbacks of what they settle to the executor's callbacks thread (see ``service``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, InvalidStateError
from typing import Any, Callable


class JobFuture(Future):
    """A ``concurrent.futures.Future`` whose ``cancel()`` also cancels its scheduler job while it is queued.

    Attributes:
        task_id: oarfutures' id of the call's task.
        job_ids: Every scheduler job that ran or was meant to run the task, resubmissions included.
        resubmissions: How many times a checkpoint brought the task back (known once it is done).
    """

    def __init__(self, task_id: str = "") -> None:
        """Made by the executors, not by you: ``submit``, ``map``, ``attach`` hand them out.

        Args:
            task_id: oarfutures' id of the call's task, independent of the scheduler's job ids (which change
                when a checkpointed call comes back); ``oarfutures logs FOLDER TASK_ID`` takes it.
        """
        super().__init__()
        self.task_id = task_id
        self.job_ids: list[str] = []  # every scheduler job that ran this task, resubmissions included
        self.resubmissions = 0  # how many times a checkpoint brought the task back (known once it is done)
        self._transition = threading.RLock()
        self._notified = False
        self._deferring: int | None = None  # the thread whose callbacks wait for the end of its transition
        self._deferred = False
        #: set by the executor: takes the call's claim for a cancellation; False when a worker holds it
        self._claim_for_cancel: Callable[[JobFuture], bool] | None = None
        #: set by the executor: told once the future was cancelled (it then cancels the job)
        self._on_cancel: Callable[[JobFuture], None] | None = None

    @property
    def job_id(self) -> str | None:
        """The scheduler job currently running this task (None before submission)."""
        return self.job_ids[-1] if self.job_ids else None

    def cancel(self) -> bool:
        """Cancel the call if no worker has started it: it is then guaranteed never to run."""
        with _transition(self):
            if self.done():
                return self.cancelled()
            if self.running():
                return False
            if self._claim_for_cancel is not None and not self._claim_for_cancel(self):
                _notify_once(self)  # a worker won the claim: the call is running, whatever the scheduler said
                return False
            super().cancel()
            first = not self._notified
            _notify_once(self)
        if first and self._on_cancel is not None:
            self._on_cancel(self)
        return True

    def _invoke_callbacks(self) -> None:
        if self._deferring == threading.get_ident():
            self._deferred = True  # run when this thread's transition ends, outside the lock
            return
        runner = getattr(_this_thread, "run_callbacks", None)
        if runner is None:
            super()._invoke_callbacks()  # type: ignore[misc]  # (private to Future, hence not in its stubs)
        elif self._done_callbacks:  # type: ignore[attr-defined]  # (settled: no callback is added to it any more)
            runner(super()._invoke_callbacks)  # type: ignore[misc]


#: ``run_callbacks``: set by ``callbacks_run_by`` for the thread it runs in
_this_thread = threading.local()


@contextlib.contextmanager
def callbacks_run_by(runner: Callable[[Callable[[], None]], None]) -> Iterator[None]:
    """Futures settled in this block have their callbacks run by ``runner`` (which gets a function to call)."""
    _this_thread.run_callbacks = runner
    try:
        yield
    finally:
        _this_thread.run_callbacks = None


@contextlib.contextmanager
def _transition(future: JobFuture) -> Iterator[None]:
    """Hold the future's transition lock; callbacks triggered meanwhile run after it is released."""
    with future._transition:
        outer = future._deferring
        future._deferring = threading.get_ident()
        try:
            yield
        finally:
            future._deferring = outer
            run_callbacks = outer is None and future._deferred
            if run_callbacks:
                future._deferred = False
    if run_callbacks:
        future._invoke_callbacks()


def cancel_all(futures: Iterable[JobFuture]) -> None:
    for future in futures:
        future.cancel()


def _notify_once(future: JobFuture) -> bool:
    """Call set_running_or_notify_cancel once (lock held); True if the future is now RUNNING."""
    if future._notified:
        return future.running()
    future._notified = True
    return future.set_running_or_notify_cancel()


def mark_running(future: JobFuture) -> bool:
    """PENDING -> RUNNING; False if it was cancelled (it is then notified)."""
    with _transition(future):
        return not future.done() and _notify_once(future)


def set_result(future: JobFuture, value: Any) -> None:
    with _transition(future):
        if not future.done() and _notify_once(future):
            _settle(future.set_result, value)


def set_exception(future: JobFuture, exc: BaseException) -> None:
    with _transition(future):
        if not future.done() and _notify_once(future):
            _settle(future.set_exception, exc)


def _settle(setter: Callable[[Any], None], value: Any) -> None:
    try:
        setter(value)
    except InvalidStateError:  # settled by a racing path (abort, shutdown): the first outcome stands
        pass
