"""Which scheduler this machine offers: OAR where ``oarsub`` is usable, else Slurm where ``sbatch`` is, else local.

"Usable" means installed *and* answering: a login node keeps its client commands when the controller is down or
was never configured, and every Slurm client then hangs about a minute. Detection asks each scheduler one cheap
question with a short timeout and falls back to the next backend, logging why.

``executors.AutoPoolExecutor`` asks it when neither ``cluster=`` nor ``$OARFUTURES_CLUSTER`` names one.
"""

from __future__ import annotations

import getpass
import logging
import shutil
from collections.abc import Sequence

from oarfutures.backends import commands

logger = logging.getLogger("oarfutures")

#: forces the backend for scripts that must not change: oar, slurm or local
CLUSTER_VARIABLE = "OARFUTURES_CLUSTER"
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
