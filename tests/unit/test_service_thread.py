"""An executor's service thread runs work handed to it in order, and work due later once its time has come."""

import threading
import time

from oarfutures.core.service import ServiceThread


def test_work_due_later_runs_in_order_of_its_time_and_not_before():
    service = ServiceThread("oarfutures-service-test")
    ran = []
    done = threading.Event()
    start = time.monotonic()

    def note(name):
        ran.append((name, time.monotonic() - start))
        if len(ran) == 4:
            done.set()

    service.run_later(0.3, note, "late")
    service.run_later(0.1, note, "early")
    service.run(note, "now")
    service.run_later(0.1, note, "early too")  # handed over after "early": due a moment after it
    assert done.wait(10)
    assert [name for name, _ in ran] == ["now", "early", "early too", "late"]
    times = dict(ran)
    assert times["early"] >= 0.1 and times["late"] >= 0.3


def test_one_thread_runs_work_due_later_and_leaves_when_idle(monkeypatch):
    monkeypatch.setattr("oarfutures.core.service.IDLE_SECONDS", 0.2)
    service = ServiceThread("oarfutures-service-test")
    threads = set()
    done = threading.Event()
    for n in range(20):
        service.run_later(0.01 * n, lambda n=n: (threads.add(threading.get_ident()), n == 19 and done.set()))
    assert done.wait(10)
    assert len(threads) == 1
    deadline = time.monotonic() + 5
    while service._thread is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service._thread is None  # idle: no thread left behind
