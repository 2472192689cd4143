"""Which scheduler this machine offers: OAR where ``oarsub`` is usable, else Slurm where ``sbatch`` is, else local.

"Usable" means installed *and* answering: a login node keeps its client commands when the controller is down or
was never configured, and every Slurm client then hangs about a minute. Each backend answers for itself
(``Backend.answers_here``: one cheap question with a short timeout); a scheduler passed over is logged with why.

``executors.AutoPoolExecutor`` asks it when neither ``cluster=`` nor ``$OARFUTURES_CLUSTER`` names one.
"""

from __future__ import annotations

from oarfutures import registry
from oarfutures.protocol import variables

#: forces the backend for scripts that must not change: oar, slurm or local
CLUSTER_VARIABLE = variables.CLUSTER


def detect_cluster() -> str:
    """The first scheduler of ``registry.DETECTION_ORDER`` that answers here, else "local"."""
    for name in registry.DETECTION_ORDER:
        if registry.backend_class(name).answers_here():
            return name
    return "local"
