"""One executor's slow scheduler never stalls the others of the process.

A controller that takes its time to answer is common on shared clusters; a hung ``squeue`` is what a real Slurm
cannot produce on demand, so the state query commands are replaced by ones that sleep (``sbatch`` stays real).
"""

import os
import time

import pytest

from oarfutures import LocalPoolExecutor, SlurmPoolExecutor

import tasks
from conftest import require_command

pytestmark = pytest.mark.slurm


@pytest.fixture
def hung_state_queries(tmp_path, monkeypatch):
    require_command("sbatch")
    bin_dir = tmp_path / "slow-bin"
    bin_dir.mkdir()
    for command in ("squeue", "sacct"):
        script = bin_dir / command
        script.write_text("#!/bin/sh\nsleep 40\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_local_futures_resolve_while_a_slurm_state_query_hangs(hung_state_queries, tmp_path):
    with SlurmPoolExecutor(folder=str(tmp_path / "slurm")) as slurm:
        on_slurm = slurm.submit(tasks.sleep_and_return, 10, 16)  # still running when its jobs are queried
        with LocalPoolExecutor(2, folder=str(tmp_path / "local")) as local:
            time.sleep(3)  # the Slurm executor's first state query is in flight (sleeping) by now
            futures = [local.submit(tasks.square, i) for i in range(6)]
            assert [f.result(timeout=20) for f in futures] == [i * i for i in range(6)]
        # its result file is found by the directory scan, whatever the queries do
        assert on_slurm.result(timeout=120) == 16
