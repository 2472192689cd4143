"""The process a job runs: ``python -m oarfutures.worker FOLDER BATCH INDEX``.

It loads task INDEX of BATCH by our own task id (the scheduler's job id plays no part), runs its calls, and
writes their outcomes to ``results/<batch>_<index>.pkl`` through a temp file and a rename, so the client never
reads half a result. It starts once per task, so it imports only what it needs: ``pickle.load`` pulls in
cloudpickle (or anything else) only when a payload asks for it, and tblib/traceback only when a call fails.
"""
import os
import pickle
import signal
import struct
import sys
import time
import types

from oarfutures.protocol import layout

DYNAMIC_CODE = "<dynamic-code>"  # the file name cloudpickle gives code it pickled by value
RESUBMIT = 99  # exit status of a checkpointed task that must run again (OAR resubmits idempotent jobs on it)
CHECKPOINT_SIGNAL = signal.SIGUSR2  # what Slurm's --signal=B:USR2, OAR's --signal=12 and interrupt() send
EARLY_SIGNAL_VARIABLE = "OARFUTURES_SIGNALLED"  # set by the job script when the signal came before the worker
#: the first command of a checkpointable job script: a signal while it runs (setup lines) is passed to the worker
EARLY_SIGNAL_TRAP = f"trap 'export {EARLY_SIGNAL_VARIABLE}=1' {CHECKPOINT_SIGNAL.name[3:]}"


class BatchFiles:
    """A batch's task files, checked and opened once: a resident local worker runs many tasks of one batch.

    The functions stay pickled here and are unpickled for each task, so that a task never sees what an earlier
    call did to them (as a one-shot worker would not).
    """

    def __init__(self, folder, batch):
        fn_file = layout.functions_path(folder, batch)
        args_file = layout.args_path(folder, batch)
        layout.check_private(folder, os.path.join(folder, layout.TASKS), fn_file)
        with open(fn_file, "rb") as f:
            self.meta, self.fn_blob = pickle.load(f)
        layout.check_private(args_file)
        self._index = os.open(layout.index_path(folder, batch), os.O_RDONLY)
        try:
            self._args = os.open(args_file, os.O_RDONLY)
        except BaseException:
            os.close(self._index)
            raise

    def calls(self, index):
        start, end = struct.unpack("<QQ", os.pread(self._index, 16, 8 * index))
        return pickle.loads(os.pread(self._args, end - start, start))

    def close(self):
        os.close(self._index)
        os.close(self._args)


def read_task(folder, batch, index, files=None):
    """Return (meta, functions, calls, outcomes so far, resubmissions so far) of one task.

    calls is a list of (function index, args, kwargs). A checkpointed task's resume file, when there is one,
    replaces its slice of the batch: the calls still to run, with what the earlier runs already returned.
    ``files``: the batch's files already opened (a resident worker's); else they are opened and closed here.
    """
    own = files is None
    files = BatchFiles(folder, batch) if own else files
    try:
        meta = files.meta
        # The client's import path, after ours: modules next to the user's script (or a test folder) import here.
        sys.path.extend(p for p in meta["sys_path"] if p not in sys.path)
        functions = pickle.loads(files.fn_blob)
        restore_file_names(functions, meta["origins"])
        resume = layout.resume_path(folder, batch, index)
        if os.path.exists(resume):
            layout.check_private(resume)
            with open(resume, "rb") as f:
                state = pickle.load(f)
            return meta, state["functions"], state["calls"], state["done"], state["resubmissions"]
        return meta, functions, files.calls(index), [], 0
    finally:
        if own:
            files.close()


def restore_file_names(functions, origins):
    """Give code pickled by value its real file name back, so remote tracebacks show the user's source lines.

    cloudpickle names such code ``<dynamic-code>``; the client recorded where each function came from.
    Functions and classes it uses from the same module (its globals, its closure) get the same name.
    """
    for fn, origin in zip(functions, origins):
        if origin is None or not _is_dynamic(fn) and not _is_dynamic(type(fn).__call__):
            continue  # pickled by reference: its code already names its file
        targets = [fn, type(fn)] + list(getattr(fn, "__globals__", {}).values())
        targets += [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _cell_filled(c)]
        for target in targets:
            members = list(vars(target).values()) if isinstance(target, type) else []
            for candidate in [target] + members:
                if _is_dynamic(candidate):
                    try:
                        candidate.__code__ = _renamed(candidate.__code__, origin)
                    except (AttributeError, TypeError):
                        pass


def _is_dynamic(obj):
    code = getattr(obj, "__code__", None)
    return isinstance(code, types.CodeType) and code.co_filename == DYNAMIC_CODE


def _cell_filled(cell):
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _renamed(code, filename):
    consts = tuple(_renamed(c, filename) if hasattr(c, "co_filename") else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


class Interrupted(BaseException):
    """Raised inside a checkpointable call by the checkpoint signal (preemption, walltime near)."""


class _Task:
    """One run of a task: its calls, and what to do when the checkpoint signal interrupts one of them.

    The signal may come at any time, even while the worker starts (a preemption does not wait for Python): the
    worker listens from its first line, and a signal that comes before a call is kept and acted on when the call
    would start, rather than killing the worker or being dropped.
    """

    def __init__(self, folder, batch, index):
        self.folder, self.batch, self.index = folder, batch, index
        self.destination = layout.result_path(folder, batch, index)  # a rank of a multi-task job writes elsewhere
        self.started = time.monotonic()
        self.in_call = False
        self.stolen_by = None  # the job id of the job that ran this task in place of its own (see steal)
        self.claims_calls = True  # the ranks of a multi-task job all run the call their launcher claimed
        self.signalled = False  # a checkpoint signal came while no call ran, and no call has acted on it yet
        self.durable = True  # fsync the result: the job's machine may crash before its page cache reaches the disk
        self.checkpointable = False  # one of its functions has a checkpoint(): never stolen from, never steals
        self.all_ok = False  # every call ran and returned (set by run): only then may the job steal more work
        self.before_result = None  # called just before the result is written (a resident worker's logs)

    def listen(self):
        """Catch the checkpoint signal from now on, including one the job script caught or held for us.

        The job script of a checkpointable batch records a signal that comes while it runs and ignores it from
        just before ``exec`` (an ignored signal stays ignored across exec, a caught one would kill the new
        process); a local worker may start with the signal blocked, so that it stays pending until this point.
        """
        self.signalled = bool(os.environ.pop(EARLY_SIGNAL_VARIABLE, ""))
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
            if several and self.claims_calls and not claim_call(self.folder, self.batch, self.index, len(outcomes)):
                outcomes.append(NOT_RUN)  # its future was cancelled: the client ignores this outcome
                continue
            function = functions[fn_index]
            try:
                self.enter_call()
                outcomes.append(("ok", function(*args, **kwargs)))
            except Interrupted:
                remaining = calls[position + 1 :]
                return self.checkpoint(meta, functions, function, args, kwargs, remaining, outcomes, resubmissions)
            except BaseException as exc:  # noqa: B036 - SystemExit/KeyboardInterrupt in user code are results too
                outcomes.append(error_outcome(exc, skip_frames=1))
            finally:
                self.in_call = False
        self.write(outcomes, resubmissions)
        self.all_ok = all(outcome[0] == "ok" for outcome in outcomes)
        return 0

    def checkpoint(self, meta, functions, function, args, kwargs, remaining, outcomes, resubmissions):
        """Save what to run next under the same task id and ask to run again; or record why not."""
        job = os.environ.get("OARFUTURES_JOB_ID")
        task_id = layout.task_id(self.batch, self.index)
        try:
            following = function.checkpoint(*args, **kwargs)
        except BaseException as exc:  # noqa: B036
            return self.give_up(outcomes, remaining, resubmissions, error_outcome(exc))
        if following is None:
            reason = "the job was interrupted (preempted or walltime near) and checkpoint() returned None"
            return self.give_up(outcomes, remaining, resubmissions, _failure(task_id, job, reason))
        if resubmissions >= meta["max_resubmissions"]:
            reason = f"interrupted again after {resubmissions} resubmissions (max_resubmissions={meta['max_resubmissions']})"
            return self.give_up(outcomes, remaining, resubmissions, _failure(task_id, job, reason))
        import cloudpickle

        state = {
            "functions": list(functions) + [following.function],
            "calls": [(len(functions), following.args, following.kwargs)] + list(remaining),
            "done": outcomes,
            "resubmissions": resubmissions + 1,
        }
        path = layout.resume_path(self.folder, self.batch, self.index)
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(cloudpickle.dumps(state))
        os.replace(path + ".tmp", path)
        print(f"oarfutures: task {task_id} checkpointed in job {job}; resubmission {resubmissions + 1}", file=sys.stderr)
        requeue = os.environ.get("OARFUTURES_REQUEUE_COMMAND")
        if requeue:
            import shlex
            import subprocess

            subprocess.run(shlex.split(requeue), check=False)
        # OAR resubmits an idempotent job only if it ran long enough: stay until then
        time.sleep(max(0.0, float(os.environ.get("OARFUTURES_MIN_RUNTIME", 0)) - (time.monotonic() - self.started)))
        return RESUBMIT

    def give_up(self, outcomes, remaining, resubmissions, outcome):
        self.write(outcomes + [outcome] * (1 + len(remaining)), resubmissions)
        return 0

    def write(self, outcomes, resubmissions):
        """Write the result through a temp file and a rename: the client sees all of it or nothing."""
        if self.before_result is not None:
            self.before_result()
        blob = dump_outcomes(outcomes, resubmissions, self.stolen_by)
        temp = f"{self.destination}.tmp-{os.getpid()}"
        with open(temp, "wb") as f:
            f.write(blob)
            if self.durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temp, self.destination)


def _failure(task_id, job_id, reason):
    from oarfutures.errors import JobFailedError

    return error_outcome(JobFailedError(task_id, job_id, "INTERRUPTED", reason=reason))


def error_outcome(exc, skip_frames=0):
    """("error", pickled exception or None, type name, message, formatted traceback)."""
    import traceback

    tb = exc.__traceback__
    for _ in range(skip_frames):
        tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    exc.__traceback__ = tb
    try:
        from tblib import pickling_support

        pickling_support.install(exc)
        blob = pickle.dumps(exc)
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt: find out here, not in the client
    except Exception:
        blob = None
    return ("error", blob, type(exc).__qualname__, str(exc), text)


def dump_outcomes(outcomes, resubmissions=0, stolen_by=None):
    """Pickle the outcomes; a value that cannot be pickled becomes a PicklingError naming its type.

    ``stolen_by``: the job that ran the task in place of its own job (the client then names that job).
    """
    extra = {"stolen_by": stolen_by} if stolen_by else {}
    try:
        return pickle.dumps({"outcomes": outcomes, "resubmissions": resubmissions, **extra}, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    safe = []
    for outcome in outcomes:
        try:
            pickle.dumps(outcome)
            safe.append(outcome)
        except Exception as exc:
            kind = type(outcome[1]).__qualname__ if outcome[0] == "ok" else outcome[2]
            what = "result" if outcome[0] == "ok" else "exception"
            problem = pickle.PicklingError(f"the {what} of type {kind} cannot be pickled: {exc!r}")
            safe.append(error_outcome(problem))
    return pickle.dumps({"outcomes": safe, "resubmissions": resubmissions, **extra}, protocol=pickle.HIGHEST_PROTOCOL)


NOT_RUN = ("error", None, "CancelledError", "the call was cancelled before it started", "")


def _owner():
    return layout.run_owner(os.environ.get("OARFUTURES_JOB_ID"), os.uname().nodename, os.getpid())


def claim_task(folder, batch, index):
    """Win the task's claim before running anything: a call runs once, and never after its cancel() won.

    A run that finds the claim held by an earlier run of the same task goes on only if that run checkpointed
    (its resume file exists); otherwise the task already ran (say, a scheduler requeued it after a node failure)
    and running it twice is what the claim prevents.
    """
    path = layout.claim_path(folder, batch, index)
    try:
        if layout.claim(path, _owner()):
            return True
        holder = layout.claim_owner(path) or ""
    except OSError as exc:
        print(f"oarfutures worker: cannot claim task {layout.task_id(batch, index)}: {exc}", file=sys.stderr)
        return False
    if layout.parse_run_owner(holder) and os.path.exists(layout.resume_path(folder, batch, index)):
        return True
    why = "its future was cancelled" if holder == layout.CANCELLED else f"it was started before ({holder})"
    print(f"oarfutures worker: task {layout.task_id(batch, index)} not run: {why}", file=sys.stderr)
    return False


def claim_call(folder, batch, index, call):
    """The claim of one call of a task of several: cancel() of one future of a chunk takes this one."""
    path = layout.claim_path(folder, batch, index, call)
    try:
        if layout.claim(path, _owner()):
            return True
        return layout.parse_run_owner(layout.claim_owner(path)) is not None  # ours, from a run before a checkpoint
    except OSError:  # the batch's files were removed meanwhile (aborted, cleaned): run nothing more
        return False


def main(argv):
    folder, batch, index = argv[0], argv[1], int(argv[2])
    task = _Task(folder, batch, index)
    task.listen()  # first: the checkpoint signal may already be on its way
    policy = StealPolicy.from_environment()  # read and removed: nothing the calls start may inherit it
    rank = "--rank" in argv
    status = run_task(task, rank=rank)
    if status == 0 and not rank and policy.allows(task):
        steal(task, policy)
    return status


# ---------------------------------------------------------------------------------------------- stealing
STEAL_VARIABLES = (
    "OARFUTURES_STEAL_SECONDS",  # how long after its own call a job may start stolen calls (0: never)
    "OARFUTURES_WALLTIME",  # the job's effective walltime in seconds, "unlimited", or empty (unknown)
    "OARFUTURES_JOB_START",  # when the job script started (epoch seconds)
    "OARFUTURES_ARRAY_FIRST",  # the array's tasks: FIRST .. FIRST+COUNT-1 of the batch
    "OARFUTURES_ARRAY_COUNT",
)
STEAL_MARGIN_FACTOR = 1.5  # a stolen task must fit this many times its estimate ...
STEAL_MARGIN_SECONDS = 10.0  # ... plus this, in the job's remaining walltime


class StealPolicy:
    """When a job that has run its own task may run pending tasks of its array (read from the job script).

    A job steals only: after its own task ran and every call of it returned; for a batch with no checkpointable
    function; in a job of one task (not multi-task); within ``window`` seconds after its own task (no stolen
    task starts later); and a task only when the longest task this job ran so far, times STEAL_MARGIN_FACTOR
    plus STEAL_MARGIN_SECONDS, fits in the remaining walltime. An unknown walltime steals nothing.
    """

    def __init__(self, window, walltime, job_start, first, count):
        self.window, self.walltime, self.job_start, self.first, self.count = window, walltime, job_start, first, count

    @classmethod
    def from_environment(cls, environ=os.environ):
        values = {name: environ.pop(name, "") for name in STEAL_VARIABLES}
        try:
            window = float(values["OARFUTURES_STEAL_SECONDS"] or 0)
            wall = values["OARFUTURES_WALLTIME"]
            walltime = float("inf") if wall == "unlimited" else float(wall) if wall else None
            job_start = float(values["OARFUTURES_JOB_START"] or time.time())
            first, count = int(values["OARFUTURES_ARRAY_FIRST"] or 0), int(values["OARFUTURES_ARRAY_COUNT"] or 0)
        except ValueError:
            return cls(0.0, None, 0.0, 0, 0)
        return cls(window, walltime, job_start, first, count)

    def allows(self, task):
        """Whether this job may steal at all, now that its own task ran."""
        return (
            self.window > 0
            and self.walltime is not None
            and self.count > 1
            and task.all_ok
            and not task.checkpointable
            and int(os.environ.get("OARFUTURES_RANKS", "1")) <= 1
        )

    def fits(self, estimate):
        """Whether a task estimated at ``estimate`` seconds can finish within the job's walltime."""
        remaining = self.walltime - (time.time() - self.job_start)
        return estimate * STEAL_MARGIN_FACTOR + STEAL_MARGIN_SECONDS <= remaining


def steal(task, policy):
    """Run pending tasks of this job's array in this process, the last ones the scheduler would start first.

    Each is claimed like any task (``layout.claim``): a task that started holds its own claim, a cancelled one
    says "cancelled", so a call still runs once or never. Claimed, it gets a marker in ``results/`` naming this
    job, which the client then follows for it (a stealer that dies mid-call fails that call, naming this job);
    its output goes to ``logs/<task id>.stolen.out|err``; its result is its usual result file.
    """
    job = os.environ.get("OARFUTURES_JOB_ID", "")
    if not job:
        return
    folder, batch = task.folder, task.batch
    stop = time.monotonic() + policy.window
    estimate = time.monotonic() - task.started  # the longest task seen so far, its own included
    claims = os.path.dirname(layout.claim_path(folder, batch, 0))
    stolen = 0
    taken = None  # the claims seen: listed again only when a claim was lost, not once per stolen task
    index = policy.first + policy.count  # the tasks from here up are taken (a claim is never given back)
    while time.monotonic() < stop and policy.fits(estimate):
        if taken is None:
            try:
                taken = {int(n) for n in os.listdir(claims) if n.isdigit()}
            except OSError:  # the batch's files are gone (delivered and tidied, or aborted)
                break
        index -= 1
        while index >= policy.first and index in taken:
            index -= 1
        if index < policy.first:
            break
        started = time.monotonic()
        ran = _run_stolen(folder, batch, index, job)
        if ran is None:
            break
        if not ran:  # its own job or a cancel came first: others may have too
            taken = None
            continue
        stolen += 1
        estimate = max(estimate, time.monotonic() - started)
    if stolen:
        print(f"oarfutures: job {job} ran {stolen} task(s) of its array after its own", file=sys.stderr)


def _run_stolen(folder, batch, index, job):
    """Claim and run task ``index`` here; False if another run or a cancel() holds its claim, None to stop."""
    try:
        if not layout.claim(layout.claim_path(folder, batch, index), _owner()):
            return False
    except OSError:  # the batch's files are gone: stop
        return None
    try:  # after the claim: a marker must never name a job that does not run the task
        with open(layout.stolen_marker_path(folder, batch, index, job), "wb"):
            pass
    except OSError as exc:  # the task is ours now and runs; only a kill of this job would go unnoticed longer
        print(f"oarfutures worker: cannot mark task {layout.task_id(batch, index)} as stolen: {exc}", file=sys.stderr)
    task_id = layout.task_id(batch, index)
    os.environ["OARFUTURES_TASK_ID"] = task_id
    stolen = _Task(folder, batch, index)
    stolen.stolen_by = job
    out_path, err_path = layout.stolen_log_paths(folder, task_id)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        for fd, path in ((1, out_path), (2, err_path)):
            log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(log, fd)
            os.close(log)
        print(f"oarfutures: task {task_id} run by job {job}, another task of its array", file=sys.stderr)
        try:
            loaded = read_task(folder, batch, index)
        except Exception as exc:
            stolen.write([error_outcome(exc)], 0)
        else:
            stolen.run(*loaded)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
    print(f"oarfutures: job {job} ran task {task_id} of its array", file=sys.stderr)
    return True


def run_task(task, rank=False, open_batch=None):
    """Claim, load and run one task in this process; return the exit status its job should end with.

    A one-shot job process and a resident local worker (``pool_worker``) both come here, so the claims, the
    ranks and the checkpoint protocol are the same wherever a task runs. ``open_batch(folder, batch)``: the
    batch's ``BatchFiles``, kept open by a resident worker across its tasks.
    """
    folder, batch, index = task.folder, task.batch, task.index
    # Functions may want to know where they run (checkpoint files, logs of their own)
    os.environ["OARFUTURES_JOB_FOLDER"], os.environ["OARFUTURES_TASK_ID"] = folder, layout.task_id(batch, index)
    world_size = int(os.environ.get("OARFUTURES_RANKS", "1"))
    if not rank and not claim_task(folder, batch, index):
        return 0
    if world_size > 1:
        from oarfutures.worker import ranks

        if not rank:  # the job's first process: start the ranks, then write the task's result
            task.stop_listening()  # it does not checkpoint
            per_node = int(os.environ.get("OARFUTURES_TASKS_PER_NODE", world_size))
            task.write(ranks.launch(folder, batch, index, world_size, per_node, os.environ.get("OARFUTURES_LAUNCHER")), 0)
            return 0
        task.destination = ranks.rank_path(folder, batch, index, ranks.rank_environment())
        task.claims_calls = False
    try:
        loaded = read_task(folder, batch, index, open_batch(folder, batch) if open_batch else None)
    except layout.UnsafeFolderError as exc:
        print(f"oarfutures worker: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # e.g. a module the function needs is missing here: one outcome for all calls
        task.write([error_outcome(exc)], 0)
        return 1 if rank else 0
    status = task.run(*loaded)
    if not rank:
        return status
    from oarfutures.worker import ranks

    ranks.end_own_processes()  # nothing the call started outlives it
    # a rank whose call raised exits non-zero: its launcher (or srun) then stops the other ranks on every node
    return status or (0 if task.all_ok else 1)

