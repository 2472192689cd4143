"""The local backend's resident workers: one interpreter serves call after call, and still isolates them.

What users rely on from one-shot workers must hold: each call's output in its own logs, its own task id, a call
that kills its process failing alone, workers that leave when idle and die with their client.
"""
import os

import pytest

import tasks
from conftest import wait_for
from oarfutures import JobFailedError, LocalPoolExecutor, local
from test_robustness import alive


def test_calls_are_served_by_at_most_max_workers_resident_processes(folder):
    with LocalPoolExecutor(2, folder=folder) as executor:
        ran = list(executor.map(tasks.pid_and_task_id, range(30)))
    pids = {pid for pid, _ in ran}
    assert len(pids) <= 2 and os.getpid() not in pids
    futures_task_ids = [task_id for _, task_id in ran]
    assert len(set(futures_task_ids)) == 30  # each call saw its own task id, not its worker's first


def test_each_call_output_lands_in_its_own_logs_whatever_path_it_takes(folder):
    with LocalPoolExecutor(1, folder=folder) as executor:
        futures = [executor.submit(tasks.print_everywhere, f"call{n}") for n in range(3)]
        assert [f.result(timeout=60) for f in futures] == ["call0", "call1", "call2"]
        logs = [executor.logs(f).split(".err <==") for f in futures]
    for n, (out, err) in enumerate(logs):
        for path in ("python", "fd", "c-stdio-unflushed", "child"):
            assert f"call{n} {path}" in out
        assert f"call{n} python-err" in err
        assert all(f"call{other} " not in out + err for other in range(3) if other != n)


@pytest.mark.parametrize("crash, why", [(tasks.segfault, "SIGSEGV"), (tasks.kill_self, "SIGKILL")])
def test_a_call_that_kills_its_worker_fails_alone_and_a_new_worker_takes_the_next(folder, crash, why):
    with LocalPoolExecutor(1, folder=folder) as executor:
        before, _ = executor.submit(tasks.pid_and_task_id).result(timeout=60)
        crashed = executor.submit(crash)
        after = executor.submit(tasks.pid_and_task_id)
        with pytest.raises(JobFailedError, match=why):
            crashed.result(timeout=60)
        pid, task_id = after.result(timeout=60)
    assert task_id == after.task_id and pid != before and not alive(before)


def test_idle_workers_leave_and_come_back_on_demand(folder, monkeypatch):
    monkeypatch.setattr(local, "IDLE_SECONDS", 0.5)
    with LocalPoolExecutor(1, folder=folder) as executor:
        first, _ = executor.submit(tasks.pid_and_task_id).result(timeout=60)
        wait_for(lambda: not alive(first), timeout=20, what=f"idle worker {first} to leave", interval=0.1)
        assert executor.backend._slots == []
        second, _ = executor.submit(tasks.pid_and_task_id).result(timeout=60)
    assert second != first
