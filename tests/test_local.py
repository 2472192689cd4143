"""The executor core on the local backend: the same worker, files and poller as on a cluster.

The generic ``concurrent.futures`` contract (submit, map, wait, as_completed, cancel, shutdown) is checked in
tests/test_cpython_conformance.py, joblib, dask and asyncio in tests/test_integrations.py; this file holds what is
oarfutures' own: job arrays, remote errors, dead workers, reattaching, the folder's files, parameters and batches.
"""

import asyncio
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Future, wait

import pytest

from oarfutures import AutoPoolExecutor, JobFailedError, JobFuture, LocalPoolExecutor, RemoteError, RemoteTraceback
from oarfutures.core.executor import SUBMITTED_AHEAD_PER_LOCAL_WORKER

import tasks
from conftest import run_client, wait_for


def test_map_futures_returns_one_array_of_futures_with_their_job_ids_in_input_order(local, folder):
    futures = local.map_futures(tasks.add, [1, 2, 3], [10, 20, 30], chunksize=2)
    assert all(isinstance(f, JobFuture) for f in futures) and len(futures) == 3
    assert [f.job_id for f in futures] == [f.task_id for f in futures]  # local job ids are task ids
    batches = {f.task_id.rpartition("_")[0] for f in futures}
    assert len(batches) == 1 and [f.task_id[-2:] for f in futures] == ["_0", "_0", "_1"]  # one array, 2 calls a task
    assert [f.result(timeout=60) for f in futures] == [11, 22, 33]
    assert local.map_array(tasks.square, [4])[0].result(timeout=60) == 16  # submitit's name for it
    with pytest.raises(ValueError, match="chunksize"):
        local.options(cpus_per_task=2).map_futures(tasks.square, [1], chunksize=0)


def test_map_is_one_batch_with_the_function_pickled_once(folder):
    payload = b"x" * 2_000_000  # captured by the closure below: must be written once, not once per call
    with LocalPoolExecutor(2, folder=folder, keep_files=True) as executor:
        results = list(executor.map(lambda i: len(payload) + i, range(20)))
        task_files = os.listdir(os.path.join(folder, "tasks"))
        total = sum(os.path.getsize(os.path.join(folder, "tasks", name)) for name in task_files)
    assert results == [2_000_000 + i for i in range(20)]
    assert len(task_files) == 1  # one file: the functions, the concatenated arguments, their index
    assert total < 3_000_000


def test_remote_exception_keeps_type_args_and_traceback(local):
    future = local.submit(tasks.raise_value_error, "boom")
    with pytest.raises(ValueError) as info:
        future.result(timeout=30)
    assert info.value.args == ("boom", 42)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "raise ValueError(message, 42)" in info.value.__cause__.text  # the failing source line
    assert "tasks.py" in "".join(__import__("traceback").format_tb(info.value.__traceback__))


def test_remote_traceback_shows_source_lines_of_functions_defined_in_main(tmp_path):
    script = tmp_path / "script.py"
    output = run_client(
        script,
        f"""
        from oarfutures import LocalPoolExecutor

        def fails():
            raise KeyError("from main")

        with LocalPoolExecutor(1, folder={str(tmp_path / "jobs")!r}) as ex:
            try:
                ex.submit(fails).result(timeout=30)
            except KeyError as exc:
                print(exc.__cause__.text)
        """,
    ).stdout
    assert f'File "{script}"' in output
    assert 'raise KeyError("from main")' in output


def test_an_exception_that_cannot_be_pickled_becomes_remote_error(local):
    with pytest.raises(RemoteError) as info:
        local.submit(tasks.raise_unpicklable, "locked").result(timeout=30)
    assert info.value.type_name == "UnpicklableError"
    assert info.value.message == "locked"
    assert "raise UnpicklableError(message)" in info.value.traceback_text


def test_a_result_that_cannot_be_pickled_is_a_pickling_error_naming_its_type(local):
    with pytest.raises(pickle.PicklingError, match="lock"):
        local.submit(tasks.return_lock).result(timeout=30)


def test_an_unpicklable_argument_fails_at_submit_and_submits_nothing(local, folder):
    with pytest.raises(TypeError, match="cannot pickle the arguments"):
        local.submit(tasks.size_of, threading.Lock())
    assert os.listdir(os.path.join(folder, "tasks")) == []
    assert local.status() == {"pending": 0, "running": 0}


@pytest.mark.parametrize(
    "function, args, how",
    [
        (tasks.kill_self, (), "SIGKILL"),
        (tasks.exit_hard, (3,), "status 3"),
        (tasks.segfault, (), "SIGSEGV"),
    ],
)
def test_a_worker_that_dies_fails_its_future_with_job_failed_error(local, function, args, how):
    with pytest.raises(JobFailedError) as info:
        local.submit(function, *args).result(timeout=30)
    assert info.value.state == "FAILED"
    assert how in info.value.reason
    assert info.value.job_id is not None


def test_job_failed_error_carries_the_tail_of_the_logs(folder):
    with LocalPoolExecutor(1, folder=folder) as executor:
        os.chmod(folder, 0o777)  # the worker must refuse: others could have written these pickles
        with pytest.raises(JobFailedError) as info:
            executor.submit(tasks.square, 2).result(timeout=30)
        os.chmod(folder, 0o700)
    assert "writable by other users" in info.value.log_tail


def test_a_corrupted_result_file_fails_that_future_and_not_the_others(local):
    bad = local.submit(tasks.corrupt_own_result)
    good = local.submit(tasks.square, 4)
    with pytest.raises(Exception, match="cannot be read"):
        bad.result(timeout=30)
    assert good.result(timeout=30) == 16


def test_max_workers_caps_how_many_calls_run_at_once(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    with LocalPoolExecutor(2, folder=str(tmp_path / "jobs")) as executor:
        list(executor.map(tasks.record_interval, [str(marks)] * 6, [f"c{i}" for i in range(6)], [0.5] * 6))
    spans = [tuple(map(float, (marks / f"c{i}").read_text().split())) for i in range(6)]
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most == 2


def test_dask_keeps_a_few_calls_per_worker_submitted_and_max_workers_still_caps_them(tmp_path):
    dask = pytest.importorskip("dask")
    assert LocalPoolExecutor(folder=str(tmp_path / "default"))._max_workers == os.cpu_count() * 4
    marks = tmp_path / "marks"
    marks.mkdir()
    calls = [dask.delayed(tasks.record_interval)(str(marks), f"c{i}", 0.3) for i in range(6)]
    with LocalPoolExecutor(2, folder=str(tmp_path / "jobs")) as executor:
        assert executor._max_workers == 2 * SUBMITTED_AHEAD_PER_LOCAL_WORKER  # dask's num_workers
        dask.compute(*calls, scheduler=executor)
    spans = [tuple(map(float, (marks / f"c{i}").read_text().split())) for i in range(6)]
    assert max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans) == 2


def test_callbacks_may_submit_more_work(local):
    chained = Future()

    def on_done(first):
        chained.set_result(local.submit(tasks.square, first.result()))

    local.submit(tasks.add, 1, 2).add_done_callback(on_done)
    assert chained.result(timeout=30).result(timeout=30) == 9


def test_many_threads_may_submit_at_once(local):
    futures, lock = [], threading.Lock()

    def submit_some(offset):
        for i in range(5):
            future = local.submit(tasks.square, offset + i)
            with lock:
                futures.append((offset + i, future))

    threads = [threading.Thread(target=submit_some, args=(10 * t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted((x, f.result(timeout=60)) for x, f in futures) == sorted((x, x * x) for x, _ in futures)


def test_cancelling_an_asyncio_task_cancels_the_queued_job(tmp_path):
    with LocalPoolExecutor(1, folder=str(tmp_path / "jobs")) as executor:
        executor.submit(tasks.sleep_and_return, 1.0, None)
        queued = executor.submit(tasks.touch_and_sleep, str(tmp_path / "ran"), 0)

        async def main():
            task = asyncio.ensure_future(asyncio.wrap_future(queued))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert queued.cancelled()
    assert not (tmp_path / "ran").exists()


def test_keyboard_interrupt_in_the_with_block_kills_running_jobs(tmp_path):
    marker = tmp_path / "pid"
    with pytest.raises(KeyboardInterrupt):
        with LocalPoolExecutor(1, folder=str(tmp_path / "jobs")) as executor:
            future = executor.submit(tasks.touch_and_sleep, str(marker), 60)
            deadline = time.time() + 30
            while not marker.exists() or not marker.read_text():
                assert time.time() < deadline
                time.sleep(0.05)
            raise KeyboardInterrupt
    # cancelled if the poller had not yet seen it start, else failed: either way done, and its process gone
    assert future.cancelled() or "KeyboardInterrupt" in str(future.exception(timeout=0))
    pid = int(marker.read_text())
    time.sleep(0.2)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_task_and_result_files_are_removed_and_logs_kept_for_calls_that_printed(folder):
    with LocalPoolExecutor(2, folder=folder) as executor:
        assert list(executor.map(tasks.square, range(4))) == [0, 1, 4, 9]
        loud = executor.submit(tasks.print_and_return, "to stdout", "", 1)
        assert loud.result(timeout=60) == 1
    assert os.listdir(os.path.join(folder, "tasks")) == []
    assert os.listdir(os.path.join(folder, "results")) == ["delivered"]
    assert os.listdir(os.path.join(folder, "results", "delivered")) == []
    # quiet calls leave no empty log files, and the workers' spool files leave with them (shutdown waits for them)
    assert sorted(os.listdir(os.path.join(folder, "logs"))) == [f"{loud.task_id}.err", f"{loud.task_id}.out"]
    assert "to stdout" in executor.logs(loud)


def test_the_folder_is_private(folder):
    LocalPoolExecutor(1, folder=folder)
    assert os.stat(folder).st_mode & 0o777 == 0o700


def test_a_new_process_reattaches_after_the_client_was_killed_and_runs_no_call_twice(tmp_path):
    folder, runs = str(tmp_path / "jobs"), str(tmp_path / "runs")
    client = run_client(
        tmp_path / "client.py",
        f"""
        import os, signal
        import tasks
        from oarfutures import LocalPoolExecutor
        ex = LocalPoolExecutor(2, folder={folder!r})
        results = ex.map(tasks.note_run, [{runs!r}] * 8, range(8), [0.05] * 3 + [0.6] * 5)
        print(next(results), flush=True)   # one result delivered to this client before it dies
        os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    assert client.returncode == -9 and client.stdout.strip() == "0"
    # the local workers died with their client: what finished is on disk, what they were running is lost
    with LocalPoolExecutor(2, folder=folder) as executor:
        futures = executor.attach()
        assert len(futures) == 8
        wait(futures, timeout=60)
    outcomes = [f.result() if f.exception() is None else f.exception() for f in futures]
    for call, outcome in enumerate(outcomes):
        if isinstance(outcome, JobFailedError):  # its worker had claimed it: it may have started, never twice
            assert outcome.state == "LOST" and "died with the client" in outcome.reason
            assert tasks.runs_of(runs, call) <= 1, f"call {call} ran {tasks.runs_of(runs, call)} times"
        else:
            assert outcome == call
            assert tasks.runs_of(runs, call) == 1, f"call {call} ran {tasks.runs_of(runs, call)} times"
    assert outcomes[0] == 0 and outcomes[7] == 7  # delivered before the crash; never started before it
    assert os.listdir(os.path.join(folder, "tasks")) == []


def test_attach_in_a_folder_without_batches_returns_nothing(local):
    assert local.attach() == []


def test_a_huge_argument_is_named_in_a_warning_and_pickled_once(folder):
    with LocalPoolExecutor(1, folder=folder, warn_pickle_bytes=1_000_000) as executor:
        with pytest.warns(UserWarning, match="arguments of task 0 is 2.0 MB"):
            assert executor.submit(tasks.size_of, b"x" * 2_000_000).result(timeout=30) == 2_000_000


def test_the_interpreter_given_by_name_is_found_on_path_and_made_absolute(folder, tmp_path, monkeypatch):
    # a PATH of the test's own: the machine's may put another interpreter (a pyenv shim) first
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = bin_dir / "oarfutures-test-python"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    launcher.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    executor = LocalPoolExecutor(1, folder=folder, python="oarfutures-test-python")
    assert executor.python == str(launcher)
    assert executor.submit(tasks.square, 3).result(timeout=30) == 9
    executor.shutdown()
    with pytest.raises(ValueError, match="no-such-python"):
        LocalPoolExecutor(1, folder=folder, python="no-such-python")


def test_abort_resolves_every_future_even_when_cancelling_the_jobs_fails(folder, monkeypatch):
    executor = LocalPoolExecutor(1, folder=folder)
    futures = [executor.submit(tasks.sleep_and_return, 5, i) for i in range(3)]

    def refuse(job_ids):
        raise RuntimeError("scancel: Socket timed out on send/recv operation")

    monkeypatch.setattr(executor.backend, "cancel", refuse)
    with pytest.raises(RuntimeError, match="Socket timed out"):
        executor.abort("test")
    for future in futures:
        assert future.cancelled() or "may still run" in str(future.exception(timeout=5))
    monkeypatch.undo()
    executor.shutdown(wait=False, cancel_futures=True)


class ForgetfulScheduler(__import__("oarfutures.backends.base", fromlist=["Backend"]).Backend):
    """A scheduler that runs nothing and, after reporting the job running, forgets it (squeue after MinJobAge):
    an edge case a real Slurm produces only after an hour."""

    name = "forgetful"
    query_interval = (0.05, 0.1)
    result_grace = 0.3

    def __init__(self):
        self.parameters, self.queries = {}, 0

    def validate(self, values):
        return dict(values)

    def submit(self, submission):
        return [f"job{i}" for i in range(submission.first, submission.first + submission.count)]

    def cancel(self, job_ids):
        pass

    def query(self, job_ids):
        from oarfutures.backends.base import JobState, JobStatus

        self.queries += 1
        return {job_id: JobStatus(JobState.RUNNING, "RUNNING") for job_id in job_ids} if self.queries <= 2 else {}


def test_a_job_the_scheduler_forgot_fails_its_future_instead_of_hanging(folder):
    from oarfutures.core.executor import JobExecutor
    from oarfutures.core.settings import CoreSettings

    with JobExecutor(ForgetfulScheduler(), CoreSettings.check(ForgetfulScheduler, None, folder)) as executor:
        future = executor.submit(tasks.square, 2)
        with pytest.raises(JobFailedError, match="no longer knows the job"):
            future.result(timeout=30)


def test_two_processes_attaching_at_once_run_each_call_once(tmp_path):
    folder, runs = str(tmp_path / "jobs"), str(tmp_path / "runs")
    client = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(tasks.__file__)!r})
        import tasks
        from oarfutures import LocalPoolExecutor
        ex = LocalPoolExecutor(1, folder={folder!r})
        ex.map(tasks.note_run, [{runs!r}] * 6, range(6), [0.2] * 6)
        os.kill(os.getpid(), signal.SIGKILL)   # at most the first call started
        """
    )
    attacher = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {os.path.dirname(tasks.__file__)!r})
        from oarfutures import LocalPoolExecutor
        with LocalPoolExecutor(2, folder={folder!r}) as ex:
            try:
                futures = ex.attach()
            except RuntimeError as exc:
                print("refused:", exc)
            else:
                print("attached", sum(1 for f in futures if f.exception(timeout=60) is None))
        """
    )
    assert subprocess.run([sys.executable, "-c", client], timeout=60).returncode == -9
    both = [subprocess.Popen([sys.executable, "-c", attacher], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in both]
    assert any(out.startswith("attached") for out in outputs), outputs
    assert all(out.startswith(("attached", "refused: batch")) for out in outputs), outputs
    assert all(tasks.runs_of(runs, call) <= 1 for call in range(6))
    assert sum(tasks.runs_of(runs, call) for call in range(6)) >= 5  # all but a call the dead client had started


def test_a_refused_wave_fails_its_futures_and_their_callbacks_may_submit(folder):
    # waves of one task, as on OAR under max_workers; the scheduler refuses the second wave
    executor = LocalPoolExecutor(1, folder=folder)
    executor.backend.caps_all_jobs = False
    real_submit, waves = executor.backend.submit, []

    def refuse_the_second(submission):
        waves.append(submission.first)
        if len(waves) == 2:
            raise RuntimeError("queue closed")
        return real_submit(submission)

    executor.backend.submit = refuse_the_second
    with executor:
        with executor.batch():
            first = executor.submit(tasks.sleep_and_return, 0.3, 1)
            second = executor.submit(tasks.square, 2)
        from_callback = []
        second.add_done_callback(lambda _: from_callback.append(executor.submit(tasks.square, 5)))
        assert first.result(timeout=30) == 1
        with pytest.raises(RuntimeError, match="queue closed"):
            second.result(timeout=30)
        wait_for(lambda: from_callback, 30, "the callback to submit")
        assert from_callback[0].result(timeout=30) == 25


# ---------------------------------------------------------------------------------------------- parameters and batches
def test_the_local_backend_accepts_generic_parameters_and_ignores_scheduler_ones(folder):
    with AutoPoolExecutor(folder=folder, cluster="local", timeout_min=5, mem_gb=1, oar_queue="q", slurm_qos="x") as ex:
        assert ex.submit(tasks.add, 1, 2).result(timeout=30) == 3


def test_options_override_parameters_for_one_call_without_reserving_keywords(folder):
    with LocalPoolExecutor(1, folder=folder) as executor:
        view = executor.options(cpus_per_task=2)
        assert view.submit(tasks.echo_kwargs, options=1, cpus_per_task=3).result(timeout=30) == (
            (),
            {"options": 1, "cpus_per_task": 3},
        )
        assert list(view.map(tasks.square, [2, 3])) == [4, 9]
        with pytest.raises(TypeError, match="unknown LocalPoolExecutor parameter"):
            executor.options(partition="x")


def test_batch_submits_the_calls_of_the_block_as_one_array(folder):
    with LocalPoolExecutor(2, folder=folder, keep_files=True) as executor:
        with executor.batch():
            futures = [executor.submit(tasks.add, i, 1) for i in range(3)] + [executor.submit(tasks.square, 5)]
            assert not any(f.done() for f in futures)
        assert [f.result(timeout=30) for f in futures] == [1, 2, 3, 25]
    assert len([n for n in os.listdir(os.path.join(folder, "tasks")) if n.endswith(".batch")]) == 1


def test_an_exception_in_a_batch_block_submits_nothing(folder):
    executor = LocalPoolExecutor(1, folder=folder)
    with pytest.raises(KeyError):
        with executor.batch():
            future = executor.submit(tasks.square, 2)
            raise KeyError("stop")
    assert future.cancelled()
    assert os.listdir(os.path.join(folder, "tasks")) == []
    executor.shutdown()
