"""The fork server of a local backend seen from its client: the process (``python -m oarfutures.worker.forkserver``,
whose docstring has the protocol) that forks the backend's resident workers, and a handle on each worker.

A worker is not this process's child, so what ``subprocess.Popen`` would give (its exit status, signalling it)
comes through the server, which is its parent; ``ForkedProcess`` offers the part of ``Popen``'s interface the
backend uses.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

from oarfutures import threadpolicy
from oarfutures.backends import commands
from oarfutures.protocol import variables
from oarfutures.protocol.signals import CHECKPOINT_SIGNAL, PRELOAD_REFUSED

#: the status of the workers of a server that died: they died with it (PR_SET_PDEATHSIG), by SIGKILL
KILLED_WITH_SERVER = -signal.SIGKILL


class ForkedProcess:
    """A worker forked by the server: its pid, and its exit status once the server reports it."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._server = server
        self._exited = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            self._server.signal(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def exited(self, status: int) -> None:
        self.returncode = status
        self._exited.set()


class ForkServer:
    """One fork server for one job interpreter (``python``), with the thread that started it and reads its news.

    That thread lives as long as the server: ``PR_SET_PDEATHSIG`` fires when the *thread* that started a process
    ends, so the server dies with the client, not with whichever slot asked first.
    """

    def __init__(self, python: str, preload: Sequence[str] = ()) -> None:
        """``preload``: module names (checked by the caller) the server imports before forking any worker, with
        this process's import path after its own, as a worker finds a batch's modules."""
        self.python = python
        self._preload = list(preload)
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._asked: dict[int, tuple[threading.Event, dict[str, Any]]] = {}  # fork token -> (answered, answer)
        self._workers: dict[int, ForkedProcess] = {}  # not reported exited yet
        self._ended: str | None = None  # how the server ended, once it has
        #: it ended refusing its preload (a module started a thread): another server would refuse it again
        self.refused_preload = False
        self.pid: int | None = None
        started = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._serve, args=(theirs, started, failure), name="oarfutures-forkserver", daemon=True
        )
        self._thread.start()
        started.wait()
        if failure:
            self._control.close()
            raise failure[0]

    @property
    def alive(self) -> bool:
        return self._ended is None

    def fork(self, requests: int, replies: int) -> ForkedProcess:
        """A new worker reading ``requests`` and writing ``replies`` (both pipe ends are the worker's copies), with
        this process's stdout and stderr. Raises OSError if the server cannot fork or is gone."""
        answered: threading.Event = threading.Event()
        answer: dict[str, Any] = {}
        failure: OSError | None = None
        with self._lock:
            if self._ended is not None:
                raise OSError(self._ended)
            token = next(self._tokens)
            self._asked[token] = answered, answer
            try:
                socket.send_fds(self._control, [json.dumps({"fork": token}).encode()], [requests, replies, 1, 2])
            except OSError as exc:
                del self._asked[token]
                failure = exc
        if failure is not None:  # it has left: say how, which its news thread learns in a moment
            self._thread.join(timeout=5)
            raise OSError(self.why_gone(failure))
        answered.wait()
        if "pid" not in answer:
            raise OSError(answer.get("error") or self.why_gone())
        process: ForkedProcess = answer["process"]
        return process

    def why_gone(self, failure: OSError | None = None) -> str:
        return self._ended or str(failure or "the fork server is gone")

    def signal(self, pid: int, signum: int) -> None:
        with self._lock:
            if self._ended is None:
                try:
                    self._control.send(json.dumps({"signal": signum, "pid": pid}).encode())
                except OSError:  # it died: so did its workers
                    pass

    def close(self, wait: float | None = None) -> None:
        """Tell the server to leave (its workers have left, or die with it); wait up to ``wait`` seconds for it."""
        try:
            self._control.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if wait is not None:
            self._thread.join(wait)

    def _serve(self, theirs: socket.socket, started: threading.Event, failure: list[BaseException]) -> None:
        """Start the server, then hand out its news until it leaves."""
        threadpolicy.inherited()  # (a slot thread, a relay, may start a server: its workers run users' calls)
        # interrupt() may come while a worker starts, before it can catch the checkpoint signal, which would kill
        # it: the server starts with the signal blocked (a child inherits the mask of the thread that forks it)
        # and so does every worker it forks, until the worker listens (and unblocks it)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [CHECKPOINT_SIGNAL])
        try:
            # no preexec_fn: Python 3.12+ refuses it at interpreter shutdown, when calls submitted before still run
            command = [self.python, "-u", "-m", "oarfutures.worker.forkserver", str(theirs.fileno()), str(os.getpid())]
            if self._preload:
                command.append(json.dumps({"modules": self._preload, "path": commands.client_sys_path()}))
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                env=worker_environment(),
                pass_fds=(theirs.fileno(),),
            )
            self.pid = process.pid
        except BaseException as exc:
            failure.append(exc)
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            theirs.close()
            started.set()
        try:
            while True:
                message = self._control.recv(65536)
                if not message:
                    break
                self._take(json.loads(message))
        except OSError:
            pass
        finally:
            process.kill()  # (it has left already, unless reading its news failed)
            status = process.wait()
            with self._lock:  # (fork() and signal() send under it: none does while the socket closes)
                self._ended = f"the fork server of {self.python} exited with status {status}"
                self.refused_preload = bool(self._preload) and status == PRELOAD_REFUSED
                self._control.close()
                asked, self._asked = self._asked, {}
                workers, self._workers = self._workers, {}
            for answered, _ in asked.values():
                answered.set()
            for worker in workers.values():
                worker.exited(KILLED_WITH_SERVER)

    def _take(self, news: dict[str, Any]) -> None:
        if "exited" in news:
            with self._lock:
                worker = self._workers.pop(news["exited"], None)
            if worker is not None:
                worker.exited(news["status"])
            return
        with self._lock:
            answered, answer = self._asked.pop(news["forked"])
            answer.update(news)
            if "pid" in news:
                answer["process"] = self._workers[news["pid"]] = ForkedProcess(self, news["pid"])
        answered.set()


def worker_environment() -> dict[str, str]:
    """Not what describes a job this client may run in (its rank above all): only the user's settings."""
    return commands.clean_environment((variables.PREFIX,), variables.USER_SETTINGS)
