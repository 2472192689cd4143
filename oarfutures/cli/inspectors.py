"""The schedulers a folder's records name, each asked through its ``JobInspector``: what the command line knows of
jobs without being their client. It never branches on a scheduler's name: the registry gives the backend class,
and the inspector says what differs (``job_ids_are_task_ids``, ``earlier_runs``, ``unlisted_status``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from oarfutures import registry
from oarfutures.backends.base import JobInspector
from oarfutures.backends.commands import SchedulerCommandError
from oarfutures.core import records
from oarfutures.protocol import layout


class FolderInspectors:
    """The job inspector of each scheduler named in one folder's records, made on first use (one per command)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._made: dict[str, JobInspector | None] = {}

    def get(self, name: str) -> JobInspector | None:
        """The inspector of scheduler ``name``, or None when this version of oarfutures knows no such scheduler."""
        if name not in self._made:
            try:
                backend_class = registry.backend_class(name)
            except KeyError:
                self._made[name] = None
            else:
                self._made[name] = backend_class.inspector(self.folder)
        return self._made[name]

    def log_paths(self, name: str, job_id: str) -> list[str]:
        inspector = self.get(name)
        if inspector is not None:
            return inspector.log_paths(job_id)
        return layout.log_paths(self.folder, job_id)  # (a scheduler this version does not know)


def runs_of(
    inspectors: FolderInspectors, batches: Sequence[records.BatchRecord], follow_all: bool = True
) -> dict[tuple[str, int], list[str]]:
    """(batch, index) -> every job id that ran the task, oldest first (the record keeps only the latest).

    Each scheduler finds the earlier runs of all the batches' tasks at once (``earlier_runs``: OAR resubmits a
    checkpointed task under a new id with logs of its own); ``follow_all=False`` asks only about checkpointable
    batches, the only ones resubmitted. A task whose job id is its task id has it before any submission.
    """
    runs: dict[tuple[str, int], list[str]] = {}
    to_follow: dict[str, dict[tuple[str, int], str]] = {}  # scheduler -> task -> its latest job
    for record in batches:
        inspector = inspectors.get(record.backend)
        for index in range(len(record.calls)):
            key = (record.batch, index)
            if inspector is not None and inspector.job_ids_are_task_ids:
                runs[key] = [layout.task_id(record.batch, index)]
            elif index in record.job_ids:
                runs[key] = [record.job_ids[index]]
                if inspector is not None and (follow_all or record.checkpointable):
                    to_follow.setdefault(record.backend, {})[key] = record.job_ids[index]
    for name, latest in to_follow.items():
        inspector = inspectors.get(name)
        assert inspector is not None  # only known schedulers have jobs to follow
        try:
            chains = inspector.earlier_runs(list(latest.values()))
        except (SchedulerCommandError, ValueError) as exc:
            print(f"oarfutures: cannot ask {name} for earlier runs, using the latest job only: {exc}", file=sys.stderr)
            chains = {}
        for key, job_id in latest.items():
            runs[key] = chains.get(job_id, [job_id])
    return runs
