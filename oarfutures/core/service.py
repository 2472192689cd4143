"""A thread of one executor's own that runs its blocking work in order: settling futures, cancelling, refilling.

Settling a future runs the user's callbacks, and cancelling or submitting runs a scheduler command that may hang
for minutes. Neither may run on the process's single poller thread: one executor's slow ``scancel`` or a callback
that waits on a result would stall every executor of the process. Each executor therefore has two of these: one
for its own work (settling futures, cancelling, submitting), and one that runs nothing but its futures' callbacks
(``callbacks_runner``). A callback may block, or wait for calls of its own executor (shut it down, wait for a
result, submit and wait): the work that settles those goes on meanwhile, and only later callbacks wait.

The thread starts on demand and ends when it has been idle for a moment, so an idle executor holds no thread. It
also runs work that is due later (``run_later``: the end of a ``submit`` gathering window), which a timer thread per
submission used to do: dask submits its tasks one at a time, and starting ~90 threads for 200 tasks cost more CPU
than the tasks' own bookkeeping.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from typing import Any, Callable

from oarfutures import threadpolicy
from oarfutures.core.futures import callbacks_run_by

logger = logging.getLogger("oarfutures")

IDLE_SECONDS = 2.0


class ServiceThread:
    def __init__(self, name: str, callbacks_runner: Callable[[Callable[[], None]], None] | None = None) -> None:
        """``callbacks_runner``: who runs the callbacks of the futures this thread's jobs settle (see
        ``futures.callbacks_run_by``); None: this thread, in the job that settles them."""
        self._name = name
        self._callbacks_runner = callbacks_runner
        self._jobs: collections.deque[tuple[Callable[..., Any], tuple]] = collections.deque()
        #: (when, order, job, args): jobs that become due at a time, in a heap (order: the earlier of two equal times)
        self._later: list[tuple[float, int, Callable[..., Any], tuple]] = []
        self._order = itertools.count()
        self._ready = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    def run(self, job: Callable[..., Any], *args: Any) -> None:
        """Run ``job(*args)`` on this thread, after what was handed over before it."""
        with self._ready:
            self._jobs.append((job, args))
            try:
                self._start()
            except RuntimeError:  # at interpreter shutdown (Python 3.12+): the job was not taken
                self._jobs.pop()
                raise

    def hand(self, job: Callable[..., Any], *args: Any) -> None:
        """Run ``job(*args)`` on this thread: now if this is it, else handed over (``run``). At interpreter
        shutdown, when no thread can start any more, here and now rather than never."""
        if self.on_this_thread():
            job(*args)
            return
        try:
            self.run(job, *args)
        except RuntimeError:
            job(*args)

    def run_later(self, delay: float, job: Callable[..., Any], *args: Any) -> None:
        """Run ``job(*args)`` on this thread once ``delay`` seconds have passed, after what is due by then."""
        with self._ready:
            entry = (time.monotonic() + delay, next(self._order), job, args)
            heapq.heappush(self._later, entry)
            try:
                self._start()
            except RuntimeError:
                self._later.remove(entry)
                heapq.heapify(self._later)
                raise

    def _start(self) -> None:
        """Wake the thread, or start it (lock held)."""
        if self._thread is None or not self._thread.is_alive():
            thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            thread.start()
            self._thread = thread
        self._ready.notify()

    def on_this_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def wait_until_idle(self, timeout: float) -> bool:
        """Return once what was handed over before this call has run; False if that took over ``timeout``
        seconds. At once if the thread is not running: it only ends once it has nothing left to do."""
        with self._ready:
            if self._thread is None or not self._thread.is_alive():
                return True
        ran = threading.Event()
        try:
            self.run(ran.set)
        except RuntimeError:  # at interpreter shutdown: no thread to wait for
            return True
        return ran.wait(timeout)

    def _loop(self) -> None:
        threadpolicy.inherited()  # (a local slot thread, a relay, may start this one: callbacks run here)
        if self._callbacks_runner is not None:
            with callbacks_run_by(self._callbacks_runner):
                self._serve()
        else:
            self._serve()

    def _serve(self) -> None:
        while True:
            with self._ready:
                if not self._next_due():
                    if self._thread is threading.current_thread():
                        self._thread = None
                    return
                job, args = self._jobs.popleft()
            try:
                job(*args)
            except BaseException:  # a callback's SystemExit must not end the executor's service
                logger.exception("oarfutures: %s failed in %s", getattr(job, "__name__", job), self._name)
            del job, args  # while idle, hold no task: its futures' results must be freed when the user drops them

    def _next_due(self) -> bool:
        """Wait (lock held) until a job is due; False after IDLE_SECONDS with nothing to run or to wait for."""
        idle_until = time.monotonic() + IDLE_SECONDS
        while True:
            now = time.monotonic()
            while self._later and self._later[0][0] <= now:
                _, _, job, args = heapq.heappop(self._later)
                self._jobs.append((job, args))
            if self._jobs:
                return True
            if self._later:
                self._ready.wait(self._later[0][0] - now)
            elif now < idle_until:
                self._ready.wait(idle_until - now)
            else:
                return False

    def copy_for_child(self) -> ServiceThread:
        """In a forked child: the same queued work, for a thread the child starts on its next ``run``.

        No thread may start here: this runs in every child of a fork, including the short-lived ones that
        ``subprocess`` forks to exec a worker, where queued work (moving result files) must never run. Work due
        later is the parent's (the end of its gathering windows: the child's executor starts with none open).
        """
        child = ServiceThread(self._name, self._callbacks_runner)
        child._jobs.extend(self._jobs)
        return child
