"""Where a call runs: inside a job, ``JobEnvironment()`` tells its rank, the world size, the master address."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from oarfutures.protocol import variables


@dataclass(frozen=True)
class JobEnvironment:
    """Read in the running call (on any backend); a single-task job is rank 0 of a world of 1.

    ``master_addr``/``master_port`` are the same for every rank of a job: enough for
    ``torch.distributed.init_process_group(init_method=f"tcp://{env.master_addr}:{env.master_port}", ...)``.
    Construct it without arguments: every field is read from the job's environment, so the same code runs on
    Slurm, OAR and locally.

    Attributes:
        rank: This copy's rank among all copies of the call, 0 to ``world_size - 1``.
        local_rank: Its rank on its own node, to pick a GPU.
        world_size: ``nodes * tasks_per_node``: how many copies of the call run.
        master_addr: Host of rank 0, where the ranks meet.
        master_port: A port on that host the ranks may use.
        job_id: The scheduler's job id (an array task's own id).
        task_id: oarfutures' id of the call's task, as ``oarfutures logs`` takes it.
        hostname: The node this copy runs on.
        node: The scheduler's name of that node (Slurm's ``SLURMD_NODENAME``, the host in OAR's
            ``$OAR_NODEFILE``): ranks with the same ``node`` share a machine, which ``hostname`` cannot tell
            where several nodes answer to one name.
    """

    rank: int = field(default_factory=lambda: int(os.environ.get(variables.RANK, 0)))
    local_rank: int = field(default_factory=lambda: int(os.environ.get(variables.LOCAL_RANK, 0)))
    world_size: int = field(default_factory=lambda: int(os.environ.get(variables.WORLD_SIZE, 1)))
    master_addr: str = field(default_factory=lambda: os.environ.get(variables.MASTER_ADDR, socket.gethostname()))
    master_port: int = field(default_factory=lambda: int(os.environ.get(variables.MASTER_PORT, 29500)))
    job_id: str = field(default_factory=lambda: os.environ.get(variables.JOB_ID, ""))
    task_id: str = field(default_factory=lambda: os.environ.get(variables.TASK_ID, ""))
    hostname: str = field(default_factory=socket.gethostname)
    node: str = field(default_factory=lambda: _node_name())


def _node_name() -> str:
    return os.environ.get(variables.NODE) or socket.gethostname()
