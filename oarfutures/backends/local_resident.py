"""A resident local worker seen from its client: the process (``python -m oarfutures.worker.resident``) and the two
pipes of the line protocol that ``worker.resident`` describes. The slots of ``backends.local`` each own one."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
from typing import Any, Callable

from oarfutures.backends import commands
from oarfutures.protocol import variables
from oarfutures.protocol.signals import CHECKPOINT_SIGNAL


def _before_worker_starts(client: int, prctl: Callable[[int, int], int] | None) -> None:
    """In the worker before exec: be killed when the client dies (Linux), like a job of a dead scheduler.

    Without it a worker of a killed client runs on beside the calls attach() settles. If the client died before
    the request took effect, the worker already has another parent: it leaves at once.
    """
    if prctl is not None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != client:
        os._exit(1)
    # interrupt() may come while the interpreter starts, before the worker can catch the checkpoint signal, which
    # would kill it: blocked, the signal stays pending across exec until the worker listens (it unblocks it then)
    signal.pthread_sigmask(signal.SIG_BLOCK, [CHECKPOINT_SIGNAL])


@functools.cache
def _prctl() -> Callable[[int, int], int] | None:
    """libc's prctl, looked up in the client at the first worker (not in the child between fork and exec, where
    an import could deadlock; nor at import: ctypes costs ~5 ms an executor that starts no worker need not pay)."""
    import ctypes

    try:
        return ctypes.CDLL(None).prctl
    except (AttributeError, OSError):
        return None


class Resident:
    """One resident worker and the two pipes to it."""

    def __init__(self, python: str) -> None:
        self.python = python
        self.listening = False  # its current task takes the checkpoint signal
        self.killed = False
        requests, self._requests = os.pipe()
        self._replies, replies = os.pipe()
        try:
            self.process = subprocess.Popen(
                [python, "-u", "-m", "oarfutures.worker.resident", str(requests), str(replies)],
                stdin=subprocess.DEVNULL,
                # not what describes a job this client may run in (its rank above all): only the user's settings
                env=commands.clean_environment((variables.PREFIX,), variables.USER_SETTINGS),
                pass_fds=(requests, replies),
                preexec_fn=functools.partial(_before_worker_starts, os.getpid(), _prctl()),
            )
        except BaseException:
            os.close(self._requests)
            os.close(self._replies)
            raise
        finally:
            os.close(requests)
            os.close(replies)
        self._reader = os.fdopen(self._replies, "r")

    def ready_for(self, python: str) -> bool:
        # a worker killed by a cancel may be a moment from dying: poll() alone could still find it alive
        return self.python == python and not self.killed and self.process.poll() is None

    def send(self, request: dict[str, Any]) -> None:
        os.write(self._requests, (json.dumps(request) + "\n").encode())

    def reply(self) -> str | None:
        """The worker's next line, or None once it has died."""
        return self._reader.readline().strip() or None

    def kill(self) -> None:
        self.killed = True
        self.process.kill()

    def close(self) -> None:
        """Closing its request pipe tells an idle worker to leave; one that does not is killed."""
        os.close(self._requests)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.close()
