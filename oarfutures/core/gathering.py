"""Separate ``submit`` calls that go out together: what dask and joblib submit one by one becomes a few arrays.

A ``submit`` with nothing in flight for its options goes out at once, in the caller's thread (no added latency,
and a refused submission raises there). While that submission is in flight, and for the backend's
``gather_window()`` after it (a loop of ``submit`` in one thread never overlaps its own submissions), further
``submit`` calls with the same options are *gathered*: each is pickled at once (an unpicklable call still fails
its own ``submit``) and gets its future, and then everything gathered goes out as one array, on the executor's
service thread. So the number of ``sbatch`` calls follows the scheduler's latency, not the number of calls, and
``max_workers`` still caps what runs, since every array goes through the same waves.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

from oarfutures.core import batchfiles
from oarfutures.core.futures import JobFuture


class Gathering:
    """The calls with one set of options submitted while a submission with those options is in flight."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.pid = os.getpid()  # a forked child inherits it with the service thread's queue: only we submit it
        self.functions: list[Callable[..., Any]] = []
        self._function_index: dict[int, int] = {}  # id() of a function in ``functions`` -> its index
        self.tasks: list[batchfiles.PickledTask] = []
        self.futures: list[JobFuture] = []

    def add(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> JobFuture:
        """Pickle the call now (raising TypeError, with nothing added, if it cannot be) and return its future."""
        index = self._function_index.get(id(fn))
        new = index is None
        if index is None:
            batchfiles.pickle_functions([fn])  # the batch pickles its functions together later: check this one now
            index = len(self.functions)
        blob = batchfiles.pickle_task([(index, args, kwargs)])
        if new:
            self._function_index[id(fn)] = index
            self.functions.append(fn)
        future = JobFuture()
        self.tasks.append(batchfiles.PickledTask(blob, 1))
        self.futures.append(future)
        return future

    def without_cancelled(self) -> Gathering:
        """The calls whose futures are still pending: a call cancelled while gathered is never submitted."""
        kept = Gathering(self.options)
        kept.pid = self.pid
        kept.functions, kept._function_index = self.functions, self._function_index
        pairs = [(t, f) for t, f in zip(self.tasks, self.futures) if not f.cancelled()]
        kept.tasks, kept.futures = [t for t, _ in pairs], [f for _, f in pairs]
        return kept


class Gatherer:
    """Which option sets have a submission in flight, and what was gathered for each meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[str, Gathering] = {}  # options key -> calls gathered behind the submission in flight
        self._outgoing: list[Gathering] = []  # handed over for submission, not registered by the executor yet

    def gather(self, options: dict[str, Any], fn: Callable[..., Any], args: tuple, kwargs: dict) -> JobFuture | None:
        """The future of a gathered call; None when nothing is in flight: the caller submits now (and must call
        ``ended`` after)."""
        key = _key(options)
        with self._lock:
            gathering = self._in_flight.get(key)
            if gathering is None:
                self._in_flight[key] = Gathering(options)
                return None
            return gathering.add(fn, args, kwargs)  # pickled under the lock: it cannot miss its submission

    def ended(self, options: dict[str, Any], window_over: bool = False) -> Gathering | None:
        """A submission with these options ended (or, ``window_over``, the window after it): what gathered behind
        it, to submit next (in flight from now). With nothing gathered, the window opens, or closes when over."""
        key = _key(options)
        with self._lock:
            gathering = self._in_flight[key]
            if gathering.futures:
                self._in_flight[key] = Gathering(options)
                self._outgoing.append(gathering)
                return gathering
            if window_over:
                del self._in_flight[key]
            return None

    def take_all(self) -> list[Gathering]:
        """Everything gathered, at interpreter exit: submitted there and then, since no window will close."""
        with self._lock:
            taken = [g for g in self._in_flight.values() if g.futures]
            for gathering in taken:
                self._in_flight[_key(gathering.options)] = Gathering(gathering.options)
            self._outgoing += taken
            return taken

    def sent(self, gathering: Gathering) -> None:
        """The executor registered these calls (or failed them): they are its to cancel or wait for from now."""
        with self._lock:
            self._outgoing.remove(gathering)

    def pending_futures(self) -> list[JobFuture]:
        """Every call not yet registered by the executor: a shutdown or abort must reach these too."""
        with self._lock:
            gatherings = list(self._in_flight.values()) + self._outgoing
            return [f for gathering in gatherings for f in gathering.futures]

    def busy(self) -> bool:
        with self._lock:
            return bool(self._in_flight or self._outgoing)


def _key(options: dict[str, Any]) -> str:
    return repr(sorted(options.items()))
