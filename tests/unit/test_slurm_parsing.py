"""How SlurmBackend reads squeue/sacct: collapsed rows of pending array tasks, with no cluster.

The outputs below were printed by the real Slurm 22.05 of tests/clusters/slurm (squeue with SLURM_BITSTR_LEN=0,
as the backend runs it; sacct rows from tests/clusters/slurm/FACTS.md section c).
"""

import pytest

from oarfutures.backends import commands, slurm_formats
from oarfutures.backends.base import JobState
from oarfutures.backends.slurm import SlurmBackend

SQUEUE_FORMAT = "JobArrayID:|,State:|,Reason:|,exit_code:"

# `squeue -h -t all -j 2,6,7,8,24,25 -O 'JobArrayID:|,State:|,Reason:|,exit_code:'` (no -r):
#   2  held array of 1000, cancelled while pending; 6  array of 10 (%2), all done; 7  exit $SLURM_ARRAY_TASK_ID;
#   8  held array of 200 whose odd tasks were cancelled; 24  0-5%1, cancelled with task 0 running;
#   25  0-3%2: two running, two pending
SQUEUE = """\
2_[0-999]|CANCELLED|None|0
24_[1-5%1]|CANCELLED|JobArrayTaskLimit|0
24_0|CANCELLED|None|15
6_8|COMPLETED|None|0
6_9|COMPLETED|None|0
6_6|COMPLETED|None|0
6_7|COMPLETED|None|0
6_4|COMPLETED|None|0
6_5|COMPLETED|None|0
6_2|COMPLETED|None|0
6_3|COMPLETED|None|0
6_0|COMPLETED|None|0
6_1|COMPLETED|None|0
7_0|COMPLETED|None|0
7_1|FAILED|NonZeroExitCode|256
7_2|FAILED|NonZeroExitCode|512
7_3|FAILED|NonZeroExitCode|768
7_4|FAILED|NonZeroExitCode|1024
7_5|FAILED|NonZeroExitCode|1280
8_[0-198:2]|PENDING|BeginTime|0
25_[2-3%2]|PENDING|JobArrayTaskLimit|0
25_0|RUNNING|None|0
25_1|RUNNING|None|0
"""

# held array 16 (0-499) with 150 random pending tasks cancelled: the whole list (SLURM_BITSTR_LEN=0), and what
# squeue prints without that variable (cut at 32 characters, no closing bracket)
LONG = (
    "16_[0-2,4-5,8-9,11-13,17,19-20,24-31,35-38,40-44,46-48,50-52,54,56-59,61-62,64-65,67,70-76,78,80,82,84-97,"
    "99-100,102-107,109-110,112-117,122-131,133,135,138-141,144,146-148,151-153,155-157,159-166,168,170-171,"
    "174-175,177-178,180-186,188,190-192,194-196,200-201,204-207,209,211,213-214,216-217,219-222,224-226,228-239,"
    "241,244-245,248-252,254-257,260-266,268-272,275,279-280,283-290,294,296,298,301,305-306,308,311,313,315-319,"
    "321-323,326,328-334,336-342,345-348,350-355,358-364,366,369-371,373-378,380-387,389-396,400-402,404-409,"
    "411-415,418-419,422-427,429-432,434-439,441,445-453,456-458,460,462-464,471,473-478,480-481,486-487,489-490,"
    "494-499]"
)
LONG_CUT = "16_[0-2,4-5,8-9,11-13,17,19-20,|PENDING|BeginTime|0\n"

# sacct -X -n -P -j 32 -o JobID,State,ExitCode,Reason: two tasks running, eight pending (%2); then a later answer
# whose collapsed row lags behind slurmctld (32_7 and 32_8 already have rows of their own)
SACCT = """\
32_0|RUNNING|0:0|None
32_1|RUNNING|0:0|None
32_[2-9%2]|PENDING|0:0|JobArrayTaskLimit
"""
SACCT_LAGGING = """\
32_0|COMPLETED|0:0|None
32_1|FAILED|3:0|None
32_2|COMPLETED|0:0|None
32_3|COMPLETED|0:0|None
32_4|COMPLETED|0:0|None
32_5|COMPLETED|0:0|None
32_6|COMPLETED|0:0|None
32_7|RUNNING|0:0|None
32_8|RUNNING|0:0|None
32_[7-9%2]|PENDING|0:0|JobArrayTaskLimit
"""


class FakeSlurm:
    """Stands in for commands.run: answers from canned outputs and records every command."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, command, env=None, **_):
        self.calls.append((list(command), dict(env or {})))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def backend(tmp_path, monkeypatch):
    def make(answers, accounting=False):
        fake = FakeSlurm(answers)
        monkeypatch.setattr(commands, "run", fake)
        b = SlurmBackend(str(tmp_path), {}, max_array_size=100001)
        b._accounting = accounting
        b.fake = fake
        return b

    return make


def test_squeue_collapsed_rows_give_each_task_its_state(backend):
    b = backend([SQUEUE])
    statuses = b.query(["2_0", "6_0", "7_0", "8_0", "24_0", "25_0"])
    command, env = b.fake.calls[0]
    assert command == ["squeue", "-h", "-t", "all", "-j", "2,24,25,6,7,8", "-O", SQUEUE_FORMAT]  # no -r
    assert env["SLURM_BITSTR_LEN"] == "0"
    # pending tasks of a partly running throttled array: each its own id, from one row
    assert statuses["25_2"].state is JobState.PENDING and statuses["25_3"].reason == "JobArrayTaskLimit"
    assert statuses["25_0"].state is statuses["25_1"].state is JobState.RUNNING
    assert "25_4" not in statuses
    # finished tasks are reported one by one, with their exit codes (raw wait status -> exit:signal)
    assert [statuses[f"7_{i}"].exit_code for i in range(6)] == ["0:0", "1:0", "2:0", "3:0", "4:0", "5:0"]
    assert statuses["7_0"].state is JobState.COMPLETED and statuses["7_5"].state is JobState.FAILED
    assert all(statuses[f"6_{i}"].state is JobState.COMPLETED for i in range(10))
    # an array cancelled while pending: every task CANCELLED; the one that ran has its own row (signal 15)
    assert len([k for k in statuses if k.startswith("2_")]) == 1000
    assert statuses["2_999"].state is JobState.CANCELLED
    assert statuses["24_0"].exit_code == "0:15" and statuses["24_5"].state is JobState.CANCELLED
    # every other task (the odd ones were cancelled while pending, and vanished): 8_[0-198:2]
    assert [k for k in statuses if k.startswith("8_")] == [f"8_{i}" for i in range(0, 199, 2)]
    assert len(statuses) == 1000 + 6 + 10 + 6 + 100 + 4


def test_a_collapsed_row_shares_one_status_across_tasks_and_queries(backend):
    b = backend([SQUEUE, SQUEUE])
    first, second = b.query(["2_0"]), b.query(["2_0"])
    assert len({id(first[f"2_{i}"]) for i in range(1000)}) == 1
    assert first["2_5"] is second["2_5"] and first["7_3"] is second["7_3"]  # the core can compare by identity
    assert first["7_3"] is not first["7_4"]


def test_long_task_list_is_read_whole(backend):
    b = backend([f"{LONG}|PENDING|BeginTime|0\n"])
    statuses = b.query(["16_0"])
    assert len(statuses) == 350 and "16_3" not in statuses and "16_499" in statuses
    assert len(b.fake.calls) == 1


def test_a_task_list_cut_short_is_asked_again_task_by_task(backend):
    each = "".join(f"{job_id}|PENDING|BeginTime|0\n" for job_id in slurm_formats.expand(LONG))  # what squeue -r prints
    b = backend([LONG_CUT + "7_1|FAILED|NonZeroExitCode|256\n", each])
    statuses = b.query(["16_0", "7_1"])
    assert len(b.fake.calls) == 2
    command = b.fake.calls[1][0]
    assert command[:3] == ["squeue", "-h", "-r"] and command[command.index("-j") + 1] == "16"
    assert len(statuses) == 351 and "16_494" in statuses and statuses["7_1"].exit_code == "1:0"


def test_every_id_unknown_is_an_empty_answer(backend):
    error = commands.SchedulerCommandError(["squeue"], 1, "", "slurm_load_jobs error: Invalid job id specified\n")
    assert backend([error]).query(["99999_0"]) == {}
    other = commands.SchedulerCommandError(["squeue"], 1, "", "squeue: error: Invalid job id: abc\n")
    with pytest.raises(commands.SchedulerCommandError):
        backend([other]).query(["abc"])


def test_split_arrays_are_asked_in_one_call(backend):
    # MaxArraySize split one batch into arrays 40 (tasks 0-999) and 41 (the next 500), both pending
    b = backend(
        [
            "41_[0-499]|PENDING|Dependency|0\n40_[2-999%4]|PENDING|JobArrayTaskLimit|0\n40_0|RUNNING|None|0\n"
            "40_1|COMPLETED|None|0\n"
        ]
    )
    statuses = b.query([f"40_{i}" for i in range(1000)] + [f"41_{i}" for i in range(500)])
    assert len(b.fake.calls) == 1 and b.fake.calls[0][0][5] == "40,41"
    assert len(statuses) == 1500 and statuses["41_499"].reason == "Dependency"
    assert statuses["40_1"].state is JobState.COMPLETED and statuses["40_2"].state is JobState.PENDING


def test_sacct_collapsed_pending_and_own_rows(backend):
    b = backend([SACCT, SACCT_LAGGING], accounting=True)
    statuses = b.query(["32_0"])
    command, env = b.fake.calls[0]
    assert command[:2] == ["sacct", "-X"] and "--array" not in command and env["SLURM_BITSTR_LEN"] == "0"
    assert [statuses[f"32_{i}"].state for i in range(10)] == [JobState.RUNNING] * 2 + [JobState.PENDING] * 8
    later = b.query(["32_0"])
    # the lagging collapsed row still lists 32_7 and 32_8: their own rows win; 32_9 is still pending
    assert later["32_7"].state is later["32_8"].state is JobState.RUNNING
    assert later["32_9"].state is JobState.PENDING
    assert later["32_1"].exit_code == "3:0" and later["32_1"].state is JobState.FAILED


def test_expand():
    assert slurm_formats.expand("12_3") == ["12_3"] and slurm_formats.expand("12") == ["12"]
    assert slurm_formats.expand("12_[4-6,9%2]") == ["12_4", "12_5", "12_6", "12_9"]
    assert slurm_formats.expand("12_[0-6:3]") == ["12_0", "12_3", "12_6"]
    assert slurm_formats.expand("12_[7]") == ["12_7"]
    assert len(slurm_formats.expand("5_[0-99999]")) == 100_000
    for cut in ("12_[0-2,4-5,", "12_[0-2,4...]"):
        with pytest.raises(ValueError):
            slurm_formats.expand(cut)
    statuses, cut = slurm_formats.statuses([("12_[0-2,4-5,", None), ("13_1", None)])
    assert statuses == {"13_1": None} and cut == {"12"}


def test_the_same_output_gives_the_same_answer_object(backend):
    moved = SQUEUE.replace(
        "25_[2-3%2]|PENDING|JobArrayTaskLimit|0", "25_[3%2]|PENDING|JobArrayTaskLimit|0\n25_2|RUNNING|None|0"
    )
    b = backend([SQUEUE, SQUEUE, moved, moved])
    first, again = b.query(["25_0"]), b.query(["25_0"])
    assert again is first  # the core then skips every job at once
    later = b.query(["25_0"])
    assert later is not first and later["25_2"].state is JobState.RUNNING and first["25_2"].state is JobState.PENDING
    assert b.query(["25_0", "2_0"]) is not later  # other arrays asked: another answer
    assert len(b.fake.calls) == 4  # one scheduler call per query, as before


def test_cancel_ranges_stay_within_what_scancel_parses():
    assert sorted(slurm_formats.ranges(["7_0", "7_1", "7_2", "7_5", "9"])) == ["7_[0-2,5]", "9"]
    # scancel 5_[0-99999] fails: "_parse_single_range: Too many hosts in range `0-99999'" (0-65535 passes)
    assert slurm_formats.ranges([f"5_{i}" for i in range(100_000)]) == ["5_[0-65535,65536-99999]"]
    assert slurm_formats.ranges([f"5_{i}" for i in range(65_536)]) == ["5_[0-65535]"]


def test_the_kept_answer_does_not_outlive_its_users(backend):
    import gc

    b = backend([SQUEUE, SQUEUE])
    first = b.query(["2_0"])
    del first
    gc.collect()
    assert SlurmBackend._last_answer[1]() is None  # 1,000s of ids are not kept once nobody reads them
    assert len(b.query(["2_0"])) == 1126  # and the same output is read again
