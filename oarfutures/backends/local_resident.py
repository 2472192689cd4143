"""A resident local worker seen from its client: the process (``python -m oarfutures.worker.resident``) and the two
pipes of the line protocol that ``worker.resident`` describes. The slots of ``backends.local`` each own one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

from oarfutures.backends import commands
from oarfutures.protocol import variables
from oarfutures.protocol.signals import CHECKPOINT_SIGNAL


class Resident:
    """One resident worker and the two pipes to it."""

    def __init__(self, python: str) -> None:
        self.python = python
        self.listening = False  # its current task takes the checkpoint signal
        self.killed = False
        requests, self._requests = os.pipe()
        self._replies, replies = os.pipe()
        # interrupt() may come while the interpreter starts, before the worker can catch the checkpoint signal,
        # which would kill it: the worker starts with the signal blocked (a child inherits the mask of the thread
        # that forks it), so that it stays pending until the worker listens (and unblocks it)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [CHECKPOINT_SIGNAL])
        try:
            # no preexec_fn: Python 3.12+ refuses it at interpreter shutdown, when calls submitted before still run
            self.process = subprocess.Popen(
                [python, "-u", "-m", "oarfutures.worker.resident", str(requests), str(replies), str(os.getpid())],
                stdin=subprocess.DEVNULL,
                # not what describes a job this client may run in (its rank above all): only the user's settings
                env=commands.clean_environment((variables.PREFIX,), variables.USER_SETTINGS),
                pass_fds=(requests, replies),
            )
        except BaseException:
            os.close(self._requests)
            os.close(self._replies)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
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
