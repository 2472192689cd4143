"""Checkpointing: an interrupted Checkpointable resumes from its saved state, and the same future resolves."""
import os
import time

import pytest

import tasks
from conftest import require_command
from oarfutures import JobFailedError, LocalPoolExecutor, OarPoolExecutor, SlurmPoolExecutor

BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("slurm", id="slurm", marks=pytest.mark.slurm),
    pytest.param("oar", id="oar", marks=pytest.mark.oar),
]


@pytest.fixture(params=BACKENDS)
def make_executor(request, folder):
    name = request.param
    if name != "local":
        require_command({"slurm": "sbatch", "oar": "oarsub"}[name])
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
    for run in range(2):
        wait_until_started(executor, future)
        os.remove(os.path.join(folder, "logs", future.task_id + ".started"))
        time.sleep(0.5)
        executor.interrupt(future)
    with pytest.raises(JobFailedError, match="max_resubmissions=1"):
        future.result(timeout=60)
    executor.shutdown()


@pytest.mark.slurm
def test_a_preempted_array_task_resumes_without_disturbing_its_siblings(folder):
    require_command("sbatch")
    with SlurmPoolExecutor(folder=folder, walltime="0:10:00") as executor:
        futures = [executor.submit(tasks.Counter(), 12, 0.25) for _ in range(1)]
        mapped = executor.map(tasks.Counter(), [12] * 3, [0.25] * 3)
        del futures
        # interrupt one element of the mapped array once it runs
        folder_logs = os.path.join(folder, "logs")
        deadline = time.time() + 60
        while not any(name.endswith("_1.started") for name in os.listdir(folder_logs)):
            assert time.time() < deadline
            time.sleep(0.2)
        target = next(f for f in executor._tasks.values() if f.index == 1 and len(f.futures) == 1 and f.job_id)
        executor.interrupt(target.futures[0])
        results = list(mapped)
    assert [count for count, _ in results] == [12, 12, 12]
    assert [len(starts) for _, starts in results] == [1, 2, 1]
