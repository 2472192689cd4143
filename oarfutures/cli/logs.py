"""``logs``: the stdout and stderr of one task, every run of it (requeued, resubmitted, or run by another job)."""

from __future__ import annotations

import argparse
import os
import sys

from oarfutures.cli.folder import CliError, open_folder, split_task_id
from oarfutures.cli.inspectors import FolderInspectors, runs_of
from oarfutures.core import records
from oarfutures.protocol import layout


def ran(folder: str, batch: str, index: int) -> bool:
    """Whether the task started: a worker claimed it, or its result is there (the claims of a tidied batch go)."""
    return layout.runner(folder, batch, index) is not None or layout.result_on_disk(folder, batch, index)


def cmd_logs(args: argparse.Namespace) -> int:
    folder = open_folder(args.folder)
    batch, index = split_task_id(args.task)
    path = layout.record_path(folder, batch)
    if not os.path.exists(path):
        raise CliError(f"no task {args.task} in {folder}: there is no batch {batch}")
    record = records.load(path)
    if index >= len(record.calls):
        tasks = len(record.calls)
        raise CliError(f"no task {args.task}: batch {batch} has {tasks} task(s), 0..{tasks - 1}")
    inspectors = FolderInspectors(folder)
    job_ids = runs_of(inspectors, [record]).get((batch, index), [])
    if not job_ids:
        raise CliError(f"task {args.task} was never submitted: it has no logs")
    shown = 0
    out = sys.stdout.buffer
    # a task another job of its array ran (stolen) has logs of its own, written by that job
    stolen = [p for p in layout.stolen_log_paths(folder, layout.task_id(batch, index)) if os.path.exists(p)]
    for log in [p for job_id in job_ids for p in inspectors.log_paths(record.backend, job_id)] + stolen:
        try:
            with open(log, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        out.write(f"==> {log} <==\n".encode())
        out.write(data)
        if data and not data.endswith(b"\n"):
            out.write(b"\n")
        shown += 1
    out.flush()
    if not shown and (record.complete or ran(folder, batch, index)):  # a quiet call leaves no log file
        quiet = f"task {args.task} left no output: it printed nothing (empty logs are not kept)"
        print(f"oarfutures: {quiet}", file=sys.stderr)
    elif not shown:
        raise CliError(
            f"no log files for task {args.task} (job {', '.join(job_ids)}): it has not started, or they were removed"
        )
    return 0
