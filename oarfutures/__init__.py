"""Run Python functions on OAR, Slurm or this machine behind the standard ``concurrent.futures.Executor``.

Names are imported on first use: the worker (``python -m oarfutures.worker``) starts once per task and must not
pay for the client's imports (cloudpickle, threads, the executors).
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not imported from typing: the worker would pay for the typing module at every start

__version__ = "0.1.0"

_EXPORTS = {
    "AutoPoolExecutor": "oarfutures.executors",
    "Checkpointable": "oarfutures.checkpoint",
    "Resubmission": "oarfutures.checkpoint",
    "JobEnvironment": "oarfutures.worker.environment",
    "JobFailedError": "oarfutures.errors",
    "RemoteError": "oarfutures.errors",
    "RemoteTraceback": "oarfutures.errors",
    "JobFuture": "oarfutures.core.futures",
    "LocalPoolExecutor": "oarfutures.executors",
    "OarPoolExecutor": "oarfutures.executors",
    "SlurmPoolExecutor": "oarfutures.executors",
}

__all__ = [
    "AutoPoolExecutor",
    "Checkpointable",
    "JobEnvironment",
    "JobFailedError",
    "JobFuture",
    "LocalPoolExecutor",
    "OarPoolExecutor",
    "RemoteError",
    "RemoteTraceback",
    "Resubmission",
    "SlurmPoolExecutor",
    "__version__",
]

if TYPE_CHECKING:
    from oarfutures.checkpoint import Checkpointable, Resubmission
    from oarfutures.core.futures import JobFuture
    from oarfutures.errors import JobFailedError, RemoteError, RemoteTraceback
    from oarfutures.executors import AutoPoolExecutor, LocalPoolExecutor, OarPoolExecutor, SlurmPoolExecutor
    from oarfutures.worker.environment import JobEnvironment


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'oarfutures' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list:
    return __all__
