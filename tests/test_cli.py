"""``python -m oarfutures`` run as a subprocess against folders that real runs filled (local, Slurm, OAR)."""

import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import time

import pytest

from oarfutures import JobFailedError, LocalPoolExecutor, OarPoolExecutor, SlurmPoolExecutor

import tasks
from conftest import require_command, wait_for


def cli(*args, stdin=None, check=True):
    done = subprocess.run(
        [sys.executable, "-m", "oarfutures", *args], input=stdin, capture_output=True, text=True, timeout=120
    )
    if check:
        assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def status(folder, *args):
    return json.loads(cli("status", folder, "--json", *args).stdout)


def states(folder, *args):
    return {task["task_id"]: task["state"] for task in status(folder, *args)["tasks"]}


def files_under(folder, sub):
    return sorted(os.listdir(os.path.join(folder, sub)))


@pytest.fixture
def kept(folder):
    """A folder with unfinished batches (results kept, not delivered for good): 4 calls, one raising, one printing."""
    with LocalPoolExecutor(2, folder=folder, keep_files=True) as executor:
        assert executor.submit(tasks.print_and_return, "out", "err", 9).result(timeout=60) == 9
        assert isinstance(executor.submit(tasks.raise_value_error, "bad input").exception(timeout=60), ValueError)
        assert list(executor.map(tasks.add, [1, 2], [10, 20], chunksize=2)) == [11, 22]
    return folder


# ------------------------------------------------------------------------------------------ any folder
def test_a_folder_that_is_not_a_job_folder_is_refused_with_a_message(tmp_path):
    done = cli("status", str(tmp_path), check=False)
    assert done.returncode != 0
    assert "not an oarfutures job folder" in done.stderr
    assert done.stdout == ""


def test_a_missing_folder_is_refused_with_a_message(tmp_path):
    done = cli("status", str(tmp_path / "nowhere"), check=False)
    assert done.returncode != 0 and "no such directory" in done.stderr


def test_nothing_is_logged_by_default(local, folder):
    local.submit(tasks.square, 2).result(timeout=60)
    done = cli("status", folder)
    assert done.stderr == ""


# ------------------------------------------------------------------------------------------ status
def test_status_summarises_a_complete_batch_as_done_without_listing_its_tasks(local, folder):
    assert list(local.map(tasks.square, range(3))) == [0, 1, 4]
    document = status(folder)
    assert document["tasks"] == []
    assert document["counts"]["done"] == 3
    assert [b["complete"] for b in document["batches"]] == [True]
    text = cli("status", folder).stdout
    assert "complete: 3 task(s)" in text and "3 task(s), 3 call(s) in 1 batch(es): 3 done" in text


def test_status_all_lists_the_tasks_of_complete_batches(local, folder):
    list(local.map(tasks.square, range(3)))
    document = status(folder, "--all")
    assert [(t["index"], t["state"]) for t in document["tasks"]] == [(0, "done"), (1, "done"), (2, "done")]


def test_status_tells_done_tasks_from_tasks_whose_result_holds_an_error(kept):
    by_calls = {}
    for task in status(kept)["tasks"]:
        by_calls.setdefault(task["state"], []).append(task["calls"])
    assert by_calls == {"done": [1, 2], "failed": [1]}
    (failed,) = [t for t in status(kept)["tasks"] if t["state"] == "failed"]
    assert failed["detail"] == "ValueError: ('bad input', 42)"


def test_status_gives_the_runtime_each_local_call_took_also_on_a_worker_that_ran_others_since(folder):
    """A quiet local call leaves no log file, and its worker's claims all link one file: the runtime comes from
    when the result says its run began."""
    with LocalPoolExecutor(1, folder=folder, keep_files=True) as executor:
        slow = executor.submit(tasks.sleep_and_return, 1.0, "slow")
        quick = executor.submit(tasks.square, 3)
        assert (slow.result(timeout=60), quick.result(timeout=60)) == ("slow", 9)
    runtimes = {task["task_id"]: task["runtime"] for task in status(folder)["tasks"]}
    assert 0.9 <= runtimes[slow.task_id] < 10 and runtimes[quick.task_id] < 0.9


def test_status_table_has_aligned_columns_and_a_summary_line(kept):
    lines = cli("status", kept).stdout.splitlines()
    header, rows, summary = lines[0], lines[1:-1], lines[-1]
    assert header.split()[:6] == ["BATCH", "TASK", "CALLS", "BACKEND", "JOB", "STATE"]
    column = header.index("STATE")
    assert sorted(row[column:].split()[0] for row in rows) == ["done", "done", "failed"]
    assert summary == "3 task(s), 4 call(s) in 3 batch(es): 2 done, 1 failed"


def test_status_shows_a_running_and_a_queued_local_task(folder):
    executor = LocalPoolExecutor(1, folder=folder)
    try:
        running = executor.submit(tasks.sleep_and_return, 30, 1)
        queued = executor.submit(tasks.sleep_and_return, 30, 2)
        wait_for(running.running, 30, "the first task to run")
        found = states(folder)
        assert found == {running.task_id: "running", queued.task_id: "pending"}
    finally:
        executor.abort("test over")
        executor.shutdown()


def test_status_shows_a_worker_that_died_as_ended_without_result(folder):
    with LocalPoolExecutor(1, folder=folder, keep_files=True) as executor:
        future = executor.submit(tasks.kill_self)
        with pytest.raises(JobFailedError):
            future.result(timeout=60)
    assert states(folder) == {future.task_id: "ended-without-result"}


# ------------------------------------------------------------------------------------------ logs
def test_logs_prints_the_stdout_and_stderr_of_a_task(local, folder):
    future = local.submit(tasks.print_and_return, "to stdout", "to stderr", 1)
    future.result(timeout=60)
    out = cli("logs", folder, future.task_id).stdout
    assert "to stdout" in out and "to stderr" in out
    assert out.index(f"==> {folder}/logs/{future.task_id}.out <==") < out.index("to stdout")
    assert out.index(f"==> {folder}/logs/{future.task_id}.err <==") < out.index("to stderr")


def test_logs_of_a_task_that_printed_nothing_says_so_and_succeeds(local, folder):
    future = local.submit(tasks.square, 2)
    future.result(timeout=60)
    done = cli("logs", folder, future.task_id, check=False)
    assert done.returncode == 0 and "printed nothing" in done.stderr and done.stdout == ""


def test_logs_of_a_task_that_does_not_exist_fails_with_a_message(local, folder):
    future = local.submit(tasks.square, 2)
    future.result(timeout=60)
    batch = future.task_id.rpartition("_")[0]
    done = cli("logs", folder, f"{batch}_7", check=False)
    assert done.returncode != 0 and "has 1 task(s)" in done.stderr


def test_logs_refuses_a_task_id_that_would_read_files_outside_the_folder(local, folder):
    # beside the folder: a record and a log that "../../elsewhere/x_0" would find from jobs/ and logs/
    outside = pathlib.Path(folder).parent / "elsewhere"
    outside.mkdir()
    (outside / "x_0.out").write_text("not the folder's\n")
    record = {"batch": "../../elsewhere/x", "backend": "local", "calls": [1], "job_ids": {}, "complete": True}
    (outside / "x.json").write_text(json.dumps(record))
    done = cli("logs", folder, "../../elsewhere/x_0", check=False)
    assert "not the folder's" not in done.stdout
    assert done.returncode != 0 and "is not a task id" in done.stderr


def test_logs_of_a_checkpointed_local_task_hold_every_run(folder):
    with LocalPoolExecutor(1, folder=folder) as executor:
        future = executor.submit(tasks.Counter(), 12, 0.1)
        marker = os.path.join(folder, "logs", future.task_id + ".started")
        wait_for(lambda: os.path.exists(marker), 30, "the call to start")
        time.sleep(0.3)
        executor.interrupt(future)
        assert future.result(timeout=60)[0] == 12
    assert "checkpointed in job" in cli("logs", folder, future.task_id).stdout


def test_status_reports_failed_and_cancelled_tasks_of_complete_batches(folder):
    with LocalPoolExecutor(1, folder=folder) as executor:
        with executor.batch():
            failing = executor.submit(tasks.raise_value_error, "bad")
            slow = executor.submit(tasks.sleep_and_return, 1, 1)
            cancelled = executor.submit(tasks.square, 3)
        assert cancelled.cancel()  # the only worker is busy with the first two
        assert isinstance(failing.exception(timeout=60), ValueError) and slow.result(timeout=60) == 1
    document = status(folder)
    assert (document["counts"]["done"], document["counts"]["failed"], document["counts"]["cancelled"]) == (1, 1, 1)
    assert [t["state"] for t in status(folder, "--all")["tasks"]] == ["failed", "done", "cancelled"]
    (row,) = [line for line in cli("status", folder).stdout.splitlines() if " all " in line]
    assert " failed " in row and "3 task(s): 1 done, 1 failed, 1 cancelled" in row


def test_status_watch_refreshes_the_counts_until_nothing_is_queued_or_running(local, folder):
    future = local.submit(tasks.sleep_and_return, 2, 1)
    wait_for(future.running, 30, "the call to run")
    lines = cli("status", folder, "--watch", "--interval", "1").stdout.splitlines()  # not a terminal: one line each
    assert len(lines) >= 2 and "1 running" in lines[0] and lines[-1].endswith("1 done")
    assert future.done()
    documents = [json.loads(line) for line in cli("status", folder, "--watch", "--json").stdout.splitlines()]
    assert [d["counts"]["done"] for d in documents] == [1]  # nothing left to wait for: one refresh
    assert cli("status", folder, "--watch", "--interval", "0.1", check=False).returncode == 2


# ------------------------------------------------------------------------------------------ cancel
def test_cancel_yes_kills_the_running_local_worker_and_says_so(folder):
    executor = LocalPoolExecutor(1, folder=folder)
    try:
        future = executor.submit(tasks.sleep_and_return, 60, 1)
        wait_for(future.running, 30, "the task to run")
        done = cli("cancel", folder, "--yes")
        assert future.task_id in done.stdout and "cancelled 1 job(s)" in done.stdout
        with pytest.raises(JobFailedError, match="SIGKILL"):
            future.result(timeout=30)
    finally:
        executor.abort("test over")
        executor.shutdown()


def test_cancel_asks_first_and_cancels_nothing_without_a_yes(folder):
    executor = LocalPoolExecutor(1, folder=folder)
    try:
        future = executor.submit(tasks.sleep_and_return, 60, 1)
        wait_for(future.running, 30, "the task to run")
        done = cli("cancel", folder, stdin="n\n", check=False)
        assert done.returncode != 0 and "nothing cancelled" in done.stderr
        time.sleep(0.5)
        assert future.running()
    finally:
        executor.abort("test over")
        executor.shutdown()


def test_cancel_with_nothing_running_says_so(local, folder):
    local.submit(tasks.square, 2).result(timeout=60)
    assert "nothing to cancel" in cli("cancel", folder, "--yes").stdout


def test_cancel_yes_cancels_queued_local_calls_too_and_they_never_run(folder, tmp_path):
    executor = LocalPoolExecutor(1, folder=folder)
    try:
        running = executor.submit(tasks.sleep_and_return, 60, 1)
        marker = str(tmp_path / "ran")
        queued = executor.submit(tasks.touch_and_sleep, marker, 0)  # waits for the only worker
        wait_for(running.running, 30, "the first call to run")
        wait_for(lambda: queued.task_id in states(folder), 30, "the queued call to reach the folder")
        assert states(folder)[queued.task_id] == "pending"
        done = cli("cancel", folder, "--yes")
        assert queued.task_id in done.stdout and "cancelled 1 job(s) and 1 queued task(s)" in done.stdout
        assert states(folder, "--all")[queued.task_id] == "cancelled"
        with pytest.raises(JobFailedError):
            running.result(timeout=30)
        with pytest.raises(JobFailedError):  # its worker took it, found the claim and declined
            queued.result(timeout=30)
        assert not os.path.exists(marker)
        wait_for(lambda: all(b["complete"] for b in status(folder)["batches"]), 30, "the batches to be tidied")
        assert states(folder, "--all")[queued.task_id] == "cancelled"  # its record says so once its claim is gone
    finally:
        executor.abort("test over")
        executor.shutdown()


# ------------------------------------------------------------------------------------------ clean
def test_clean_keeps_unfinished_batches_and_the_logs_of_complete_ones(kept):
    with LocalPoolExecutor(1, folder=kept) as executor:
        executor.submit(tasks.square, 5).result(timeout=60)
    logs, task_files = files_under(kept, "logs"), files_under(kept, "tasks")
    out = cli("clean", kept).stdout
    assert "3 unfinished batch(es) kept" in out
    assert files_under(kept, "logs") == logs and files_under(kept, "tasks") == task_files


def test_clean_logs_removes_the_logs_and_records_of_complete_batches(local, folder):
    future = local.submit(tasks.print_and_return, "out", "err", 5)
    future.result(timeout=60)
    cli("clean", folder, "--logs")
    # what is left is the spool of the executor's idle workers, still alive (see worker.resident)
    assert all(name.startswith("worker-") for name in files_under(folder, "logs")) and files_under(folder, "jobs") == []
    assert "no batches" in cli("status", folder).stdout


def test_clean_older_only_cleans_batches_unchanged_for_that_many_days(local, folder):
    old = local.submit(tasks.square, 2)
    assert old.result(timeout=60) == 4
    new = local.submit(tasks.square, 3)  # after the first: a batch of its own
    assert new.result(timeout=60) == 9
    wait_for(lambda: all(b["complete"] for b in status(folder)["batches"]), 30, "both batches to complete")
    record = os.path.join(folder, "jobs", old.task_id.rpartition("_")[0] + ".json")
    os.utime(record, (time.time() - 3 * 86400,) * 2)
    assert "cleaned 1 batch(es)" in cli("clean", folder, "--logs", "--older", "2").stdout
    assert [b["batch"] + "_0" for b in status(folder)["batches"]] == [new.task_id]
    assert cli("clean", folder, "--older", "soon", check=False).returncode == 2


def test_clean_all_removes_unfinished_batches_and_prints_the_bytes_freed(kept):
    sizes = sum(
        os.path.getsize(os.path.join(kept, sub, name))
        for sub in ("tasks", "results", "results/delivered")
        for name in files_under(kept, sub)
        if os.path.isfile(os.path.join(kept, sub, name))
    )
    out = cli("clean", kept, "--all").stdout
    assert f"freed {sizes} bytes" in out
    assert files_under(kept, "tasks") == [] and files_under(kept, "results/delivered") == []
    assert files_under(kept, "logs") != []
    assert "no unfinished batch" in cli("results", kept).stderr  # nothing left to attach to


def test_clean_all_cancels_running_jobs_first(folder):
    executor = LocalPoolExecutor(1, folder=folder)
    try:
        future = executor.submit(tasks.sleep_and_return, 60, 1)
        wait_for(future.running, 30, "the task to run")
        out = cli("clean", folder, "--all").stdout
        assert f"cancelled local job {future.task_id}" in out
        with pytest.raises(JobFailedError):
            future.result(timeout=30)
    finally:
        executor.abort("test over")
        executor.shutdown()


# ------------------------------------------------------------------------------------------ results
def test_results_prints_one_repr_per_call_in_order_and_errors_as_error_lines(kept):
    assert cli("results", kept).stdout.splitlines() == ["9", "ERROR ValueError: ('bad input', 42)", "11", "22"]


def test_results_can_be_printed_again(kept):
    assert cli("results", kept).stdout == cli("results", kept).stdout != ""


def test_results_json_gives_values_and_error_types(kept):
    document = json.loads(cli("results", kept, "--json").stdout)
    assert [d.get("value") for d in document] == [9, None, 11, 22]
    assert [d["ok"] for d in document] == [True, False, True, True]
    assert document[1]["type"] == "ValueError" and "raise ValueError(message, 42)" in document[1]["traceback"]
    assert [d["call"] for d in document] == [0, 0, 0, 1]


def test_results_pickle_writes_the_list_of_results_and_exceptions(kept, tmp_path):
    out = tmp_path / "results.pkl"
    cli("results", kept, "--pickle", str(out))
    results = pickle.loads(out.read_bytes())
    assert results[0] == 9 and results[2:] == [11, 22]
    assert isinstance(results[1], ValueError) and results[1].args == ("bad input", 42)


# ------------------------------------------------------------------------------------------ Slurm
@pytest.fixture
def slurm_one_at_a_time(folder):
    require_command("sbatch")
    executor = SlurmPoolExecutor(1, folder=folder, walltime="0:05:00")
    yield executor
    executor.abort("test over")
    executor.shutdown()


@pytest.mark.slurm
def test_slurm_status_shows_the_running_and_the_pending_task_of_an_array(slurm_one_at_a_time, folder):
    results = slurm_one_at_a_time.map(tasks.sleep_and_return, [60, 60], [1, 2])
    wait_for(lambda: slurm_one_at_a_time.status()["running"] == 1, 60, "the first task to run")
    tasks_ = status(folder)["tasks"]
    assert [t["state"] for t in tasks_] == ["running", "pending"]
    array = tasks_[0]["job_id"].split("_")[0]
    assert [t["job_id"] for t in tasks_] == [f"{array}_0", f"{array}_1"]
    results.close()


@pytest.mark.slurm
def test_slurm_status_asks_slurm_once_for_all_the_tasks(slurm_one_at_a_time, folder, tmp_path):
    results = slurm_one_at_a_time.map(tasks.sleep_and_return, [60] * 4, range(4))
    wait_for(lambda: slurm_one_at_a_time.status()["running"] == 1, 60, "the first task to run")
    shims, calls = tmp_path / "bin", tmp_path / "calls"
    shims.mkdir()
    for name in ("squeue", "sacct", "scontrol"):  # log each call, then run the real command
        (shims / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexec {shutil.which(name)} "$@"\n')
        (shims / name).chmod(0o755)
    done = subprocess.run(
        [sys.executable, "-m", "oarfutures", "status", folder, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"},
    )
    assert sorted(t["state"] for t in json.loads(done.stdout)["tasks"]) == ["pending"] * 3 + ["running"]
    queries = [line for line in calls.read_text().splitlines() if not line.startswith("scontrol show config")]
    assert len(queries) == 1, queries
    results.close()


@pytest.mark.slurm
def test_slurm_cancel_yes_scancels_the_running_and_the_pending_task(slurm_one_at_a_time, folder):
    with slurm_one_at_a_time.batch():  # one array, %1: the second task pends in Slurm (not in our queue)
        futures = [slurm_one_at_a_time.submit(tasks.sleep_and_return, 60, i) for i in range(2)]
    wait_for(lambda: slurm_one_at_a_time.status()["running"] >= 1, 60, "a task to run")
    out = cli("cancel", folder, "--yes").stdout
    assert "cancelled 2 job(s)" in out
    for future in futures:
        with pytest.raises(JobFailedError) as info:
            future.result(timeout=60)
        assert "CANCELLED" in info.value.state
    wait_for(lambda: status(folder)["batches"][0]["complete"], 30, "the batch to be tidied")
    assert status(folder)["counts"]["cancelled"] == 2  # not "done": the record keeps how its tasks ended


@pytest.mark.slurm
def test_slurm_logs_show_the_output_of_a_task(slurm_one_at_a_time, folder):
    future = slurm_one_at_a_time.submit(tasks.print_and_return, "slurm stdout line", "slurm stderr line", 3)
    assert future.result(timeout=120) == 3
    out = cli("logs", folder, future.task_id).stdout
    assert f"==> {folder}/logs/{future.job_id}.out <==\nslurm stdout line\n" in out
    assert f"==> {folder}/logs/{future.job_id}.err <==\nslurm stderr line\n" in out


# ------------------------------------------------------------------------------------------ OAR
def far_ahead():
    """A reservation start (``oarsub -r``) that keeps a job Waiting for the length of any test. Six hours ahead:
    OAR refuses a reservation whose slot its plan already gives to queued jobs, and the whole-node jobs other
    tests queue meanwhile (10 minutes of walltime each) can fill the next hour."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + 6 * 3600))


@pytest.fixture
def oar_executors(folder):
    require_command("oarsub")
    made = []

    def make(**kwargs):
        made.append(OarPoolExecutor(folder=folder, walltime="0:05:00", **kwargs))
        return made[-1]

    yield make
    for executor in made:
        executor.abort("test over")
        executor.shutdown()


@pytest.mark.oar
def test_oar_status_shows_a_running_job_and_a_waiting_one(oar_executors, folder):
    running = oar_executors().submit(tasks.sleep_and_return, 60, 1)
    waiting = oar_executors(additional_parameters={"r": far_ahead()}).submit(tasks.square, 2)
    wait_for(running.running, 90, "the job to run")
    assert states(folder) == {running.task_id: "running", waiting.task_id: "pending"}


@pytest.mark.oar
def test_oar_cancel_yes_deletes_the_running_and_the_waiting_job(oar_executors, folder):
    running = oar_executors().submit(tasks.sleep_and_return, 60, 1)
    waiting = oar_executors(additional_parameters={"r": far_ahead()}).submit(tasks.square, 2)
    wait_for(running.running, 90, "the job to run")
    out = cli("cancel", folder, "--yes").stdout
    assert running.job_id in out and waiting.job_id in out and "cancelled 2 job(s)" in out
    for future in (running, waiting):
        with pytest.raises(JobFailedError) as info:
            future.result(timeout=60)
        assert "FRAG_JOB_REQUEST" in info.value.reason
    wait_for(lambda: all(b["complete"] for b in status(folder)["batches"]), 30, "the batches to be tidied")
    assert status(folder)["counts"]["cancelled"] == 2  # oardel'd: cancelled, not failed nor done


@pytest.mark.oar
def test_oar_cancel_yes_also_cancels_a_call_waiting_for_its_wave(oar_executors, folder):
    executor = oar_executors(max_workers=1)  # OAR has no array cap: the second call waits in its client
    held = executor.options(additional_parameters={"r": far_ahead()}).submit(tasks.square, 1)
    queued = executor.submit(tasks.square, 2)
    wait_for(lambda: held.job_id is not None, 60, "the first job to be submitted")
    assert queued.job_id is None and states(folder)[queued.task_id] == "pending"
    out = cli("cancel", folder, "--yes").stdout
    assert "cancelled 1 job(s) and 1 queued task(s)" in out and queued.task_id in out
    # its claim is taken: when its wave goes out, its job exits without running it (see the exactly-once tests)
    assert states(folder)[queued.task_id] == "cancelled"


@pytest.mark.oar
def test_oar_logs_show_the_output_of_a_task(oar_executors, folder):
    future = oar_executors().submit(tasks.print_and_return, "oar stdout line", "oar stderr line", 4)
    assert future.result(timeout=120) == 4
    out = cli("logs", folder, future.task_id).stdout
    assert f"==> {folder}/logs/{future.job_id}.out <==\noar stdout line\n" in out
    assert f"==> {folder}/logs/{future.job_id}.err <==\noar stderr line\n" in out
