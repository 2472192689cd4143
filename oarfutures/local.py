"""The local backend: the same worker and files as on a cluster, in subprocesses on this machine.

It is a tiny scheduler: a queue and ``max_workers`` slot threads, each running one worker process at a time, so
the concurrency cap is real (submitit's local executor has none). Job ids are our task ids. A cancelled job is
never started; a worker that cannot start fails its job, never its slot.
"""
from __future__ import annotations

import collections
import ctypes
import functools
import os
import signal
import subprocess
import threading
import weakref
from typing import Any, Deque, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from oarfutures import layout, params
from oarfutures.backend import Backend, BatchSubmission, JobState, JobStatus
from oarfutures.executor import JobExecutor, check_max_workers, resolve_folder
from oarfutures.poller import get_poller
from oarfutures.worker import CHECKPOINT_SIGNAL, RESUBMIT

QUEUED = JobStatus(JobState.PENDING, "PENDING")
RUNNING = JobStatus(JobState.RUNNING, "RUNNING")


def _before_worker_starts(client: int) -> None:
    """In the worker before exec: be killed when the client dies (Linux), like a job of a dead scheduler.

    Without it a worker of a killed client runs on beside the calls attach() settles. If the client died before
    the request took effect, the worker already has another parent: it leaves at once.
    """
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass
    if os.getppid() != client:
        os._exit(1)
    # interrupt() may come while the interpreter starts, before the worker can catch the checkpoint signal, which
    # would kill it: blocked, the signal stays pending across exec until the worker listens (it unblocks it then)
    signal.pthread_sigmask(signal.SIG_BLOCK, [CHECKPOINT_SIGNAL])


def _finish_local_work_at_exit() -> None:
    """At interpreter exit, run what was submitted to local backends (ProcessPoolExecutor does the same)."""
    for backend in list(_backends):
        backend.drain()


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads or workers: its copies of the pools start empty."""
    for backend in list(_backends):
        backend.reset()


_backends: "weakref.WeakSet[LocalBackend]" = weakref.WeakSet()
threading._register_atexit(_finish_local_work_at_exit)  # type: ignore[attr-defined]
os.register_at_fork(after_in_child=_after_fork_in_child)


class LocalBackend(Backend):
    name = "local"
    caps_all_jobs = True
    query_is_cheap = True
    jobs_outlive_client = False
    reports_changes_only = True
    # A finished worker wakes the poller, which then finds its result at once; queries only catch crashes.
    query_interval = (0.2, 1.0)
    result_grace = 0.5  # the worker renames its result before it exits; this only covers our own scheduling

    #: the generic parameters are accepted (a script runs unchanged here) and have no effect on this machine
    CHECKERS: Dict[str, params.Checker] = {
        "walltime": params.walltime_seconds,
        "nodes": params.positive_int,
        "tasks_per_node": params.positive_int,
        "cpus_per_task": params.positive_int,
        "gpus_per_node": params.positive_int,
        "mem_gb": params.positive_number,
        "name": params.token,
        "setup": params.setup_lines,
    }

    def __init__(self, max_workers: int, folder: str) -> None:
        self.parameters: Dict[str, object] = {}
        self.folder = folder
        self.max_workers = max_workers
        self.reset()
        _backends.add(self)

    def reset(self) -> None:
        """Start empty: at creation, and in a forked child (whose copy of the parent's threads is dead)."""
        self._lock = threading.Condition()
        self._queue: Deque[Tuple[str, List[str], Dict[str, str]]] = collections.deque()  # job id, command, env
        self._slots: List[threading.Thread] = []
        self._closing = False
        self._states: Dict[str, JobStatus] = {}
        self._processes: Dict[str, subprocess.Popen] = {}
        self._killed: Dict[str, str] = {}  # job id -> why we killed it
        self._skip: Set[str] = set()  # queued jobs cancelled before a slot took them
        self._busy = 0  # slots between taking a job and seeing its worker exit
        self._changed: Dict[str, JobStatus] = {}  # news for the next query

    def drain(self) -> None:
        """Wait until every queued worker has run."""
        with self._lock:
            self._lock.wait_for(lambda: self._closing or not (self._queue or self._busy))

    def validate(self, values: Mapping[str, Any]) -> Dict[str, Any]:
        return params.check_all(params.for_backend(values, "local"), self.CHECKERS, "LocalPoolExecutor parameter")

    def query_group(self) -> object:
        return self  # job ids are only meaningful to this backend

    def submit(self, submission: BatchSubmission) -> List[str]:
        job_ids = [layout.task_id(submission.batch, i) for i in range(submission.first, submission.first + submission.count)]
        base = [submission.python, "-u", "-m", "oarfutures.worker", submission.folder, submission.batch]
        p = {"nodes": 1, "tasks_per_node": 1, **self.parameters, **submission.options}
        ranks = {"OARFUTURES_RANKS": str(p["nodes"] * p["tasks_per_node"]), "OARFUTURES_TASKS_PER_NODE": str(p["tasks_per_node"])}
        with self._lock:
            for index, job_id in enumerate(job_ids, submission.first):
                self._states[job_id] = QUEUED
                self._queue.append((job_id, base + [str(index)], ranks))
            self._slots = [slot for slot in self._slots if slot.is_alive()]
            while len(self._slots) < min(self.max_workers, len(self._queue) + self._busy):
                slot = threading.Thread(target=self._slot, name=f"oarfutures-local-{len(self._slots)}", daemon=True)
                self._slots.append(slot)
                slot.start()
            self._lock.notify(len(job_ids))
        return job_ids

    def _slot(self) -> None:
        """One slot: run queued workers one after the other until the backend closes."""
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if self._closing:
                    return
                job_id, command, variables = self._queue.popleft()
                if job_id in self._skip:  # cancelled while queued: never started
                    self._skip.discard(job_id)
                    self._lock.notify_all()
                    continue
                self._states[job_id] = self._changed[job_id] = RUNNING
                self._busy += 1
            code: Optional[int] = None
            try:
                code = self._run_worker(job_id, command, variables)
            except Exception as exc:  # the worker could not start (interpreter gone, logs/ removed...)
                failure = f"the worker could not start: {exc}"
            with self._lock:
                if code is None:
                    self._killed[job_id] = failure
                self._processes.pop(job_id, None)
                self._busy -= 1
                if code == RESUBMIT and job_id not in self._killed:  # checkpointed: run it again, same job id
                    self._states[job_id] = QUEUED
                    self._queue.append((job_id, command, variables))
                    self._lock.notify_all()
                    continue
                self._states[job_id] = self._changed[job_id] = self._ended_status(job_id, code)
                self._lock.notify_all()
            get_poller().wake()

    def _run_worker(self, job_id: str, command: List[str], variables: Dict[str, str]) -> int:
        out_path, err_path = self.log_paths(job_id)
        environment = {**os.environ, **variables, "OARFUTURES_JOB_ID": job_id, "OARFUTURES_LAUNCHER": "local"}
        with open(out_path, "ab") as out, open(err_path, "ab") as err:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=environment,
                preexec_fn=functools.partial(_before_worker_starts, os.getpid()),
            )
        with self._lock:
            self._processes[job_id] = process
            if job_id in self._killed:  # cancelled while it was starting
                process.kill()
        return process.wait()

    def _ended_status(self, job_id: str, code: Optional[int]) -> JobStatus:
        if code is None:
            return JobStatus(JobState.FAILED, "FAILED", None, self._killed[job_id])
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
                state = self._states.get(job_id)
                if state is QUEUED:  # its slot will skip it
                    self._skip.add(job_id)
                    status = JobStatus(JobState.CANCELLED, "CANCELLED", None, "cancelled while queued")
                    self._states[job_id] = self._changed[job_id] = status
                elif state is RUNNING:
                    self._killed.setdefault(job_id, "cancelled")
                    process = self._processes.get(job_id)
                    if process is not None:
                        process.kill()

    def interrupt(self, job_id: str) -> None:
        """The checkpoint signal to a running worker: what a preemption does on a cluster."""
        with self._lock:
            process = self._processes.get(job_id)
            if process is None:
                raise RuntimeError(f"job {job_id} is not running: nothing to interrupt")
            process.send_signal(CHECKPOINT_SIGNAL)

    def query(self, job_ids: Sequence[str]) -> Dict[str, JobStatus]:
        """What changed since the last query (reports_changes_only): the cost follows the news, not the queue."""
        with self._lock:
            news, self._changed = self._changed, {}
            for job_id, status in news.items():  # an ended job is reported once, then forgotten
                if status.state.ended:
                    self._states.pop(job_id, None)
                    self._killed.pop(job_id, None)
            return news

    def log_paths(self, job_id: str) -> List[str]:
        base = os.path.join(self.folder, layout.LOGS, job_id)
        return [base + ".out", base + ".err"]

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._queue.clear()
            self._lock.notify_all()


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
        max_resubmissions: int = 3,
    ) -> None:
        check_max_workers(max_workers)
        folder = resolve_folder(folder, LocalBackend.name)
        backend = LocalBackend(max_workers or os.cpu_count() or 1, folder)
        super().__init__(
            backend, max_workers, folder, python, keep_files, result_grace, warn_pickle_bytes, max_resubmissions
        )
        self._max_workers = backend.max_workers
