"""Stealing on the real clusters: a task that ran its own call runs pending tasks of its array in its interpreter.

The executors here run one task at a time (Slurm: ``max_workers=1``, i.e. ``--array=...%1``; OAR, which has no
array cap: each job takes all 16 cores), so the other tasks of the array stay pending and the first one to run
steals them. A stolen task is still its own call: its job id, logs and result say who ran it; a call cancelled
while pending never runs; a task that cannot fit the walltime is left to its own job; the leftover jobs are
cancelled; checkpointable and multi-task arrays are never stolen from.
"""

import logging
import os
import random
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import wait

import pytest

from oarfutures import JobFailedError, OarPoolExecutor, SlurmPoolExecutor

import tasks
from conftest import require_command, wait_for

CLUSTERS = [pytest.param("slurm", marks=pytest.mark.slurm), pytest.param("oar", marks=pytest.mark.oar)]
TIMEOUT = {"slurm": 120, "oar": 400}  # OAR's first jobs may wait minutes for its scheduler under load


@pytest.fixture(params=CLUSTERS)
def cluster(request):
    require_command({"slurm": "sbatch", "oar": "oarsub"}[request.param])
    return request.param


def at_a_time(cluster, folder, running=1, walltime="0:10:00", **parameters):
    """An executor that runs ``running`` tasks at once: the rest of an array stays pending, to be stolen."""
    if cluster == "slurm":
        return SlurmPoolExecutor(running, folder=folder, walltime=walltime, **parameters)
    return OarPoolExecutor(folder=folder, walltime=walltime, cores=16 // running, **parameters)


def array_of(executor, submit):
    """The futures of one array: ``submit(executor)`` called inside a batch() block."""
    with executor.batch():
        return submit(executor)


def stolen(futures):
    """The futures whose task was run by another job of its array (the job they name is not their own)."""
    return [f for f in futures if f.job_id != f.job_ids[0]]


def live_jobs(cluster, job_ids):
    """The jobs among ``job_ids`` still pending or running, per the scheduler."""
    if cluster == "slurm":
        arrays = sorted({j.split("_")[0] for j in job_ids})
        out = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(arrays), "-o", "%i %T"], capture_output=True, text=True
        ).stdout
        states = dict(line.split() for line in out.splitlines())
        return [j for j in job_ids if states.get(j) in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")]
    import json

    out = subprocess.run(
        ["oarstat", "-J", *[a for j in job_ids for a in ("-j", j)]], capture_output=True, text=True
    ).stdout
    jobs = json.loads(out) if out.strip() else {}
    return [j for j, job in jobs.items() if job["state"] not in ("Terminated", "Error")]


def cancelled_unstarted(cluster, job_ids):
    """The jobs among ``job_ids`` cancelled before they started: Slurm forgets a cancelled pending array task (it
    vanishes from squeue); OAR marks a deleted job with a FRAG_JOB_REQUEST event and gives it no start time."""
    import json

    if cluster == "slurm":
        arrays = sorted({j.split("_")[0] for j in job_ids})
        out = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(arrays), "-o", "%i %T"], capture_output=True, text=True
        ).stdout
        states = dict(line.split() for line in out.splitlines())
        return [j for j in job_ids if j not in states]
    out = subprocess.run(
        ["oarstat", "-f", "-J", *[a for j in job_ids for a in ("-j", j)]], capture_output=True, text=True
    ).stdout
    jobs = json.loads(out) if out.strip() else {}
    return [
        j
        for j, job in jobs.items()
        if any(e.get("type") == "FRAG_JOB_REQUEST" for e in job.get("events") or []) and not job.get("startTime")
    ]


def cancelled_leftovers(caplog):
    """How many leftover jobs the client cancelled, per its log."""
    return sum(int(n) for n in re.findall(r"cancelled (\d+) leftover job", caplog.text))


def kill(cluster, job_id):
    subprocess.run(["scancel", job_id] if cluster == "slurm" else ["oardel", job_id], check=True, capture_output=True)


def scripts(folder):
    jobs = os.path.join(folder, "jobs")
    return [open(os.path.join(jobs, name)).read() for name in sorted(os.listdir(jobs)) if name.endswith(".sh")]


def test_a_stolen_call_names_the_job_that_ran_it_and_keeps_its_logs_and_result(cluster, folder):
    with at_a_time(cluster, folder) as executor:
        futures = array_of(executor, lambda ex: [ex.submit(tasks.shout, f"call {i}") for i in range(4)])
        assert [f.result(timeout=TIMEOUT[cluster]) for f in futures] == [f"call {i}" for i in range(4)]
    taken = stolen(futures)
    assert taken, "no task was stolen although three waited behind a running one"
    own_jobs = {f.job_ids[0] for f in futures}
    for future in taken:
        number = futures.index(future)
        assert future.job_id in own_jobs  # a job of the same array ran it
        logs = executor.logs(future)
        assert f"out: call {number}" in logs and f"err: call {number}" in logs
        assert f"call {number}" not in executor.logs(futures[futures.index(future) - 1]) or future is futures[0]
        cli = subprocess.run(
            [sys.executable, "-m", "oarfutures", "logs", folder, future.task_id], capture_output=True, text=True
        )
        assert cli.returncode == 0, cli.stderr
        assert f"out: call {number}" in cli.stdout and f"err: call {number}" in cli.stdout
    # the stealer's own logs hold its own call, not the stolen ones
    stealer = next(f for f in futures if f.job_id == f.job_ids[0] and f.job_id in {t.job_id for t in taken})
    for future in taken:
        assert f"call {futures.index(future)}" not in executor.logs(stealer)


def test_leftover_tasks_are_cancelled_once_every_call_has_a_result(cluster, folder, caplog):
    calls = 30
    with caplog.at_level(logging.INFO, logger="oarfutures"), at_a_time(cluster, folder) as executor:
        futures = array_of(executor, lambda ex: [ex.submit(tasks.square, i) for i in range(calls)])
        assert [f.result(timeout=TIMEOUT[cluster]) for f in futures] == [i * i for i in range(calls)]
    # shutdown(wait=True) returned: the batch is tidied and every leftover job cancelled
    leftovers = [f.job_ids[0] for f in stolen(futures)]
    assert len(leftovers) >= calls // 2
    assert cancelled_leftovers(caplog) == len(leftovers)
    wait_for(lambda: not live_jobs(cluster, leftovers), timeout=90, what="the leftover jobs to be gone")
    # Uncancelled, each would start in turn, find its task claimed and exit in its batch script (Slurm starts one
    # every ~30 ms here, so under load the first few start before the client's cancel arrives): the cancel comes
    # long before the end of that chain, so the last ones never start
    never_started = cancelled_unstarted(cluster, leftovers)
    assert never_started, f"every one of {leftovers} started: their cancel came too late or never"


def test_leftover_tasks_are_cancelled_while_a_long_stolen_call_keeps_the_batch_open(cluster, folder, caplog):
    # one task at a time: the first runs call 0, then steals from the end: the quick calls 9..2, then the long call
    # 1. Its leftovers wait behind it; they must go while it runs, not when the batch ends (once the stealer
    # frees its place, each would start in turn only to exit)
    long_call = {"slurm": 40, "oar": 60}[cluster]  # the leftovers go within its half (OAR: oardel every 10 s)
    with caplog.at_level(logging.INFO, logger="oarfutures"), at_a_time(cluster, folder) as executor:
        futures = array_of(
            executor, lambda ex: [ex.submit(tasks.sleep_and_return, long_call if i == 1 else 0, i) for i in range(10)]
        )
        wait_for(lambda: len(futures[1].job_ids) > 1, timeout=TIMEOUT[cluster], what="the long call to be stolen")
        leftovers = [f.job_ids[0] for f in futures if len(f.job_ids) > 1]
        assert len(leftovers) == 9, futures
        wait_for(
            lambda: cancelled_leftovers(caplog) == len(leftovers) and not live_jobs(cluster, leftovers),
            timeout=long_call / 2,
            what="the leftovers to be cancelled",
        )
        assert not futures[1].done()  # (the batch is still open: the cancel came before its end)
        assert [f.result(timeout=TIMEOUT[cluster]) for f in futures] == list(range(10))
    assert set(cancelled_unstarted(cluster, leftovers)) == set(leftovers)


def test_calls_cancelled_while_stealers_drain_the_array_never_run(cluster, folder, tmp_path):
    runs = str(tmp_path / "runs")
    count = 40
    with at_a_time(cluster, folder, running=2) as executor:
        futures = array_of(executor, lambda ex: [ex.submit(tasks.note_run, runs, str(i), 0.2) for i in range(count)])
        wait_for(lambda: any(f.done() for f in futures), timeout=TIMEOUT[cluster], what="a first call to finish")
        victims = random.Random(13).sample(futures, count // 2)

        def cancel_all():
            for future in victims:
                future.cancel()
                time.sleep(random.uniform(0, 0.05))

        canceller = threading.Thread(target=cancel_all)
        canceller.start()
        canceller.join()
        wait(futures, timeout=TIMEOUT[cluster])
    assert all(f.done() for f in futures)
    for number, future in enumerate(futures):
        ran = tasks.runs_of(runs, str(number))
        if future.cancelled():
            assert ran == 0, f"call {number} is cancelled but ran {ran} time(s)"
        else:
            assert ran == 1, f"call {number} is not cancelled but ran {ran} time(s)"
            assert future.result(timeout=0) == str(number)
    assert any(f.cancelled() for f in futures), "the race never happened: no cancel won"
    assert stolen([f for f in futures if not f.cancelled()]), "the race never happened: no task was stolen"


def test_a_call_that_would_not_fit_in_the_walltime_is_left_to_its_own_task(cluster, folder):
    # a 25 s call, a 1 min walltime: after the first call, 25 s x 1.5 + 10 s does not fit in what remains
    with at_a_time(cluster, folder, walltime=60) as executor:
        futures = array_of(executor, lambda ex: [ex.submit(tasks.sleep_and_return, 25, i) for i in range(2)])
        assert [f.result(timeout=TIMEOUT[cluster] + 120) for f in futures] == [0, 1]
    assert not stolen(futures)
    assert len({f.job_id for f in futures}) == 2


def test_a_stealer_killed_mid_call_fails_that_call_naming_it(cluster, folder):
    with at_a_time(cluster, folder) as executor:
        quick, slow = array_of(
            executor, lambda ex: [ex.submit(tasks.square, 3), ex.submit(tasks.sleep_and_return, 300, "slow")]
        )
        assert quick.result(timeout=TIMEOUT[cluster]) == 9
        stealer = quick.job_id
        wait_for(lambda: slow.job_id == stealer, timeout=60, what="the client to follow the stealer for the slow call")
        wait_for(slow.running, timeout=30, what="the slow call to show as running (its stealer runs)")
        kill(cluster, stealer)
        killed = time.monotonic()
        error = slow.exception(timeout=120)
        assert isinstance(error, JobFailedError), error
        assert error.job_id == stealer and error.task_id == slow.task_id
        assert time.monotonic() - killed < 45  # seconds after the scheduler says so, not the own task's turn
    assert (
        not live_jobs(cluster, [slow.job_ids[0]])
        or wait_for(lambda: not live_jobs(cluster, [slow.job_ids[0]]), timeout=10) is None
    )


def test_checkpointable_arrays_are_not_stolen_from(cluster, folder):
    with at_a_time(cluster, folder) as executor:
        futures = array_of(executor, lambda ex: [ex.submit(tasks.Counter(), 1, 0.01) for _ in range(3)])
        assert [f.result(timeout=TIMEOUT[cluster])[0] for f in futures] == [1, 1, 1]
    assert not stolen(futures) and len({f.job_id for f in futures}) == 3
    assert not any("OARFUTURES_STEAL_SECONDS" in script for script in scripts(folder))


def test_multi_task_arrays_are_not_stolen_from(cluster, folder):
    with at_a_time(cluster, folder) as executor:
        executor.update_parameters(tasks_per_node=2)
        futures = array_of(executor, lambda ex: [ex.submit(tasks.square, i) for i in range(3)])
        assert [f.result(timeout=TIMEOUT[cluster] + 60) for f in futures] == [[i * i] * 2 for i in range(3)]
    assert not stolen(futures) and len({f.job_id for f in futures}) == 3
    assert not any("OARFUTURES_STEAL_SECONDS" in script for script in scripts(folder))


def test_steal_seconds_zero_disables_stealing(cluster, folder):
    with at_a_time(cluster, folder, steal_seconds=0) as executor:
        futures = array_of(executor, lambda ex: [ex.submit(tasks.square, i) for i in range(3)])
        assert [f.result(timeout=TIMEOUT[cluster]) for f in futures] == [0, 1, 4]
    assert not stolen(futures) and len({f.job_id for f in futures}) == 3


@pytest.mark.slurm
def test_the_slurm_walltime_comes_from_the_parameter_else_the_partition(folder):
    require_command("sbatch")
    from oarfutures.backends.slurm import PARAMETERS, SlurmBackend

    backend = SlurmBackend(folder, {})
    out = subprocess.run(["scontrol", "show", "partition", "-o"], capture_output=True, text=True, check=True).stdout
    default = next(line for line in out.splitlines() if "Default=YES" in line)
    expected = "unlimited" if "DefaultTime=NONE" in default and "MaxTime=UNLIMITED" in default else None
    if expected:  # this cluster's partitions have no limit; elsewhere the figure is seconds
        assert backend.walltime_of({**PARAMETERS}) == expected
    assert backend.walltime_of({**PARAMETERS, "walltime": 61}) == "120"
    assert backend.walltime_of({**PARAMETERS, "partition": "nosuchpartition"}) == ""  # unknown: no stealing
