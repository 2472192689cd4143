"""A resident local worker seen from its client: the process (forked by the backend's fork server,
``local_forkserver``) and the two pipes of the line protocol that ``worker.resident`` describes. The slots of
``backends.local`` each own one."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from typing import Any

from oarfutures.backends.local_forkserver import ForkServer, worker_environment


class Resident:
    """One resident worker and the two pipes to it."""

    def __init__(self, server: ForkServer) -> None:
        self.python = server.python
        self.listening = False  # its current task takes the checkpoint signal
        self.killed = False
        #: it ran a call to its end: if it dies before taking the next one, that one never ran (a new worker runs
        #: it); a new worker that dies before taking its first one fails it (it would die again: see backends.local)
        self.served = False
        requests, self._requests = os.pipe()
        self._replies, replies = os.pipe()
        try:
            self.process = server.fork(requests, replies)
        except BaseException:
            os.close(self._requests)
            os.close(self._replies)
            raise
        finally:
            os.close(requests)
            os.close(replies)
        self._reader = os.fdopen(self._replies, "r")
        # what a new process would start with: this process's environment and directory of this moment
        with contextlib.suppress(OSError):  # (a worker that died at once: the first reply says so)
            self._write({"environment": worker_environment(), "cwd": _current_directory()})

    def ready_for(self, python: str) -> bool:
        # a worker killed by a cancel may be a moment from dying: poll() alone could still find it alive
        return self.python == python and not self.killed and self.process.poll() is None

    def send(self, request: dict[str, Any]) -> None:
        self._write(request)

    def _write(self, line: dict[str, Any]) -> None:
        os.write(self._requests, (json.dumps(line) + "\n").encode())

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


def _current_directory() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # removed: the worker stays where its server is
        return None
