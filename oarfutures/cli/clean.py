"""``clean``: remove the files of complete batches (and, asked, their logs, or unfinished batches after cancelling
their jobs)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable, Sequence

from oarfutures.cli.cancel import cancel_live, cancel_queued, queued_rows, require_known
from oarfutures.cli.folder import mtime, open_folder
from oarfutures.cli.inspectors import FolderInspectors, runs_of
from oarfutures.cli.taskrows import TaskRow, task_rows
from oarfutures.cli.text import size
from oarfutures.core import records
from oarfutures.protocol import layout


def batch_files(folder: str, batch: str, logs: Iterable[str], with_record: bool) -> list[str]:
    """The files of a batch: task files, results (fresh, delivered, temporary), and logs/record when asked."""
    prefixes = (batch + ".", batch + "_")
    paths = []
    # results/ranks/<task>/<rank>.pkl: what the ranks of a multi-task job left (a launcher that was killed)
    for sub in (layout.TASKS, layout.RESULTS, layout.DELIVERED, layout.RANKS):
        directory = os.path.join(folder, sub)
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if not entry.name.startswith(prefixes):
                        continue
                    if not entry.is_dir(follow_symlinks=False):
                        paths.append(entry.path)
                    elif sub == layout.RANKS:
                        paths += [os.path.join(entry.path, name) for name in os.listdir(entry.path)] + [entry.path]
        except FileNotFoundError:
            pass
    paths += list(logs)
    if with_record:
        jobs = os.path.join(folder, layout.JOBS)
        with os.scandir(jobs) as entries:
            # the record (and its temp files) and the submission scripts jobs/<batch>-<first>.sh
            paths += [e.path for e in entries if e.name.startswith((batch + ".json", batch + "-")) and not e.is_dir()]
    return paths


def remove(paths: Iterable[str]) -> tuple[int, int]:
    count = freed = 0
    for path in dict.fromkeys(paths):
        try:
            info = os.lstat(path)
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
                continue
            os.remove(path)
        except FileNotFoundError:
            continue
        except OSError as exc:  # a directory something wrote into meanwhile: leave it
            print(f"oarfutures: cannot remove {path}: {exc.strerror}", file=sys.stderr)
            continue
        count += 1
        freed += info.st_size
    return count, freed


def unchanged_for(folder: str, record: records.BatchRecord, days: float) -> bool:
    """Whether a batch's record was last written (submitted, followed, completed) more than ``days`` days ago."""
    written = mtime(layout.record_path(folder, record.batch))
    return written is not None and time.time() - written > days * 86400


def cmd_clean(args: argparse.Namespace) -> int:
    import filelock  # on first use: it costs ~35 ms to import, and only clean takes the lock

    folder = open_folder(args.folder)
    with filelock.FileLock(layout.lock_path(folder)):  # not while attach() reads the folder
        return _clean(folder, args)


def _clean(folder: str, args: argparse.Namespace) -> int:
    inspectors = FolderInspectors(folder)
    batches = records.load_all(folder)
    targets = [r for r in batches if r.complete or args.all]
    if args.older is not None:
        targets = [r for r in targets if unchanged_for(folder, r, args.older)]
    unfinished = [r for r in targets if not r.complete]
    cancelled: list[TaskRow] = []
    if unfinished:
        rows = task_rows(folder, inspectors, unfinished)
        require_known(rows, "nothing removed")
        cancelled = cancel_live(inspectors, rows)
        for row in cancelled:
            print(f"cancelled {row.record.backend} job {row.job_id} (task {row.task_id}, {row.state})")
        cancel_queued(folder, queued_rows(rows))  # their task files go: a client must not start them
        note_outcomes(rows)
    runs = runs_of(inspectors, targets, follow_all=False) if args.logs else {}
    files = freed = 0
    for record in targets:
        logs: list[str] = []
        for index in range(len(record.calls)):
            for job_id in runs.get((record.batch, index), []):
                logs += inspectors.log_paths(record.backend, job_id)
        if not args.logs and not record.complete:  # keep the record with the logs, marked: nothing to attach to
            record.complete = True
            record.save(folder)
        n, size_ = remove(batch_files(folder, record.batch, logs, with_record=args.logs))
        files, freed = files + n, freed + size_
    kept = len(batches) - len(targets)
    print(
        f"cleaned {len(targets)} batch(es) ({len(cancelled)} job(s) cancelled first), removed {files} file(s), "
        f"freed {size(freed)}" + (f"; {kept} unfinished batch(es) kept (--all removes them)" if kept else "")
    )
    return 0


def note_outcomes(rows: Sequence[TaskRow]) -> None:
    """Record how the tasks of batches ``clean --all`` ends ended, as an executor does (status reads it): those
    that did not finish are cancelled."""
    for row in rows:
        if row.state != "done":
            failed = row.state in ("failed", "ended-without-result")
            row.record.outcomes[row.index] = "failed" if failed else "cancelled"
