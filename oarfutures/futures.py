"""Standard futures that know their job, and the only code that moves them between states.

Three threads may touch a future at once: the user's (``cancel``), the poller (running, result) and the
executor's shutdown/abort. ``set_running_or_notify_cancel`` must be called exactly once per future, or
``wait``/``as_completed`` hang on a cancelled future (never notified) or it raises (notified twice); every
transition therefore goes through the helpers below under the future's own lock. User callbacks run inside
those calls: the lock is reentrant and no executor lock is held there, so callbacks may ``submit``.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Callable, List, Optional


class JobFuture(Future):
    """A ``concurrent.futures.Future`` whose ``cancel()`` also cancels its scheduler job while it is queued."""

    def __init__(self, task_id: str = "") -> None:
        super().__init__()
        self.task_id = task_id
        self.job_ids: List[str] = []  # every scheduler job that ran this task, resubmissions included
        self.resubmissions = 0  # how many times a checkpoint brought the task back (known once it is done)
        self._transition = threading.RLock()
        self._notified = False
        self._on_cancel: Optional[Callable[["JobFuture"], None]] = None

    @property
    def job_id(self) -> Optional[str]:
        """The scheduler job currently running this task (None before submission)."""
        return self.job_ids[-1] if self.job_ids else None

    def cancel(self) -> bool:
        with self._transition:
            if not super().cancel():
                return False
            first = not self._notified
            _notify_once(self)
        if first and self._on_cancel is not None:
            self._on_cancel(self)
        return True


def _notify_once(future: JobFuture) -> bool:
    """Call set_running_or_notify_cancel once; True if the future is now RUNNING."""
    if future._notified:
        return future.running()
    future._notified = True
    return future.set_running_or_notify_cancel()


def mark_running(future: JobFuture) -> bool:
    """PENDING -> RUNNING; False if it was cancelled (it is then notified)."""
    with future._transition:
        return not future.done() and _notify_once(future)


def set_result(future: JobFuture, value: Any) -> None:
    with future._transition:
        if not future.done() and _notify_once(future):
            future.set_result(value)


def set_exception(future: JobFuture, exc: BaseException) -> None:
    with future._transition:
        if not future.done() and _notify_once(future):
            future.set_exception(exc)
