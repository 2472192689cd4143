"""A call runs exactly once or never: "cancelled" and "ran" exclude each other, whatever races them.

Each call leaves one file per run (``tasks.note_run``), so a call that ran twice, or ran although its future says
cancelled, shows on disk. On the local backend a job's ``logs/<job id>.out`` is created when its worker starts:
a cancelled queued job must not even start a worker.
"""

import os
import random
import sys
import threading
import time
from concurrent.futures import wait

import pytest

from oarfutures import JobFailedError, LocalPoolExecutor
from oarfutures.protocol import layout

import tasks
from conftest import wait_for


def futures_of(results):
    """The futures behind a ``map`` iterator, read before its first ``next()`` (map hands out results only)."""
    return list(results.gi_frame.f_locals["futures"])


def started(folder, future):
    """Whether a worker was handed the future's call (the executor keeps its files): the worker claims a call
    before running it, and says in the call's log why it did not run one whose claim a cancel() took first."""
    assert future.job_id is not None
    return future.task_id in handed_to_workers(folder)


def handed_to_workers(folder):
    """The task ids of every call a worker was handed (see started)."""
    claims, logs = os.path.join(folder, "claims"), os.listdir(os.path.join(folder, "logs"))
    ran = {
        f"{batch}_{name}"
        for batch in os.listdir(claims)
        if not batch.startswith(layout.OWNER_FILE_PREFIX)  # the files claims link to
        for name in os.listdir(os.path.join(claims, batch))
        if layout.parse_run_owner(layout.claim_owner(os.path.join(claims, batch, name)))
    }
    return ran | {name.rpartition(".")[0] for name in logs if not name.startswith("worker-")}


def workers_started(folder):
    return len(handed_to_workers(folder))


def assert_ran_once_or_never(futures, runs, names):
    for future, name in zip(futures, names):
        count = tasks.runs_of(runs, name)
        if future.cancelled():
            assert count == 0, f"call {name} is cancelled but ran {count} time(s)"
        else:
            assert count == 1, f"call {name} is not cancelled but ran {count} time(s)"
            assert future.result(timeout=0) == name


@pytest.fixture
def runs(tmp_path):
    return str(tmp_path / "runs")


# ------------------------------------------------------------------ cancelled queued calls never run
def test_a_cancelled_queued_submit_never_runs_and_starts_no_worker(folder, runs):
    executor = LocalPoolExecutor(1, folder=folder, keep_files=True)
    blocker = executor.submit(tasks.note_run, runs, "blocker", 1.0)
    queued = executor.submit(tasks.note_run, runs, "queued")
    after = executor.submit(tasks.note_run, runs, "after")  # the slot passes the cancelled job to reach it
    # a submit gathered behind another goes out a moment later: cancel it once it waits in the backend's queue
    wait_for(lambda: queued.job_id is not None and after.job_id is not None, 30, "the calls to be submitted")
    assert queued.cancel()
    assert blocker.result(timeout=30) == "blocker" and after.result(timeout=30) == "after"
    executor.shutdown(wait=True)
    assert queued.cancelled() and tasks.runs_of(runs, "queued") == 0
    assert not started(folder, queued)
    assert workers_started(folder) == 2


def test_a_cancelled_call_of_a_batch_block_never_runs_and_starts_no_worker(folder, runs):
    executor = LocalPoolExecutor(1, folder=folder, keep_files=True)
    blocker = executor.submit(tasks.note_run, runs, "blocker", 1.0)
    with executor.batch():
        dropped = executor.submit(tasks.note_run, runs, "dropped")  # cancelled before the block submits it
        queued = executor.submit(tasks.note_run, runs, "queued")
        kept = executor.submit(tasks.note_run, runs, "kept")
        assert dropped.cancel()
    assert queued.cancel()
    assert blocker.result(timeout=30) == "blocker" and kept.result(timeout=30) == "kept"
    executor.shutdown(wait=True)
    assert dropped.cancelled() and queued.cancelled()
    assert tasks.runs_of(runs, "dropped") == 0 and tasks.runs_of(runs, "queued") == 0
    assert dropped.job_id is None and not started(folder, queued)
    assert workers_started(folder) == 2


def test_the_calls_of_a_map_closed_early_never_run_and_start_no_worker(folder, runs):
    executor = LocalPoolExecutor(1, folder=folder, keep_files=True)
    blocker = executor.submit(tasks.note_run, runs, "blocker", 1.0)
    results = executor.map(tasks.note_run, [runs] * 6, range(6), [0.3] * 6)
    futures = futures_of(results)
    assert next(results) == 0
    results.close()
    after = executor.submit(tasks.note_run, runs, "after")
    assert blocker.result(timeout=30) == "blocker" and after.result(timeout=30) == "after"
    executor.shutdown(wait=True)
    assert sum(f.cancelled() for f in futures) >= 4  # all but the one returned and the one running at close
    assert_ran_once_or_never(futures, runs, range(6))
    # the call after the one returned may have had its worker started when the cancel won its claim; the rest
    # were queued behind it: no worker started for them
    assert not any(started(folder, future) for future in futures[2:])


def test_a_call_cancelled_while_queued_is_never_handed_to_a_worker_even_while_a_callback_blocks(folder, runs):
    """On the local backend cancel() cancels the job itself before it returns: handed to the service thread, where
    a callback may block, a cancellation could come after the slot had handed the job to its worker (which then
    found the claim taken and said so in a log of its own; the call never ran)."""
    release = threading.Event()
    executor = LocalPoolExecutor(1, folder=folder, keep_files=True)
    try:
        first = executor.submit(tasks.note_run, runs, "first")
        first.add_done_callback(lambda _: release.wait(30))  # the service thread is busy from now on
        assert first.result(timeout=30) == "first"
        futures = futures_of(executor.map(tasks.note_run, [runs] * 3, ["q0", "q1", "q2"], [0.5] * 3))
        wait_for(lambda: started(folder, futures[0]), timeout=30, what="the first call to start")
        assert futures[2].cancel() and futures[1].cancel()
        assert futures[0].result(timeout=30) == "q0"
        time.sleep(0.5)  # what a slot would have handed its worker after q0, it has handed by now
        assert not started(folder, futures[1]) and not started(folder, futures[2])
        assert tasks.runs_of(runs, "q1") == tasks.runs_of(runs, "q2") == 0
    finally:
        release.set()
        executor.shutdown(wait=True)


def test_keyboard_interrupt_while_iterating_a_map_cancels_the_queued_calls(folder, runs):
    executor = LocalPoolExecutor(1, folder=folder, keep_files=True)  # no with block: only the map iterator cancels
    blocker = executor.submit(tasks.note_run, runs, "blocker", 1.0)
    futures = []

    def keeping_futures(results):
        futures.extend(futures_of(results))
        return results

    with pytest.raises(KeyboardInterrupt):
        for _ in keeping_futures(executor.map(tasks.note_run, [runs] * 6, range(6), [0.3] * 6)):
            raise KeyboardInterrupt
    after = executor.submit(tasks.note_run, runs, "after")
    assert blocker.result(timeout=30) == "blocker" and after.result(timeout=30) == "after"
    executor.shutdown(wait=True)
    assert sum(f.cancelled() for f in futures) >= 4
    assert_ran_once_or_never(futures, runs, range(6))
    # the call after the one returned may have had its worker started when the cancel won its claim; the rest
    # were queued behind it: no worker started for them
    assert not any(started(folder, future) for future in futures[2:])


# ------------------------------------------------------------------ cancel racing the workers
@pytest.mark.parametrize("chunksize", [1, 4])
def test_cancel_racing_a_draining_array_cancels_only_calls_that_never_run(folder, runs, chunksize):
    executor = LocalPoolExecutor(2, folder=folder)
    results = executor.map(tasks.note_run, [runs] * 40, range(40), [0.05] * 40, chunksize=chunksize)
    futures = futures_of(results)
    order = futures[:]
    random.shuffle(order)
    wait_for(
        lambda: sum(tasks.runs_of(runs, i) for i in range(40)) >= 3,
        timeout=30,
        what="the array to drain",
        interval=0.01,
    )
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        cancellers = [
            threading.Thread(target=lambda part: [f.cancel() for f in part], args=(order[k::2],)) for k in range(2)
        ]
        for thread in cancellers:
            thread.start()
        for thread in cancellers:
            thread.join(timeout=30)
    finally:
        sys.setswitchinterval(switch)
    assert not any(thread.is_alive() for thread in cancellers), "cancel() hung"
    _done, not_done = wait(futures, timeout=60)
    assert not not_done
    executor.shutdown(wait=True)
    assert any(f.cancelled() for f in futures) and not all(f.cancelled() for f in futures)
    assert_ran_once_or_never(futures, runs, range(40))


def test_a_chunk_whose_task_cannot_be_loaded_fails_every_call_with_the_same_error(local):
    results = local.map(tasks.square, [2, tasks.FailsToLoad("no loading this"), 3], chunksize=3)
    futures = futures_of(results)
    for future in futures:
        with pytest.raises(ValueError, match="no loading this"):
            future.result(timeout=30)


# ------------------------------------------------------------------ abort racing submissions
def test_abort_racing_submissions_leaves_no_call_that_ran_cancelled_and_no_future_pending(folder, runs):
    executor = LocalPoolExecutor(2, folder=folder)
    submitted, stop = [], threading.Event()

    def submit_in_a_loop():
        for name in range(30):  # bounded: the calls submitted after abort() still run, 2 at a time
            if stop.is_set():
                break
            submitted.append((name, executor.submit(tasks.note_run, runs, name, 0.3)))
            time.sleep(0.02)

    submitter = threading.Thread(target=submit_in_a_loop)
    submitter.start()
    try:
        time.sleep(0.5)
        executor.abort("the test aborts")
    finally:
        stop.set()
        submitter.join(timeout=30)
    assert not submitter.is_alive()
    _, not_done = wait([f for _, f in submitted], timeout=45)
    assert not not_done, f"{len(not_done)} future(s) still pending after abort()"
    time.sleep(1.5)  # a job nothing tracks would run meanwhile
    executor.shutdown(wait=True)
    for name, future in submitted:
        count = tasks.runs_of(runs, name)
        assert count <= 1, f"call {name} ran {count} times"
        if count:
            assert not future.cancelled(), f"call {name} ran but its future says cancelled"
        elif not future.cancelled() and future.exception(timeout=0) is None:
            pytest.fail(f"call {name} never ran but its future has result {future.result()!r}")
        elif not future.cancelled():
            assert isinstance(future.exception(timeout=0), JobFailedError)
