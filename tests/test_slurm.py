"""SlurmPoolExecutor against the real Slurm that tests/run-all.sh starts (both accounting modes)."""

import os
import re
import subprocess
import sys
import textwrap
import time
from concurrent.futures import CancelledError

import pytest

from oarfutures import JobFailedError, SlurmPoolExecutor
from oarfutures.backends.slurm import SlurmBackend

import tasks
from conftest import counting_state_queries, require_command, wait_for

pytestmark = pytest.mark.slurm


@pytest.fixture(autouse=True)
def slurm_running():
    require_command("sbatch")


@pytest.fixture
def slurm(folder):
    with SlurmPoolExecutor(folder=folder, walltime="0:10:00") as executor:
        yield executor


def squeue_states(job_id):
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-j", job_id, "-o", "%i %T"], capture_output=True, text=True
    )
    return dict(line.split() for line in out.stdout.splitlines())


def scripts(folder):
    jobs = os.path.join(folder, "jobs")
    return [open(os.path.join(jobs, name)).read() for name in sorted(os.listdir(jobs)) if name.endswith(".sh")]


def test_submit_runs_one_job_and_returns_its_result(slurm, folder):
    future = slurm.submit(tasks.add, 5, 7)
    assert future.result(timeout=120) == 12
    assert re.fullmatch(r"\d+_0", future.job_id)
    (script,) = scripts(folder)
    assert "#SBATCH --time=0-00:10:00" in script and "#SBATCH --array=0-0" in script


def test_map_of_1000_calls_is_one_array_in_order(slurm, folder):
    assert list(slurm.map(tasks.square, range(1000))) == [x * x for x in range(1000)]
    (script,) = scripts(folder)
    assert "#SBATCH --array=0-999\n" in script


def test_map_futures_carry_the_job_ids_of_their_array_tasks(slurm, folder):
    futures = slurm.map_futures(tasks.square, [2, 3])
    array = futures[0].job_id.partition("_")[0]
    assert [f.job_id for f in futures] == [f"{array}_0", f"{array}_1"]  # known as soon as map_futures returns
    assert re.fullmatch(r"\d+", array)  # Slurm's array id, not one of ours
    assert [f.result(timeout=120) for f in futures] == [4, 9]


@pytest.mark.array_limit
def test_a_map_larger_than_max_array_size_is_split_and_stays_in_order(slurm, folder):
    limit = slurm.backend.max_array_size
    assert limit == 1001, "run with MAX_ARRAY_SIZE=1001 (tests/run-all.sh does)"
    assert list(slurm.map(tasks.square, range(limit + 20))) == [x * x for x in range(limit + 20)]
    arrays = [re.search(r"--array=(\S+)", s).group(1) for s in scripts(folder)]
    assert sorted(arrays) == ["0-1000", "0-19"]


def test_chunksize_packs_calls_into_array_tasks(slurm, folder):
    assert list(slurm.map(tasks.add, range(10), range(10), chunksize=4)) == [2 * x for x in range(10)]
    assert "#SBATCH --array=0-2\n" in scripts(folder)[0]


def test_max_workers_caps_running_tasks_in_squeue(folder):
    name = f"capped-{os.getpid()}"
    with SlurmPoolExecutor(2, folder=folder, name=name) as executor:
        results = executor.map(tasks.sleep_and_return, [3] * 6, range(6))
        most, deadline = 0, time.time() + 120
        while time.time() < deadline:
            out = subprocess.run(
                ["squeue", "-h", "-r", "-n", name, "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True
            ).stdout
            most = max(most, len(out.split()))
            if not subprocess.run(["squeue", "-h", "-n", name], capture_output=True, text=True).stdout.strip():
                break  # the whole array is over
            time.sleep(0.3)
        assert list(results) == list(range(6))
    assert "#SBATCH --array=0-5%2" in scripts(folder)[0]
    assert 1 <= most <= 2


def test_remote_exception_keeps_its_type_and_traceback(slurm):
    with pytest.raises(ValueError) as info:
        slurm.submit(tasks.raise_value_error, "on slurm").result(timeout=120)
    assert info.value.args == ("on slurm", 42)
    assert "raise ValueError(message, 42)" in info.value.__cause__.text


def test_cancel_of_a_pending_future_cancels_its_slurm_job(folder):
    with SlurmPoolExecutor(folder=folder, additional_parameters={"begin": "now+3600"}) as executor:
        future = executor.submit(tasks.square, 2)
        job_id = future.job_id
        assert squeue_states(job_id)[job_id] == "PENDING"
        assert future.cancel()
        wait_for(lambda: squeue_states(job_id).get(job_id, "GONE") in ("CANCELLED", "GONE"), 30, "scancel")
    assert future.cancelled()


def test_shutdown_cancel_futures_cancels_queued_jobs(folder):
    executor = SlurmPoolExecutor(folder=folder, additional_parameters={"begin": "now+3600"})
    results = executor.map(tasks.square, range(3))  # map is eager: its jobs are queued now
    future = executor.submit(tasks.square, 3)
    executor.shutdown(wait=True, cancel_futures=True)
    assert future.cancelled()
    with pytest.raises(CancelledError):
        next(results)
    wait_for(lambda: squeue_states(future.job_id).get(future.job_id, "GONE") in ("CANCELLED", "GONE"), 30, "scancel")


def test_scancel_from_outside_fails_the_future_with_job_failed_error(slurm):
    future = slurm.submit(tasks.sleep_and_return, 120, None)
    wait_for(future.running, 60, "the job to run")
    subprocess.run(["scancel", future.job_id], check=True)
    with pytest.raises(JobFailedError) as info:
        future.result(timeout=60)
    assert info.value.state.startswith("CANCELLED")
    assert info.value.job_id == future.job_id


@pytest.mark.slow
def test_walltime_exceeded_fails_with_timeout_state(folder):
    with SlurmPoolExecutor(folder=folder, walltime=60) as executor:
        future = executor.submit(tasks.sleep_and_return, 300, None)
        with pytest.raises(JobFailedError) as info:
            future.result(timeout=400)  # Slurm kills 0-30 s after the limit; a loaded controller adds more
    assert info.value.state == "TIMEOUT"
    assert "TIME LIMIT" in info.value.log_tail


def test_memory_limit_exceeded_fails_with_the_log_tail(folder):
    with SlurmPoolExecutor(folder=folder, mem="100M") as executor:
        future = executor.submit(tasks.allocate_megabytes, 600)
        with pytest.raises(JobFailedError) as info:
            future.result(timeout=120)
    assert info.value.state in ("FAILED", "OUT_OF_MEMORY", "CANCELLED")
    assert "memory" in info.value.log_tail.lower()


def test_a_function_running_in_a_slurm_job_can_submit_to_slurm(tmp_path, folder):
    """Jobs submitted from array tasks that asked for --mem: the inner jobs must not inherit the outer job's
    variables. Slurm gives every array task its own SLURM_ARRAY_TASK_ID, but SLURM_MEM_PER_NODE is set only
    when --mem is given, so a leaked one survives in the inner job (and breaks its srun: Slurm refuses
    SLURM_MEM_PER_NODE with the SLURM_MEM_PER_CPU of the inner job's default memory)."""
    inner = [str(tmp_path / f"inner{i}") for i in range(3)]
    with SlurmPoolExecutor(folder=folder, walltime="0:10:00", mem="200M", steal_seconds=0) as executor:
        results = list(executor.map(tasks.nested_slurm_environment, inner, [5, 6, 7], timeout=240))
    assert results == [((str(i), "200"), ("0", None), x * x) for i, x in enumerate([5, 6, 7])]


def test_keyboard_interrupt_in_the_with_block_cancels_the_jobs(folder):
    with pytest.raises(KeyboardInterrupt):
        with SlurmPoolExecutor(folder=folder) as executor:
            future = executor.submit(tasks.sleep_and_return, 300, None)
            # asked of squeue directly: sacct (the accounting phase) may show a new job late under load
            wait_for(lambda: squeue_states(future.job_id).get(future.job_id) == "RUNNING", 120, "the job to run")
            raise KeyboardInterrupt
    wait_for(lambda: squeue_states(future.job_id).get(future.job_id) in ("CANCELLED", None), 30, "the job to end")
    # cancelled if its worker had not claimed the call yet (then it never ran), else failed with the job
    assert future.cancelled() or isinstance(future.exception(timeout=0), JobFailedError)


def test_state_queries_are_batched_for_all_live_jobs(slurm):
    started = time.time()
    with counting_state_queries(SlurmBackend) as queries:
        futures = [slurm.submit(tasks.sleep_and_return, 2, i) for i in range(20)]
        assert [f.result(timeout=120) for f in futures] == list(range(20))
    seconds = time.time() - started
    assert len(queries) <= seconds + 2  # at most about one squeue/sacct per second for all 20 jobs, not 20


def test_submission_by_a_normal_user(alice_home):
    home = alice_home
    script = home / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import getpass
            from oarfutures import SlurmPoolExecutor
            with SlurmPoolExecutor(folder={str(home / "jobs")!r}) as ex:
                print(ex.submit(getpass.getuser).result(timeout=120))
            """
        )
    )
    done = subprocess.run(
        ["runuser", "-u", "alice", "--", sys.executable, str(script)], capture_output=True, text=True, timeout=180
    )
    assert done.stdout.strip() == "alice", done.stderr


@pytest.mark.accounting
def test_accounting_mode_uses_sacct_and_reports_exit_codes(slurm):
    assert os.environ.get("OARFUTURES_EXPECT_ACCOUNTING") == "1"
    assert slurm.backend.accounting
    with pytest.raises(JobFailedError) as info:
        slurm.submit(tasks.exit_hard, 3).result(timeout=120)
    assert info.value.state == "FAILED"
    assert info.value.exit_code == "3:0"


def test_a_new_process_reattaches_to_the_folder_after_the_client_was_killed(tmp_path, folder):
    script = tmp_path / "client.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys
            sys.path.insert(0, {os.path.dirname(tasks.__file__)!r})
            import tasks
            from oarfutures import SlurmPoolExecutor
            ex = SlurmPoolExecutor(folder={folder!r})
            results = ex.map(tasks.sleep_and_return, [0.1] * 2 + [4] * 4, range(6))
            print(next(results), flush=True)   # one result delivered before the client dies
            os.kill(os.getpid(), signal.SIGKILL)
            """
        )
    )
    client = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert client.returncode == -9 and client.stdout.strip() == "0"
    time.sleep(6)  # the jobs finish while no client runs
    with SlurmPoolExecutor(folder=folder) as executor:
        futures = executor.attach()
        assert [f.result(timeout=120) for f in futures] == list(range(6))
