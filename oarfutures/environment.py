"""Where a call runs: inside a job, ``JobEnvironment()`` tells its rank, the world size, the master address."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field


@dataclass(frozen=True)
class JobEnvironment:
    """Read in the running call (on any backend); a single-task job is rank 0 of a world of 1.

    ``master_addr``/``master_port`` are the same for every rank of a job: enough for
    ``torch.distributed.init_process_group(init_method=f"tcp://{env.master_addr}:{env.master_port}", ...)``.
    """

    rank: int = field(default_factory=lambda: int(os.environ.get("OARFUTURES_RANK", 0)))
    local_rank: int = field(default_factory=lambda: int(os.environ.get("OARFUTURES_LOCAL_RANK", 0)))
    world_size: int = field(default_factory=lambda: int(os.environ.get("OARFUTURES_WORLD_SIZE", 1)))
    master_addr: str = field(default_factory=lambda: os.environ.get("OARFUTURES_MASTER_ADDR", socket.gethostname()))
    master_port: int = field(default_factory=lambda: int(os.environ.get("OARFUTURES_MASTER_PORT", 29500)))
    job_id: str = field(default_factory=lambda: os.environ.get("OARFUTURES_JOB_ID", ""))
    task_id: str = field(default_factory=lambda: os.environ.get("OARFUTURES_TASK_ID", ""))
    hostname: str = field(default_factory=socket.gethostname)
