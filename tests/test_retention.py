"""The default folders (one new folder per executor made without folder=) do not grow forever: finished ones
that nothing changed in for OARFUTURES_KEEP_DAYS days are removed when a new executor starts."""

import os
import threading
import time

import pytest

from oarfutures import LocalPoolExecutor
from oarfutures.core import records, retention
from oarfutures.protocol import layout

from conftest import wait_for

DAY = 86400


def make_folder(base, name, complete=True, age_days=40, client=""):
    folder = os.path.join(base, name)
    layout.make_folder(folder)
    record = records.BatchRecord("20250101-000000-00000000", "local", [1], complete=complete, client=client)
    record.save(folder)
    old = time.time() - age_days * DAY
    for path in [os.path.join(folder, "jobs", name) for name in os.listdir(os.path.join(folder, "jobs"))] + [
        os.path.join(folder, sub) for sub in ("tasks", "results", "results/delivered", "jobs", "logs", "claims", "")
    ]:
        os.utime(path, (old, old))
    return folder


def join_retention():
    for thread in threading.enumerate():
        if thread.name == "oarfutures-retention":
            thread.join(30)


@pytest.fixture
def base(tmp_path, monkeypatch):
    base = str(tmp_path / "default")
    monkeypatch.setenv("OARFUTURES_FOLDER", base)
    monkeypatch.setattr(retention, "_started", False)  # once per process: this test is the first
    return base


def test_a_new_default_executor_removes_finished_folders_older_than_the_keep_days(base, monkeypatch):
    monkeypatch.setenv("OARFUTURES_KEEP_DAYS", "30")
    finished = make_folder(base, "local-20250101-000000-aaaaaa")
    kept = [
        make_folder(base, "slurm-20250101-000000-bbbbbb", complete=False),  # can still be re-attached
        make_folder(base, "oar-20250101-000000-cccccc", age_days=10),  # recent
        make_folder(base, "my-results"),  # not a name oarfutures gives: the user's
        make_folder(base, "local-20250101-000000-dddddd", client=records.client_name()),  # followed by a live process
    ]
    with LocalPoolExecutor(1) as executor:
        wait_for(lambda: not os.path.exists(finished), 30, "the old finished folder to go")
    join_retention()
    assert all(os.path.isdir(folder) for folder in kept + [executor.folder])


def test_keep_days_off_keeps_every_folder(base, monkeypatch):
    monkeypatch.setenv("OARFUTURES_KEEP_DAYS", "off")
    finished = make_folder(base, "local-20250101-000000-aaaaaa")
    with LocalPoolExecutor(1):
        join_retention()
    assert os.path.isdir(finished)
