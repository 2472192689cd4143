"""Stealing without a cluster: the parameter, the job scripts, the walltime figures, the worker's policy."""

import os
import subprocess
import time

import pytest

from oarfutures.backends import commands
from oarfutures.backends.base import BatchSubmission
from oarfutures.backends.oar import OarBackend
from oarfutures.backends.slurm import SlurmBackend
from oarfutures.backends.slurm_formats import parse_slurm_time
from oarfutures.protocol import layout
from oarfutures.worker import stealing


def submission(folder, checkpointable=False, count=5):
    return BatchSubmission("B", 0, count, folder, "/usr/bin/python3", None, {}, checkpointable)


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "60", True])
def test_steal_seconds_is_validated_like_the_other_parameters(tmp_path, value):
    with pytest.raises((TypeError, ValueError), match="steal_seconds"):
        SlurmBackend(str(tmp_path), {"steal_seconds": value})
    with pytest.raises((TypeError, ValueError), match="steal_seconds"):
        OarBackend(str(tmp_path), {"steal_seconds": value})


def test_scripts_let_the_array_steal_with_its_range_and_walltime(tmp_path):
    slurm = SlurmBackend(str(tmp_path), {"walltime": 90})  # Slurm counts whole minutes: 120 s
    script = slurm.render_script(submission(str(tmp_path)), 0, 5)
    assert (
        "OARFUTURES_STEAL_SECONDS=60 OARFUTURES_WALLTIME=120 OARFUTURES_ARRAY_FIRST=0 OARFUTURES_ARRAY_COUNT=5"
        in script
    )
    oar, _ = OarBackend(str(tmp_path), {"steal_seconds": 5}).render_script(submission(str(tmp_path)))
    assert "OARFUTURES_STEAL_SECONDS=5 OARFUTURES_WALLTIME=${OAR_JOB_WALLTIME_SECONDS:-}" in oar


@pytest.mark.parametrize(
    "parameters, checkpointable", [({"steal_seconds": 0}, False), ({}, True), ({"tasks_per_node": 2}, False)]
)
def test_no_stealing_when_disabled_checkpointable_or_multi_task(
    tmp_path, parameters, checkpointable, scheduler_commands
):
    sub = submission(str(tmp_path), checkpointable)
    assert "OARFUTURES_STEAL_SECONDS" not in SlurmBackend(str(tmp_path), parameters).render_script(sub, 0, 5)
    assert "OARFUTURES_STEAL_SECONDS" not in OarBackend(str(tmp_path), parameters).render_script(sub)[0]
    assert scheduler_commands == []  # the partition's walltime matters only to stealing: not asked


def test_an_unknown_partition_walltime_is_asked_without_retries_and_asked_again_next_time(tmp_path, monkeypatch):
    asked = []

    def unreachable(command, retry=True, **_):
        asked.append((command, retry))
        raise commands.SchedulerCommandError(command, 1, "", "Unable to contact slurm controller (connect failure)")

    monkeypatch.setattr(commands, "run", unreachable)
    slurm = SlurmBackend(str(tmp_path), {})
    for _ in range(2):
        assert "OARFUTURES_WALLTIME= " in slurm.render_script(submission(str(tmp_path)), 0, 5)
    assert asked == [(["scontrol", "show", "partition", "-o"], False)] * 2


def test_slurm_partition_times_are_read_as_seconds():
    forms = ("30", "10:00", "1:30", "1:00:00", "2-00", "2-01:30", "1-02:03:04")
    assert [parse_slurm_time(t) for t in forms] == [1800, 600, 90, 3600, 172800, 178200, 93784]


def run_script(script, folder, index, env=None):
    body = script.split("\n", 1)[1].replace("exec /usr/bin/python3", "echo ran; exit 7; exec /usr/bin/python3")
    return subprocess.run(
        ["bash", "-c", body],
        capture_output=True,
        text=True,
        env={**os.environ, "SLURM_ARRAY_TASK_ID": str(index), **(env or {})},
    )


def test_a_claimed_task_exits_in_its_script_unless_it_resumes_a_checkpoint(tmp_path):
    folder = str(tmp_path)
    os.makedirs(os.path.join(folder, "claims", "B"))
    os.makedirs(os.path.join(folder, "tasks"))
    script = SlurmBackend(folder, {}).render_script(submission(folder, checkpointable=True), 0, 5)
    assert run_script(script, folder, 1).returncode == 7  # not claimed: the worker starts
    layout.claim(layout.claim_path(folder, "B", 1), "run 9_0 host 1")
    done = run_script(script, folder, 1)
    assert done.returncode == 0 and "claimed before (run 9_0 host 1)" in done.stderr
    open(layout.resume_path(folder, "B", 1), "w").close()  # a requeued checkpointed task must run again
    assert run_script(script, folder, 1).returncode == 7


class Ran:
    all_ok, checkpointable = True, False


def policy(**values):
    env = {
        "OARFUTURES_STEAL_SECONDS": "60",
        "OARFUTURES_WALLTIME": "100",
        "OARFUTURES_JOB_START": str(time.time()),
        "OARFUTURES_ARRAY_FIRST": "0",
        "OARFUTURES_ARRAY_COUNT": "4",
        **values,
    }
    return stealing.StealPolicy.from_environment(env)


def test_the_policy_steals_only_what_fits_the_walltime_and_never_when_it_is_unknown():
    assert policy().allows(Ran) and policy().fits(10) and not policy().fits(70)  # 70 x 1.5 + 10 > 100
    assert policy(OARFUTURES_WALLTIME="unlimited").fits(1e6)
    assert not policy(OARFUTURES_WALLTIME="").allows(Ran)
    assert not policy(OARFUTURES_STEAL_SECONDS="0").allows(Ran)
    failed = type("Failed", (), {"all_ok": False, "checkpointable": False})
    assert not policy().allows(failed)


def test_the_policy_is_removed_from_the_environment_calls_inherit():
    env = {"OARFUTURES_STEAL_SECONDS": "60", "OARFUTURES_WALLTIME": "100"}
    stealing.StealPolicy.from_environment(env)
    assert env == {}


def test_a_scontrol_that_cannot_run_leaves_the_walltime_unknown_and_the_script_is_still_written(tmp_path, monkeypatch):
    def not_runnable(command, **_):
        raise PermissionError(13, "Permission denied", command[0])

    monkeypatch.setattr(commands, "run", not_runnable)
    script = SlurmBackend(str(tmp_path), {}).render_script(submission(str(tmp_path)), 0, 5)
    assert "OARFUTURES_WALLTIME= " in script
