"""Run Python functions on OAR, Slurm or this machine behind the standard ``concurrent.futures.Executor``."""
from oarfutures.errors import JobFailedError, RemoteError, RemoteTraceback
from oarfutures.futures import JobFuture
from oarfutures.local import LocalPoolExecutor
from oarfutures.slurm import SlurmPoolExecutor

__version__ = "0.1.0"

__all__ = ["JobFailedError", "JobFuture", "LocalPoolExecutor", "RemoteError", "RemoteTraceback", "SlurmPoolExecutor", "__version__"]
