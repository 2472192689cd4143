"""Several executors, several submitting threads, callbacks that submit and cancel, forced thread switches.

This is what found the lock-order inversion between the executor and the poller: reading the code did not. A hang
shows as futures still pending at the deadline, with every thread's stack printed.
"""

import faulthandler
import random
import sys
import threading
import time
from concurrent.futures import CancelledError, wait

import pytest
from test_robustness import alive

from oarfutures import JobFailedError, LocalPoolExecutor
from oarfutures.backends import local

import tasks

EXECUTORS = 4
THREADS_PER_EXECUTOR = 3
ROUNDS = 12  # per thread: a submit, a small map, a batch, a cancel, a callback that submits
DEADLINE = 240


@pytest.fixture
def fast_switches():
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _work(executor, seed, futures, errors):
    rng = random.Random(seed)
    try:
        for round_ in range(ROUNDS):
            futures.append(executor.submit(tasks.square, round_))
            futures.extend([executor.submit(tasks.add, round_, 1) for _ in range(2)])
            mapped = executor.map(tasks.square, range(3), chunksize=rng.choice([1, 2]))
            if rng.random() < 0.3:
                mapped.close()  # cancels what was not returned
            else:
                assert list(mapped) == [0, 1, 4]
            with executor.batch():
                batched = [executor.submit(tasks.add, round_, i) for i in range(2)]
            futures.extend(batched)
            victim = executor.submit(tasks.sleep_and_return, 0.2, round_)
            victim.cancel()
            futures.append(victim)
            chained = executor.submit(tasks.square, 2)

            def submit_more(done, executor=executor):  # joblib and dask submit from callbacks
                futures.append(executor.submit(tasks.square, 3))

            chained.add_done_callback(submit_more)
            futures.append(chained)
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_many_executors_and_threads_with_forced_switches_never_hang(tmp_path, fast_switches):
    executors = [LocalPoolExecutor(2, folder=str(tmp_path / f"jobs{i}")) for i in range(EXECUTORS)]
    futures, errors = [], []
    threads = [
        threading.Thread(target=_work, args=(executor, 7 * i + j, futures, errors))
        for i, executor in enumerate(executors)
        for j in range(THREADS_PER_EXECUTOR)
    ]
    deadline = time.monotonic() + DEADLINE
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck_threads = [t.name for t in threads if t.is_alive()]
    _, pending = wait(list(futures), timeout=max(1.0, deadline - time.monotonic()))
    if stuck_threads or pending:
        faulthandler.dump_traceback(all_threads=True)
    assert not stuck_threads, f"submitting threads hung: {stuck_threads}"
    assert not pending, f"{len(pending)} of {len(futures)} futures never resolved"
    assert not errors, errors
    for future in futures:
        try:
            future.result()
        except CancelledError:
            pass
    for executor in executors:
        executor.shutdown(wait=True)


def test_workers_and_fork_servers_leaving_and_coming_back_under_load_lose_no_call(tmp_path, fast_switches, monkeypatch):
    """Slots, workers and fork servers leave after a few idle milliseconds and come back at the next call, while
    other threads submit and some calls kill their worker: each call gets its result or its JobFailedError, and
    nothing of the pools is left after shutdown."""
    monkeypatch.setattr(local, "IDLE_SECONDS", 0.02)
    executors = [LocalPoolExecutor(2, folder=str(tmp_path / f"jobs{i}")) for i in range(3)]
    servers, outcomes, errors = set(), [], []

    def bursts(executor, seed):
        rng = random.Random(seed)
        try:
            for round_ in range(8):
                crash = rng.random() < 0.3
                futures = [executor.submit(tasks.square, round_) for _ in range(rng.choice([1, 3]))]
                if crash:
                    futures.append(executor.submit(tasks.kill_self))
                servers.update(server.pid for server in list(executor.backend._servers.values()))
                for future in futures:
                    try:
                        outcomes.append(future.result(timeout=120) == round_ * round_)
                    except JobFailedError:
                        outcomes.append(crash)
                time.sleep(rng.choice([0.0, 0.05, 0.1]))  # long enough, often, for the pools to leave
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=bursts, args=(executor, 5 * i + j))
        for i, executor in enumerate(executors)
        for j in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    if any(thread.is_alive() for thread in threads):
        faulthandler.dump_traceback(all_threads=True)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    assert outcomes and all(outcomes)
    for executor in executors:
        executor.shutdown(wait=True)
    assert len(servers) > len(executors)  # servers did leave and come back
    assert not [pid for pid in servers if alive(pid)]
