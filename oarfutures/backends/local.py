"""The local backend: the same worker and files as on a cluster, in subprocesses on this machine.

It is a tiny scheduler: a queue and ``max_workers`` slot threads, each owning one resident worker process
(``local_resident``; its side: ``worker.resident``) that runs task after task, so the concurrency cap is real
(submitit's local executor has none) and a call costs no interpreter start (as with ``ProcessPoolExecutor``).
Workers are forked by a fork server (``local_forkserver``), which paid the interpreter start once.
Job ids are our task ids. A cancelled job is never started; a call that kills its worker fails alone, and the
slot starts a new worker; a worker that cannot start fails its job, never its slot. A worker gets its next job
while it writes the last one's result (``_hand_over``). Slots and their workers leave after ``IDLE_SECONDS``
without work, and the fork server with the last of them.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from oarfutures import threadpolicy
from oarfutures.backends import params
from oarfutures.backends.base import Backend, BatchSubmission, JobState, JobStatus
from oarfutures.backends.local_forkserver import ForkServer
from oarfutures.backends.local_inspector import LocalWorkerInspector
from oarfutures.backends.local_resident import Resident
from oarfutures.protocol import layout, variables
from oarfutures.protocol.signals import CHECKPOINT_SIGNAL, RESUBMIT

QUEUED = JobStatus(JobState.PENDING, "PENDING")
RUNNING = JobStatus(JobState.RUNNING, "RUNNING")
IDLE_SECONDS = 10.0  # a slot and its resident worker leave after this long without work
CLOSE_WAIT = 10.0  # close() waits this long for each slot (an idle worker leaves in milliseconds, or is killed)


def _finish_local_work_at_exit() -> None:
    """At interpreter exit, run what was submitted to local backends (ProcessPoolExecutor does the same)."""
    for backend in list(_backends):
        backend.drain()


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads or workers: its copies of the pools start empty."""
    for backend in list(_backends):
        backend.reset()


class _NotTaken(Exception):
    """A job whose worker died before taking it: handed to it ahead of its turn, or sent to a worker that had run a
    call and died since (killed while idle). It never ran: it goes back to the queue, for a new worker."""


def _claim_for_cancel(job: _Job) -> bool:
    """Take a handed job's claim for a cancellation (its worker then does not run it); False if its worker has."""
    path = layout.claim_path(job.folder, job.batch, job.index)
    try:
        return layout.claim_for_cancel(path)
    except OSError:  # its files are gone: nothing can run it
        return True


@dataclass(frozen=True)
class _Job:
    job_id: str
    python: str
    folder: str
    batch: str
    index: int
    variables: dict[str, str]  # the job's own environment (ranks)


_backends: weakref.WeakSet[LocalBackend] = weakref.WeakSet()
threading._register_atexit(_finish_local_work_at_exit)  # type: ignore[attr-defined]
os.register_at_fork(after_in_child=_after_fork_in_child)


class LocalBackend(Backend):
    name = "local"
    caps_all_jobs = True
    query_is_cheap = True
    cancel_is_cheap = True
    jobs_outlive_client = False
    leaves_empty_logs = False  # a worker's spool becomes a call's log only if the call printed something
    reports_changes_only = True
    # A finished worker wakes the poller, which then finds its result at once; queries only catch crashes.
    query_interval = (0.2, 1.0)
    result_grace = 0.5  # the worker renames its result before it exits; this only covers our own scheduling
    job_ids_are_task_ids = True

    #: the generic parameters are accepted (a script runs unchanged here) and have no effect on this machine
    CHECKERS: ClassVar[dict[str, params.Checker]] = {
        "walltime": params.walltime_seconds,
        "nodes": params.required_positive_int,
        "tasks_per_node": params.required_positive_int,
        "cpus_per_task": params.positive_int,
        "gpus_per_node": params.positive_int,
        "mem_gb": params.positive_number,
        "name": params.token,
        "setup": params.setup_lines,
    }

    def __init__(self, max_workers: int, folder: str, preload: Sequence[str] = ()) -> None:
        self.parameters: dict[str, object] = {}
        self.folder = folder
        self.max_workers = max_workers
        self.preload = tuple(preload)  # modules the fork servers import before forking (checked: module names)
        #: called with the job id after each job ended, outside the backend's lock: the executor delivers its
        #: result there at once, instead of at its poller's next scan
        self.on_job_end: Callable[[str], None] | None = None
        self.reset()
        _backends.add(self)

    def reset(self) -> None:
        """Start empty: at creation, and in a forked child (whose copy of the parent's threads is dead)."""
        self._lock = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._slots: list[threading.Thread] = []  # alive, or about to take a job
        self._closing = False
        self._states: dict[str, JobStatus] = {}
        self._running: dict[str, Resident] = {}  # the worker of each running job
        self._interrupts: set[str] = set()  # running jobs to interrupt once their task listens
        self._killed: dict[str, str] = {}  # job id -> why we killed it
        self._skip: set[str] = set()  # queued jobs cancelled before a slot took them (or before they started)
        self._handed: dict[str, tuple[_Job, Resident]] = {}  # sent to a worker ahead of its turn, not started yet
        self._ending: set[str] = set()  # running jobs whose call returned: their worker is not killed for them
        self._idle = 0  # slots waiting for a job
        self._busy = 0  # jobs taken by a slot and not over yet
        self._changed: dict[str, JobStatus] = {}  # news for the next query
        self._servers: dict[str, ForkServer] = {}  # job interpreter -> the server forking its workers

    def drain(self) -> None:
        """Wait until every queued worker has run."""
        with self._lock:
            self._lock.wait_for(lambda: self._closing or not (self._queue or self._busy))

    def validate(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return params.check_all(params.for_backend(values, "local"), self.CHECKERS, "LocalPoolExecutor parameter")

    @classmethod
    def inspector(cls, folder: str) -> LocalWorkerInspector:
        """Outside its client this backend's queue and slots are gone: what remains is processes and files."""
        return LocalWorkerInspector(folder)

    def query_group(self) -> object:
        return self  # job ids are only meaningful to this backend

    def gather_window(self) -> float:
        """A window only while calls wait for a free slot: a call gathered then starts no later than it would
        have, while dask, which sends a call each time one ends (a slot is free), sees no delay."""
        return self.gather_seconds if self._queue or self._busy >= self.max_workers else 0.0

    def submit(self, submission: BatchSubmission) -> list[str]:
        job_ids = [
            layout.task_id(submission.batch, i) for i in range(submission.first, submission.first + submission.count)
        ]
        p: dict[str, Any] = {"nodes": 1, "tasks_per_node": 1, **self.parameters, **submission.options}
        world_size = p["nodes"] * p["tasks_per_node"]
        ranks = {variables.RANKS: str(world_size), variables.TASKS_PER_NODE: str(p["tasks_per_node"])}
        with self._lock:
            for index, job_id in enumerate(job_ids, submission.first):
                self._states[job_id] = QUEUED
                self._queue.append(_Job(job_id, submission.python, submission.folder, submission.batch, index, ranks))
            try:
                self._start_slots()
            except RuntimeError:
                if not self._slots:  # nothing would run them: refused, as a scheduler refuses a submission
                    self._withdraw(set(job_ids))
                    raise
                # the slots there run the whole queue, these jobs included
            self._lock.notify(len(job_ids))
        return job_ids

    def _start_slots(self) -> None:
        """As many slots as queued work needs, up to ``max_workers`` (lock held). A thread that cannot start
        (the process's thread limit; Python 3.12.0-3.12.2 at interpreter exit, gh-113964) is not counted as a slot:
        otherwise no other would ever start in its place, and close() would wait for it."""
        while len(self._slots) < min(self.max_workers, len(self._queue) + self._busy):
            slot = threading.Thread(target=self._slot, name=f"oarfutures-local-{len(self._slots)}", daemon=True)
            self._slots.append(slot)
            try:
                slot.start()
            except RuntimeError:
                self._slots.remove(slot)
                raise

    def _withdraw(self, job_ids: set[str]) -> None:
        """Forget queued jobs of a refused submission (lock held)."""
        self._queue = collections.deque(job for job in self._queue if job.job_id not in job_ids)
        for job_id in job_ids:
            self._states.pop(job_id, None)

    def _slot(self) -> None:
        """One slot: run queued jobs one after the other on its resident worker, until idle or closed.

        The worker is started (by the fork server), used and closed by this thread alone.
        """
        threadpolicy.relay()  # it wakes for every line its worker writes: without preempting the worker
        resident: Resident | None = None
        # The job that ended last: the executor hears of it once the next job is on its way to the worker, which
        # then starts that job while the client reads the result, instead of waiting for the client.
        untold: str | None = None
        following: _Job | None = None  # handed to the worker while it wrote its last result (see _hand_over)

        def tell_untold() -> None:
            nonlocal untold
            if untold is not None and self.on_job_end is not None:
                self.on_job_end(untold)
            untold = None

        def hand_over(ending: _Job) -> None:
            nonlocal following
            assert resident is not None
            following = self._hand_over(resident, ending)

        try:
            while True:
                handed, following = following, None
                with self._lock:
                    if handed is not None:
                        job = handed
                    elif untold is not None and not self._queue and not self._closing:
                        job = None  # no next job to send first: tell now (below), then wait
                    elif not self._wait_for_work():
                        self._slots.remove(threading.current_thread())  # under the lock: submit() starts a new slot
                        return
                    elif self._closing:
                        return
                    else:
                        job = self._queue.popleft()
                        if job.job_id in self._skip:  # cancelled while queued: never started
                            self._skip.discard(job.job_id)
                            self._lock.notify_all()
                            continue
                        self._states[job.job_id] = self._changed[job.job_id] = RUNNING
                        self._busy += 1
                if job is None:
                    tell_untold()
                    continue
                code: int | None = None
                try:
                    if handed is None and (resident is None or not resident.ready_for(job.python)):
                        if resident is not None:  # (dead, it was killed while idle)
                            self._close_worker(resident, job.folder, dead=resident.process.poll() is not None)
                        resident = Resident(self._server_for(job.python))
                    assert resident is not None
                    code = self._run(resident, job, tell_untold, hand_over, handed is not None)
                except _NotTaken:
                    with self._lock:
                        self._running.pop(job.job_id, None)
                        if self._states.get(job.job_id) is RUNNING:  # (a cancel now skips it, as any queued job)
                            self._states[job.job_id] = QUEUED
                        self._requeue(job)
                    assert resident is not None
                    self._close_worker(resident, job.folder, dead=True)
                    resident = None  # (it may still look alive: its exit is reported by the fork server)
                    continue
                except Exception as exc:  # the worker could not start (interpreter gone, logs/ removed...)
                    failure = f"the worker could not start: {exc}"
                finally:
                    tell_untold()
                with self._lock:
                    self._handed.pop(job.job_id, None)
                    self._ending.discard(job.job_id)
                    self._running.pop(job.job_id, None)
                    self._busy -= 1
                    if job.job_id in self._skip:  # cancelled while handed over: its claim kept it from running
                        self._skip.discard(job.job_id)
                        self._lock.notify_all()
                        continue
                    if code is None:
                        self._killed[job.job_id] = failure
                    if code == RESUBMIT and job.job_id not in self._killed:  # checkpointed: again, same job id
                        self._states[job.job_id] = QUEUED
                        self._queue.append(job)
                        self._lock.notify_all()
                        continue
                    self._states[job.job_id] = self._changed[job.job_id] = self._ended_status(job.job_id, code)
                    self._lock.notify_all()
                untold = job.job_id
        finally:
            tell_untold()
            if resident is not None:
                resident.close()
            self._release_servers(unless_in_use=True)

    def expect_batch(self, python: str) -> None:
        """The fork server starts while the batch is written (~35 ms for a map of 400), not after."""
        if not self._closing:
            with contextlib.suppress(Exception):  # (the slot that needs it tries again, and fails the job with why)
                self._server_for(python)

    def _server_for(self, python: str) -> ForkServer:
        """The fork server of ``python``'s workers, started on first need (again if it died, unless it refused the
        preload: then every call fails with why, rather than each starting a server that refuses it again)."""
        with self._lock:
            server = self._servers.get(python)
            if server is not None and server.refused_preload:
                raise OSError(server.why_gone())
            if server is None or not server.alive:
                server = self._servers[python] = ForkServer(python, self.preload)
            return server

    def _release_servers(self, unless_in_use: bool, wait: float | None = None) -> None:
        """The fork servers leave: once the last slot has left after idling (``unless_in_use``: not while another
        slot may fork, nor while closing, which is close()'s to do), and on close(); after their workers, as a
        worker whose server leaves dies with it, leaving its spool files behind. The next slot starts one again."""
        with self._lock:
            if unless_in_use and (self._slots or self._closing):
                return
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.close(wait)

    def _request(self, job: _Job) -> dict[str, Any]:
        environment = {**job.variables, variables.JOB_ID: job.job_id, **dict.fromkeys(variables.RANK_PLACEMENT, "")}
        request = {"folder": job.folder, "batch": job.batch, "index": job.index, "environment": environment}
        request["logs"] = self._own_logs(job.job_id)
        return request

    def _run(
        self, resident: Resident, job: _Job, sent: Callable[[], None], ended: Callable[[_Job], None], handed: bool
    ) -> int:
        """Hand the job to the worker (unless it was ``handed`` over already), call ``sent``, and return the exit
        status its job ends with (the worker's own if it died). ``ended(job)`` when the worker says the call
        returned and it writes the result. Raises _NotTaken if a handed job's worker died before taking it."""
        if not handed:
            resident.listening = False
            try:
                resident.send(self._request(job))
            except OSError:
                if resident.served:  # it died since its last call
                    raise _NotTaken(job.job_id) from None
                raise
            finally:
                sent()
            with self._lock:
                self._running[job.job_id] = resident
                if job.job_id in self._killed:  # cancelled while it was starting
                    resident.kill()
        else:
            sent()
        reply = resident.reply()
        if reply is not None and reply.startswith("refused "):
            raise OSError(reply[len("refused ") :])
        # "started" comes before the claim: without it, the job never ran; it runs on a new worker, unless a cancel
        # killed this one for it, or this one was new (a new one would die too)
        if reply is None and (handed or (resident.served and not resident.killed)):
            raise _NotTaken(job.job_id)
        if reply == "started":
            with self._lock:
                if handed:  # from now on it is running, unless a cancel took its claim first
                    self._handed.pop(job.job_id, None)
                    self._running[job.job_id] = resident
                    if job.job_id not in self._skip:
                        self._states[job.job_id] = self._changed[job.job_id] = RUNNING
                resident.listening = True
                if job.job_id in self._interrupts:  # interrupt() came before the task could take the signal
                    self._interrupts.discard(job.job_id)
                    resident.process.send_signal(CHECKPOINT_SIGNAL)
            done = resident.reply()
            if done == "ended":
                ended(job)
                done = resident.reply()
            if done is not None:
                resident.served = True
                return int(done.split()[1])
        code = resident.process.wait()  # it died: a signal, os._exit() or the kill of a cancel
        for spool, log in zip(layout.spool_paths(job.folder, resident.process.pid), self._own_logs(job.job_id)):
            layout.publish_spool(spool, log)  # what the call printed before it died: its log tail names why
        self._remove_files_of(resident, job.folder)
        return code

    @classmethod
    def _close_worker(cls, resident: Resident, folder: str, dead: bool) -> None:
        """Close a worker this slot no longer uses; a dead one's files are removed too (it removes them itself as
        it leaves, which a killed one did not)."""
        resident.close()
        if dead:
            cls._remove_files_of(resident, folder)

    @staticmethod
    def _remove_files_of(resident: Resident, folder: str) -> None:
        """A dead worker's files: the empty result files it kept ready, and its spool files."""
        pid = resident.process.pid
        for path in [*layout.spare_result_paths(folder, pid), *layout.spool_paths(folder, pid)]:
            with contextlib.suppress(OSError):
                os.remove(path)

    def _hand_over(self, resident: Resident, ending: _Job) -> _Job | None:
        """The worker's call returned and it writes the result now: send it the next queued job, which it then
        finds waiting when it is done (no round trip through this thread between two calls). Only while no slot
        waits for work (it would start that job sooner), and never to a worker a cancel is killing."""
        with self._lock:
            self._ending.add(ending.job_id)  # its call is over: a cancel now must not kill what the worker runs next
            resident.listening = False  # and an interrupt() would reach the next call
            if self._closing or self._idle or resident.killed or not self._queue:
                return None
            if self._queue[0].python != resident.python:
                return None
            job = self._queue.popleft()
            if job.job_id in self._skip:  # cancelled while queued: never started
                self._skip.discard(job.job_id)
                self._lock.notify_all()
                return None
            self._handed[job.job_id] = (job, resident)
            self._busy += 1
        try:
            resident.send(self._request(job))
        except OSError:  # the worker is gone: the job waits for another
            with self._lock:
                self._requeue(job)
            return None
        return job

    def _requeue(self, job: _Job) -> None:
        """A handed job that never started goes back to the head of the queue (lock held)."""
        self._handed.pop(job.job_id, None)
        self._busy -= 1
        if job.job_id in self._skip:  # cancelled meanwhile: its cancellation was reported already
            self._skip.discard(job.job_id)
        else:
            self._queue.appendleft(job)
        self._lock.notify_all()

    def _wait_for_work(self) -> bool:
        """Wait (lock held) until a job is queued or the backend closes; False after IDLE_SECONDS without."""
        self._idle += 1
        try:
            return bool(self._lock.wait_for(lambda: self._queue or self._closing, timeout=IDLE_SECONDS))
        finally:
            self._idle -= 1

    def _ended_status(self, job_id: str, code: int | None) -> JobStatus:
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
                handed = self._handed.get(job_id)
                if handed is not None and not _claim_for_cancel(handed[0]):  # its worker started it already
                    self._killed.setdefault(job_id, "cancelled")
                    handed[1].kill()
                elif state is QUEUED:  # its slot skips it; a handed one finds its claim taken
                    self._skip.add(job_id)
                    status = JobStatus(JobState.CANCELLED, "CANCELLED", None, "cancelled while queued")
                    self._states[job_id] = self._changed[job_id] = status
                elif state is RUNNING and job_id not in self._ending:  # (an ended call's result stands)
                    self._killed.setdefault(job_id, "cancelled")
                    resident = self._running.get(job_id)
                    if resident is not None:  # the kill ends its call, and the slot replaces the worker
                        resident.kill()

    def interrupt(self, job_id: str) -> None:
        """The checkpoint signal to a running worker: what a preemption does on a cluster."""
        with self._lock:
            if self._states.get(job_id) is not RUNNING:
                raise RuntimeError(f"job {job_id} is not running: nothing to interrupt")
            if job_id in self._ending:  # its call returned: nothing left to interrupt
                return
            resident = self._running.get(job_id)
            if resident is not None and resident.listening:
                resident.process.send_signal(CHECKPOINT_SIGNAL)
            else:  # its task does not listen yet: the slot sends the signal when it does
                self._interrupts.add(job_id)

    def query(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """What changed since the last query (reports_changes_only): the cost follows the news, not the queue."""
        with self._lock:
            news, self._changed = self._changed, {}
            for job_id, status in news.items():  # an ended job is reported once, then forgotten
                if status.state.ended:
                    self._states.pop(job_id, None)
                    self._killed.pop(job_id, None)
                    self._interrupts.discard(job_id)
            return news

    def log_paths(self, job_id: str) -> list[str]:
        """The call's log files; while it runs, its output is still in its worker's spool files (first)."""
        with self._lock:
            resident = self._running.get(job_id)
        spool = (
            layout.spool_paths(self.folder, resident.process.pid) if resident is not None and resident.listening else []
        )
        return spool + self._own_logs(job_id)

    def _own_logs(self, job_id: str) -> list[str]:
        return super().log_paths(job_id)

    def close(self) -> None:
        """Stop the slots; return once their workers have left (as ``ProcessPoolExecutor.shutdown`` does), so that
        no worker process nor its spool files outlive ``shutdown(wait=True)``."""
        with self._lock:
            self._closing = True
            self._queue.clear()
            self._lock.notify_all()
            slots = [slot for slot in self._slots if slot is not threading.current_thread()]
        for slot in slots:
            slot.join(timeout=CLOSE_WAIT)
        self._release_servers(unless_in_use=False, wait=CLOSE_WAIT)
