"""A worker loads a function sent in batch after batch once, unless its pickle is large enough to hold data."""

import pytest

from oarfutures.core import batchfiles
from oarfutures.protocol import layout
from oarfutures.worker import taskfiles


@pytest.fixture(autouse=True)
def no_known_functions(monkeypatch):
    monkeypatch.setattr(taskfiles, "_known_functions", {})


def closure_over(data):
    def call():  # pickled by value, with its closure
        return len(data)

    return call


def functions_of_two_batches(tmp_path, function):
    folder = str(tmp_path / "jobs")
    layout.make_folder(folder)
    loaded = []
    for batch in ("first", "second"):
        batchfiles.write_batch(folder, batch, [function], [[(0, (), {})]], 0)
        files = taskfiles.BatchFiles(folder, batch)
        loaded.append(files.functions()[0])
        files.close()
    return loaded


def test_a_small_function_sent_again_is_the_one_loaded_before(tmp_path):
    first, second = functions_of_two_batches(tmp_path, closure_over(b"x" * 10))
    assert second is first


def test_a_function_whose_pickle_holds_data_is_loaded_again_and_not_kept(tmp_path):
    first, second = functions_of_two_batches(tmp_path, closure_over(b"x" * (taskfiles.KNOWN_FUNCTION_BYTES + 1)))
    assert second is not first and second() == first() == taskfiles.KNOWN_FUNCTION_BYTES + 1
    assert taskfiles._known_functions == {}


def test_only_the_latest_functions_are_kept(tmp_path):
    for size in range(taskfiles.KNOWN_FUNCTIONS_KEPT + 3):
        functions_of_two_batches(tmp_path / str(size), closure_over(b"x" * size))
    assert len(taskfiles._known_functions) == taskfiles.KNOWN_FUNCTIONS_KEPT
