"""dask with an oarfutures executor as its scheduler: every dask task becomes a job.

Give dask tasks of seconds of work (chunk your data accordingly): each one pays a job's start-up.
"""

import sys
import tempfile

import dask

from oarfutures import AutoPoolExecutor


def load(i):
    return list(range(i * 10, i * 10 + 10))


def total(chunks):
    return sum(sum(chunk) for chunk in chunks)


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="dask-")
    with AutoPoolExecutor(folder=folder, timeout_min=5) as executor:
        graph = dask.delayed(total)([dask.delayed(load)(i) for i in range(4)])
        (result,) = dask.compute(graph, scheduler=executor)
    print("dask result:", result)
    assert result == sum(range(40))
