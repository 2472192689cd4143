"""``status``: a table (or JSON) of the folder's tasks and their states, once or refreshed (``--watch``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from oarfutures.cli.folder import open_folder
from oarfutures.cli.inspectors import FolderInspectors
from oarfutures.cli.taskrows import TASK_STATES, TaskRow, task_rows
from oarfutures.cli.text import duration, one_line, table
from oarfutures.core import records


@dataclass
class Snapshot:
    """What ``status`` shows: the folder's batches, the task rows listed, and the count of tasks per state."""

    folder: str
    batches: list[records.BatchRecord]
    rows: list[TaskRow]
    counts: dict[str, int]
    summarised: list[records.BatchRecord]  # complete batches shown as one line (no --all)

    @property
    def total_tasks(self) -> int:
        return sum(len(r.calls) for r in self.batches)

    @property
    def total_calls(self) -> int:
        return sum(sum(r.calls) for r in self.batches)

    @property
    def unfinished(self) -> int:
        """Tasks still queued or running: what a ``--watch`` waits for."""
        return self.counts["pending"] + self.counts["running"]

    def summary(self) -> str:
        shown = ", ".join(f"{self.counts[s]} {s}" for s in TASK_STATES if self.counts[s])
        return f"{self.total_tasks} task(s), {self.total_calls} call(s) in {len(self.batches)} batch(es): {shown}"


def take_snapshot(folder: str, inspectors: FolderInspectors, show_all: bool) -> Snapshot:
    """Read the records and result files, ask each scheduler once, and count the tasks per state."""
    batches = records.load_all(folder)
    listed = [r for r in batches if show_all or not r.complete]
    rows = task_rows(folder, inspectors, [r for r in listed if not r.complete])
    for record in listed:  # --all: tasks of complete batches, whose results were delivered and removed
        if record.complete:
            for index in range(len(record.calls)):
                row = TaskRow(record, index, record.job_ids.get(index), record.outcome(index), detail="complete batch")
                rows.append(row)
    order = {record.batch: n for n, record in enumerate(batches)}
    rows.sort(key=lambda r: (order[r.batch], r.index))
    counts = dict.fromkeys(TASK_STATES, 0)
    for row in rows:
        counts[row.state] += 1
    summarised = [r for r in batches if r.complete and not show_all]
    for record in summarised:
        for index in range(len(record.calls)):
            counts[record.outcome(index)] += 1
    return Snapshot(folder, batches, rows, counts, summarised)


def status_document(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "folder": snapshot.folder,
        "batches": [
            {
                "batch": r.batch,
                "backend": r.backend,
                "tasks": len(r.calls),
                "calls": sum(r.calls),
                "complete": r.complete,
                "checkpointable": r.checkpointable,
                "created": r.created,
            }
            for r in snapshot.batches
        ],
        "tasks": [row.as_json() for row in snapshot.rows],
        "counts": snapshot.counts,
        "total": {"batches": len(snapshot.batches), "tasks": snapshot.total_tasks, "calls": snapshot.total_calls},
    }


def status_table(snapshot: Snapshot, inspectors: FolderInspectors) -> str:
    if not snapshot.batches:
        return f"no batches in {snapshot.folder}"
    lines = [["BATCH", "TASK", "CALLS", "BACKEND", "JOB", "STATE", "RUNTIME", "DETAIL"]]
    summarised_names = {r.batch for r in snapshot.summarised}
    for record in snapshot.batches:
        if record.batch in summarised_names:
            lines.append(
                [
                    record.batch,
                    "all",
                    str(sum(record.calls)),
                    record.backend,
                    "-",
                    batch_state(record),
                    "-",
                    f"complete: {outcome_summary(record)}, results delivered or cleaned",
                ]
            )
            continue
        inspector = inspectors.get(record.backend)
        task_ids_as_job_ids = inspector is not None and inspector.job_ids_are_task_ids
        for row in (r for r in snapshot.rows if r.record is record):
            native = f"[{row.native}]" if row.native and row.native.lower() not in (row.state, "completed") else ""
            detail = one_line(" ".join(x for x in (native, row.detail) if x))
            job = row.job_id or "-"
            if task_ids_as_job_ids:  # the JOB column would repeat the task: show what its inspector saw (a pid)
                job = row.status.reason if row.status is not None else "-"
            lines.append(
                [
                    row.batch,
                    str(row.index),
                    str(row.calls),
                    record.backend,
                    job,
                    row.state,
                    duration(row.runtime),
                    detail,
                ]
            )
    return table(lines, right={1, 2, 6}) + "\n" + snapshot.summary()


def cmd_status(args: argparse.Namespace) -> int:
    folder = open_folder(args.folder)
    inspectors = FolderInspectors(folder)
    if args.watch:
        return watch_status(folder, inspectors, args)
    snapshot = take_snapshot(folder, inspectors, args.all)
    print(json.dumps(status_document(snapshot), indent=2) if args.json else status_table(snapshot, inspectors))
    return 0


CLEAR_SCREEN = "\x1b[H\x1b[2J"


def watch_status(folder: str, inspectors: FolderInspectors, args: argparse.Namespace) -> int:
    """Refresh until no task is queued or running (or Ctrl-C): on a terminal the table, redrawn in place; else
    one line of counts per refresh (with ``--json``, one JSON object per line), for logs and scripts."""
    on_terminal = sys.stdout.isatty() and not args.json
    try:
        while True:
            snapshot = take_snapshot(folder, inspectors, args.all)
            if args.json:
                line = {"time": round(time.time(), 3), "counts": snapshot.counts, "total": snapshot.total_tasks}
                print(json.dumps(line), flush=True)
            elif on_terminal:
                stamp = time.strftime("%H:%M:%S")
                heading = f"{stamp}  every {args.interval:g} s, Ctrl-C to stop"
                print(f"{CLEAR_SCREEN}{heading}\n{status_table(snapshot, inspectors)}", flush=True)
            else:
                print(f"{time.strftime('%H:%M:%S')} {snapshot.summary()}", flush=True)
            if snapshot.batches and not snapshot.unfinished:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:  # the usual way to leave a watch: not an error
        return 0


def batch_state(record: records.BatchRecord) -> str:
    """The state shown for a whole complete batch: its worst task's (failed, then cancelled, then done)."""
    outcomes = set(record.outcomes.values())
    return next((state for state in ("failed", "cancelled") if state in outcomes), "done")


def outcome_summary(record: records.BatchRecord) -> str:
    """ "3 task(s): 1 done, 1 failed, 1 cancelled" for a complete batch."""
    tally = dict.fromkeys(("done", "failed", "cancelled"), 0)
    for index in range(len(record.calls)):
        tally[record.outcome(index)] += 1
    parts = ", ".join(f"{n} {state}" for state, n in tally.items() if n)
    return f"{len(record.calls)} task(s): {parts}"
