"""The contract between client and job, without a job: result files, outcomes, rank placement variables."""

import os
import pickle
import socket

import pytest

from oarfutures.protocol import layout, results, variables
from oarfutures.worker import ranks


def test_a_result_file_holds_plain_tuples_and_reads_back_as_named_outcomes(tmp_path):
    outcomes = [results.returned(42), results.raised(ValueError("bad")), results.NOT_RUN]
    blob = results.dump_result(outcomes, 2, "7_3")
    assert b"oarfutures" not in blob  # no class of ours on disk: any reader can unpickle it
    assert [type(o) for o in pickle.loads(blob)["outcomes"]] == [tuple] * 3
    path = tmp_path / "r.pkl"
    path.write_bytes(blob)
    read = results.read_result(str(path))
    assert read == ([("ok", 42), tuple(outcomes[1]), tuple(results.NOT_RUN)], 2, "7_3")
    returned, raised, not_run = read.outcomes
    assert returned.ok and returned.value == 42 and returned[0] == "ok"
    assert not raised.ok and raised.type_name == "ValueError" and raised.message == "bad"
    exc = raised.to_exception()
    assert type(exc) is ValueError and "ValueError: bad" in str(exc.__cause__)
    assert not_run.type_name == "CancelledError" and read.stolen_by == "7_3"


def test_a_value_that_cannot_be_pickled_becomes_an_error_naming_its_type(tmp_path):
    path = tmp_path / "r.pkl"
    path.write_bytes(results.dump_result([results.returned(lambda: 0), results.returned(1)]))
    first, second = results.read_result(str(path)).outcomes
    assert first.type_name == "PicklingError" and "function" in first.message and second.value == 1


def test_an_exception_that_cannot_be_rebuilt_travels_as_a_remote_error():
    class Local(Exception):
        pass

    raised = results.raised(Local("x"))
    exc = results.Raised(raised[:1] + (None,) + raised[2:]).to_exception()
    assert type(exc).__name__ == "RemoteError" and exc.type_name.endswith("Local")


def test_a_missing_or_foreign_result_file_is_corrupt(tmp_path):
    with pytest.raises(results.CorruptResultError):
        results.read_result(str(tmp_path / "none.pkl"))
    path = tmp_path / "r.pkl"
    path.write_bytes(pickle.dumps({"outcomes": [("ok",)], "resubmissions": 0}))
    with pytest.raises(results.CorruptResultError):
        results.read_result(str(path))


def test_the_folder_paths_of_scripts_and_ranks():
    assert layout.script_path("/f", "b", 1000) == "/f/jobs/b-1000.sh"
    assert layout.rank_path("/f", "b", 3, 1) == os.path.join("/f", layout.RANKS, "b_3", "1.pkl")


def test_the_launcher_finds_the_job_nodes_in_the_job_script_variables(monkeypatch):
    monkeypatch.setenv(variables.NODES, "n1 n1\nn2 n1")
    assert ranks._hosts() == ["n1", "n2"]
    monkeypatch.setenv(variables.NODES, "")
    assert ranks._hosts() == [socket.gethostname()]
    monkeypatch.setenv(variables.NODES, "n1 ;rm")
    with pytest.raises(ValueError, match="rm"):
        ranks._hosts()


def test_a_rank_started_by_the_scheduler_takes_its_identity_from_the_variables_the_script_names(monkeypatch):
    monkeypatch.setattr(ranks, "_own_process_group", lambda: None)
    for name in (variables.RANK, variables.NODE):  # set first, so that monkeypatch restores their absence too:
        monkeypatch.setenv(name, "")  # a rank left in this process's environment would reach every job it submits
        monkeypatch.delenv(name)
    monkeypatch.setenv(variables.RANK_VARIABLES, "OARFUTURES_RANK=SCHED_ID OARFUTURES_NODE=SCHED_NODE PATH=SCHED_ID")
    monkeypatch.setenv("SCHED_ID", "3")
    monkeypatch.setenv("SCHED_NODE", "n2")
    path = os.environ["PATH"]
    assert ranks.rank_environment() == 3
    assert os.environ[variables.NODE] == "n2" and os.environ["PATH"] == path  # only our own variables are set
