"""What must survive a bad day: full disks, broken folders, dead clients, late files, hostile callbacks.

No future is ever lost: it resolves with a result or an error, and one executor's trouble stays its own.
"""

import gc
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import TimeoutError

import pytest

from oarfutures import JobFailedError, LocalPoolExecutor
from oarfutures.core import records
from oarfutures.protocol import layout
from oarfutures.protocol.results import CorruptResultError

import tasks
from conftest import client_script, run_client, wait_for


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped meanwhile: the read says ESRCH, the open ENOENT
        return False


def futures_of(results):
    """The futures behind a ``map`` iterator, read before its first ``next()``."""
    return list(results.gi_frame.f_locals["futures"])


# ------------------------------------------------------------------ map
def test_map_timeout_is_one_deadline_not_one_per_result(folder):
    with LocalPoolExecutor(1, folder=folder) as executor:
        # a worker takes up to a second to start on a busy machine: each result comes well within 4 s of the one
        # before (a per-result timeout would never fire), the four of them take far more than 4 s
        results = executor.map(tasks.sleep_and_return, [1.5] * 4, range(4), timeout=4)
        got = []
        with pytest.raises(TimeoutError):
            for value in results:
                got.append(value)
        assert got == list(range(len(got))) and len(got) < 4


# ------------------------------------------------------------------ the client dies
def test_local_workers_die_with_their_client(tmp_path):
    marker = tmp_path / "pid"
    script = client_script(
        tmp_path / "client.py",
        f"""
        import time
        import tasks
        from oarfutures import LocalPoolExecutor
        executor = LocalPoolExecutor(1, folder={str(tmp_path / "jobs")!r})
        executor.submit(tasks.touch_and_sleep, {str(marker)!r}, 30)
        time.sleep(60)
        """,
    )
    client = subprocess.Popen([sys.executable, str(script)])
    pid = None
    try:
        wait_for(lambda: marker.exists() and marker.read_text(), timeout=30, what="the worker to start", interval=0.05)
        pid = int(marker.read_text())
        client.kill()
        client.wait(timeout=10)
        wait_for(lambda: not alive(pid), timeout=10, what=f"worker {pid} to die with its client", interval=0.1)
    finally:
        client.kill()
        client.wait()
        if pid is not None and alive(pid):
            os.kill(pid, 9)


# ------------------------------------------------------------------ bookkeeping errors lose no future
def test_a_full_disk_for_records_loses_no_result(folder, monkeypatch):
    save, saves = records.BatchRecord.save, []

    def save_once_then_fail(record, where):
        saves.append(record.batch)
        if len(saves) > 1:
            raise OSError(28, "No space left on device")
        save(record, where)

    monkeypatch.setattr(records.BatchRecord, "save", save_once_then_fail)
    executor = LocalPoolExecutor(2, folder=folder)
    assert list(executor.map(tasks.square, range(6), timeout=60)) == [0, 1, 4, 9, 16, 25]
    done = threading.Event()
    threading.Thread(target=lambda: (executor.shutdown(wait=True), done.set()), daemon=True).start()
    assert done.wait(45), "shutdown(wait=True) hung"
    assert len(saves) > 1  # the failing saves were really tried


def test_a_result_file_short_of_outcomes_fails_only_the_calls_it_lacks(local):
    futures = futures_of(local.map(tasks.write_two_outcomes_then_exit, range(3), chunksize=3))
    assert [futures[0].result(timeout=30), futures[1].result(timeout=30)] == [1, 2]
    with pytest.raises(CorruptResultError, match="2 outcome"):
        futures[2].result(timeout=30)


def test_a_batch_group_that_cannot_be_pickled_fails_its_futures_and_the_other_group_runs(local):
    with pytest.raises(TypeError, match="cannot pickle"):
        with local.batch():
            bad = [
                local.options(name="a").submit(tasks.size_of, threading.Lock()),
                local.options(name="a").submit(tasks.square, 2),
            ]
            good = [local.submit(tasks.square, 3), local.submit(tasks.square, 4)]
    for future in bad:
        assert future.done() and isinstance(future.exception(timeout=0), TypeError)
    assert [f.result(timeout=30) for f in good] == [9, 16]


# ------------------------------------------------------------------ a worker that cannot start
def test_a_missing_or_non_executable_interpreter_is_a_value_error_at_construction(folder, tmp_path):
    with pytest.raises(ValueError, match="python"):
        LocalPoolExecutor(1, folder=folder, python="/nonexistent/python")
    not_executable = tmp_path / "python"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(0o644)
    with pytest.raises(ValueError, match="python"):
        LocalPoolExecutor(1, folder=folder, python=str(not_executable))


def test_a_worker_that_cannot_start_fails_its_future_and_the_pool_runs_the_next_call(folder):
    with LocalPoolExecutor(1, folder=folder) as executor:
        shutil.rmtree(os.path.join(folder, "logs"))  # a new worker cannot open its spool files there
        with pytest.raises(JobFailedError, match="could not start"):
            executor.submit(tasks.square, 3).result(timeout=30)
        os.mkdir(os.path.join(folder, "logs"), 0o700)
        assert executor.submit(tasks.square, 4).result(timeout=30) == 16


def test_a_slot_that_cannot_start_refuses_a_submission_only_when_no_slot_would_run_it(folder, tmp_path, monkeypatch):
    """A thread that cannot start (the process's thread limit) must not count as a slot: none would start in its
    place, and the calls queued for it would wait forever."""
    runs, refuse = str(tmp_path / "runs"), []
    start = threading.Thread.start

    def start_unless_refused(thread):
        if refuse and thread.name.startswith("oarfutures-local-"):
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_unless_refused)
    with LocalPoolExecutor(2, folder=folder) as executor:
        refuse.append(True)
        with pytest.raises(RuntimeError, match="can't start new thread"):  # no slot at all: refused
            executor.submit(tasks.note_run, runs, "refused")
        assert not executor.backend._queue and not executor.backend._states  # nothing of it is left to run
        refuse.clear()
        first = executor.submit(tasks.note_run, runs, "first", 1)
        wait_for(lambda: tasks.runs_of(runs, "first"), timeout=60, what="the first call to start", interval=0.05)
        refuse.append(True)
        second = executor.submit(tasks.note_run, runs, "second")  # its own slot cannot start: the first's runs it
        assert [first.result(timeout=60), second.result(timeout=60)] == ["first", "second"]
    assert [tasks.runs_of(runs, name) for name in ("refused", "first", "second")] == [0, 1, 1]


# ------------------------------------------------------------------ records
def test_records_of_one_batch_saved_from_many_threads_stay_readable(folder):
    layout.make_folder(folder)
    shared = records.BatchRecord("b1", "local", [1] * 10)
    errors = []

    def save_many(number):
        own = records.BatchRecord("b1", "local", [1] * 10, job_ids={number: f"job{number}"})
        try:
            for i in range(100):
                (shared if i % 2 else own).save(folder)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save_many, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    loaded = records.load(layout.record_path(folder, "b1"))
    assert loaded.batch == "b1" and loaded.calls == [1] * 10
    assert [name for name in os.listdir(os.path.join(folder, "jobs")) if ".tmp" in name] == []


# ------------------------------------------------------------------ threads and forks
def test_an_executor_dropped_without_shutdown_releases_its_threads(folder):
    before = set(threading.enumerate())
    executor = LocalPoolExecutor(2, folder=folder)
    assert list(executor.map(tasks.square, [1, 2])) == [1, 4]
    slots = [t for t in set(threading.enumerate()) - before if t.name.startswith("oarfutures-local-")]
    assert slots
    del executor

    def released():
        gc.collect()
        return not any(t.is_alive() for t in slots)

    wait_for(released, timeout=5, what="the pool's threads to end", interval=0.1)


def test_a_forked_child_can_use_the_executor_it_inherited_or_a_new_one(tmp_path):
    run = run_client(
        tmp_path / "fork.py",
        f"""
        import os, traceback, warnings
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: what we test
        import tasks
        from oarfutures import LocalPoolExecutor
        executor = LocalPoolExecutor(1, folder={str(tmp_path / "jobs")!r})
        assert executor.submit(tasks.square, 2).result(timeout=30) == 4
        pid = os.fork()
        if pid == 0:
            import faulthandler
            faulthandler.dump_traceback_later(15, exit=True)  # a hang fails with the threads' stacks
            try:
                inherited = executor.submit(tasks.square, 3).result(timeout=10)
                new = LocalPoolExecutor(1, folder={str(tmp_path / "child")!r})
                print("child", inherited, new.submit(tasks.square, 4).result(timeout=10), flush=True)
                os._exit(0)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        last = executor.submit(tasks.square, 5).result(timeout=30)
        print("parent", os.waitstatus_to_exitcode(status), last, flush=True)
        """,
        timeout=45,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["child 9 16", "parent 0 25"], run.stderr


# ------------------------------------------------------------------ folders
def test_an_existing_folder_keeps_its_mode(tmp_path):
    folder = tmp_path / "shared-project"
    folder.mkdir()
    folder.chmod(0o755)
    LocalPoolExecutor(1, folder=str(folder)).shutdown()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


def test_a_folder_others_can_write_is_refused_naming_it(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(PermissionError, match=str(folder)):
        LocalPoolExecutor(1, folder=str(folder))


def test_a_symlink_to_a_sticky_world_writable_folder_is_refused_and_the_target_untouched(tmp_path):
    target, link = tmp_path / "tmp-like", tmp_path / "link"
    target.mkdir()
    target.chmod(0o1777)
    link.symlink_to(target)
    with pytest.raises(PermissionError, match=str(link)):
        LocalPoolExecutor(1, folder=str(link))
    assert stat.S_IMODE(target.stat().st_mode) == 0o1777


def test_a_folder_owned_by_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    with pytest.raises(PermissionError, match=str(folder)):
        LocalPoolExecutor(1, folder=str(folder))


# ------------------------------------------------------------------ late results (shared filesystems)
def test_a_result_that_shows_up_within_result_grace_is_delivered(folder):
    with LocalPoolExecutor(1, folder=folder, result_grace=5) as executor:
        assert executor.submit(tasks.exit_and_write_result_later, 1.0, "late").result(timeout=30) == "late"


def test_a_result_later_than_result_grace_fails_its_future_and_is_then_put_away(folder):
    with LocalPoolExecutor(1, folder=folder, result_grace=0.3) as executor:
        future = executor.submit(tasks.exit_and_write_result_later, 2.0, "too late")
        with pytest.raises(JobFailedError):
            future.result(timeout=30)
        late = os.path.join(folder, "results", future.task_id + ".pkl")
        put_away = os.path.join(folder, "results", "delivered", future.task_id + ".pkl")
        wait_for(lambda: os.path.exists(late) or os.path.exists(put_away), timeout=10, what="the late result")
        wait_for(lambda: not os.path.exists(late), timeout=5, what=f"{late} to leave results/")
        assert os.path.exists(put_away)


# ------------------------------------------------------------------ callbacks
def test_a_callback_waiting_on_another_executor_stops_no_future(tmp_path):
    with LocalPoolExecutor(1, folder=str(tmp_path / "a")) as a, LocalPoolExecutor(1, folder=str(tmp_path / "b")) as b:
        slow_b = b.submit(tasks.sleep_and_return, 1.0, "b")
        seen = []
        first = a.submit(tasks.square, 2)
        first.add_done_callback(lambda _: seen.append(slow_b.result(timeout=15)))
        assert first.result(timeout=30) == 4
        assert b.submit(tasks.square, 5).result(timeout=30) == 25
        assert a.submit(tasks.square, 3).result(timeout=30) == 9
        wait_for(lambda: seen, timeout=15, what="the callback to get the other executor's result")
        assert seen == ["b"]


def test_a_blocking_callback_stops_no_local_call_nor_future_and_runs_on_the_callbacks_thread(folder):
    """The local backend settles a call's future in the slot of the worker that ran it (no thread hop per call), but
    runs none of its callbacks there: they go to the executor's callbacks thread. A callback that blocks then
    holds up later callbacks only, not the worker, nor the results of the calls after it."""
    release = threading.Event()
    ran_in = []
    go_first, go_last = os.path.join(folder, "go-first"), os.path.join(folder, "go-last")
    with LocalPoolExecutor(1, folder=folder) as executor:
        # (each waits for its marker: its callback is added before it can be done, so it never runs in this thread)
        first = executor.submit(tasks.print_then_wait, "first", go_first)
        first.add_done_callback(lambda _: (ran_in.append(threading.current_thread().name), release.wait(30)))
        later = [executor.submit(tasks.square, n) for n in range(4)]
        last = executor.submit(tasks.print_then_wait, "last", go_last)
        last.add_done_callback(lambda _: ran_in.append("last"))
        for marker in (go_first, go_last):
            open(marker, "w").close()
        assert [f.result(timeout=20) for f in later] == [0, 1, 4, 9] and last.result(timeout=20) == "last"
        assert ran_in == ["oarfutures-callbacks-local"]  # the later callback waits for the blocked one
        release.set()
        wait_for(lambda: "last" in ran_in, timeout=20, what="the later callback")


def test_every_callback_has_run_when_shutdown_returns(folder):
    """As with ProcessPoolExecutor: results gathered by callbacks are all there after the ``with`` block."""
    seen = []

    def note(future):
        time.sleep(0.02)  # (slower than the calls: callbacks queue up behind each other)
        seen.append(future.result())

    with LocalPoolExecutor(2, folder=folder) as executor:
        for n in range(20):
            executor.submit(tasks.square, n).add_done_callback(note)
    assert sorted(seen) == [n * n for n in range(20)]


@pytest.mark.parametrize("first_call", ["returns", "dies"])
def test_calls_submitted_while_a_callback_blocks_go_out_and_get_their_results(folder, first_call):
    """Submissions gathered behind a busy pool go out from the service thread, which must not be the thread that a
    blocked callback holds: whether the slot settled its future (a result) or the service thread did (a worker
    that died)."""
    go, release, blocked = os.path.join(folder, "go"), threading.Event(), threading.Event()
    with LocalPoolExecutor(2, folder=folder) as executor:
        if first_call == "returns":
            first = executor.submit(tasks.print_then_wait, "first", go)
        else:
            first = executor.submit(tasks.exit_hard_when, go, 3)
        first.add_done_callback(lambda _: (blocked.set(), release.wait(60)))
        open(go, "w").close()
        assert blocked.wait(30)
        try:
            busy = [executor.submit(tasks.sleep_and_return, 0.3, None) for _ in range(2)]  # later submits gather
            later = [executor.submit(tasks.square, n) for n in range(40)]
            assert [f.result(timeout=30) for f in later] == [n * n for n in range(40)]
            assert [f.result(timeout=30) for f in busy] == [None, None]
            assert not release.is_set()  # (all of it while the callback still blocked)
        finally:
            release.set()


def _failure_seen_by_a_callback(folder, wait_in_callback):
    """A callback runs ``wait_in_callback(executor, dying)`` after making that call's worker die; return what that
    returned or raised: the failure must be settled meanwhile, by the thread that settles futures, not behind the
    callback."""
    go_first, go_die = os.path.join(folder, "go-first"), os.path.join(folder, "go-die")
    seen = []
    executor = LocalPoolExecutor(2, folder=folder)
    dying = executor.submit(tasks.exit_hard_when, go_die, 7)
    first = executor.submit(tasks.print_then_wait, "first", go_first)

    def wait_for_dying(_):
        open(go_die, "w").close()
        try:
            seen.append(wait_in_callback(executor, dying))
        except BaseException as exc:
            seen.append(exc)

    first.add_done_callback(wait_for_dying)
    open(go_first, "w").close()
    try:
        wait_for(lambda: seen, timeout=90, what="the callback to end")
    finally:
        executor.shutdown(wait=True)
    return seen[0], dying


def test_a_callback_waiting_for_a_call_whose_worker_dies_gets_its_failure(folder):
    seen, dying = _failure_seen_by_a_callback(folder, lambda executor, dying: dying.result(timeout=45))
    assert isinstance(seen, JobFailedError), seen
    assert dying.exception() is seen


def test_a_callback_can_shut_its_executor_down_while_a_worker_dies(folder):
    def shut_down(executor, dying):
        executor.shutdown(wait=True)
        return "returned"

    seen, dying = _failure_seen_by_a_callback(folder, shut_down)
    assert seen == "returned"
    assert isinstance(dying.exception(timeout=0), JobFailedError)


COLLECTED_MAP = """
    import gc, sys, time
    from oarfutures import LocalPoolExecutor

    class Holder:
        pass

    executor = LocalPoolExecutor(1, folder=sys.argv[1])
    holder = Holder()
    holder.me = holder  # a reference cycle: only the garbage collector frees it
    holder.results = executor.map(time.sleep, [0, 30, 30, 30])
    next(holder.results)  # started: closing it cancels the calls not returned
    del holder
    with executor._lock:  # a collection may run in any thread, also one of ours that holds the executor's lock
        gc.collect()
    deadline = time.monotonic() + 20  # (calls of 30 s: none can leave the queue by ending first)
    while executor.status()["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    print(executor.status())
    executor.abort("test over")
    executor.shutdown(wait=True)
"""


def test_a_map_iterator_freed_by_the_garbage_collector_cancels_its_calls_without_deadlock(tmp_path):
    """Its ``finally`` cancels what it did not return; run by a collection in a thread that holds the executor's
    lock, taking that lock again deadlocked the whole process (every executor waits on the poller)."""
    done = run_client(tmp_path / "client.py", COLLECTED_MAP, tmp_path / "jobs", timeout=90)
    assert done.returncode == 0, done.stderr
    assert "'pending': 0" in done.stdout, done.stdout


def test_a_callback_raising_system_exit_stops_no_future(local):
    futures = futures_of(local.map(tasks.square, range(4), chunksize=4))

    def leave(_):
        raise SystemExit(3)

    futures[0].add_done_callback(leave)
    assert [f.result(timeout=30) for f in futures] == [0, 1, 4, 9]
    assert local.submit(tasks.square, 5).result(timeout=30) == 25


def test_callbacks_cancelling_each_other_from_two_threads_do_not_deadlock(folder):
    executor = LocalPoolExecutor(1, folder=folder)
    blocker = executor.submit(tasks.sleep_and_return, 60, None)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(50):
            one = executor.submit(tasks.square, 1)
            two = executor.submit(tasks.square, 2)
            one.add_done_callback(lambda _, other=two: other.cancel())
            two.add_done_callback(lambda _, other=one: other.cancel())
            threads = [threading.Thread(target=f.cancel, daemon=True) for f in (one, two)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=10)
            assert not any(t.is_alive() for t in threads), "cancel() deadlocked"
            assert one.cancelled() and two.cancelled()
    finally:
        sys.setswitchinterval(switch)
        executor.abort("test over")
        executor.shutdown(wait=True)
    assert blocker.done()


# ------------------------------------------------------------------ one executor's broken folder
def test_an_executor_whose_results_folder_vanished_fails_its_futures_and_others_run_on(tmp_path):
    a = LocalPoolExecutor(1, folder=str(tmp_path / "a"))
    b = LocalPoolExecutor(1, folder=str(tmp_path / "b"))
    try:
        b_before = b.submit(tasks.sleep_and_return, 1.0, "before")
        a_slow = a.submit(tasks.sleep_and_return, 5, "a")
        shutil.rmtree(os.path.join(tmp_path, "a", "results"))
        with pytest.raises(JobFailedError, match="results/"):
            a_slow.result(timeout=10)
        assert b_before.result(timeout=10) == "before"
        assert b.submit(tasks.square, 3).result(timeout=10) == 9
    finally:
        a.shutdown(wait=False, cancel_futures=True)
        b.shutdown(wait=True)


@pytest.mark.parametrize("delivered_by", ["slot", "service thread"])
def test_a_delivery_that_fails_fails_its_future_and_the_next_calls_run(folder, monkeypatch, delivered_by):
    """A failure of the delivery itself fails the futures of that call with it rather than leaving them pending,
    and the thread that delivers goes on: a local slot (which settles its worker's results), or the service
    thread (the poller's scan finds results first under load, and always on a cluster)."""
    from oarfutures.core import tracking

    read_result = tracking.results.read_result
    failures = ["a bug in delivery"]

    def fail_once(*args, **kwargs):
        if failures:
            raise RuntimeError(failures.pop())
        return read_result(*args, **kwargs)

    monkeypatch.setattr(tracking.results, "read_result", fail_once)
    executor = LocalPoolExecutor(1, folder=folder)
    if delivered_by == "service thread":
        executor.backend.on_job_end = None  # the slots tell nobody: the poller's scan finds each result
    try:
        first = executor.submit(tasks.square, 2)
        with pytest.raises(RuntimeError, match="a bug in delivery"):
            first.result(timeout=30)
        assert [executor.submit(tasks.square, n).result(timeout=30) for n in range(3)] == [0, 1, 4]
    finally:
        executor.shutdown(wait=False, cancel_futures=True)  # (a future left pending would hold up shutdown(wait=True))
