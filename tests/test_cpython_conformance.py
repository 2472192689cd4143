"""The generic ``concurrent.futures`` executor contract, checked on ``LocalPoolExecutor``.

A pytest rewrite of the behaviours CPython checks in ``Lib/test/test_concurrent_futures`` (the ``ExecutorTest``,
``WaitTests``, ``AsCompletedTests`` and ``ExecutorShutdownTest`` mixins) for any executor, leaving out what is
specific to threads or multiprocessing. Calls run in worker subprocesses, so a ``threading.Event`` cannot cross to
them: a "gate" here is a file the worker polls for, opened by the test (and by the fixtures at teardown, so a
failing test never leaves a worker blocked).

Every function submitted below is module-level: the worker imports this module to unpickle it.
"""

from __future__ import annotations

import gc
import itertools
import os
import threading
import time
import weakref
from concurrent import futures as cf

import pytest

from oarfutures import JobFuture, LocalPoolExecutor

from conftest import run_client

pytestmark = pytest.mark.timeout(60)

GATE_LIMIT = 30.0  # a worker never waits longer than this for its gate, whatever the test does


# ---------------------------------------------------------------------------------------------- run in workers
def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


class MyObject:
    def my_method(self):
        return None


def make_dummy_object(_):
    return MyObject()


def wait_gate(path):
    """Block until the file ``path`` exists; return its name."""
    deadline = time.monotonic() + GATE_LIMIT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} was never opened")
        time.sleep(0.01)
    return os.path.basename(path)


def wait_gate_then_raise(path):
    wait_gate(path)
    raise Exception("this is an exception")


def pass_or_wait(path):
    """Return None at once when ``path`` is None, else once the gate opens."""
    if path is not None:
        wait_gate(path)
    return None


def mark_then_wait(marker_dir, i, gate):
    """Leave a trace that call ``i`` ran, then wait for ``gate`` when given one."""
    with open(os.path.join(marker_dir, f"ran-{i}"), "w"):
        pass
    if gate is not None:
        wait_gate(gate)
    return i


# ---------------------------------------------------------------------------------------------- test helpers
class Gates:
    """Makes gate paths; ``open_all`` releases every worker still blocked on one."""

    def __init__(self, folder):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self.made = []

    def __call__(self):
        path = os.path.join(self.folder, f"gate-{len(self.made)}")
        self.made.append(path)
        return path

    @staticmethod
    def open(path):
        with open(path, "w"):
            pass

    def open_all(self):
        for path in self.made:
            self.open(path)


@pytest.fixture
def gates(tmp_path):
    made = Gates(str(tmp_path / "gates"))
    yield made
    made.open_all()


@pytest.fixture
def make_executor(tmp_path, gates):
    """Build executors that are shut down at teardown, after every gate was opened."""
    made = []

    def make(max_workers=2):
        executor = LocalPoolExecutor(max_workers, folder=str(tmp_path / f"jobs-{len(made)}"))
        made.append(executor)
        return executor

    yield make
    gates.open_all()
    for executor in made:
        executor.shutdown(wait=True)


@pytest.fixture
def executor(make_executor):
    return make_executor(2)


def cancelled_future():
    future = cf.Future()
    future.cancel()
    return future


def cancelled_and_notified_future():
    future = cancelled_future()
    future.set_running_or_notify_cancel()
    return future


def exception_future():
    future = cf.Future()
    future.set_exception(OSError())
    return future


def successful_future():
    future = cf.Future()
    future.set_result(42)
    return future


def wait_until(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def collected(ref, timeout=2.0):
    """True once the referent of ``ref`` is gone; the poller thread may still hold a future for a moment after
    resolving it (as a pool's worker thread does), so a lasting reference is what counts, not a transient one."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        if ref() is None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


# ============================================================================================== ExecutorTest
def test_submit(executor):
    assert executor.submit(pow, 2, 8).result() == 256


def test_submit_returns_job_future(executor):
    future = executor.submit(pow, 2, 3)
    assert isinstance(future, JobFuture) and isinstance(future, cf.Future)
    assert future.result() == 8


def test_submit_keyword_argument(executor):
    assert executor.submit(mul, 2, y=8).result() == 16


def test_submit_passes_fn_and_self_keywords_through(executor):
    future = executor.submit(capture, 1, self=2, fn=3)
    assert future.result() == ((1,), {"self": 2, "fn": 3})


def test_submit_fn_is_positional_only(executor):
    with pytest.raises(TypeError):
        executor.submit(fn=capture, arg=1)
    with pytest.raises(TypeError):
        executor.submit(arg=1)


def test_map(executor):
    assert list(executor.map(pow, range(6), range(6))) == list(map(pow, range(6), range(6)))


def test_map_with_chunksize(executor):
    results = executor.map(pow, range(10), range(10), chunksize=3)
    assert list(results) == list(map(pow, range(10), range(10)))


def test_map_rejects_chunksize_below_one(executor):
    with pytest.raises(ValueError):
        executor.map(pow, range(3), range(3), chunksize=0)


def test_map_exception(executor):
    results = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(results) == (0, 1)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout(executor, gates):
    received = []
    with pytest.raises(cf.TimeoutError):
        for value in executor.map(pass_or_wait, [None, None, gates()], timeout=3):
            received.append(value)
    assert received == [None, None]


def test_map_iterator_close_cancels_leftover_calls(make_executor, gates, tmp_path):
    executor = make_executor(1)
    markers = tmp_path / "markers"
    markers.mkdir()
    gate = gates()
    # call 0 returns at once, call 1 holds the only worker, calls 2 and 3 stay queued behind it
    results = executor.map(mark_then_wait, [str(markers)] * 4, range(4), [None, gate, None, None])
    assert next(results) == 0
    results.close()
    time.sleep(0.5)  # let the cancellations reach the backend before the worker frees up
    gates.open(gate)
    executor.shutdown(wait=True)
    time.sleep(0.3)
    ran = sorted(p.name for p in markers.iterdir())
    assert "ran-2" not in ran and "ran-3" not in ran, ran


def test_shutdown_right_after_map_still_delivers_every_result(executor):
    results = executor.map(str, [2] * 3)
    executor.shutdown()
    assert list(results) == ["2"] * 3


def test_no_stale_references(executor):
    my_object = MyObject()
    collected = threading.Event()
    ref = weakref.ref(my_object, lambda _: collected.set())
    executor.submit(my_object.my_method)  # the future is dropped on purpose
    del my_object
    deadline = time.monotonic() + 10
    while not collected.is_set() and time.monotonic() < deadline:
        gc.collect()
        collected.wait(0.1)
    assert collected.is_set(), f"the executor still holds the submitted callable's object: {gc.get_referrers(ref())!r}"


@pytest.mark.parametrize("number", [0, -1])
def test_max_workers_must_be_positive(number, tmp_path):
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        LocalPoolExecutor(max_workers=number, folder=str(tmp_path / "jobs"))


def test_map_does_not_keep_yielded_results(executor):
    for obj in executor.map(make_dummy_object, range(4)):
        ref = weakref.ref(obj)
        del obj
        assert collected(ref), "the map iterator keeps a reference to the result it yielded"


def test_dropped_future_frees_its_result(executor):
    future = executor.submit(make_dummy_object, 0)
    ref = weakref.ref(future.result())
    del future
    assert collected(ref), "something besides the future keeps its result alive"


# ============================================================================================== WaitTests
def test_wait_duplicate_futures_all_completed(executor):
    future = executor.submit(mul, 1, 2)
    done, not_done = cf.wait([future, future], return_when=cf.ALL_COMPLETED)
    assert done == {future}
    assert not_done == set()


def test_wait_first_completed(executor, gates):
    gate = gates()
    cancelled = cancelled_future()
    future1 = executor.submit(mul, 21, 2)
    future2 = executor.submit(wait_gate, gate)
    try:
        done, not_done = cf.wait([cancelled, future1, future2], return_when=cf.FIRST_COMPLETED)
        assert done == {future1}
        assert not_done == {cancelled, future2}
    finally:
        gates.open(gate)
    assert future2.result(timeout=30) == os.path.basename(gate)


def test_wait_first_completed_some_already_completed(executor, gates):
    gate = gates()
    notified, success = cancelled_and_notified_future(), successful_future()
    future1 = executor.submit(wait_gate, gate)
    try:
        done, not_done = cf.wait([notified, success, future1], return_when=cf.FIRST_COMPLETED)
        assert done == {notified, success}
        assert not_done == {future1}
    finally:
        gates.open(gate)
    future1.result(timeout=30)


def test_wait_first_exception(make_executor, gates):
    executor = make_executor(3)
    gate1, gate2 = gates(), gates()
    future1 = executor.submit(mul, 2, 21)
    future2 = executor.submit(wait_gate_then_raise, gate1)
    future3 = executor.submit(wait_gate, gate2)

    def release_future2_after_future1():
        future1.result(timeout=30)
        gates.open(gate1)

    helper = threading.Thread(target=release_future2_after_future1)
    helper.start()
    try:
        done, not_done = cf.wait([future1, future2, future3], return_when=cf.FIRST_EXCEPTION)
        assert done == {future1, future2}
        assert not_done == {future3}
        assert str(future2.exception()) == "this is an exception"
    finally:
        helper.join(30)
        gates.open(gate1)
        gates.open(gate2)
    future3.result(timeout=30)


def test_wait_first_exception_some_already_complete(executor, gates):
    gate = gates()
    success, cancelled, notified = successful_future(), cancelled_future(), cancelled_and_notified_future()
    future1 = executor.submit(divmod, 21, 0)
    future2 = executor.submit(wait_gate, gate)
    try:
        done, not_done = cf.wait([success, cancelled, notified, future1, future2], return_when=cf.FIRST_EXCEPTION)
        assert done == {success, notified, future1}
        assert not_done == {cancelled, future2}
        assert isinstance(future1.exception(), ZeroDivisionError)
    finally:
        gates.open(gate)
    future2.result(timeout=30)


def test_wait_first_exception_one_already_failed(executor, gates):
    gate = gates()
    failed = exception_future()
    future1 = executor.submit(wait_gate, gate)
    try:
        done, not_done = cf.wait([failed, future1], return_when=cf.FIRST_EXCEPTION)
        assert done == {failed}
        assert not_done == {future1}
    finally:
        gates.open(gate)
    future1.result(timeout=30)


def test_wait_all_completed(executor):
    premade = [successful_future(), cancelled_and_notified_future(), exception_future()]
    future1 = executor.submit(divmod, 2, 0)
    future2 = executor.submit(mul, 2, 21)
    done, not_done = cf.wait(premade + [future1, future2], return_when=cf.ALL_COMPLETED)
    assert done == set(premade) | {future1, future2}
    assert not_done == set()
    assert isinstance(future1.exception(), ZeroDivisionError)
    assert future2.result() == 42


def test_wait_timeout(executor, gates):
    gate = gates()
    premade = [cancelled_and_notified_future(), exception_future(), successful_future()]
    future = executor.submit(wait_gate, gate)
    try:
        done, not_done = cf.wait(premade + [future], timeout=0.05, return_when=cf.ALL_COMPLETED)
        assert done == set(premade)
        assert not_done == {future}
    finally:
        gates.open(gate)
    future.result(timeout=30)


# ============================================================================================== AsCompletedTests
def test_as_completed_no_timeout(executor):
    premade = [cancelled_and_notified_future(), exception_future(), successful_future()]
    future1 = executor.submit(mul, 2, 21)
    future2 = executor.submit(mul, 7, 6)
    completed = set(cf.as_completed(premade + [future1, future2]))
    assert completed == set(premade) | {future1, future2}


@pytest.mark.parametrize("timeout", [0, 0.1])
def test_as_completed_times_out_before_last_future(executor, gates, timeout):
    already_done = {cancelled_and_notified_future(), exception_future(), successful_future()}
    future = executor.submit(wait_gate, gates())
    seen = set()
    with pytest.raises(cf.TimeoutError):
        for f in cf.as_completed(already_done | {future}, timeout):
            seen.add(f)
    assert seen == already_done


def test_as_completed_timeout_message_counts_unfinished(executor, gates):
    pending = [executor.submit(wait_gate, gates()), executor.submit(wait_gate, gates())]
    fs = [cancelled_and_notified_future(), pending[0], pending[1], successful_future()]
    with pytest.raises(cf.TimeoutError) as info:
        list(cf.as_completed(fs, timeout=0))
    assert str(info.value) == "2 (of 4) futures unfinished"


def test_as_completed_duplicate_futures(executor):
    future = executor.submit(time.sleep, 0.3)
    completed = list(cf.as_completed(itertools.repeat(future, 3)))
    assert completed == [future]


def test_as_completed_does_not_keep_yielded_futures(executor):
    remaining = [executor.submit(mul, i, i) for i in range(3)]
    remaining.append(successful_future())
    for future in cf.as_completed(remaining.copy(), timeout=30):
        remaining.remove(future)
        ref = weakref.ref(future)
        del future
        assert collected(ref), "a yielded and dropped future is still referenced"
    assert remaining == []


def test_as_completed_yields_futures_cancelled_by_user(make_executor, gates):
    executor = make_executor(1)
    blocker = executor.submit(wait_gate, gates())
    queued = [executor.submit(mul, 2, 3), executor.submit(mul, 4, 5)]
    assert all(f.cancel() for f in queued)
    completed = list(cf.as_completed(queued, timeout=10))
    assert set(completed) == set(queued)
    assert all(f.cancelled() for f in completed)
    assert not blocker.done()


# ============================================================================================== cancellation
def test_cancel_queued_future_is_cancelled_and_done_for_wait(make_executor, gates, tmp_path):
    executor = make_executor(1)
    markers = tmp_path / "markers"
    markers.mkdir()
    gate = gates()
    blocker = executor.submit(wait_gate, gate)
    queued = executor.submit(mark_then_wait, str(markers), 7, None)
    assert queued.cancel()
    assert queued.cancelled() and queued.done() and not queued.running()
    done, not_done = cf.wait([queued], timeout=10)
    assert done == {queued} and not_done == set()
    with pytest.raises(cf.CancelledError):
        queued.result(timeout=0)
    gates.open(gate)
    blocker.result(timeout=30)
    executor.shutdown(wait=True)
    assert not (markers / "ran-7").exists(), "a future cancelled while queued still ran"


def test_cancel_running_future_returns_false(make_executor, gates):
    executor = make_executor(1)
    gate = gates()
    future = executor.submit(wait_gate, gate)
    assert wait_until(future.running), "the future never reported RUNNING"
    assert not future.cancel()
    assert not future.cancelled()
    gates.open(gate)
    assert future.result(timeout=30) == os.path.basename(gate)


# ============================================================================================== ExecutorShutdownTest
def test_submit_after_shutdown_raises_runtime_error(executor):
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(pow, 2, 5)


def test_map_after_shutdown_raises_runtime_error(executor):
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.map(pow, [2], [5])


def test_shutdown_is_idempotent(executor):
    future = executor.submit(mul, 3, 4)
    executor.shutdown(wait=False)
    executor.shutdown()
    executor.shutdown(wait=True)
    assert future.result(timeout=30) == 12


def test_shutdown_waits_for_pending_futures(executor):
    fs = [executor.submit(time.sleep, 0.05) for _ in range(5)]
    executor.shutdown(wait=True)
    assert all(f.done() for f in fs)
    assert [f.result(timeout=0) for f in fs] == [None] * 5


def test_shutdown_cancel_futures_cancels_queued_ones(make_executor, gates, tmp_path):
    executor = make_executor(1)
    markers = tmp_path / "markers"
    markers.mkdir()
    gate = gates()
    running = executor.submit(wait_gate, gate)
    assert wait_until(running.running), "the future never reported RUNNING"
    queued = [executor.submit(mark_then_wait, str(markers), i, None) for i in range(8)]
    threading.Timer(0.5, gates.open, (gate,)).start()
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in queued), [f._state for f in queued]
    assert running.done() and not running.cancelled()
    assert running.exception(timeout=0) is None
    assert not list(markers.iterdir()), "a call cancelled by shutdown(cancel_futures=True) still ran"


def test_shutdown_no_wait_returns_before_futures_finish(executor, gates):
    gate = gates()
    results = executor.map(abs, range(-3, 3))
    blocked = executor.submit(wait_gate, gate)
    executor.shutdown(wait=False)
    assert not blocked.done()
    gates.open(gate)
    assert list(results) == [3, 2, 1, 0, 1, 2]
    assert blocked.result(timeout=30) == os.path.basename(gate)


def test_shutdown_with_future_cancelled_right_before_does_not_hang(make_executor):
    executor = make_executor(1)
    assert executor.submit(int).result(timeout=30) == 0
    executor.submit(int).cancel()
    closer = threading.Thread(target=executor.shutdown, kwargs={"wait": True}, daemon=True)
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "shutdown(wait=True) hangs after a future was cancelled"


def test_context_manager_returns_executor_and_shuts_it_down(tmp_path):
    with LocalPoolExecutor(2, folder=str(tmp_path / "jobs")) as executor:
        assert isinstance(executor, LocalPoolExecutor)
        assert list(executor.map(abs, range(-3, 3))) == [3, 2, 1, 0, 1, 2]
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(abs, 1)


def test_context_manager_exit_waits_for_futures(tmp_path):
    with LocalPoolExecutor(2, folder=str(tmp_path / "jobs")) as executor:
        fs = [executor.submit(time.sleep, 0.2), executor.submit(mul, 6, 7)]
    assert all(f.done() for f in fs)
    assert fs[1].result(timeout=0) == 42


def test_dropping_executor_still_resolves_its_futures(tmp_path):
    executor = LocalPoolExecutor(2, folder=str(tmp_path / "jobs"))
    results = executor.map(abs, range(-3, 3))
    del executor
    gc.collect()
    assert list(results) == [3, 2, 1, 0, 1, 2]


def test_interpreter_exit_runs_submitted_call(tmp_path):
    marker = tmp_path / "marker"
    proc = run_client(
        tmp_path / "script.py",
        """\
        import sys, time
        from oarfutures import LocalPoolExecutor

        def sleep_and_write(path, text):
            time.sleep(0.5)
            with open(path, "w") as f:
                f.write(text)

        if __name__ == "__main__":
            executor = LocalPoolExecutor(2, folder=sys.argv[1])
            executor.submit(sleep_and_write, sys.argv[2], "apple")
        """,
        tmp_path / "jobs",
        marker,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert marker.read_text() == "apple"


def test_interpreter_exit_after_shutdown_no_wait_runs_call(tmp_path):
    marker = tmp_path / "marker"
    proc = run_client(
        tmp_path / "script.py",
        """\
        import sys, time
        from oarfutures import LocalPoolExecutor

        def sleep_and_write(path, text):
            time.sleep(0.5)
            with open(path, "w") as f:
                f.write(text)

        if __name__ == "__main__":
            executor = LocalPoolExecutor(3, folder=sys.argv[1])
            executor.submit(sleep_and_write, sys.argv[2], "apple")
            executor.shutdown(wait=False)
        """,
        tmp_path / "jobs",
        marker,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert marker.read_text() == "apple"


def test_submit_at_interpreter_exit_raises_runtime_error(tmp_path):
    proc = run_client(
        tmp_path / "script.py",
        """\
        import atexit, sys
        from oarfutures import LocalPoolExecutor

        @atexit.register
        def run_last():
            try:
                executor.submit(id, None)
            except RuntimeError:
                print("runtime-error")
                raise

        if __name__ == "__main__":
            executor = LocalPoolExecutor(2, folder=sys.argv[1])
            executor.submit(id, 42).result(timeout=30)
        """,
        tmp_path / "jobs",
    )
    assert "RuntimeError: cannot schedule new futures" in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "runtime-error"
