"""``python -m oarfutures.worker FOLDER BATCH INDEX [--rank]``: what every job script runs.

It runs task INDEX of BATCH, found by our own task id (the scheduler's job id plays no part), then, if the job
script allows it, pending tasks of the same array. ``--rank``: one copy of a multi-task job's call, started by
the job's first process (see ``ranks``). It starts once per task, so it imports only what it needs.
"""

import os
import sys

from oarfutures.protocol import layout, variables
from oarfutures.worker.running import TaskRun, run_task


def main(argv):
    folder, batch, index = argv[0], argv[1], int(argv[2])
    task = TaskRun(folder, batch, index)
    task.listen()  # first: the checkpoint signal may already be on its way
    # read and removed: nothing the calls start may inherit them
    offer = {name: os.environ.pop(name, "") for name in variables.STEALING}
    rank = "--rank" in argv
    try:
        status = run_task(task, rank=rank)
        if status == 0 and not rank and offer[variables.STEAL_SECONDS]:
            from oarfutures.worker import stealing  # only now: most of the time, its import would be for nothing

            policy = stealing.StealPolicy.from_environment(offer)
            if policy.allows(task):
                stealing.steal(task, policy)
    finally:
        layout.drop_owner_files()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
