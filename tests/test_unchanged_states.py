"""apply_states skips what did not move (the Slurm backend shares one JobStatus per distinct state and gives the
same answer object back when its command printed the same), and still does everything a change needs. No cluster:
a fake backend, and answers applied by hand (the poller's first query would come after 1,000 s)."""

import itertools
import time

import pytest

from oarfutures.backends.base import Backend, JobState, JobStatus
from oarfutures.core.executor import JobExecutor
from oarfutures.core.settings import CoreSettings
from oarfutures.core.tracking import UNSEEN_GRACE

PENDING = JobStatus(JobState.PENDING, "PENDING", "0:0", "BeginTime")
RUNNING = JobStatus(JobState.RUNNING, "RUNNING", "0:0", "")
_arrays = itertools.count(100)


class Fake(Backend):
    name = "fake"
    query_interval = (1000.0, 1000.0)

    def __init__(self):
        self.parameters = {}

    def submit(self, submission):
        array = next(_arrays)
        return [f"{array}_{i}" for i in range(submission.count)]

    def cancel(self, job_ids):
        pass

    def query(self, job_ids):
        raise AssertionError("the test applies answers itself")

    def validate(self, values):
        return dict(values)

    def render_script(self, submission, first, count):
        return ""


class Counting(dict):
    """An answer that counts the lookups made in it."""

    lookups = 0

    def get(self, *args):
        self.lookups += 1
        return super().get(*args)


@pytest.fixture
def executor(tmp_path):
    ex = JobExecutor(Fake(), CoreSettings.check(Fake, None, str(tmp_path / "jobs"), "python3", False, None, 10**9, 3))
    yield ex
    ex.abort("test over")


def live_ids(ex, count):
    """The job ids, once the service thread has submitted ``count`` tasks."""
    deadline = time.monotonic() + 30
    while len(ex.live_job_ids()) < count:
        assert time.monotonic() < deadline, "not submitted"
        time.sleep(0.01)
    return sorted(ex.live_job_ids())


def tasks_of(ex):
    return {t.job_id: t for t in ex._tasks.values()}


def test_the_same_answer_again_is_not_gone_over(executor):
    futures = [executor.submit(abs, i) for i in range(3)]
    ids = live_ids(executor, 3)
    answer = Counting(dict.fromkeys(ids, PENDING))
    assert executor.apply_states(answer, time.monotonic()) is True
    seen = answer.lookups
    assert seen >= 3
    assert executor.apply_states(answer, time.monotonic()) is False
    assert answer.lookups == seen  # no job looked at again
    running = Counting({**answer, ids[0]: RUNNING})
    assert executor.apply_states(running, time.monotonic()) is True
    assert futures[0].running() and not futures[1].running()


def test_a_missing_job_is_checked_again_in_the_same_answer(executor):
    executor.submit(abs, 1)
    executor.submit(abs, 2)
    first, second = live_ids(executor, 2)
    answer = {second: PENDING}  # the first job is not visible (yet)
    now = time.monotonic()
    executor.apply_states(answer, now)
    assert not tasks_of(executor)[first].vanished
    executor.apply_states(answer, now + UNSEEN_GRACE + 1)  # the very same answer, its grace now over
    assert tasks_of(executor)[first].vanished


def test_a_job_back_with_its_old_status_object_is_no_longer_vanished(executor):
    executor.submit(abs, 1)
    executor.submit(abs, 2)
    first, second = live_ids(executor, 2)
    now = time.monotonic()
    executor.apply_states({first: PENDING, second: PENDING}, now)
    executor.apply_states({second: PENDING}, now + UNSEEN_GRACE + 1)
    task = tasks_of(executor)[first]
    assert task.vanished and task.ended_since is not None
    executor.apply_states({first: PENDING, second: PENDING}, now + UNSEEN_GRACE + 2)  # PENDING: its last status
    assert not task.vanished and task.ended_since is None


def test_new_jobs_are_looked_at_even_with_the_same_answer(executor):
    executor.submit(abs, 1)
    (first,) = live_ids(executor, 1)
    answer = {first: PENDING}
    now = time.monotonic()
    executor.apply_states(answer, now)
    executor.submit(abs, 2)  # a new job the answer does not know
    (new,) = set(live_ids(executor, 2)) - {first}
    tasks_of(executor)[new].submitted_at = now - UNSEEN_GRACE - 1
    executor.apply_states(answer, now)
    assert tasks_of(executor)[new].vanished


def test_an_idle_executor_keeps_no_answer_nor_tasks(executor):
    from oarfutures.core.poller import get_poller

    executor.submit(abs, 1)
    (job,) = live_ids(executor, 1)
    executor.apply_states({job: PENDING}, time.monotonic())
    assert executor._settled_answer is not None
    executor.abort("test")
    deadline = time.monotonic() + 30
    while executor._tasks and time.monotonic() < deadline:
        time.sleep(0.01)
    executor.release_if_idle(get_poller())
    assert executor._settled_answer is None


def test_live_job_ids_are_listed_again_only_when_a_job_changes(executor):
    executor.submit(abs, 1)
    live_ids(executor, 1)
    ids = executor.live_job_ids()
    assert executor.live_job_ids() is ids  # nothing moved: the same tuple, no work per job
    executor.submit(abs, 2)
    assert len(live_ids(executor, 2)) == 2  # a submission lists them again


def test_a_stolen_task_is_looked_at_again_in_the_same_answer(executor):
    """The jobs did not change, but a task's job id did (another job of its array stole it): the very answer that
    was settled must be gone over again, or the task would wait for the next change of the queue."""
    futures = [executor.submit(abs, i) for i in range(2)]
    first, second = live_ids(executor, 2)
    answer = {first: PENDING, second: RUNNING}
    executor.apply_states(answer, time.monotonic())
    assert futures[1].running() and not futures[0].running()
    assert executor.apply_states(answer, time.monotonic()) is False  # settled
    executor._note_stolen([(tasks_of(executor)[first].task_id, second)])  # the running job took the first task
    executor.apply_states(answer, time.monotonic())
    assert futures[0].running()


def test_the_job_index_counts_every_change():
    from oarfutures.core.tasks import JobIndex

    index = JobIndex()
    versions = [index.version]

    def step(change):
        change()
        assert index.version > versions[-1], change
        versions.append(index.version)

    step(lambda: index.__setitem__("1", "a"))
    step(lambda: index.setdefault("2", "b"))
    step(lambda: index.update({"3": "c"}))
    step(lambda: index.pop("3"))
    step(lambda: index.pop("missing", None))
    step(lambda: index.__delitem__("2"))
    step(lambda: index.__ior__({"4": "d"}))
    step(index.popitem)
    step(index.changed)
    step(index.clear)
    assert dict(index) == {}


def test_slurm_recognises_the_same_tuple_of_ids_and_only_a_tuple(tmp_path):
    from oarfutures.backends.slurm import SlurmBackend

    backend = SlurmBackend(str(tmp_path), {})
    ids = tuple(f"{array}_{i}" for array in (12, 7) for i in range(3)) + ("9",)
    arrays = backend._arrays_of(ids)
    assert arrays == ["12", "7", "9"]
    assert backend._arrays_of(ids) is arrays
    listed = list(ids)
    assert backend._arrays_of(listed) == arrays
    listed.append("5_0")  # a list may change between two calls: never taken for the last one
    assert backend._arrays_of(listed) == ["12", "5", "7", "9"]


def _answer(rows, counting=False):
    """A Slurm answer (``slurm_formats.statuses``) of these (job or collapsed row, status) rows."""
    from oarfutures.backends import slurm_formats

    answer, _ = slurm_formats.statuses(rows)
    if not counting:
        return answer

    class CountingAnswer(slurm_formats.Answer):
        lookups = 0

        def get(self, *args):
            self.lookups += 1
            return super().get(*args)

    copy = CountingAnswer()
    copy.update(answer)
    copy.rows = answer.rows
    return copy


def test_a_new_answer_after_a_settled_one_looks_only_at_the_rows_that_changed(executor):
    futures = [executor.submit(abs, i) for i in range(3)]
    ids = live_ids(executor, 3)
    assert executor.apply_states(_answer([(i, PENDING) for i in ids]), time.monotonic()) is True
    news = _answer([(ids[0], RUNNING), (ids[1], PENDING), (ids[2], PENDING)], counting=True)
    assert executor.apply_states(news, time.monotonic()) is True
    assert news.lookups == 1  # the one job whose row changed
    assert futures[0].running() and not futures[1].running()


def test_a_job_whose_row_is_gone_from_a_new_answer_is_missing(executor):
    executor.submit(abs, 1)
    executor.submit(abs, 2)
    first, second = live_ids(executor, 2)
    now = time.monotonic()
    executor.apply_states(_answer([(first, PENDING), (second, PENDING)]), now)
    executor.apply_states(_answer([(second, PENDING)]), now + UNSEEN_GRACE + 1)
    assert tasks_of(executor)[first].vanished and not tasks_of(executor)[second].vanished


def test_a_stolen_task_follows_the_row_of_the_job_that_stole_it(executor):
    futures = [executor.submit(abs, i) for i in range(2)]
    first, second = live_ids(executor, 2)
    executor.apply_states(_answer([(first, PENDING), (second, PENDING)]), time.monotonic())
    executor._note_stolen([(tasks_of(executor)[first].task_id, second)])
    executor.apply_states(_answer([(first, PENDING), (second, PENDING)]), time.monotonic())  # settled again
    executor.apply_states(_answer([(first, PENDING), (second, RUNNING)]), time.monotonic())  # only `second` moved
    assert futures[0].running() and futures[1].running()
