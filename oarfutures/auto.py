"""One executor for every cluster: OAR where ``oarsub`` is usable, else Slurm where ``sbatch`` is, else local.

"Usable" means installed *and* answering: a login node keeps its client commands when the controller is down or
was never configured, and every Slurm client then hangs about a minute. Detection asks each scheduler one cheap
question with a short timeout and falls back to the next backend, logging why.

``AutoPoolExecutor`` is named after submitit's ``AutoExecutor`` (the first example of the Grid'5000 page) and
our ``*PoolExecutor`` classes. It is a function that returns an instance of the chosen class, so the result is a
plain ``concurrent.futures.Executor`` and ``isinstance(ex, SlurmPoolExecutor)`` tells which one was picked.
"""
from __future__ import annotations

import getpass
import logging
import os
import shutil
from typing import Any, Optional, Sequence

from oarfutures.backends import commands
from oarfutures.protocol import variables
from oarfutures.core.executor import JobExecutor

logger = logging.getLogger("oarfutures")

#: forces the backend for scripts that must not change: oar, slurm or local
CLUSTER_VARIABLE = variables.CLUSTER
CLUSTERS = ("oar", "slurm", "local")
EXECUTOR_OPTIONS = ("python", "keep_files", "result_grace", "warn_pickle_bytes", "max_resubmissions")
#: seconds a scheduler has to answer during detection (an oarstat takes ~0.3 s, a Slurm ping a few ms)
DETECTION_TIMEOUT = 5.0
#: per scheduler: the commands that must be installed, and the question that proves the controller answers
PROBES = {
    "oar": (("oarsub", "oarstat", "oardel"), ["oarstat", "-s", "-j", "1"]),  # -j 0 reads as no id: exit 255
    "slurm": (("sbatch", "squeue", "scancel", "scontrol"), ["scontrol", "ping"]),
}


def detect_cluster() -> str:
    """The backend this machine offers. OAR refuses submissions by root and oar, so it is not usable for them."""
    if getpass.getuser() in ("root", "oar"):
        candidates: Sequence[str] = ("slurm",)
    else:
        candidates = ("oar", "slurm")
    for cluster in candidates:
        installed, question = PROBES[cluster]
        if all(shutil.which(name) for name in installed) and _answers(cluster, question):
            return cluster
    return "local"


def _answers(cluster: str, question: Sequence[str]) -> bool:
    """True if the scheduler's controller answered ``question`` in time; otherwise log why it is passed over."""
    try:
        out = commands.run(question, retry=False, timeout=DETECTION_TIMEOUT)
    except commands.SchedulerCommandError as exc:
        logger.warning("%s is installed but does not answer (%s): trying the next backend", cluster, exc)
        return False
    if cluster == "slurm" and "is UP" not in out:  # scontrol ping: "Slurmctld(primary) at host is UP"
        logger.warning("slurm is installed but its controller is not up (%s): trying the next backend", out.strip())
        return False
    return True


def AutoPoolExecutor(
    max_workers: Optional[int] = None, *, folder: Optional[str] = None, cluster: Optional[str] = None, **parameters: Any
) -> JobExecutor:
    """An executor for the scheduler found here (or ``cluster=``, or ``$OARFUTURES_CLUSTER``).

    One script then runs unchanged on a Grid'5000 front-end, a Slurm login node and a laptop. It returns an
    instance of the chosen class (``isinstance(ex, SlurmPoolExecutor)`` tells which), so everything documented
    for ``LocalPoolExecutor``, ``SlurmPoolExecutor`` and ``OarPoolExecutor`` applies to it.

    Args:
        max_workers: How many calls may run at once, as for the chosen executor.
        folder: The job folder, as for the chosen executor.
        cluster: ``"oar"``, ``"slurm"`` or ``"local"`` to force a backend (``$OARFUTURES_CLUSTER`` does the same
            without editing the script); by default OAR if ``oarsub`` answers (not as root: OAR refuses it),
            else Slurm if its controller answers, else local.
        **parameters: Generic ones (``walltime`` or ``timeout_min``, ``nodes``, ``tasks_per_node``,
            ``cpus_per_task``, ``gpus_per_node``, ``mem_gb``, ``name``, ``setup``) mean the same on every backend;
            ``oar_``/``slurm_`` prefixed ones (``oar_queue``, ``slurm_partition``...) apply on their scheduler
            only, overriding the generic one there, and are ignored elsewhere, which is what lets one script
            name both. Also the executor options ``python``, ``keep_files``, ``result_grace``,
            ``warn_pickle_bytes``, ``max_resubmissions``.

    Raises:
        ValueError: ``cluster`` is not one of the three, or a parameter value is refused.
        TypeError: A parameter name is unknown to the chosen backend (the message lists the valid ones).
    """
    chosen = cluster or os.environ.get(CLUSTER_VARIABLE) or detect_cluster()
    if chosen not in CLUSTERS:
        raise ValueError(f"cluster={chosen!r} is not one of {', '.join(CLUSTERS)}")
    from oarfutures.backends.local import LocalPoolExecutor
    from oarfutures.backends.oar import OarPoolExecutor
    from oarfutures.backends.slurm import SlurmPoolExecutor

    cls = {"oar": OarPoolExecutor, "slurm": SlurmPoolExecutor, "local": LocalPoolExecutor}[chosen]
    options = {key: parameters.pop(key) for key in EXECUTOR_OPTIONS if key in parameters}
    # given to the constructor, which checks them before it makes the folder (a refused one leaves none behind);
    # keyword by keyword they are the same as update_parameters()'s (the generic name, then the prefixed one)
    return cls(max_workers, folder=folder, **options, **parameters)  # type: ignore[operator,no-any-return]
