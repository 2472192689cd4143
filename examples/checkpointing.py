"""Checkpointing: a counter interrupted midway resumes from its saved state, in the same future.

Runs on the local backend (where `interrupt` sends the checkpoint signal itself) and unchanged on Slurm or OAR:
OARFUTURES_CLUSTER=slurm python examples/checkpointing.py
"""

import os
import sys
import tempfile
import time

from oarfutures import AutoPoolExecutor, Checkpointable


class SlowCounter(Checkpointable):
    def __init__(self):
        self.count = 0  # the state: pickled with the object when the job is interrupted
        self.runs = 0

    def __call__(self, target):
        self.runs += 1
        print(f"run {self.runs} starts at {self.count}", flush=True)
        while self.count < target:
            time.sleep(0.5)
            self.count += 1
        return self.count, self.runs


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="checkpoint-")
    with AutoPoolExecutor(folder=folder, timeout_min=10) as executor:
        future = executor.submit(SlowCounter(), 60)  # 30 s of counting
        while not (future.running() or future.done()):  # a cluster reports it within seconds; a job that died, too
            time.sleep(0.2)
        time.sleep(2)  # let it count a little
        if not future.done():
            executor.interrupt(future)  # what a preemption does
        count, runs = future.result()
        print(f"counted to {count} in {runs} runs, {future.resubmissions} resubmission(s), jobs {future.job_ids}")
        assert count == 60 and runs == 2
        print(executor.logs(future).strip().splitlines()[-1])
        print("folder:", os.path.abspath(folder))
