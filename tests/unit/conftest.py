"""The unit tier runs as on a machine with no scheduler, whatever this machine has.

A Slurm whose clients are installed but whose controller is down answers each ``scontrol`` after about 9 s, and
``commands.run`` retries that for a minute: CI's fast tier, which runs before the clusters start, once took an
hour that way. Here every scheduler command fails at once, as a missing one does; what the real schedulers answer
is tested against them in the cluster tiers.
"""

import pytest

from oarfutures.backends import commands


@pytest.fixture(autouse=True)
def scheduler_commands(monkeypatch):
    """The scheduler commands that the code under test tried to run, each failing as if not installed."""
    asked = []

    def not_installed(command, **_):
        asked.append(list(command))
        raise commands.SchedulerCommandError(command, 127, "", f"{command[0]}: the unit tier runs no scheduler")

    monkeypatch.setattr(commands, "run", not_installed)
    return asked
