"""OarPoolExecutor against the real OAR 2.5 that tests/run-all.sh starts (run as alice: OAR refuses root)."""

import json
import os
import re
import secrets
import socket
import subprocess
import time

import pytest

from oarfutures import JobFailedError, OarPoolExecutor
from oarfutures.backends.commands import SchedulerCommandError

import tasks
from conftest import require_command, wait_for

pytestmark = pytest.mark.oar


@pytest.fixture(autouse=True)
def oar_running():
    require_command("oarsub")


@pytest.fixture
def oar(folder):
    with OarPoolExecutor(folder=folder, walltime="0:10:00") as executor:
        yield executor


def oarstat(*job_ids):
    """``oarstat -f -J`` of these jobs: {job id: record}; jobs OAR does not know are left out."""
    out = subprocess.run(
        ["oarstat", "-f", "-J", *[a for job_id in job_ids for a in ("-j", job_id)]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out) if out.strip() else {}


def event_types(record):
    return [event["type"] for event in record.get("events") or []]


def what_oar_shows(*job_ids):
    """Each job's state and events in OAR, for a failure message when OAR did not do what a test waited for."""
    jobs = oarstat(*job_ids)
    return {job_id: (jobs.get(job_id, {}).get("state"), event_types(jobs.get(job_id, {}))) for job_id in job_ids}


def deleted_by_oardel(job_ids):
    """True once every job is in Error with the FRAG_JOB_REQUEST event ``oardel`` leaves."""
    jobs = oarstat(*job_ids)
    return len(jobs) == len(job_ids) and all(
        job["state"] == "Error" and "FRAG_JOB_REQUEST" in event_types(job) for job in jobs.values()
    )


def far_ahead():
    """A reservation start (``oarsub -r``) that keeps a job Waiting for the length of any test. Six hours ahead:
    OAR refuses a reservation whose slot its plan already gives to queued jobs, and the whole-node jobs other
    tests queue meanwhile (10 minutes of walltime each) can fill the next hour."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + 6 * 3600))


def scripts(folder):
    jobs = os.path.join(folder, "jobs")
    return [open(os.path.join(jobs, name)).read() for name in sorted(os.listdir(jobs)) if name.endswith(".sh")]


def max_overlap(intervals):
    """The largest number of (start, end) intervals open at the same instant."""
    edges = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals], key=lambda e: (e[0], e[1])
    )
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def test_submit_runs_one_job_and_returns_its_result(oar, folder):
    future = oar.submit(tasks.add, 5, 7)
    # the phase's first jobs may wait minutes for OAR's scheduler under load (seen: 2 minutes in CI)
    assert future.result(timeout=400) == 12
    assert re.fullmatch(r"\d+", future.job_id)
    script = scripts(folder)[0]
    for line in (
        "#OAR -l /nodes=1/core=1,walltime=0:10:00",
        "#OAR -n oarfutures",
        f"#OAR -d {folder}",
        "#OAR -O logs/%jobid%.out",  # relative to -d: OAR refuses log paths holding other characters than [\w./%-]
        "#OAR -E logs/%jobid%.err",
        "#OAR --array 1",
    ):
        assert line in script.splitlines(), script
    wait_for(lambda: oarstat(future.job_id)[future.job_id]["state"] == "Terminated", 30, "OAR to end the job")
    assert oarstat(future.job_id)[future.job_id]["exit_code"] == 0


def test_the_job_id_of_a_future_is_the_oar_job_that_ran_it(oar):
    future = oar.submit(tasks.oar_environment)
    env = future.result(timeout=120)
    assert env["OAR_JOB_ID"] == future.job_id
    assert env["OAR_ARRAY_INDEX"] == "1"


def test_map_of_200_calls_is_one_array_in_order(oar, folder):
    assert list(oar.map(tasks.square, range(200))) == [x * x for x in range(200)]
    (script,) = scripts(folder)
    assert "#OAR --array 200\n" in script


def test_max_workers_caps_running_subjobs_in_oarstat(folder, tmp_path):
    times = tmp_path / "times"
    times.mkdir()
    name = "cap" + secrets.token_hex(3)
    names = [f"call{i}" for i in range(6)]
    most_running = 0
    with OarPoolExecutor(2, folder=folder, walltime="0:05:00", name=name) as executor:
        results = executor.map(tasks.record_interval, [str(times)] * 6, names, [3] * 6)
        deadline = time.time() + 180
        while sum(executor.status().values()) and time.time() < deadline:
            out = subprocess.run(["oarstat", "-J"], capture_output=True, text=True).stdout
            jobs = json.loads(out) if out.strip() else {}
            running = sum(1 for job in jobs.values() if job.get("name") == name and job.get("state") == "Running")
            most_running = max(most_running, running)
            time.sleep(0.3)
        assert list(results) == names
    intervals = [tuple(map(float, (times / n).read_text().split())) for n in names]
    assert max_overlap(intervals) <= 2, intervals
    assert 1 <= most_running <= 2
    arrays = [int(re.search(r"^#OAR --array (\d+)$", s, re.M).group(1)) for s in scripts(folder)]
    assert sum(arrays) == 6 and max(arrays) <= 2  # submitted in waves of at most 2 tasks


def test_remote_exception_keeps_its_type_args_and_traceback(oar):
    with pytest.raises(ValueError) as info:
        oar.submit(tasks.raise_value_error, "on oar").result(timeout=120)
    assert info.value.args == ("on oar", 42)
    assert "raise ValueError(message, 42)" in info.value.__cause__.text


def test_cancel_of_a_waiting_future_deletes_its_oar_job(folder, caplog):
    def seen():
        return f"oardel: OAR shows {what_oar_shows(job_id)}; the client logged:\n{caplog.text[-3000:]}"

    caplog.set_level("INFO", logger="oarfutures")
    with OarPoolExecutor(folder=folder, walltime="0:05:00", additional_parameters={"r": far_ahead()}) as executor:
        future = executor.submit(tasks.square, 2)
        job_id = future.job_id
        assert oarstat(job_id)[job_id]["state"] == "Waiting"
        assert future.cancel()
        # OAR moves a deleted job to Error in a later round of its server: 3 s alone; CI's loaded OAR phase once
        # took more than 30 s
        wait_for(lambda: deleted_by_oardel([job_id]), 120, seen)
    assert future.cancelled()
    assert event_types(oarstat(job_id)[job_id]) == ["FRAG_JOB_REQUEST"]  # deleted before it ran: no SEND_KILL_JOB


def test_oardel_from_outside_fails_the_future_with_job_failed_error(oar):
    future = oar.submit(tasks.sleep_and_return, 300, None)
    wait_for(future.running, 60, "the job to run")
    subprocess.run(["oardel", future.job_id], check=True, capture_output=True)
    with pytest.raises(JobFailedError) as info:
        future.result(timeout=60)
    assert info.value.job_id == future.job_id
    assert "deleted" in info.value.state.lower() or "cancel" in info.value.state.lower(), info.value.state
    assert "FRAG_JOB_REQUEST" in info.value.reason and f"frag the job {future.job_id}" in info.value.reason


@pytest.mark.slow
def test_walltime_exceeded_fails_with_the_walltime_state(folder):
    with OarPoolExecutor(folder=folder, walltime=20) as executor:
        future = executor.submit(tasks.sleep_and_return, 300, None)
        with pytest.raises(JobFailedError) as info:
            future.result(timeout=200)
    assert "walltime" in info.value.state.lower() or "TIMEOUT" in info.value.state, info.value.state
    assert "WALLTIME" in info.value.reason
    assert "walltime=0:00:20" in scripts(folder)[0]


def test_unknown_queue_raises_at_submit_with_oars_message(folder):
    with OarPoolExecutor(folder=folder, queue="nosuchqueue") as executor:
        with pytest.raises(SchedulerCommandError, match="The queue nosuchqueue does not exist"):
            executor.submit(tasks.square, 2)
        assert executor.status() == {"pending": 0, "running": 0}


@pytest.mark.parametrize(
    "parameters",
    [{"job_types": ["besteffort"]}, {"additional_parameters": {"t": "besteffort"}}],
    ids=["job_types", "additional_parameters"],
)
def test_besteffort_job_runs_and_returns(folder, parameters):
    with OarPoolExecutor(folder=folder, walltime="0:05:00", **parameters) as executor:
        future = executor.submit(tasks.square, 9)
        assert future.result(timeout=120) == 81
    job = oarstat(future.job_id)[future.job_id]
    assert job["queue"] == "besteffort" and "besteffort" in job["types"]
    assert "#OAR -t besteffort" in scripts(folder)[0].splitlines()


def test_property_selecting_this_host_is_accepted(folder):
    host = socket.gethostname().split(".")[0]
    with OarPoolExecutor(folder=folder, walltime="0:05:00", properties=f"host='{host}'") as executor:
        future = executor.submit(tasks.square, 4)
        assert future.result(timeout=120) == 16
    assert f"host='{host}'" in oarstat(future.job_id)[future.job_id]["properties"]


def test_property_matching_no_resource_raises_at_submit(folder):
    with OarPoolExecutor(folder=folder, walltime="0:05:00", properties="host='no-such-host'") as executor:
        with pytest.raises(SchedulerCommandError, match="not enough resources"):
            executor.submit(tasks.square, 4)


def test_keyboard_interrupt_in_the_with_block_deletes_all_jobs(folder):
    with pytest.raises(KeyboardInterrupt):
        with OarPoolExecutor(folder=folder, walltime="0:05:00") as executor:
            running = [executor.submit(tasks.sleep_and_return, 300, i) for i in range(2)]
            executor.update_parameters(additional_parameters={"r": far_ahead()})
            waiting = executor.submit(tasks.square, 3)
            # OAR starts them on its next scheduling rounds: seconds alone; in CI's loaded OAR phase, where other
            # tests hold cores for minutes, once more than 60 s
            wait_for(
                lambda: all(f.running() for f in running),
                180,
                lambda: f"the jobs to run: OAR shows {what_oar_shows(*[f.job_id for f in running])}",
            )
            assert oarstat(waiting.job_id)[waiting.job_id]["state"] == "Waiting"
            raise KeyboardInterrupt
    job_ids = [f.job_id for f in running + [waiting]]
    wait_for(lambda: deleted_by_oardel(job_ids), 120, lambda: f"every job to be deleted: {what_oar_shows(*job_ids)}")
    assert waiting.cancelled()
    for future in running:
        with pytest.raises(JobFailedError):
            future.result(timeout=0)


def test_shutdown_with_cancel_futures_deletes_waiting_jobs(folder):
    executor = OarPoolExecutor(folder=folder, walltime="0:05:00", additional_parameters={"r": far_ahead()})
    futures = [executor.submit(tasks.square, i) for i in range(2)]
    job_ids = [f.job_id for f in futures]
    assert {job["state"] for job in oarstat(*job_ids).values()} == {"Waiting"}
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures)
    wait_for(lambda: deleted_by_oardel(job_ids), 120, lambda: f"oardel of the waiting jobs: {what_oar_shows(*job_ids)}")


def test_each_of_12_subjobs_is_the_job_of_its_own_call(folder):
    """More than 10 subjobs: job ids or array indices compared as strings ("10" < "2") would give calls the wrong
    job id (an array of one could not tell). Each call reports the subjob that ran it; no stealing, so that each
    call runs in its own subjob."""
    with OarPoolExecutor(folder=folder, walltime="0:10:00", steal_seconds=0) as executor:
        with executor.batch():
            futures = [executor.submit(tasks.array_position, i) for i in range(12)]
        ran = [future.result(timeout=300) for future in futures]
    assert "#OAR --array 12\n" in scripts(folder)[0]
    assert ran == [(future.job_id, str(i + 1)) for i, future in enumerate(futures)]
    assert len({job_id for job_id, _ in ran}) == 12
