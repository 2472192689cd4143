"""joblib, dask, asyncio and progress bars through oarfutures executors."""

import asyncio
import sys

import pytest

from oarfutures import LocalPoolExecutor, SlurmPoolExecutor
from oarfutures.progress import track

import tasks
from conftest import require_command

BACKENDS = [pytest.param("local", id="local"), pytest.param("slurm", id="slurm", marks=pytest.mark.slurm)]


@pytest.fixture(params=BACKENDS)
def executor(request, folder):
    if request.param == "slurm":
        require_command("sbatch")
        made = SlurmPoolExecutor(folder=folder, walltime="0:10:00")
    else:
        made = LocalPoolExecutor(2, folder=folder)
    with made:
        yield made


def test_joblib_parallel_runs_through_the_registered_backend(executor):
    joblib = pytest.importorskip("joblib")
    import oarfutures.joblib_backend  # noqa: F401 - registers the backend

    with joblib.parallel_config(backend="oarfutures", executor=executor):
        results = joblib.Parallel(n_jobs=4)(joblib.delayed(tasks.square)(i) for i in range(10))
    assert results == [i * i for i in range(10)]


def test_joblib_errors_keep_their_type(executor):
    joblib = pytest.importorskip("joblib")
    import oarfutures.joblib_backend  # noqa: F401

    with joblib.parallel_config(backend="oarfutures", executor=executor):
        with pytest.raises(ValueError, match="joblib"):
            joblib.Parallel(n_jobs=2)(joblib.delayed(tasks.raise_value_error)("joblib") for _ in range(2))


def test_dask_compute_with_the_executor_as_scheduler(executor):
    dask = pytest.importorskip("dask")
    total = dask.delayed(sum)([dask.delayed(tasks.square)(i) for i in range(5)])
    assert dask.compute(total, scheduler=executor)[0] == 30


def test_run_in_executor_and_wrap_future(executor):
    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(
            loop.run_in_executor(executor, tasks.square, 3), asyncio.wrap_future(executor.submit(tasks.add, 1, 1))
        )

    assert asyncio.run(main()) == [9, 2]


def test_track_yields_everything_with_or_without_tqdm(executor):
    assert list(track(executor.map(tasks.square, range(4)), total=4)) == [0, 1, 4, 9]


def test_track_draws_a_tqdm_bar_of_the_calls_done(local, capsys):
    import tqdm  # noqa: F401 - in the test extras: CI must exercise the bar, not the fallback

    futures = local.map_futures(tasks.square, range(3))
    assert list(track(f.result(timeout=60) for f in futures)) == [0, 1, 4]  # a generator: no total
    assert list(track([f.result() for f in futures], description="squares")) == [0, 1, 4]  # total from len()
    bar = capsys.readouterr().err
    assert "oarfutures:3call" in bar.replace(" ", "") and "squares: 100%" in bar and "3/3" in bar


def test_track_without_tqdm_yields_the_same_and_draws_nothing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    assert list(track(iter(range(3)), total=3)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
