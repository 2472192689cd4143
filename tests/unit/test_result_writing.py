"""A worker writes its result through a temp file and a rename (``worker.running.TaskRun.write``)."""

import errno
import os

import pytest

from oarfutures.protocol import results
from oarfutures.worker import running


def test_a_result_that_cannot_be_written_leaves_no_temp_file_and_raises(tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    run = running.TaskRun(str(tmp_path), "20261202-120000-0badcafe", 0, owner="test")

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(running.os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run.write([results.returned(42)], 0)
    assert os.listdir(tmp_path / "results") == []  # neither the result nor its temp file
