"""Every example runs, on the local backend (and the cluster-independent ones on Slurm too)."""

import os
import subprocess
import sys

import pytest

from conftest import require_command

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
SCRIPTS = sorted(name for name in os.listdir(EXAMPLES) if name.endswith(".py"))


def run_example(name, folder, cluster):
    env = {**os.environ, "OARFUTURES_CLUSTER": cluster}
    return subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), folder], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_example_runs_on_the_local_backend(name, tmp_path):
    done = run_example(name, str(tmp_path / "jobs"), "local")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


@pytest.mark.slurm
@pytest.mark.parametrize("name", ["auto.py", "job_array.py", "checkpointing.py"])
def test_the_same_examples_run_unchanged_on_slurm(name, tmp_path):
    require_command("sbatch")
    done = run_example(name, str(tmp_path / "jobs"), "slurm")
    assert done.returncode == 0, done.stderr
    assert "SlurmPoolExecutor" in done.stdout or done.stdout.strip()


@pytest.mark.oar
@pytest.mark.parametrize("name", ["auto.py", "job_array.py", "checkpointing.py"])
def test_the_same_examples_run_unchanged_on_oar(name, tmp_path):
    require_command("oarsub")
    done = run_example(name, str(tmp_path / "jobs"), "oar")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
