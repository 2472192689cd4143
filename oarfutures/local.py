"""The local backend: the same worker and files as on a cluster, in subprocesses on this machine.

It is a tiny scheduler: a thread pool of ``max_workers`` slots, each running one worker process at a time, so the
concurrency cap is real (submitit's local executor has none). Job ids are our task ids.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

from oarfutures import layout
from oarfutures.backend import Backend, BatchSubmission, JobState, JobStatus
from oarfutures.executor import JobExecutor, check_max_workers, resolve_folder
from oarfutures.poller import get_poller


class LocalBackend(Backend):
    name = "local"
    throttles = True
    query_interval = (0.02, 0.2)
    result_grace = 0.5  # the worker renames its result before it exits; this only covers our own scheduling

    def __init__(self, max_workers: int, folder: str) -> None:
        self.folder = folder
        self.max_workers = max_workers
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="oarfutures-local")
        self._lock = threading.Lock()
        self._states: Dict[str, JobStatus] = {}
        self._slots: Dict[str, Future] = {}
        self._processes: Dict[str, subprocess.Popen] = {}
        self._killed: Dict[str, str] = {}  # job id -> why we killed it

    def query_group(self) -> object:
        return self  # job ids are only meaningful to this backend

    def submit(self, submission: BatchSubmission) -> List[str]:
        job_ids = []
        for index in range(submission.first, submission.first + submission.count):
            job_id = layout.task_id(submission.batch, index)
            command = [submission.python, "-u", "-m", "oarfutures.worker", submission.folder, submission.batch, str(index)]
            with self._lock:
                self._states[job_id] = JobStatus(JobState.PENDING, "PENDING")
                self._slots[job_id] = self._pool.submit(self._run, job_id, command)
            job_ids.append(job_id)
        return job_ids

    def _run(self, job_id: str, command: List[str]) -> None:
        out_path, err_path = self.log_paths(job_id)
        with self._lock:
            if job_id in self._killed:
                return
            with open(out_path, "ab") as out, open(err_path, "ab") as err:
                process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            self._processes[job_id] = process
            self._states[job_id] = JobStatus(JobState.RUNNING, "RUNNING")
        code = process.wait()
        with self._lock:
            del self._processes[job_id]
            self._states[job_id] = self._ended_status(job_id, code)
        get_poller().wake()

    def _ended_status(self, job_id: str, code: int) -> JobStatus:
        if job_id in self._killed:
            return JobStatus(JobState.CANCELLED, "CANCELLED", str(code), self._killed[job_id])
        if code == 0:
            return JobStatus(JobState.COMPLETED, "COMPLETED", "0")
        if code < 0:
            name = signal.Signals(-code).name
            return JobStatus(JobState.FAILED, "FAILED", str(code), f"the worker was killed by {name}")
        return JobStatus(JobState.FAILED, "FAILED", str(code), f"the worker exited with status {code}")

    def cancel(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                self._killed.setdefault(job_id, "cancelled")
                slot = self._slots.get(job_id)
                if slot is not None and slot.cancel():
                    self._states[job_id] = JobStatus(JobState.CANCELLED, "CANCELLED", None, "cancelled while queued")
                process = self._processes.get(job_id)
                if process is not None:
                    process.kill()

    def signal(self, job_id: str, signum: int) -> bool:
        """Send a signal to a running worker (the local way to simulate preemption)."""
        with self._lock:
            process = self._processes.get(job_id)
            if process is None:
                return False
            process.send_signal(signum)
            return True

    def query(self, job_ids: Sequence[str]) -> Dict[str, JobStatus]:
        with self._lock:
            statuses = {job_id: self._states[job_id] for job_id in job_ids if job_id in self._states}
            for job_id, status in statuses.items():  # an ended job is reported once, then forgotten
                if status.state.ended:
                    self._states.pop(job_id, None)
                    self._slots.pop(job_id, None)
            return statuses

    def log_paths(self, job_id: str) -> List[str]:
        base = os.path.join(self.folder, layout.LOGS, job_id)
        return [base + ".out", base + ".err"]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class LocalPoolExecutor(JobExecutor):
    """Runs calls in worker subprocesses on this machine, at most ``max_workers`` at once.

    The embedded default when no scheduler is found; it goes through the same task files, worker and poller as
    the cluster executors, so what works here works there.
    """

    def __init__(
        self,
        max_workers: Optional[int] = None,
        *,
        folder: Optional[str] = None,
        python: Optional[str] = None,
        keep_files: bool = False,
        result_grace: Optional[float] = None,
        warn_pickle_bytes: int = 100_000_000,
    ) -> None:
        check_max_workers(max_workers)
        folder = resolve_folder(folder, LocalBackend.name)
        backend = LocalBackend(max_workers or os.cpu_count() or 1, folder)
        super().__init__(backend, max_workers, folder, python, keep_files, result_grace, warn_pickle_bytes)
        self._max_workers = backend.max_workers
