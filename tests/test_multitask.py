"""Multi-task jobs: nodes x tasks_per_node copies of one call; the future gets every rank's result."""

import os

import pytest

from oarfutures import AutoPoolExecutor, JobFailedError

import tasks
from conftest import BACKENDS, SUBMIT_COMMAND, require_command


@pytest.fixture(params=BACKENDS)
def four_tasks(request, folder):
    if request.param != "local":
        require_command(SUBMIT_COMMAND[request.param])
    with AutoPoolExecutor(folder=folder, cluster=request.param, tasks_per_node=4, timeout_min=10) as executor:
        yield executor


def test_a_four_task_job_returns_every_rank_result(four_tasks):
    results = four_tasks.submit(tasks.whoami).result(timeout=180)
    assert [r[:3] for r in results] == [(rank, rank, 4) for rank in range(4)]
    assert len({r[3] for r in results}) == 1  # one master address for all ranks


def test_one_failing_rank_fails_the_future_with_its_traceback(four_tasks):
    with pytest.raises(RuntimeError, match="rank 2 refuses") as info:
        four_tasks.submit(tasks.whoami, 2).result(timeout=180)
    assert "rank 2 of 4" in info.value.__cause__.text


def test_a_rank_that_dies_without_a_result_is_named(four_tasks):
    with pytest.raises(JobFailedError, match="rank 0 of 4 ended without a result"):
        four_tasks.submit(tasks.exit_hard, 3).result(timeout=180)


def test_a_failing_rank_leaves_no_process_of_the_call_behind(four_tasks, folder, tmp_path):
    """One node (the multi-node cases are in test_multinode.py): the other ranks, and the processes every rank
    started, the failing one's included, are gone when the future fails."""
    from test_multinode import leftovers, read_records

    path = tmp_path / "ranks"
    path.mkdir()
    marker = f"oarfutures-multitask-{os.getpid()}-{id(path)}"
    with pytest.raises(RuntimeError, match="rank 3 gives up"):
        four_tasks.submit(tasks.rank_stays, str(path), marker, 3).result(timeout=180)
    records = read_records(str(path))
    assert len(records) == 4
    assert leftovers(folder, marker, records) == []


@pytest.mark.slurm
def test_a_rank_done_first_leaves_its_siblings_that_are_still_starting(folder, tmp_path, monkeypatch):
    """srun starts every rank of a step in the first rank's process group, and a rank leaves it only once its
    interpreter is up; the first rank, done at once, ends what its call left in its group, and once took a sibling
    still starting with it (seen under load: "rank 3 of 4 ended without a result", srun's task 3 killed by
    signal 9). Here the other ranks are held at interpreter start, before they can leave the group."""
    require_command("sbatch")
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "sitecustomize.py").write_text(
        "import os, time\n"
        "with open('/proc/self/cmdline', 'rb') as f:\n"
        "    rank_process = b'--rank' in f.read().split(b'\\0')\n"
        "if rank_process and os.environ.get('SLURM_PROCID', '0') != '0':\n"
        "    time.sleep(3)\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hold), os.environ.get("PYTHONPATH")])))
    with AutoPoolExecutor(folder=folder, cluster="slurm", tasks_per_node=3, timeout_min=10) as executor:
        results = executor.submit(tasks.whoami).result(timeout=180)
    assert [r[:3] for r in results] == [(rank, rank, 3) for rank in range(3)]


@pytest.mark.parametrize("cluster", BACKENDS)
def test_jobs_submitted_from_inside_a_rank_are_not_ranks_of_it(cluster, folder, monkeypatch):
    """A call that submits from inside a multi-task job (a rank among them) has that job's variables: its jobs
    must not take them for their own (seen: a rank variable left in a process made every rank of its jobs rank 3,
    writing one result file)."""
    if cluster != "local":
        require_command(SUBMIT_COMMAND[cluster])
    for name, value in (("RANK", "3"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "4"), ("JOB_ID", "outer")):
        monkeypatch.setenv(f"OARFUTURES_{name}", value)
    with AutoPoolExecutor(folder=folder, cluster=cluster, timeout_min=10) as executor:
        assert executor.submit(tasks.whoami).result(timeout=180)[:3] == (0, 0, 1)
        executor.update_parameters(tasks_per_node=2)
        results = executor.submit(tasks.whoami).result(timeout=180)
    assert [r[:3] for r in results] == [(0, 0, 2), (1, 1, 2)]
