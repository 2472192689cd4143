"""``max_workers`` caps what runs at once across every submission of an executor, not within one array only.

dask and joblib submit one call at a time: on Slurm each ``submit`` is an array of one, so a cap that only
became ``%N`` on each array would cap nothing for them.
"""

import itertools
import os

import pytest

from oarfutures import LocalPoolExecutor, OarPoolExecutor, SlurmPoolExecutor

import tasks
from conftest import BACKENDS

EXECUTORS = {"local": LocalPoolExecutor, "slurm": SlurmPoolExecutor, "oar": OarPoolExecutor}


def most_at_once(folder):
    """How many recorded intervals overlapped at most."""
    intervals = []
    for name in os.listdir(folder):
        with open(os.path.join(folder, name)) as f:
            start, end = map(float, f.read().split())
        intervals.append((start, end))
    events = sorted(
        itertools.chain(((s, 1) for s, _ in intervals), ((e, -1) for _, e in intervals)), key=lambda x: (x[0], x[1])
    )
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


@pytest.mark.parametrize("cluster", BACKENDS)
def test_max_workers_caps_separate_submits_and_maps_together(cluster, tmp_path):
    intervals = tmp_path / "intervals"
    intervals.mkdir()
    intervals.chmod(0o777)  # OAR jobs run as the test user, who may not be the folder's owner's group
    with EXECUTORS[cluster](2, folder=str(tmp_path / "jobs")) as executor:
        single = [executor.submit(tasks.record_interval, str(intervals), f"s{i}", 2) for i in range(3)]
        mapped = executor.map(tasks.record_interval, [str(intervals)] * 3, [f"m{i}" for i in range(3)], [2] * 3)
        assert sorted(f.result(timeout=300) for f in single) == ["s0", "s1", "s2"]
        assert list(mapped) == ["m0", "m1", "m2"]
    assert most_at_once(str(intervals)) <= 2


@pytest.mark.slurm
def test_dask_on_a_capped_cluster_executor_makes_a_few_arrays_and_the_cap_holds(tmp_path):
    """dask keeps ``_max_workers`` tasks submitted and sends the next as each ends: seeing the running cap (2)
    there, it made one array per task; it sees the queue depth, and the cap still holds across the arrays."""
    dask = pytest.importorskip("dask")
    from oarfutures.core import records

    intervals = tmp_path / "intervals"
    intervals.mkdir()
    folder = str(tmp_path / "jobs")
    parts = [dask.delayed(tasks.record_interval)(str(intervals), f"d{i}", 0.3) for i in range(40)]
    with SlurmPoolExecutor(2, folder=folder, walltime="0:10:00") as executor:
        (names,) = dask.compute(parts, scheduler=executor)
    assert sorted(names) == sorted(f"d{i}" for i in range(40))
    assert len(records.load_all(folder)) <= 4
    assert most_at_once(str(intervals)) <= 2
