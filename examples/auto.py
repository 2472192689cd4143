"""The Grid'5000 page's first example, unchanged on OAR, on Slurm, or locally when no scheduler is found.

Resources are given once with generic names; scheduler-specific ones are prefixed and ignored elsewhere.
Force a backend with OARFUTURES_CLUSTER=oar|slurm|local.
"""

import sys
import tempfile

from oarfutures import AutoPoolExecutor


def add(a, b):
    return a + b


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="log_test-")
    executor = AutoPoolExecutor(folder=folder, timeout_min=5, nodes=1, oar_queue="default", slurm_partition="debug")
    with executor:
        job_addition = executor.submit(add, 5, 7)  # will compute add(5, 7)
        output = job_addition.result()  # waits for completion and returns output
        print(f"{type(executor).__name__} job {job_addition.job_id}: add(5, 7) = {output}")
        assert output == 12

        with executor.batch():  # one job array for all these submissions
            jobs = [executor.submit(add, a, b) for a, b in zip([1, 2, 3, 4], [10, 20, 30, 40])]
        print("array results:", [job.result() for job in jobs])
        assert [job.result() for job in jobs] == [11, 22, 33, 44]
