"""The kernel's scheduling policy of our own threads (Linux; elsewhere, or where it is refused, nothing changes).

A slot thread of the local backend (``backends.local``) only relays: it sleeps until its worker writes a line, three
lines per call. Under the default policy a thread woken that way preempts the one that woke it: a worker lost its CPU
between its call and its result to the thread reading its line, and got it back once that thread slept again (~1,300
involuntary switches of the workers per 400 calls, ~50 with ``ProcessPoolExecutor``). ``SCHED_BATCH`` asks the
kernel not to preempt for such a wake-up: the relay runs on another CPU if one is free, or once the worker blocks,
by then on its next request (``relay``).

A thread passes its policy on to the threads and processes it starts. Those that a relay may start take the default
policy back first (``inherited``): the executor's service thread, which runs users' callbacks, and the fork server's
reader, which starts the fork server, whose workers run users' calls. (The poller is started by a submission.) In a
process that runs under another policy than the default (``chrt``, a batch system's choice) no thread of ours
changes its own.
"""

from __future__ import annotations

import os

_DEFAULT: int = getattr(os, "SCHED_OTHER", 0)
_RELAY: int = getattr(os, "SCHED_BATCH", 0)
#: relays are made only in a process that runs under the default policy (Linux)
_ENABLED = hasattr(os, "SCHED_BATCH") and hasattr(os, "sched_setscheduler") and os.sched_getscheduler(0) == _DEFAULT


def relay() -> None:
    """The calling thread only relays between processes: it does not preempt them when they wake it."""
    if _ENABLED:
        _set(_RELAY)


def inherited() -> None:
    """The calling thread runs under the process's own policy again, if a relay started it."""
    if _ENABLED and os.sched_getscheduler(0) == _RELAY:
        _set(_DEFAULT)


def _set(policy: int) -> None:
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError:  # a sandbox may refuse it: the default policy only costs some CPU
        pass
