"""The command line over a job folder: ``python -m oarfutures {status,logs,cancel,clean,results} FOLDER``.

It reads what the executors leave in the folder (see ``layout`` and ``records``) and asks each scheduler once per
command about every unfinished job of the folder (one ``query`` and at most one ``cancel`` per scheduler), never
once per job. Each scheduler is reached through the ``JobInspector`` its backend class gives for a folder
(``Backend.inspector``): the local one has no scheduler to ask, its workers are found in ``/proc``.

The package, from the bottom:
  ``folder``       the folder's checks and task ids, and what one directory scan tells (results, stolen tasks)
  ``resultfile``   a result file's failed calls, read without importing the classes of its values
  ``inspectors``   the inspector of each scheduler named in the records, and every run (job id) of a task
  ``taskrows``     the state of each task: files first, then one query per scheduler
  ``text``         tables, durations, sizes, a yes/no question
  ``status``, ``logs``, ``cancel``, ``clean``, ``results``: one command each, ``cmd_<name>(args) -> exit status``,
                   imported when that command runs

Exit status: 0 on success, 1 when the command could not do what was asked (not a job folder, unknown task, no
logs, cancellation declined), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Callable

from oarfutures.cli.folder import CliError

#: the shortest ``status --watch`` interval: each refresh asks the schedulers once, and their controllers are shared
MIN_WATCH_SECONDS = 1.0


def watch_seconds(text: str) -> float:
    """``--interval`` value: seconds between ``--watch`` refreshes, at least ``MIN_WATCH_SECONDS``."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not MIN_WATCH_SECONDS <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds between refreshes, at least {MIN_WATCH_SECONDS:g}")
    return value


def days(text: str) -> float:
    """``--older`` value: a number of days >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days >= 0")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m oarfutures",
        description="Inspect and manage an oarfutures job folder (the folder= of an executor).",
    )
    top.add_argument("-v", "--verbose", action="store_true", help="log what oarfutures does on stderr")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("status", help="a table of the folder's tasks and their states")
    p.add_argument("folder")
    p.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    p.add_argument("--all", action="store_true", help="list the tasks of complete batches too")
    p.add_argument("--watch", action="store_true", help="refresh until no task is queued or running (Ctrl-C stops)")
    p.add_argument(
        "--interval",
        metavar="SECONDS",
        type=watch_seconds,
        default=5.0,
        help="seconds between --watch refreshes (default 5, at least 1: each asks the schedulers)",
    )

    p = sub.add_parser("logs", help="stdout and stderr of a task, every run of it")
    p.add_argument("folder")
    p.add_argument("task", help="a task id, <batch>_<index> (the BATCH and TASK columns of status)")

    p = sub.add_parser("cancel", help="cancel every queued or running job of the folder")
    p.add_argument("folder")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    p = sub.add_parser("clean", help="remove the task and result files of complete batches")
    p.add_argument("folder")
    p.add_argument("--logs", action="store_true", help="remove their logs, records and scripts too")
    p.add_argument("--all", action="store_true", help="unfinished batches too, after cancelling their jobs")
    p.add_argument(
        "--older",
        metavar="DAYS",
        type=days,
        help="only batches whose record was last written more than DAYS days ago (fractions allowed)",
    )

    p = sub.add_parser(
        "results",
        help="re-attach to the unfinished batches and print their results in order",
        description="Re-attach to the folder's unfinished batches (as executor.attach() does: tasks never submitted "
        "are submitted now, local tasks without a result run again) and print every call's result in order. The "
        "folder keeps its files: the results can be printed again.",
    )
    p.add_argument("folder")
    p.add_argument("--json", action="store_true", help="a JSON list (value when JSON can hold it, repr always)")
    p.add_argument("--pickle", metavar="OUT", help="pickle the list of results and exceptions to OUT")
    p.add_argument("--timeout", type=float, help="give up after this many seconds (exit status 1)")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # the command's module only: the others, and for --help or a usage error all of them, would load for nothing
    run: Callable[[argparse.Namespace], int] = getattr(
        importlib.import_module(f"oarfutures.cli.{args.command}"), f"cmd_{args.command}"
    )
    logger = logging.getLogger("oarfutures")
    if args.verbose:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False  # nothing by default, not even warnings through logging's last resort
    try:
        return run(args)
    except CliError as exc:
        print(f"oarfutures: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("oarfutures: interrupted", file=sys.stderr)
        return 130
