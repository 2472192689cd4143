"""One daemon thread per process notices what happened to the jobs of every executor.

Each tick costs the same however many futures are pending: one ``scandir`` of each busy executor's results folder,
and — less often, on a growing interval — one state query per backend group for all its live jobs (one ``squeue``
for every Slurm executor of the process). The poller only notices and decides; it never blocks on anything an
executor or its user controls:

* scheduler queries run on a thread of their own, one in flight per group, so a hung ``squeue`` delays that
  group's states and nothing else;
* settling futures (the user's callbacks), cancelling and submitting run on each executor's service thread;
* an exception in one executor's tick is logged and stays with that executor (``Tracked.on_poll_error``).

The poller holds an executor only while it has live tasks: futures of an executor the user dropped still
resolve, and an idle executor is not kept alive.

Locks: the poller's lock is the innermost of the package. It guards the set of executors only, and no other
lock is taken and no executor is called while it is held; executors call ``watch``/``forget`` under their own lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

logger = logging.getLogger("oarfutures")

SCAN_INTERVAL = (0.02, 0.5)  # seconds between result scans: right after activity, and at most
BACKOFF = 1.5


class Queried(Protocol):
    """What the poller asks of an executor's backend (``backends.base.Backend`` documents each)."""

    query_interval: tuple[float, float]
    reports_changes_only: bool
    query_is_cheap: bool

    def query_group(self) -> object:
        """Backends with equal groups share one query per tick."""

    def query(self, job_ids: Sequence[str]) -> Mapping[str, Any]:
        """The states of these jobs (or, ``reports_changes_only``, of those that changed), in one call."""


class Tracked(Protocol):
    """What the poller asks of an executor: the whole interface between the two (``core.tracking.TaskTracker``
    implements it). The executor in turn calls ``watch``, ``forget``, ``query_soon`` and ``wake``; the poller
    owns the schedule of queries (``_schedule``), the executor says only when there is news."""

    @property
    def backend(self) -> Queried:
        """Its backend: what to query, how often, with whom together."""

    def poll_files(self, now: float) -> bool:
        """Scan for results and overdue jobs (no blocking work); True if anything was found."""

    def live_job_ids(self) -> Sequence[str]:
        """Job ids whose state the scheduler should be asked for (not changed by the caller: it may be the very
        sequence of the last call)."""

    def apply_states(self, statuses: Mapping[str, Any], now: float) -> bool:
        """Act on a query's answer; True if any job changed state."""

    def on_poll_error(self, error: BaseException) -> None:
        """A tick of this executor raised: log it, and fail its futures if it cannot go on."""

    def release_if_idle(self, poller: Poller) -> None:
        """``poller.forget(self)`` if nothing is left to watch (under the executor's own lock)."""


class _Query:
    """One state query in flight for a group of executors, on its own thread."""

    def __init__(self, executors: list[Tracked], ids: Sequence[str], done: threading.Event) -> None:
        self.executors = executors
        self.ids = ids  # never changed: the poller made it, or an executor gave it (and will not change it)
        self.statuses: Mapping[str, Any] | None = None
        self.error: BaseException | None = None
        self._done = done
        self.finished = False
        if executors[0].backend.query_is_cheap:  # in memory (the local backend): no thread needed
            self._run()
        else:
            threading.Thread(target=self._run, name="oarfutures-query", daemon=True).start()

    def _run(self) -> None:
        try:
            self.statuses = self.executors[0].backend.query(self.ids)
        except BaseException as exc:  # reported by the poller, never lost
            self.error = exc
        self.finished = True
        self._done.set()


class Poller:
    def __init__(self, executors: set[Tracked] | None = None) -> None:
        self._executors: set[Tracked] = set(executors or ())
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._schedule: dict[Tracked, list[float]] = {}  # executor -> [next query time, current interval]
        self._queries: dict[object, _Query] = {}  # query group -> the query in flight
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="oarfutures-poller", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive() and self.pid == os.getpid()

    def executors(self) -> set[Tracked]:
        with self._lock:
            return set(self._executors)

    def watch(self, executor: Tracked) -> None:
        """Follow this executor from now on (it has live tasks); its next state query comes soon."""
        with self._lock:
            self._executors.add(executor)
        self.query_soon(executor)

    def forget(self, executor: Tracked) -> None:
        with self._lock:
            self._executors.discard(executor)
            self._schedule.pop(executor, None)

    def query_soon(self, executor: Tracked) -> None:
        """New jobs: ask for their states after the shortest interval (not at once: they cannot have moved yet,
        and a thousand submits must not become a thousand queries)."""
        low = executor.backend.query_interval[0]
        with self._lock:
            when = self._schedule.setdefault(executor, [time.monotonic() + low, low])
            when[0], when[1] = min(when[0], time.monotonic() + low), low
        self._wakeup.set()

    def wake(self) -> None:
        self._wakeup.set()

    def _run(self) -> None:
        interval = SCAN_INTERVAL[0]
        while True:
            self._wakeup.wait(interval)
            woken = self._wakeup.is_set()
            self._wakeup.clear()
            try:
                active = self._tick()
            except BaseException:  # never let the thread die: every future depends on it
                logger.exception("oarfutures poller tick failed")
                active = False
            interval = SCAN_INTERVAL[0] if (active or woken) else min(interval * BACKOFF, SCAN_INTERVAL[1])

    def _tick(self) -> bool:
        executors = self.executors()
        now = time.monotonic()
        active = False
        for executor in executors:
            active |= self._guarded(executor, executor.poll_files, now)
        self._start_queries(executors, now)
        active |= self._finish_queries(now)
        for executor in executors:
            self._guarded(executor, executor.release_if_idle, self)
        return active

    @staticmethod
    def _guarded(executor: Tracked, step: Any, *args: Any) -> Any:
        try:
            return step(*args)
        except BaseException as exc:  # one executor's trouble stays its own
            try:
                executor.on_poll_error(exc)
            except BaseException:
                logger.exception("oarfutures: handling a poll error failed")
            return False

    def _start_queries(self, executors: set[Tracked], now: float) -> None:
        """One query per group whose executors are due, unless that group's last query has not answered yet."""
        groups: dict[object, list[Tracked]] = {}
        due: set[object] = set()
        with self._lock:
            for executor in executors:
                group = executor.backend.query_group()
                groups.setdefault(group, []).append(executor)
                when = self._schedule.setdefault(executor, [now, executor.backend.query_interval[0]])
                if now >= when[0]:
                    due.add(group)
        # a due group asks for all its executors' jobs at once, and they all wait for the next one together:
        # executors on their own schedules would each trigger a query of the whole group
        for group, members in groups.items():
            if group not in due or group in self._queries:
                continue
            ids: Sequence[str] = ()
            if not members[0].backend.reports_changes_only:
                listed = [self._guarded(executor, executor.live_job_ids) or () for executor in members]
                # one executor's ids as they are (the same object while its jobs do not change: the backend may
                # recognise them), several executors' joined
                ids = listed[0] if len(listed) == 1 else [job_id for some in listed for job_id in some]
                if not ids:
                    self._reschedule(members, now, changed=False)
                    continue
            self._queries[group] = _Query(members, ids, self._wakeup)

    def _finish_queries(self, now: float) -> bool:
        changed_any = False
        for group, query in list(self._queries.items()):
            if not query.finished:
                continue
            del self._queries[group]
            if query.error is not None:
                logger.warning("oarfutures: state query failed, will retry: %s", query.error)
            for executor in query.executors:
                changed = False
                # an empty answer still counts: jobs the scheduler forgot are absent from it
                if query.statuses is not None and (query.ids or query.statuses):
                    changed = bool(self._guarded(executor, executor.apply_states, query.statuses, now))
                self._reschedule([executor], now, changed)
                changed_any |= changed
        return changed_any

    def _reschedule(self, executors: list[Tracked], now: float, changed: bool) -> None:
        """Query again soon after a change; back off while nothing changes."""
        with self._lock:
            for executor in executors:
                low, high = executor.backend.query_interval
                when = self._schedule.setdefault(executor, [now, low])
                when[1] = low if changed else min(max(when[1], low) * BACKOFF, high)
                when[0] = now + when[1]


_poller: Poller | None = None
_poller_lock = threading.Lock()


def get_poller() -> Poller:
    """The process's poller, started on first use.

    In a forked child the thread is gone: a new poller takes over the executors the old one followed, so no
    future of theirs is forgotten.
    """
    global _poller
    with _poller_lock:
        if _poller is None or not _poller.alive():
            inherited = _poller._executors if _poller is not None else set()
            if _poller is not None and _poller.pid == os.getpid():
                logger.error("oarfutures: the poller thread died; a new one takes over its executors")
            _poller = Poller(inherited)
        return _poller


def _after_fork_in_child() -> None:
    global _poller_lock
    _poller_lock = threading.Lock()  # it may have been held by another thread at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)
