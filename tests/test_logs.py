"""Log files hold output: a call that printed nothing leaves none once its batch is done (a scheduler creates
both files of every job; locally they are made only for output), and one that printed keeps both."""

import os

import pytest

from oarfutures import LocalPoolExecutor, OarPoolExecutor, SlurmPoolExecutor

import tasks
from conftest import BACKENDS

EXECUTORS = {"local": LocalPoolExecutor, "slurm": SlurmPoolExecutor, "oar": OarPoolExecutor}


@pytest.mark.parametrize("cluster", BACKENDS)
def test_a_done_batch_keeps_the_logs_of_calls_that_printed_and_no_empty_ones(cluster, tmp_path):
    folder = str(tmp_path / "jobs")
    with (
        EXECUTORS[cluster](folder=folder, steal_seconds=0)
        if cluster != "local"
        else LocalPoolExecutor(2, folder=folder) as ex
    ):
        quiet = ex.map(tasks.square, range(3))
        loud = ex.submit(tasks.print_and_return, "to stdout", "to stderr", 7)
        assert list(quiet) == [0, 1, 4] and loud.result(timeout=300) == 7
    logs = os.listdir(os.path.join(folder, "logs"))
    assert all(os.path.getsize(os.path.join(folder, "logs", name)) > 0 for name in logs), logs
    out = [name for name in logs if name.endswith(".out")]
    assert len(out) == 1 and "to stdout" in open(os.path.join(folder, "logs", out[0])).read()
