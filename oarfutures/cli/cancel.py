"""``cancel``: every queued or running call of the folder, jobs through their scheduler, calls still queued in
their client through their claim (as ``future.cancel()`` does)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from oarfutures.cli.folder import CliError, open_folder
from oarfutures.cli.inspectors import FolderInspectors
from oarfutures.cli.taskrows import TaskRow, task_rows
from oarfutures.cli.text import confirm, table
from oarfutures.core import records
from oarfutures.protocol import layout


def require_known(rows: Sequence[TaskRow], consequence: str) -> None:
    """Stop when a scheduler could not say which jobs still run: acting blind could leave jobs behind."""
    unknown = [r for r in rows if r.state == "unknown"]
    if unknown:
        raise CliError(f"the state of {len(unknown)} task(s) is unknown ({unknown[0].detail}): {consequence}")


def cancel_live(inspectors: FolderInspectors, rows: Sequence[TaskRow]) -> list[TaskRow]:
    """Cancel the queued and running jobs among these tasks: one cancel call per scheduler. Returns them."""
    live = [r for r in rows if r.live]
    by_scheduler: dict[str, list[TaskRow]] = {}
    for row in live:
        by_scheduler.setdefault(row.record.backend, []).append(row)
    done: list[TaskRow] = []
    for name, group in by_scheduler.items():
        inspector = inspectors.get(name)
        assert inspector is not None  # a live row was queried through it
        inspector.cancel(sorted({r.job_id for r in group if r.job_id is not None}))
        done += group
    return done


def queued_rows(rows: Sequence[TaskRow]) -> list[TaskRow]:
    """Tasks no scheduler holds yet: calls waiting in their client's queue (local calls not started, cluster calls
    not submitted yet because of max_workers). Only their claim can stop them; a checkpointed task keeps the claim
    its worker took, to run again."""
    return [r for r in rows if r.state == "pending" and not r.live and r.native != "checkpointed"]


def cancel_queued(folder: str, rows: Sequence[TaskRow]) -> tuple[list[TaskRow], list[TaskRow]]:
    """Take the claim of each queued task for a cancellation, as ``future.cancel()`` does: its worker then never
    runs it (it exits at once when its client starts or submits it, and the future fails with JobFailedError).
    Returns the tasks cancelled and those a worker claimed first (they are running now)."""
    cancelled: list[TaskRow] = []
    started: list[TaskRow] = []
    for row in rows:
        path = layout.claim_path(folder, row.batch, row.index)
        try:
            won = layout.claim_for_cancel(path)
        except FileNotFoundError:  # its files were removed meanwhile: nothing can run it
            won = True
        (cancelled if won else started).append(row)
    layout.drop_owner_files()  # the claims keep their owner: the file's name need not outlive this command
    return cancelled, started


def cmd_cancel(args: argparse.Namespace) -> int:
    folder = open_folder(args.folder)
    inspectors = FolderInspectors(folder)
    unfinished = [r for r in records.load_all(folder) if not r.complete]
    rows = task_rows(folder, inspectors, unfinished)
    require_known(rows, "nothing cancelled")
    live = [r for r in rows if r.live]
    queued = queued_rows(rows)
    if not live and not queued:
        print("nothing to cancel: no call of this folder is queued or running")
        return 0
    lines = [["BACKEND", "JOB", "TASK", "WAS"]]
    lines += [[r.record.backend, r.job_id or "-", r.task_id, r.state] for r in live]
    lines += [[r.record.backend, "-", r.task_id, f"queued ({r.native})"] for r in queued]
    if not args.yes:
        print(table(lines), file=sys.stderr)
        if not confirm(f"cancel these {len(live) + len(queued)} task(s)?"):
            print("nothing cancelled", file=sys.stderr)
            return 1
    cancelled_queued, started = cancel_queued(folder, queued)  # first: a queued call must not start meanwhile
    cancelled = cancel_live(inspectors, live)
    shown = [[r.record.backend, r.job_id or "-", r.task_id, r.state] for r in cancelled]
    shown += [[r.record.backend, "-", r.task_id, f"queued ({r.native})"] for r in cancelled_queued]
    print(table(lines[:1] + shown))
    print(
        f"cancelled {len(cancelled)} job(s)"
        + (
            f" and {len(cancelled_queued)} queued task(s), which will never run "
            "(their client's futures fail with JobFailedError)"
            if cancelled_queued
            else ""
        )
    )
    if started:
        print(f"{len(started)} queued task(s) started meanwhile and were not cancelled: run cancel again")
    return 0
