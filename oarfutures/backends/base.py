"""The small interface every scheduler adapter implements; the executor core knows nothing else about them.

An adapter renders and submits one array per batch, cancels jobs, and reports the state of many jobs in one call,
mapped onto the few states the core acts on. Adding a scheduler means one new module implementing this.
"""

from __future__ import annotations

import abc
import enum
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from oarfutures.protocol import layout, variables
from oarfutures.protocol.signals import CHECKPOINT_SIGNAL


class JobState(enum.Enum):
    PENDING = "PENDING"  # queued, held, requeued, resubmitted and waiting again
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"  # the worker exited normally: its result file must exist
    FAILED = "FAILED"  # non-zero exit, killed, node failure, out of memory
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"  # walltime exceeded

    @property
    def ended(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    native_state: str = ""
    exit_code: str | None = None
    reason: str = ""
    follow_up: str | None = None  # a job id that continues this one (OAR resubmission)


@dataclass(frozen=True)
class BatchSubmission:
    """One array to submit: tasks ``first .. first+count-1`` of ``batch``, all running ``worker_command``."""

    batch: str
    first: int
    count: int
    folder: str
    python: str
    max_running: int | None  # cap on running tasks, for schedulers with a native array throttle
    options: dict[str, object]  # per-call parameter overrides (validated by the adapter)
    checkpointable: bool = False  # ask the scheduler for a checkpoint signal and to run the task again

    def steal_variables(
        self,
        steal_seconds: float,
        walltime: Callable[[], str],
        world_size: int,
        first: int | None = None,
        count: int | None = None,
    ) -> str:
        """The ``export`` line that lets the array's jobs steal its pending tasks (see ``worker.stealing``), or "".

        Never for a checkpointable batch or a multi-task job; ``walltime()`` gives the job's effective walltime in
        seconds, "unlimited", or a shell expression giving it; empty when unknown (the worker then steals nothing).
        It is asked only for a batch that steals: on Slurm it may ask the controller.
        """
        first = self.first if first is None else first  # one array of a batch Slurm's MaxArraySize split
        count = self.count if count is None else count
        if not steal_seconds or self.checkpointable or world_size > 1 or count < 2:
            return ""
        return (
            f"export {variables.STEAL_SECONDS}={steal_seconds:g} {variables.WALLTIME}={walltime()} "
            f"{variables.ARRAY_FIRST}={first} {variables.ARRAY_COUNT}={count} {variables.JOB_START}=$EPOCHSECONDS"
        )

    def worker_command(self, index_expression: str) -> str:
        """Shell command running the worker; ``index_expression`` is shell arithmetic giving the task index.

        A checkpointable batch ignores the checkpoint signal from just before ``exec`` until the worker catches
        it: a signal then would otherwise kill the interpreter as it starts (an ignored signal stays ignored
        across exec; one the script catches would not). One that came earlier, while the script ran, is in
        ``OARFUTURES_SIGNALLED`` if the script caught it, and the worker acts on it.
        """
        import shlex

        index = variables.INDEX
        claims = shlex.quote(os.path.dirname(layout.claim_path(self.folder, self.batch, 0)))
        resume = shlex.quote(layout.resume_path(self.folder, self.batch, 0)[: -len("0.resume.pkl")])
        # A task whose claim is already taken (another task of the array stole it, or its future was cancelled)
        # exits here, before any Python starts; a checkpointed task (its resume file exists) runs again. The
        # worker checks the claim again, atomically: this test only saves starting an interpreter.
        skip = (
            f"{index}=$(( {index_expression} ))\n"
            f'if [ -e {claims}/"${index}" ] && [ ! -e {resume}"${index}".resume.pkl ]; then\n'
            f'  echo "oarfutures: task {self.batch}_${index} not run: claimed before'
            f' ($(cat {claims}/"${index}"))" >&2; exit 0\nfi\n'
        )
        command = (
            f"exec {shlex.quote(self.python)} -u -m oarfutures.worker "
            f'{shlex.quote(self.folder)} {shlex.quote(self.batch)} "${index}"'
        )
        if self.checkpointable:
            return f"{skip}trap '' {CHECKPOINT_SIGNAL.name[3:]}; {command}"
        return skip + command


class Backend(abc.ABC):
    """A scheduler (or the local machine) as seen by the executor core."""

    name: str = ""
    #: True when the scheduler can cap the running tasks of one array (Slurm's %N): the core then submits whole
    #: arrays with ``max_running`` set to the slots that ``max_workers`` leaves free
    throttles: bool = False
    #: True when the backend itself keeps at most max_workers tasks running across all arrays (the local pool)
    caps_all_jobs: bool = False
    #: True when query() only reads memory (the local backend): the poller then needs no thread to call it
    query_is_cheap: bool = False
    #: True when cancel() runs no command and waits for nothing (the local backend): a future's cancel() then
    #: cancels its job before it returns, so that a worker is never handed a job cancelled before
    cancel_is_cheap: bool = False
    #: seconds between state queries: the first after a submission, growing to the last while nothing changes
    query_interval: tuple[float, float] = (1.0, 5.0)
    #: True when query() answers with the jobs whose state changed since its last call, whatever it is asked
    #: (the local backend knows every change as it happens); then silence means "no news", not "unknown job"
    reports_changes_only: bool = False
    #: False when jobs die with the client that submitted them (the local backend): attach() runs them again
    jobs_outlive_client: bool = True
    #: False when a job's log files exist only if it printed something (the local backend): a done batch's empty
    #: logs are then not looked for, two system calls per task
    leaves_empty_logs: bool = True
    #: how long a job that ended normally may be over, with no result file yet, before its future fails:
    #: shared filesystems lag (NFS caches directory listings up to 60 s by default)
    result_grace: float = 60.0
    #: after a submission, how long further ``submit`` calls wait to go out together in one array: a scheduler
    #: command costs tens of milliseconds and loads the controller, a few milliseconds of waiting do not matter
    gather_seconds: float = 0.005
    #: the checker of each parameter the backend takes, by oarfutures' name (see ``params``)
    CHECKERS: ClassVar[Mapping[str, Any]] = {}
    #: submitit's names of this backend's parameters (its prefix stripped) -> oarfutures' names
    SUBMITIT_SPELLINGS: ClassVar[Mapping[str, str]] = {}
    #: submitit's parameters oarfutures does not take on this backend -> what to use instead (the error says it)
    SUBMITIT_REFUSED: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def answers_here(cls) -> bool:
        """Whether this scheduler takes jobs from this process on this machine: ``AutoPoolExecutor`` picks the
        first that does (see ``registry.DETECTION_ORDER``), so it must be quick and log why it says no."""
        return False

    def can_gather(self, options: Mapping[str, Any]) -> bool:
        """Whether separate calls with these options (the parameters included) may go out as one array."""
        return True

    def gather_window(self) -> float:
        """How long to gather ``submit`` calls after a submission (``gather_seconds``, unless there is no point)."""
        return self.gather_seconds

    def expect_batch(self, python: str) -> None:  # noqa: B027 (not abstract: a scheduler starts its own jobs)
        """A batch for ``python`` is about to be written: a backend that starts its own workers may get them ready
        meanwhile. Failing here fails nothing: the submission that follows says why."""

    @abc.abstractmethod
    def submit(self, submission: BatchSubmission) -> list[str]:
        """Submit one array; return the job id of each task, in task order. Raise with the scheduler's message."""

    @abc.abstractmethod
    def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel these jobs (queued or running) in as few scheduler calls as possible."""

    @abc.abstractmethod
    def query(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """States of many jobs in one scheduler call; a job the scheduler no longer knows is simply absent."""

    def query_group(self) -> object:
        """Backends with the same key share one state query per poll (one squeue for all executors)."""
        return type(self)

    def interrupt(self, job_id: str) -> None:
        """Send the checkpoint signal to a running job, as a preemption would."""
        raise NotImplementedError(f"{type(self).__name__} cannot interrupt jobs")

    #: the job folder, whose ``logs/<job id>.out`` and ``.err`` hold each job's output ("": it keeps no logs)
    folder: str = ""

    def log_paths(self, job_id: str) -> list[str]:
        """Files holding the job's stdout and stderr."""
        if not self.folder:
            return []
        return layout.log_paths(self.folder, job_id)

    #: the parameters later submissions use (validated); update_parameters() changes them
    parameters: dict[str, Any]

    @abc.abstractmethod
    def validate(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Check and normalise parameters (generic and prefixed names); raise naming the first bad one."""

    def close(self) -> None:  # noqa: B027 (not abstract: the cluster backends hold nothing to release)
        """Release what the backend holds (threads, processes) once the executor is shut down."""

    # ------------------------------------------------------------------ seen from outside the client (command line)
    #: True when a task's job id is its task id (the local backend): a task has it before any submission, so its
    #: logs are found under it, and a table gains nothing from repeating it in a JOB column
    job_ids_are_task_ids: bool = False

    @classmethod
    def inspector(cls, folder: str) -> JobInspector:
        """What queries, cancels and names the log files of ``folder``'s jobs for a process that is not their
        client (the command line): the cluster backends are their own inspector, with default parameters (nothing
        is submitted through it); a backend whose queue lives in its client gives something else (see local)."""
        raise NotImplementedError(f"{cls.__name__} has no view of its jobs from outside their client")

    def earlier_runs(self, job_ids: Sequence[str]) -> dict[str, list[str]]:
        """job id -> every job that ran the same task, oldest first, in one scheduler call (logs of all runs).

        By default a job is its task's only run: Slurm requeues a task under the same id and appends to the same
        logs. A scheduler that resubmits a task under a new job id (OAR) finds the others.
        """
        return {job_id: [job_id] for job_id in job_ids}

    def unlisted_status(self, batch: str, index: int) -> JobStatus | None:
        """The status of a task whose job ``query`` did not list, from the folder alone; None when only the
        scheduler could say (the default: a cluster purges ended jobs and shows new ones late)."""
        return None


class JobInspector(Protocol):
    """A scheduler's jobs of one folder as the command line sees them, with no client: ask, cancel, read logs.

    Every cluster ``Backend`` is one (``Backend.inspector``). The local backend's queue and slots live in its
    client's memory, so outside it the local inspector sees worker processes, claims and resume files instead.
    """

    name: str
    job_ids_are_task_ids: bool

    def query(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """States of the jobs the scheduler lists (a purged or not yet visible job is absent)."""

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel these queued or running jobs, in as few calls as possible."""

    def log_paths(self, job_id: str) -> list[str]:
        """Files holding the job's stdout and stderr."""

    def earlier_runs(self, job_ids: Sequence[str]) -> dict[str, list[str]]:
        """job id -> every job that ran the same task, oldest first."""

    def unlisted_status(self, batch: str, index: int) -> JobStatus | None:
        """What a task whose job ``query`` did not list is, if the folder tells; None when it does not."""
