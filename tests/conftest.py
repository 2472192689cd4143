"""Shared fixtures. Cluster tests are marked ``slurm``/``oar`` and need the clusters that ``tests/run-all.sh``
starts; with ``CI=true`` a cluster that is not there fails those tests instead of skipping them."""
import os
import shutil

import pytest

from oarfutures import LocalPoolExecutor


@pytest.fixture
def folder(tmp_path):
    return str(tmp_path / "jobs")


@pytest.fixture
def local(folder):
    with LocalPoolExecutor(2, folder=folder) as executor:
        yield executor


def require_command(name: str) -> None:
    """Skip when a scheduler is absent on a developer's machine; fail in CI, where it must be there."""
    if shutil.which(name) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} not found: the cluster should have been started by tests/run-all.sh")
        pytest.skip(f"{name} not found (start the cluster with tests/run-all.sh)")
