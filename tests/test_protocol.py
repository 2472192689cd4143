"""The contract between client and job, without a job: result files, outcomes, rank placement variables."""

import errno
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


def _claims(tmp_path, batch="B"):
    os.makedirs(tmp_path / layout.CLAIMS / batch)
    return lambda index: layout.claim_path(str(tmp_path), batch, index)


def test_a_claim_is_won_once_and_names_its_owner(tmp_path):
    claim = _claims(tmp_path)
    assert layout.claim(claim(0), "run 1 host 10")
    assert not layout.claim(claim(0), layout.CANCELLED)  # taken: a cancel() loses to the worker
    assert layout.claim(claim(1), layout.CANCELLED) and not layout.claim(claim(1), "run 1 host 10")
    assert layout.claim_owner(claim(0)) == "run 1 host 10" and layout.claim_owner(claim(1)) == layout.CANCELLED
    assert layout.claim_owner(claim(2)) is None and layout.runner(str(tmp_path), "B", 0) == ("1", "host", 10)
    os.symlink("run 2 old 3", claim(3))  # a claim made by an older version: a symbolic link
    assert layout.claim_owner(claim(3)) == "run 2 old 3" and not layout.claim(claim(3), "run 1 host 10")


def test_claims_link_one_owner_file_instead_of_creating_a_file_each(tmp_path):
    """Creating a file costs ~0.6 ms of CPU on some filesystems: a worker's claims are links to one file."""
    claim = _claims(tmp_path)
    for index in range(5):
        assert layout.claim(claim(index), "run 7 host 10")
    inodes = {os.lstat(claim(index)).st_ino for index in range(5)}
    assert len(inodes) == 1 and os.stat(claim(0)).st_nlink == 6  # five claims and the owner's own name
    layout.drop_owner_files()  # as the worker ends: the claims keep their owner
    assert [n for n in os.listdir(tmp_path / layout.CLAIMS) if n.startswith(layout.OWNER_FILE_PREFIX)] == []
    assert layout.claim_owner(claim(4)) == "run 7 host 10" and os.stat(claim(0)).st_nlink == 5


def test_an_owner_file_that_takes_no_more_links_is_replaced(tmp_path, monkeypatch):
    claim = _claims(tmp_path)
    assert layout.claim(claim(0), "run 7 host 10")
    link = os.link

    def full_once(source, target):
        monkeypatch.setattr(os, "link", link)
        raise OSError(errno.EMLINK, "Too many links")

    monkeypatch.setattr(os, "link", full_once)
    assert layout.claim(claim(1), "run 7 host 10") and layout.claim_owner(claim(1)) == "run 7 host 10"
    assert os.lstat(claim(0)).st_ino != os.lstat(claim(1)).st_ino
    layout.drop_owner_files()


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
