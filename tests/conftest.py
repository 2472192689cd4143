"""Shared fixtures. Cluster tests are marked ``slurm``/``oar`` and need the clusters that ``tests/run-all.sh``
starts; with ``CI=true`` a cluster that is not there fails those tests instead of skipping them."""

import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from oarfutures import LocalPoolExecutor

#: every backend, each cluster marked so that tests/run-all.sh runs it in that cluster's phase
BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("slurm", id="slurm", marks=pytest.mark.slurm),
    pytest.param("oar", id="oar", marks=pytest.mark.oar),
]
SUBMIT_COMMAND = {"slurm": "sbatch", "oar": "oarsub"}


@pytest.fixture(autouse=True)
def scheduler_commands(request, monkeypatch):
    """In the unit tier (``tests/unit``): the scheduler commands that the code under test tried to run, each
    failing at once as if not installed. Elsewhere: None, and the real commands run.

    The unit tier runs as on a machine with no scheduler, whatever this machine has. A Slurm whose clients are
    installed but whose controller is down answers each ``scontrol`` after about 9 s, and ``commands.run``
    retries that for a minute: CI's fast tier, which runs before the clusters start, once took an hour that way.
    What the real schedulers answer is tested against them in the cluster tiers.
    """
    if request.node.path.parent.name != "unit":
        return None
    from oarfutures.backends import commands

    asked = []

    def not_installed(command, **_):
        asked.append(list(command))
        raise commands.SchedulerCommandError(command, 127, "", f"{command[0]}: the unit tier runs no scheduler")

    monkeypatch.setattr(commands, "run", not_installed)
    return asked


def wait_for(predicate, timeout=60, what="condition", interval=0.3):
    """Poll ``predicate`` until it holds; ``what`` names it, or is a callable saying what was seen instead."""
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(interval)


@pytest.fixture
def folder(tmp_path):
    return str(tmp_path / "jobs")


@pytest.fixture
def local(folder):
    with LocalPoolExecutor(2, folder=folder) as executor:
        yield executor


@pytest.fixture
def alice_home():
    """A folder the normal user alice owns, below a path she can traverse (root's tmp_path is private to root)."""
    if os.geteuid() != 0 or sys.executable.startswith("/root"):
        pytest.skip("needs root and an interpreter alice can run (tests/run-all.sh provides both)")
    import pwd

    entry = pwd.getpwnam("alice")
    path = tempfile.mkdtemp(prefix="oarfutures-alice-", dir="/tmp")
    os.chown(path, entry.pw_uid, entry.pw_gid)
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


def require_command(name: str) -> None:
    """Skip when a scheduler is absent on a developer's machine; fail in CI, where it must be there."""
    if shutil.which(name) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} not found: the cluster should have been started by tests/run-all.sh")
        pytest.skip(f"{name} not found (start the cluster with tests/run-all.sh)")


def client_script(path, source: str) -> pathlib.Path:
    """Write ``source`` (dedented) to ``path`` as a client program for its own interpreter: what a test cannot do in
    its own process (exit, be killed, fork). The program finds ``tasks`` as the test files do, so that the calls it
    submits are module-level functions its workers can import."""
    path = pathlib.Path(path)
    path.write_text(f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n" + textwrap.dedent(source))
    return path


def run_client(path, source: str, *args, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``source`` as a client program (``client_script``) with ``args``, in the folder of ``path``, and return
    how it ended, its output captured as text."""
    script = client_script(path, source)
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(script.parent),
    )


@contextlib.contextmanager
def counting_state_queries(backend_class):
    """The state queries the poller makes meanwhile (calls of ``backend_class.query`` in this process, one entry
    per call: how many jobs it asked about)."""
    calls = []
    query = backend_class.__dict__["query"]

    def counted(self, job_ids):
        calls.append(len(job_ids))
        return query(self, job_ids)

    backend_class.query = counted
    try:
        yield calls
    finally:
        backend_class.query = query
