"""The arguments every executor takes whatever its scheduler, checked in one place before anything exists.

``CoreSettings.check`` refuses a bad ``max_workers``, interpreter or grace period and fixes the job folder's path
without creating it: the public executors build their backend from that path (which checks the scheduler's
parameters), and ``JobExecutor`` creates the folder last, so that a refused argument leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any

from oarfutures.backends import params
from oarfutures.backends.base import Backend
from oarfutures.protocol import variables


@dataclass(frozen=True)
class CoreSettings:
    """What ``JobExecutor`` is built from, each value checked (see ``check``)."""

    max_workers: int | None  # the running cap across every submission; None: the scheduler's
    folder: str  # absolute, not created yet
    default_folder: bool  # made up here (no ``folder=``): old finished ones of the same base may be cleaned
    python: str  # absolute path of the jobs' interpreter
    keep_files: bool
    result_grace: float
    warn_pickle_bytes: int
    max_resubmissions: int

    @classmethod
    def check(
        cls,
        backend: type[Backend],
        max_workers: int | None,
        folder: str | None,
        python: str | None = None,
        keep_files: bool = False,
        result_grace: float | None = None,
        warn_pickle_bytes: int = 100_000_000,
        max_resubmissions: int = 3,
    ) -> CoreSettings:
        """Check the arguments for an executor of ``backend`` (its class: the backend is built from the result)."""
        check_max_workers(max_workers)
        return cls(
            max_workers=max_workers,
            folder=folder_path(folder, backend.name),
            default_folder=folder is None,
            python=interpreter_path(python, must_run_here=not backend.jobs_outlive_client),
            keep_files=keep_files,
            result_grace=_grace(backend.result_grace if result_grace is None else result_grace),
            warn_pickle_bytes=params.non_negative_int("warn_pickle_bytes", warn_pickle_bytes),
            max_resubmissions=params.non_negative_int("max_resubmissions", max_resubmissions),
        )


def folder_path(folder: str | None, kind: str) -> str:
    """The absolute job folder, not created yet; by default a new one under $OARFUTURES_FOLDER or ~/.oarfutures."""
    if folder is None:
        folder = os.path.join(default_base(), f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}")
    return os.path.abspath(params.path_text("folder", folder))


def default_base() -> str:
    """Where executors without ``folder=`` make their folders."""
    return os.environ.get(variables.FOLDER) or os.path.join(os.path.expanduser("~"), ".oarfutures")


def interpreter_path(python: str | None, must_run_here: bool = False) -> str:
    """An absolute path for the jobs' interpreter: a bare name is looked up on PATH (not in the job's fresh
    environment), and symlinks are kept, since a venv's bin/python is one. ``must_run_here``: it must be an
    executable file on this machine (the local backend); a cluster's may exist on its nodes only."""
    if python is None:
        return sys.executable
    python = params.path_text("python", python)
    found = shutil.which(python) if os.sep not in python else python
    if found is None:
        raise ValueError(f"python={python!r} is not an interpreter found on PATH")
    path = os.path.abspath(found)
    if must_run_here and not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ValueError(f"python={python!r}: {path} is not an executable file")
    return path


def check_max_workers(max_workers: int | None) -> None:
    if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)):
        raise TypeError(f"max_workers must be a positive int or None, got {max_workers!r}")
    if max_workers is not None and max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")


def _grace(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"result_grace must be a finite number of seconds >= 0, got {value!r}")
    return float(value)
