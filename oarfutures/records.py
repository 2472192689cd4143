"""The record of a batch (``jobs/<batch>.json``): enough to find its results again after the client died.

It is written when the batch is created and again after each submission, through a temp file and a rename. A
new process re-attaches to the folder from these records (``executor.attach()``), and the command line reads
them to show, cancel and clean jobs.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List

from oarfutures import layout


@dataclass
class BatchRecord:
    batch: str
    backend: str
    calls: List[int]  # number of calls in each task, in task order
    job_ids: Dict[int, str] = field(default_factory=dict)  # task index -> latest scheduler job id
    checkpointable: bool = False
    created: float = field(default_factory=time.time)
    complete: bool = False  # every result was delivered to a client and the batch's files are gone

    def save(self, folder: str) -> None:
        path = layout.record_path(folder, self.batch)
        temp = f"{path}.tmp-{os.getpid()}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)
        os.replace(temp, path)


def load(path: str) -> BatchRecord:
    with open(path) as f:
        data = json.load(f)
    data["job_ids"] = {int(index): job_id for index, job_id in data["job_ids"].items()}
    return BatchRecord(**data)


def load_all(folder: str) -> List[BatchRecord]:
    """Every batch of the folder, oldest first (unreadable records are skipped: a crash mid-write leaves none)."""
    jobs = os.path.join(folder, layout.JOBS)
    found = []
    for name in os.listdir(jobs) if os.path.isdir(jobs) else []:
        if name.endswith(".json"):
            try:
                found.append(load(os.path.join(jobs, name)))
            except (OSError, ValueError, TypeError):
                continue
    return sorted(found, key=lambda record: record.created)
