"""The Grid'5000 page's job array: four additions as one array (one sbatch/oarsub for all of them)."""

import sys
import tempfile

from oarfutures import AutoPoolExecutor


def add(a, b):
    return a + b


if __name__ == "__main__":
    a = [1, 2, 3, 4]
    b = [10, 20, 30, 40]
    folder = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="log_test-")
    with AutoPoolExecutor(folder=folder, timeout_min=5) as executor:
        results = list(executor.map(add, a, b))  # one array, results in input order
    print("results:", results)
    assert results == [11, 22, 33, 44]
