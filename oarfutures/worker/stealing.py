"""Stealing: a job that has run its own task runs pending tasks of its array, in the same process.

An interpreter start is most of a short task's cost on a cluster; a job that is already up runs the tasks the
scheduler would start last, within limits the job script sets (``variables.STEALING``).
"""

import os
import sys
import time

from oarfutures.protocol import layout, results, variables
from oarfutures.worker.running import TaskRun
from oarfutures.worker.taskfiles import job_owner, read_task

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
        values = {name: environ.pop(name, "") for name in variables.STEALING}
        try:
            window = float(values[variables.STEAL_SECONDS] or 0)
            wall = values[variables.WALLTIME]
            walltime = float("inf") if wall == "unlimited" else float(wall) if wall else None
            job_start = float(values[variables.JOB_START] or time.time())
            first, count = int(values[variables.ARRAY_FIRST] or 0), int(values[variables.ARRAY_COUNT] or 0)
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
            and int(os.environ.get(variables.RANKS, "1")) <= 1
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
    job = os.environ.get(variables.JOB_ID, "")
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
        if not layout.claim(layout.claim_path(folder, batch, index), job_owner()):
            return False
    except OSError:  # the batch's files are gone: stop
        return None
    try:  # after the claim: a marker must never name a job that does not run the task
        with open(layout.stolen_marker_path(folder, batch, index, job), "wb"):
            pass
    except OSError as exc:  # the task is ours now and runs; only a kill of this job would go unnoticed longer
        print(f"oarfutures worker: cannot mark task {layout.task_id(batch, index)} as stolen: {exc}", file=sys.stderr)
    task_id = layout.task_id(batch, index)
    os.environ[variables.TASK_ID] = task_id
    stolen = TaskRun(folder, batch, index)
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
            stolen.write([results.raised(exc)], 0)
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
