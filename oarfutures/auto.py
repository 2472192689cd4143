"""One executor for every cluster: OAR where ``oarsub`` is usable, else Slurm where ``sbatch`` is, else local.

``AutoPoolExecutor`` is named after submitit's ``AutoExecutor`` (the first example of the Grid'5000 page) and
our ``*PoolExecutor`` classes. It is a function that returns an instance of the chosen class, so the result is a
plain ``concurrent.futures.Executor`` and ``isinstance(ex, SlurmPoolExecutor)`` tells which one was picked.
"""
from __future__ import annotations

import getpass
import os
import shutil
from typing import Any, Optional

from oarfutures.executor import JobExecutor

#: forces the backend for scripts that must not change: oar, slurm or local
CLUSTER_VARIABLE = "OARFUTURES_CLUSTER"
CLUSTERS = ("oar", "slurm", "local")
EXECUTOR_OPTIONS = ("python", "keep_files", "result_grace", "warn_pickle_bytes", "max_resubmissions")


def detect_cluster() -> str:
    """The backend this machine offers. OAR refuses submissions by root and oar, so it is not usable for them."""
    if shutil.which("oarsub") and shutil.which("oarstat") and getpass.getuser() not in ("root", "oar"):
        return "oar"
    if shutil.which("sbatch") and shutil.which("squeue"):
        return "slurm"
    return "local"


def AutoPoolExecutor(
    max_workers: Optional[int] = None, *, folder: Optional[str] = None, cluster: Optional[str] = None, **parameters: Any
) -> JobExecutor:
    """An executor for the scheduler found here (or ``cluster=``, or ``$OARFUTURES_CLUSTER``).

    ``parameters`` are generic (walltime or timeout_min, nodes, tasks_per_node, cpus_per_task, gpus_per_node,
    mem_gb, name, setup) or prefixed for one scheduler (``oar_queue``, ``slurm_partition``...), which the others
    ignore; plus the executor options python, keep_files, result_grace, warn_pickle_bytes, max_resubmissions.
    """
    chosen = cluster or os.environ.get(CLUSTER_VARIABLE) or detect_cluster()
    if chosen not in CLUSTERS:
        raise ValueError(f"cluster={chosen!r} is not one of {', '.join(CLUSTERS)}")
    from oarfutures.local import LocalPoolExecutor
    from oarfutures.oar import OarPoolExecutor
    from oarfutures.slurm import SlurmPoolExecutor

    cls = {"oar": OarPoolExecutor, "slurm": SlurmPoolExecutor, "local": LocalPoolExecutor}[chosen]
    options = {key: parameters.pop(key) for key in EXECUTOR_OPTIONS if key in parameters}
    executor: JobExecutor = cls(max_workers, folder=folder, **options)  # type: ignore[operator]
    try:
        executor.update_parameters(**parameters)
    except BaseException:
        executor.shutdown(wait=False)
        raise
    return executor
