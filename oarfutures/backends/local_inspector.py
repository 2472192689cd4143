"""The local backend's jobs seen from outside their client (``LocalBackend.inspector``): its worker processes.

The queue and slots of ``LocalBackend`` live in its client's memory; the command line, in another process, can
only find the workers in ``/proc`` and read the claims and results they leave in the folder. It shares nothing with
the scheduler but the folder's layout and the worker's command line.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

from oarfutures.backends.base import JobState, JobStatus
from oarfutures.protocol import layout

#: what the command lines of our processes hold (/proc/PID/cmdline): a one-shot worker or a rank, and a resident one
#: (which keeps the command line of the fork server that forked it)
WORKER_MODULE = b"oarfutures.worker"
RESIDENT_MODULE = b"oarfutures.worker.forkserver"


class LocalWorkerInspector:
    """The local jobs of a folder seen from outside their client (``LocalBackend.inspector``): a task runs while a
    worker process of this machine runs it, found in one pass over ``/proc``; the queue lived in the client.

    Job ids are task ids (what ``LocalBackend`` returns). Nothing here submits: the command line only asks,
    cancels (kills the workers) and reads logs.
    """

    name = "local"
    job_ids_are_task_ids = True

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def workers(self, job_ids: Sequence[str]) -> dict[str, list[int]]:
        """task id -> pids of the processes running it: the worker (one-shot or resident) and a multi-task job's ranks.

        One-shot workers and ranks name their task on their command line, ``python -u -m oarfutures.worker
        FOLDER BATCH INDEX``; a resident worker (forked by ``oarfutures.worker.forkserver``) serves task after task,
        and the claim of a task without a result names the one running it.
        """
        named, residents = self._scan()
        for job_id in job_ids:
            pid = self._resident_running(job_id)
            if pid in residents:
                named[job_id] = [pid] + named.get(job_id, [])  # the worker first: it would report its ranks' deaths
        return named

    def _scan(self) -> tuple[dict[str, list[int]], set[int]]:
        """One pass over /proc: the workers and ranks of this folder by task id, and every resident worker."""
        real = os.path.realpath(self.folder)
        named: dict[str, list[int]] = {}
        residents: set[int] = set()
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            return named, residents
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if RESIDENT_MODULE in args:
                residents.add(int(pid))
            if WORKER_MODULE not in args:
                continue
            at = args.index(WORKER_MODULE)
            if len(args) < at + 4 or not args[at + 3].isdigit():
                continue
            folder, batch, index = (a.decode(errors="replace") for a in args[at + 1 : at + 4])
            if os.path.realpath(folder) == real:
                named.setdefault(layout.task_id(batch, int(index)), []).append(int(pid))
        for pids_of_task in named.values():
            pids_of_task.sort()
        return named, residents

    def _resident_running(self, job_id: str) -> int | None:
        """The pid of the process of this machine that claimed the task, while the task has no result."""
        batch, _, index = job_id.rpartition("_")
        if not index.isdigit() or os.path.exists(layout.result_path(self.folder, batch, int(index))):
            return None
        run = layout.runner(self.folder, batch, int(index))
        return run[2] if run is not None and run[1] == os.uname().nodename else None

    def query(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """The running tasks among these, each with its worker's pid as reason; the others are not listed."""
        running = self.workers(job_ids)
        return {
            j: JobStatus(JobState.RUNNING, "RUNNING", reason=f"pid {min(running[j])}") for j in job_ids if j in running
        }

    def unlisted_status(self, batch: str, index: int) -> JobStatus | None:
        """A task with no worker process: never started (queued in its client), to run again, or over."""
        if os.path.exists(layout.resume_path(self.folder, batch, index)):
            return JobStatus(JobState.PENDING, "checkpointed", reason="checkpointed: waits to run again")
        if layout.runner(self.folder, batch, index) is None:
            return JobStatus(JobState.PENDING, "not started", reason="queued by its client (or its client is gone)")
        gone = "its worker process is gone (killed, crashed, or its client died)"
        return JobStatus(JobState.FAILED, "no worker", reason=gone)

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Kill the processes running these tasks; a task queued in its client is not here (only its claim can stop
        it)."""
        named, residents = self._scan()
        refused = []
        for job_id in job_ids:
            pids = named.get(job_id, [])
            resident = self._resident_running(job_id)  # read just before the kill: a resident moves on to other tasks
            if resident in residents:
                pids = [resident] + pids  # the worker first: it would report its ranks' deaths
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                except PermissionError:
                    refused.append(job_id)
        if refused:
            raise PermissionError(f"not allowed to kill the workers of {', '.join(sorted(set(refused)))}")

    def earlier_runs(self, job_ids: Sequence[str]) -> dict[str, list[str]]:
        """A local task runs again under its task id, and its logs gather every run."""
        return {job_id: [job_id] for job_id in job_ids}

    def log_paths(self, job_id: str) -> list[str]:
        return layout.log_paths(self.folder, job_id)
