"""Running a task's calls and writing their outcomes, with the checkpoint protocol around them.

The outcomes go to ``results/<batch>_<index>.pkl`` through a temp file and a rename, so the client never reads half
a result (format: ``protocol.results``). A one-shot job process (``python -m oarfutures.worker``) and a resident
local worker (``worker.resident``) both run tasks through ``run_task``.
"""

import contextlib
import os
import signal
import sys
import time

from oarfutures.protocol import layout, results, variables
from oarfutures.protocol.signals import CHECKPOINT_SIGNAL, RESUBMIT
from oarfutures.worker.taskfiles import FIRST_RUN, claim_call, claim_task, job_owner, read_task


class Interrupted(BaseException):
    """Raised inside a checkpointable call by the checkpoint signal (preemption, walltime near)."""


class TaskRun:
    """One run of a task: its calls, and what to do when the checkpoint signal interrupts one of them.

    The signal may come at any time, even while the worker starts (a preemption does not wait for Python): the
    worker listens from its first line, and a signal that comes before a call is kept and acted on when the call
    would start, rather than killing the worker or being dropped.
    """

    def __init__(self, folder, batch, index, owner=None):
        self.folder, self.batch, self.index = folder, batch, index
        self.owner = owner or job_owner()  # what its claims say
        self.destination = layout.result_path(folder, batch, index)  # a rank of a multi-task job writes elsewhere
        self.started = time.monotonic()
        self.began = time.time()  # the same moment on the wall clock, recorded in the result
        self.in_call = False
        self.stolen_by = None  # the job id of the job that ran this task in place of its own (see stealing)
        self.claims_calls = True  # the ranks of a multi-task job all run the call their launcher claimed
        self.signalled = False  # a checkpoint signal came while no call ran, and no call has acted on it yet
        self.durable = True  # fsync the result: the job's machine may crash before its page cache reaches the disk
        self.checkpointable = False  # one of its functions has a checkpoint(): never stolen from, never steals
        self.all_ok = False  # every call ran and returned (set by run): only then may the job steal more work
        self.before_result = None  # called just before the result is written (a resident worker's logs)
        self.spare = None  # gives (path, open descriptor) of an empty file for the result, if ready (a resident)

    def listen(self):
        """Catch the checkpoint signal from now on, including one the job script caught or held for us.

        The job script of a checkpointable batch records a signal that comes while it runs and ignores it from
        just before ``exec`` (an ignored signal stays ignored across exec, a caught one would kill the new
        process); a local worker may start with the signal blocked, so that it stays pending until this point.
        """
        self.signalled = bool(os.environ.pop(variables.SIGNALLED, ""))
        signal.signal(CHECKPOINT_SIGNAL, self.on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [CHECKPOINT_SIGNAL])

    def stop_listening(self):
        """For work that cannot checkpoint: the signal stops the job as it always did, also one that came early."""
        signal.signal(CHECKPOINT_SIGNAL, signal.SIG_DFL)
        if self.signalled:
            os.kill(os.getpid(), CHECKPOINT_SIGNAL)

    def on_signal(self, signum, frame):
        if self.in_call:
            self.in_call = False  # one checkpoint per run
            raise Interrupted(signum)
        self.signalled = True

    def enter_call(self):
        """From here the signal interrupts the call; one that came before interrupts it now, before it starts."""
        self.in_call = True
        if self.signalled:
            self.in_call = self.signalled = False
            raise Interrupted(CHECKPOINT_SIGNAL)

    def run(self, meta, functions, calls, done, resubmissions):
        """Run the calls; return the exit status (RESUBMIT when the task must come back)."""
        self.checkpointable = any(callable(getattr(f, "checkpoint", None)) for f in functions)
        if not self.checkpointable:
            self.stop_listening()
        outcomes = list(done)
        several = len(done) + len(calls) > 1
        for position, (fn_index, args, kwargs) in enumerate(calls):
            call = len(outcomes)
            if several and self.claims_calls and not claim_call(self.folder, self.batch, self.index, call, self.owner):
                outcomes.append(results.NOT_RUN)  # its future was cancelled: the client ignores this outcome
                continue
            function = functions[fn_index]
            try:
                self.enter_call()
                outcomes.append(results.returned(function(*args, **kwargs)))
            except Interrupted:
                remaining = calls[position + 1 :]
                return self.checkpoint(meta, functions, function, args, kwargs, remaining, outcomes, resubmissions)
            except BaseException as exc:  # SystemExit/KeyboardInterrupt in user code are results too
                outcomes.append(results.raised(exc, skip_frames=1))
            finally:
                self.in_call = False
        self.write(outcomes, resubmissions)
        self.all_ok = all(outcome.ok for outcome in outcomes)
        return 0

    def checkpoint(self, meta, functions, function, args, kwargs, remaining, outcomes, resubmissions):
        """Save what to run next under the same task id and ask to run again; or record why not."""
        job = os.environ.get(variables.JOB_ID)
        task_id = layout.task_id(self.batch, self.index)
        try:
            following = function.checkpoint(*args, **kwargs)
        except BaseException as exc:  # whatever checkpoint() raised is the call's outcome
            return self.give_up(outcomes, remaining, resubmissions, results.raised(exc))
        if following is None:
            reason = "the job was interrupted (preempted or walltime near) and checkpoint() returned None"
            return self.give_up(outcomes, remaining, resubmissions, _failure(task_id, job, reason))
        if resubmissions >= meta["max_resubmissions"]:
            limit = meta["max_resubmissions"]
            reason = f"interrupted again after {resubmissions} resubmissions (max_resubmissions={limit})"
            return self.give_up(outcomes, remaining, resubmissions, _failure(task_id, job, reason))
        import cloudpickle

        state = {
            "functions": list(functions) + [following.function],
            "calls": [(len(functions), following.args, following.kwargs)] + list(remaining),
            "done": [tuple(outcome) for outcome in outcomes],  # no class of ours in the file
            "resubmissions": resubmissions + 1,
        }
        path = layout.resume_path(self.folder, self.batch, self.index)
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(cloudpickle.dumps(state))
        os.replace(path + ".tmp", path)
        print(
            f"oarfutures: task {task_id} checkpointed in job {job}; resubmission {resubmissions + 1}", file=sys.stderr
        )
        requeue = os.environ.get(variables.REQUEUE_COMMAND)
        if requeue:
            import shlex
            import subprocess

            subprocess.run(shlex.split(requeue), check=False)
        # a scheduler may run a job again only if it ran long enough (OAR: 60 s): stay until then
        time.sleep(max(0.0, float(os.environ.get(variables.MIN_RUNTIME, 0)) - (time.monotonic() - self.started)))
        return RESUBMIT

    def give_up(self, outcomes, remaining, resubmissions, outcome):
        self.write(outcomes + [outcome] * (1 + len(remaining)), resubmissions)
        return 0

    def write(self, outcomes, resubmissions):
        """Write the result through a temp file and a rename: the client sees all of it or nothing."""
        if self.before_result is not None:
            self.before_result()
        blob = results.dump_result(outcomes, resubmissions, self.stolen_by, self.began)
        spare = self.spare() if self.spare is not None else None
        if spare is None:
            temp = f"{self.destination}.tmp-{os.getpid()}"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        else:
            temp, fd = spare
        try:
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view) :]
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, self.destination)
        except BaseException:  # a full disk, say: no half-written file stays behind (the job fails with why)
            with contextlib.suppress(OSError):
                os.remove(temp)
            raise


def _failure(task_id, job_id, reason):
    from oarfutures.errors import JobFailedError

    return results.raised(JobFailedError(task_id, job_id, "INTERRUPTED", reason=reason))


def run_task(task, rank=False, open_batch=None):
    """Claim, load and run one task in this process; return the exit status its job should end with.

    A one-shot job process and a resident local worker (``worker.resident``) both come here, so the claims, the
    ranks and the checkpoint protocol are the same wherever a task runs. ``open_batch(folder, batch)``: the
    batch's ``BatchFiles``, kept open by a resident worker across its tasks.
    """
    folder, batch, index = task.folder, task.batch, task.index
    # Functions may want to know where they run (checkpoint files, logs of their own)
    os.environ[variables.JOB_FOLDER], os.environ[variables.TASK_ID] = folder, layout.task_id(batch, index)
    world_size = int(os.environ.get(variables.RANKS, "1"))
    claimed = rank or claim_task(folder, batch, index, task.owner)
    if not claimed:
        return 0
    if world_size > 1:
        from oarfutures.worker import ranks

        if not rank:  # the job's first process: start the ranks, then write the task's result
            task.stop_listening()  # it does not checkpoint
            per_node = int(os.environ.get(variables.TASKS_PER_NODE, world_size))
            task.write(ranks.launch(folder, batch, index, world_size, per_node), 0)
            return 0
        task.destination = layout.rank_path(folder, batch, index, ranks.rank_environment())
        task.claims_calls = False
    try:
        files = open_batch(folder, batch) if open_batch else None
        loaded = read_task(folder, batch, index, files, resumable=claimed != FIRST_RUN)
    except layout.UnsafeFolderError as exc:
        print(f"oarfutures worker: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # e.g. a module the function needs is missing here: one outcome for all calls
        task.write([results.raised(exc)], 0)
        return 1 if rank else 0
    status = task.run(*loaded)
    if not rank:
        return status
    from oarfutures.worker import ranks

    ranks.end_own_processes()  # nothing the call started outlives it
    # a rank whose call raised exits non-zero: its launcher (or srun) then stops the other ranks on every node
    return status or (0 if task.all_ok else 1)
