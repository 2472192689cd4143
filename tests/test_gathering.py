"""Separate ``submit`` calls go out together (dask and joblib submit one call at a time), and nothing is lost.

A submit with nothing in flight goes out at once; the calls submitted while it is in flight (or within a few
milliseconds after) are gathered into the next array. Every gathered call is pickled at its own submit, runs
once, goes out even if the executor is shut down or the interpreter exits meanwhile, and never runs if it was
cancelled before it went out.
"""

import os
import threading
import time

import pytest
from test_exactly_once import assert_ran_once_or_never

from oarfutures import LocalPoolExecutor, SlurmPoolExecutor
from oarfutures.backends.local import LocalBackend
from oarfutures.core import records

import tasks
from conftest import require_command, run_client, wait_for


def batches(folder):
    return len(records.load_all(folder))


@pytest.mark.parametrize("cluster", ["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def test_a_loop_of_submits_goes_out_as_a_few_arrays(cluster, folder, monkeypatch):
    if cluster == "slurm":
        require_command("sbatch")
        executor = SlurmPoolExecutor(folder=folder, walltime="0:10:00")
    else:
        executor = LocalPoolExecutor(2, folder=folder)
    with executor:
        futures = [executor.submit(tasks.square, n) for n in range(200)]
        assert [f.result(timeout=600) for f in futures] == [n * n for n in range(200)]
        assert len({f.task_id for f in futures}) == 200
    assert batches(folder) <= 20  # one per submit without gathering; a handful with it


def test_an_unpicklable_call_in_a_burst_fails_its_own_submit_and_no_other(local):
    first = [local.submit(tasks.square, n) for n in range(20)]
    with pytest.raises(TypeError, match="cannot pickle the arguments"):
        local.submit(tasks.size_of, threading.Lock())
    with pytest.raises(TypeError, match="cannot pickle the function"):
        local.submit(lambda lock=threading.Lock(): lock)  # noqa: B008 - unpicklable on purpose
    then = [local.submit(tasks.square, n) for n in range(20, 40)]
    assert [f.result(timeout=60) for f in first + then] == [n * n for n in range(40)]


def test_shutdown_right_after_a_burst_runs_every_gathered_call(folder, tmp_path):
    runs = str(tmp_path / "runs")
    executor = LocalPoolExecutor(2, folder=folder)
    futures = [executor.submit(tasks.note_run, runs, f"c{n}") for n in range(30)]
    executor.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == [f"c{n}" for n in range(30)]
    assert all(tasks.runs_of(runs, f"c{n}") == 1 for n in range(30))


def test_shutdown_with_cancel_futures_cancels_gathered_calls_and_they_never_run(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(LocalBackend, "gather_seconds", 2.0)  # the burst is still gathered when shutdown comes
    runs = str(tmp_path / "runs")
    executor = LocalPoolExecutor(1, folder=folder)
    blocker = executor.submit(tasks.note_run, runs, "blocker", 1.0)
    wait_for(blocker.running, 30, "the blocker to run")
    futures = [executor.submit(tasks.note_run, runs, f"c{n}") for n in range(30)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert blocker.result(timeout=0) == "blocker"
    assert sum(f.cancelled() for f in futures) >= 29  # all but the first, which went out at once
    assert_ran_once_or_never(futures, runs, [f"c{n}" for n in range(30)])


def test_calls_gathered_when_the_interpreter_exits_still_run(tmp_path):
    """As with ProcessPoolExecutor, work submitted and never waited for runs before the interpreter exits."""
    runs = tmp_path / "runs"
    client = run_client(
        tmp_path / "client.py",
        f"""
        import tasks
        from oarfutures import LocalPoolExecutor
        from oarfutures.backends.local import LocalBackend
        LocalBackend.gather_seconds = 30  # no window closes before the exit: the exit must send the calls
        executor = LocalPoolExecutor(2, folder={str(tmp_path / "jobs")!r})
        for n in range(30):
            executor.submit(tasks.note_run, {str(runs)!r}, f"c{{n}}")
        """,
        timeout=120,
    )
    assert client.returncode == 0, client.stderr
    assert [tasks.runs_of(str(runs), f"c{n}") for n in range(30)] == [1] * 30


def test_abort_cancels_gathered_calls_too(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(LocalBackend, "gather_seconds", 2.0)
    runs = str(tmp_path / "runs")
    with LocalPoolExecutor(1, folder=folder) as executor:
        futures = [executor.submit(tasks.note_run, runs, f"c{n}") for n in range(10)]
        executor.abort("test")
    assert all(f.cancelled() for f in futures[1:])
    assert_ran_once_or_never(futures, runs, [f"c{n}" for n in range(10)])


def test_a_forked_child_never_submits_the_calls_its_parent_gathered(tmp_path):
    """A fork copies the executor with its gathered calls and its service thread's queue: only the parent may
    send them, or they run twice."""
    runs = tmp_path / "runs"
    run = run_client(
        tmp_path / "fork.py",
        f"""
        import os, traceback, warnings
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: what we test
        import tasks
        from oarfutures import LocalPoolExecutor
        from oarfutures.backends.local import LocalBackend
        LocalBackend.gather_seconds = 1.0  # the calls after the first are still gathered at the fork
        executor = LocalPoolExecutor(1, folder={str(tmp_path / "jobs")!r})
        futures = [executor.submit(tasks.note_run, {str(runs)!r}, f"c{{n}}", 0.2) for n in range(5)]
        pid = os.fork()
        if pid == 0:  # the child uses the executor: its service thread runs what it copied
            import faulthandler
            faulthandler.dump_traceback_later(15, exit=True)
            try:
                print("child", executor.submit(tasks.note_run, {str(runs)!r}, "child").result(timeout=10), flush=True)
                os._exit(0)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        print("parent", os.waitstatus_to_exitcode(status), *[f.result(timeout=30) for f in futures], flush=True)
        """,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["child child", "parent 0 c0 c1 c2 c3 c4"], run.stderr
    assert [tasks.runs_of(str(runs), f"c{n}") for n in range(5)] == [1] * 5


@pytest.mark.slurm
def test_a_gathered_call_keeps_the_parameters_of_its_submit(folder):
    """update_parameters() changes later submissions only, even for calls still gathered when it comes."""
    require_command("sbatch")
    with SlurmPoolExecutor(folder=folder, walltime="0:10:00", name="before") as executor:
        futures = [executor.submit(tasks.square, n) for n in range(5)]  # the first goes out, the rest gather
        executor.update_parameters(name="after")
        later = executor.submit(tasks.square, 5)
        assert [f.result(timeout=300) for f in futures + [later]] == [n * n for n in range(6)]
    jobs = os.path.join(folder, "jobs")
    names = {}
    for script in os.listdir(jobs):
        with open(os.path.join(jobs, script)) as f:
            text = f.read()
        batch = script.rsplit("-", 1)[0]
        names[batch] = "before" if "--job-name=before" in text else "after" if "--job-name=after" in text else text
    by_batch = {f.task_id.rsplit("_", 1)[0] for f in futures}
    assert {names[b] for b in by_batch} == {"before"}
    assert names[later.task_id.rsplit("_", 1)[0]] == "after"


def test_calls_on_their_way_to_the_scheduler_are_still_cancelled_by_shutdown(folder, tmp_path, monkeypatch):
    """Between leaving the gatherer and being registered (a slow sbatch), calls must stay reachable."""
    from oarfutures.core.executor import JobExecutor

    monkeypatch.setattr(LocalBackend, "gather_seconds", 0.01)
    submit_batch, slowed = JobExecutor._submit_batch, threading.Event()

    def slow_gathered_submission(self, *args, accepted=False, **kwargs):
        if accepted:
            slowed.set()
            time.sleep(1.0)
        return submit_batch(self, *args, accepted=accepted, **kwargs)

    monkeypatch.setattr(JobExecutor, "_submit_batch", slow_gathered_submission)
    runs = str(tmp_path / "runs")
    executor = LocalPoolExecutor(1, folder=folder)
    blocker = executor.submit(tasks.note_run, runs, "blocker", 0.5)
    wait_for(blocker.running, 30, "the blocker to run")
    futures = [executor.submit(tasks.note_run, runs, f"c{n}") for n in range(5)]  # the first out, 4 gathered
    assert slowed.wait(10)
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures[1:]), [f._state for f in futures]
    assert_ran_once_or_never(futures, runs, [f"c{n}" for n in range(5)])


def test_a_gathering_window_starts_no_thread_of_its_own(folder, monkeypatch):
    """dask submits one call each time one ends: each submit opened a window, closed by a timer thread of its own
    (~90 threads for 200 tasks); the executor's service thread closes them now."""
    started = []
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda thread: (started.append(thread.name), real_start(thread)))
    with LocalPoolExecutor(2, folder=folder) as executor:
        running = {executor.submit(tasks.square, n) for n in range(4)}  # a full queue: every submit opens a window
        for n in range(4, 40):
            done = next(iter(running))
            done.result(timeout=60)
            running.discard(done)
            running.add(executor.submit(tasks.square, n))
        for future in running:
            future.result(timeout=60)  # (raises if a call failed)
    assert len(started) <= 10, started  # the service, poller, slot and fork server threads
