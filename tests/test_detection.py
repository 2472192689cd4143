"""AutoPoolExecutor picks a scheduler only when its controller answers (issue 12, item 13).

A Slurm controller that is down cannot be produced on demand on a shared test machine, so these tests put fake
Slurm clients first on PATH: one that hangs as a real client does for about a minute, one that fails. The real
schedulers are then checked to be picked where they run.
"""

import getpass
import logging
import time

import pytest

from oarfutures import AutoPoolExecutor, LocalPoolExecutor, OarPoolExecutor, auto
from oarfutures.backends import commands

import tasks
from conftest import require_command

HANGS = "#!/bin/sh\nexec /bin/sleep 60\n"
FAILS = "#!/bin/sh\necho 'slurm_ping error: Unable to contact slurm controller (connect failure)' >&2\nexit 1\n"
SLURM_CLIENTS = ("sbatch", "squeue", "scancel", "scontrol")


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """A PATH holding only fake Slurm clients, all answering with the given script."""

    def install(script):
        for name in SLURM_CLIENTS:
            path = tmp_path / name
            path.write_text(script)
            path.chmod(0o755)
        monkeypatch.setenv("PATH", str(tmp_path))

    return install


@pytest.mark.parametrize("script", [HANGS, FAILS], ids=["hangs", "fails"])
def test_slurm_clients_without_an_answering_controller_fall_back_to_local_quickly(
    fake_slurm, folder, monkeypatch, caplog, script
):
    fake_slurm(script)
    monkeypatch.setattr(commands, "PROBE_TIMEOUT", 1.0)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="oarfutures"):
        executor = AutoPoolExecutor(folder=folder)
    executor.shutdown()
    assert isinstance(executor, LocalPoolExecutor)
    assert time.monotonic() - start < 5
    assert "slurm is installed but does not answer" in caplog.text


def test_detection_waits_a_few_seconds_at_most():
    """A Slurm client hangs about 60 s when its controller is down: detection must give up long before."""
    assert 1 <= commands.PROBE_TIMEOUT <= 10


@pytest.mark.slurm
def test_the_running_slurm_is_picked_by_root():
    require_command("sbatch")
    if getpass.getuser() != "root":
        pytest.skip("OAR comes first for a normal user; the Slurm phase runs as root")
    assert auto.detect_cluster() == "slurm"


@pytest.mark.oar
def test_the_running_oar_is_picked_by_a_normal_user(folder):
    """The OAR phase runs as alice, with Slurm also up and usable by her: OAR comes first for a normal user."""
    require_command("oarsub")
    if getpass.getuser() in ("root", "oar"):
        pytest.fail("the OAR phase runs as a normal user (tests/run-all.sh: alice); OAR refuses root and oar")
    assert auto.detect_cluster() == "oar"
    with AutoPoolExecutor(folder=folder, timeout_min=5) as executor:
        assert isinstance(executor, OarPoolExecutor)
        future = executor.submit(tasks.array_position, 0)
        job_id, index = future.result(timeout=300)
    assert (job_id, index) == (future.job_id, "1")  # it ran as an OAR job
