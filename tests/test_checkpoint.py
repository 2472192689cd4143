"""Checkpointing: an interrupted Checkpointable resumes from its saved state, and the same future resolves."""

import os
import subprocess
import sys
import time

import pytest

from oarfutures import JobFailedError, LocalPoolExecutor, OarPoolExecutor, SlurmPoolExecutor
from oarfutures.backends.base import BatchSubmission

import tasks
from conftest import BACKENDS, SUBMIT_COMMAND, require_command


@pytest.fixture(params=BACKENDS)
def make_executor(request, folder):
    name = request.param
    if name != "local":
        require_command(SUBMIT_COMMAND[name])
    made = []

    def make(**kwargs):
        cls = {"local": LocalPoolExecutor, "slurm": SlurmPoolExecutor, "oar": OarPoolExecutor}[name]
        if name != "local":
            kwargs.setdefault("walltime", "0:10:00")
        executor = cls(folder=folder, **kwargs)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.abort("test over")
        executor.shutdown()


def wait_until_started(executor, future, timeout=120):
    """Until the call itself runs (the worker touched its marker), not just the job."""
    marker = os.path.join(executor.folder, "logs", future.task_id + ".started")
    deadline = time.time() + timeout
    while not os.path.exists(marker):
        assert time.time() < deadline, "the task did not start"
        assert not future.done(), future.exception()
        time.sleep(0.2)


def test_an_interrupted_checkpointable_resumes_from_its_saved_state(make_executor):
    executor = make_executor()
    future = executor.submit(tasks.Counter(), 40, 0.25)
    wait_until_started(executor, future)
    time.sleep(2)
    executor.interrupt(future)
    count, run_starts = future.result(timeout=300)
    assert count == 40
    assert len(run_starts) == 2 and run_starts[0] == 0 and 0 < run_starts[1] < 40  # resumed, not restarted
    assert future.resubmissions == 1
    assert "checkpointed" in executor.logs(future)
    executor.shutdown()  # the batch is done: its files go, the saved state included
    assert not os.path.exists(os.path.join(executor.folder, "tasks", future.task_id + ".resume.pkl"))


def interrupt_at_once(executor, futures):
    """Send each future's worker the checkpoint signal as soon as it exists, often before it is ready.

    Local backend only: it refuses until the worker process exists, then signals it at once. A cluster may lose
    a signal sent that early (Slurm does, to a job it reports running whose batch step has not started).
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # the poller thread marks futures running: let it in, however tight this loop is
    try:
        left = list(futures)
        while left:
            for future in list(left):
                try:
                    executor.interrupt(future)
                except RuntimeError:  # not running yet, or already over (the caller checks how it ended)
                    if future.done():
                        left.remove(future)
                else:
                    left.remove(future)
    finally:
        sys.setswitchinterval(previous)


def submit_early_interrupted(executor, function, count=40):
    """Futures of one array calling ``function(10, 0.1)``, each interrupted as soon as its worker starts."""
    with executor.batch():
        futures = [executor.submit(function, 10, 0.1) for _ in range(count)]
    interrupt_at_once(executor, futures)
    return futures


def test_an_interrupt_before_the_worker_is_ready_still_resumes_the_checkpointable(folder):
    with LocalPoolExecutor(4, folder=folder) as executor:
        for future in submit_early_interrupted(executor, tasks.Counter()):
            assert future.result(timeout=120)[0] == 10  # not killed by the signal...
            assert future.resubmissions == 1  # ...and the call did not ignore it


def test_a_plain_function_interrupted_before_its_worker_is_ready_still_fails(folder):
    with LocalPoolExecutor(4, folder=folder) as executor:
        for future in submit_early_interrupted(executor, tasks.count_slowly):
            # the signal is not lost on the way to a function that cannot checkpoint
            with pytest.raises(JobFailedError):
                future.result(timeout=120)


@pytest.mark.parametrize("checkpointable", [True, False], ids=["checkpointable", "plain"])
def test_a_job_script_starts_the_worker_with_the_signal_ignored_only_when_it_checkpoints(tmp_path, checkpointable):
    # an interpreter that only reports how it found the signal: ignored survives exec, a shell trap would not
    python = tmp_path / "python"
    python.write_text(f"#!{sys.executable}\nimport signal\nprint(signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN)\n")
    python.chmod(0o755)
    submission = BatchSubmission("batch", 0, 1, str(tmp_path), str(python), None, {}, checkpointable=checkpointable)
    done = subprocess.run(["bash", "-c", submission.worker_command("0")], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(checkpointable)


def test_a_plain_function_that_is_interrupted_fails_with_job_failed_error(make_executor):
    executor = make_executor()
    future = executor.submit(tasks.count_slowly, 400, 0.25)
    wait_until_started(executor, future)
    executor.interrupt(future)
    with pytest.raises(JobFailedError) as info:
        future.result(timeout=180)
    assert info.value.job_id is not None


def test_checkpoint_returning_none_gives_up_with_job_failed_error(make_executor):
    executor = make_executor()
    future = executor.submit(tasks.GivingUpCounter(), 400, 0.25)
    wait_until_started(executor, future)
    executor.interrupt(future)
    with pytest.raises(JobFailedError, match="checkpoint\\(\\) returned None"):
        future.result(timeout=180)


def test_the_resubmission_bound_is_enforced(folder):
    executor = LocalPoolExecutor(1, folder=folder, max_resubmissions=1)
    future = executor.submit(tasks.Counter(), 400, 0.1)
    for _run in range(2):
        wait_until_started(executor, future)
        os.remove(os.path.join(folder, "logs", future.task_id + ".started"))
        time.sleep(0.5)
        executor.interrupt(future)
    with pytest.raises(JobFailedError, match="max_resubmissions=1"):
        future.result(timeout=60)
    executor.shutdown()


def test_a_preempted_array_task_resumes_without_disturbing_its_siblings(make_executor):
    executor = make_executor()
    with executor.batch():  # one array of three counters, counting long enough for OAR to deliver the signal
        futures = [executor.submit(tasks.Counter(), 60, 0.25) for _ in range(3)]
    wait_until_started(executor, futures[1])
    time.sleep(1)
    executor.interrupt(futures[1])
    results = [future.result(timeout=300) for future in futures]
    assert [count for count, _ in results] == [60, 60, 60]
    assert [len(starts) for _, starts in results] == [1, 2, 1]
    assert [future.resubmissions for future in futures] == [0, 1, 0]


@pytest.mark.slow
@pytest.mark.parametrize("make_executor", BACKENDS[1:], indirect=True)  # the local backend has no walltime
@pytest.mark.parametrize("checkpointable", [True, False], ids=["checkpointable", "plain"])
def test_reaching_the_walltime_resumes_a_checkpointable_and_fails_a_plain_function(make_executor, checkpointable):
    # Slurm signals checkpoint_seconds before the end (checked every 30 s), OAR as well (checked every ~10 s)
    executor = make_executor(walltime=120, checkpoint_seconds=60)
    if checkpointable:
        count, starts = executor.submit(tasks.Counter(), 100, 1.0).result(timeout=600)
        assert count == 100 and len(starts) >= 2
    else:
        with pytest.raises(JobFailedError):
            executor.submit(tasks.count_slowly, 300, 1.0).result(timeout=600)
