"""joblib's Parallel through oarfutures: one changed line (the parallel_config)."""

import sys
import tempfile

import joblib

import oarfutures.joblib_backend  # noqa: F401 - registers the "oarfutures" joblib backend
from oarfutures import AutoPoolExecutor


def slow_square(x):
    return x * x


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="joblib-")
    with AutoPoolExecutor(folder=folder, timeout_min=5) as executor:
        with joblib.parallel_config(backend="oarfutures", executor=executor):
            results = joblib.Parallel(n_jobs=4)(joblib.delayed(slow_square)(x) for x in range(10))
    print("joblib results:", results)
    assert results == [x * x for x in range(10)]
