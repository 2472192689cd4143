"""Quick start: the same lines as with ProcessPoolExecutor, through oarfutures' job files and worker.

Runs on this machine (LocalPoolExecutor). On a cluster front-end, swap in
``OarPoolExecutor(queue="default", walltime="0:10:0")`` or ``SlurmPoolExecutor(partition=..., walltime=...)``.
"""

import tempfile
from concurrent.futures import as_completed

from oarfutures import LocalPoolExecutor


def add(a, b):
    return a + b


def square(x):
    return x * x


def fails(x):
    raise ValueError(f"{x} is not welcome here")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder, LocalPoolExecutor(max_workers=2, folder=folder) as executor:
        job = executor.submit(add, 5, 7)
        print("add(5, 7) =", job.result())

        print("squares:", list(executor.map(square, range(10))))

        futures = [executor.submit(square, x) for x in range(3)]
        print("as completed:", sorted(f.result() for f in as_completed(futures)))

        try:
            executor.submit(fails, 13).result()
        except ValueError as error:
            print("remote error, original type:", repr(error))
