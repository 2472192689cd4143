"""Running scheduler commands: transient controller errors are retried with backoff, others raise at once.

Controllers on shared clusters time out now and then ("Socket timed out on send/recv operation"); a retry a
second later usually works. Errors that will not go away (unknown queue, bad option) raise straight away with the
scheduler's own message.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Callable

logger = logging.getLogger("oarfutures")

TRANSIENT_MARKERS = (
    "socket timed out",
    "unable to contact slurm controller",
    "connection refused",
    "temporarily unavailable",
    "try again",
    "slurm_persist_conn_open",
    "can't connect to the oar server",
    "cannot connect to the database",
    "could not connect to server",
    "cannot connect to executor",  # oarsub: Almighty not listening; the job was killed, a retry is no duplicate
)
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)


class SchedulerCommandError(RuntimeError):
    """A scheduler command failed; carries the command, its exit status and what it printed."""

    def __init__(self, command: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.command = list(command)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        message = (stderr.strip() or stdout.strip() or "no output").splitlines()
        super().__init__(f"{command[0]} exited with status {returncode}: {' | '.join(message[-5:])}")

    @property
    def transient(self) -> bool:
        text = (self.stderr + self.stdout).lower()
        return any(marker in text for marker in TRANSIENT_MARKERS)


def run(
    command: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    retry: bool = True,
    before_retry: Callable[[SchedulerCommandError], str | None] | None = None,
    timeout: float = 120.0,
) -> str:
    """Run a command and return its stdout; retry transient failures, then raise SchedulerCommandError.

    ``before_retry(error)`` may return a stdout to use instead of retrying: a submission that timed out may still
    have gone through, and submitting it twice would run the work twice.
    """
    delays = list(RETRY_DELAYS) if retry else []
    while True:
        try:
            done = subprocess.run(
                list(command), capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL
            )
            error = (
                None
                if done.returncode == 0
                else SchedulerCommandError(command, done.returncode, done.stdout, done.stderr)
            )
        except subprocess.TimeoutExpired as exc:
            error = SchedulerCommandError(command, -1, "", f"socket timed out: no answer after {exc.timeout} s")
        except FileNotFoundError as exc:
            raise SchedulerCommandError(command, 127, "", f"{command[0]} not found on PATH ({exc})") from None
        if error is None:
            return done.stdout
        if not delays or not error.transient:
            raise error
        if before_retry is not None:
            recovered = before_retry(error)
            if recovered is not None:
                return recovered
        delay = delays.pop(0)
        logger.warning("%s; retrying in %.1f s", error, delay)
        time.sleep(delay)


def clean_environment(prefixes: Sequence[str], keep: Sequence[str] = ()) -> dict[str, str]:
    """This process's environment without the variables a surrounding job set (nested submission)."""
    return {k: v for k, v in os.environ.items() if k in keep or not k.startswith(tuple(prefixes))}


def client_sys_path() -> list[str]:
    """This process's import path, each entry absolute (the empty one is the current directory): the path a job's
    worker, and a local fork server's preload, add after their own."""
    return [os.path.abspath(p) if p else os.getcwd() for p in sys.path]


#: seconds a scheduler has to answer ``probe``: a Slurm client whose controller is down hangs about a minute
PROBE_TIMEOUT = 5.0


def probe(scheduler: str, installed: Sequence[str], question: Sequence[str]) -> str | None:
    """What ``question`` printed, if every command in ``installed`` is on PATH and the controller answered within
    ``PROBE_TIMEOUT``; None otherwise. A login node keeps its client commands when the controller is down or was
    never configured, so being installed is not enough; a scheduler passed over is logged with why."""
    if not all(shutil.which(name) for name in installed):
        return None
    try:
        return run(question, retry=False, timeout=PROBE_TIMEOUT)
    except SchedulerCommandError as exc:
        logger.warning("%s is installed but does not answer (%s): trying the next backend", scheduler, exc)
        return None
