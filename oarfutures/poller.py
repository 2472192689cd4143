"""One daemon thread per process resolves the futures of every executor.

Each tick costs the same however many futures are pending: one ``scandir`` of each busy executor's results folder,
and — less often, on a growing interval — one state query per backend group for all its live jobs (one ``squeue``
for every Slurm executor of the process). The thread holds an executor only while it has live tasks, so futures
of an executor the user dropped still resolve, and an idle executor is not kept alive.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Set

if TYPE_CHECKING:
    from oarfutures.executor import JobExecutor

logger = logging.getLogger("oarfutures")

SCAN_INTERVAL = (0.02, 0.5)  # seconds between result scans: right after activity, and at most
BACKOFF = 1.5


class Poller:
    def __init__(self) -> None:
        self._executors: Set["JobExecutor"] = set()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oarfutures-poller", daemon=True)
        self._thread.start()
        self.pid = os.getpid()
        #: scheduler state queries made so far, per backend group (benchmarks read it)
        self.query_count = 0

    def alive(self) -> bool:
        return self._thread.is_alive() and self.pid == os.getpid()

    def watch(self, executor: "JobExecutor") -> None:
        with self._lock:
            self._executors.add(executor)

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
            except Exception:  # never let the thread die: every future depends on it
                logger.exception("oarfutures poller tick failed")
                active = False
            interval = SCAN_INTERVAL[0] if (active or woken) else min(interval * BACKOFF, SCAN_INTERVAL[1])

    def _tick(self) -> bool:
        with self._lock:
            executors = list(self._executors)
        now = time.monotonic()
        active = False
        due: Dict[object, List["JobExecutor"]] = {}
        for executor in executors:
            executor.process_cancellations()
            active |= executor.collect_results() > 0
            if now >= executor.next_query:
                due.setdefault(executor.backend.query_group(), []).append(executor)
        for group in due.values():
            active |= self._query(group, now)
        for executor in executors:
            executor.fail_ended_jobs(time.monotonic())
            executor.refill()
        with self._lock:
            for executor in executors:
                if not executor.has_work():
                    self._executors.discard(executor)
        return active

    def _query(self, executors: List["JobExecutor"], now: float) -> bool:
        """One backend call for the live jobs of all these executors; each backs off while nothing changes."""
        backend = executors[0].backend
        ids = [] if backend.reports_changes_only else [j for executor in executors for j in executor.live_job_ids()]
        statuses: Optional[Dict[str, object]] = {}
        if ids or backend.reports_changes_only:
            try:
                statuses = backend.query(ids)
                self.query_count += 1
            except Exception as exc:
                logger.warning("state query failed, will retry: %s", exc)
                statuses = None
        changed = False
        for executor in executors:
            low, high = executor.backend.query_interval
            # an empty answer still counts: jobs the scheduler forgot are absent from it
            answered = statuses is not None and (bool(ids) or bool(statuses))
            if answered and executor.apply_states(statuses, now):  # type: ignore[arg-type]
                executor.query_wait, changed = low, True
            else:
                executor.query_wait = min(max(executor.query_wait, low) * BACKOFF, high)
            executor.next_query = now + executor.query_wait
        return changed


_poller: Optional[Poller] = None
_poller_lock = threading.Lock()


def get_poller() -> Poller:
    """The process's poller, started on first use (and again in a forked child, where the thread is gone)."""
    global _poller
    with _poller_lock:
        if _poller is None or not _poller.alive():
            _poller = Poller()
        return _poller
