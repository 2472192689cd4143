"""The job folder as the command line finds it: checks, task ids, and what one directory scan tells of many tasks."""

from __future__ import annotations

import os

from oarfutures.protocol import layout


class CliError(Exception):
    """Stops the command with this message on stderr and exit status 1."""


def open_folder(path: str) -> str:
    folder = os.path.abspath(path)
    if not os.path.isdir(folder):
        raise CliError(f"{path}: no such directory")
    subs = (layout.JOBS, layout.TASKS, layout.RESULTS)
    missing = [sub for sub in subs if not os.path.isdir(os.path.join(folder, sub))]
    if missing:
        raise CliError(
            f"{path} is not an oarfutures job folder (it has no {', '.join(m + '/' for m in missing)} "
            "directory; give the folder= of an executor)"
        )
    return folder


def split_task_id(task: str) -> tuple[str, int]:
    batch, _, index = task.rpartition("_")
    if not layout.is_batch_id(batch) or not (index.isascii() and index.isdigit()):
        raise CliError(f"{task!r} is not a task id: expected <batch>_<index> (BATCH and TASK of status, joined by '_')")
    return batch, int(index)


def result_files(folder: str) -> dict[str, str]:
    """task id -> its result file, delivered or not (two directory scans for the whole folder)."""
    found: dict[str, str] = {}
    for sub in (layout.DELIVERED, layout.RESULTS):  # a fresh result wins over a delivered copy
        directory = os.path.join(folder, sub)
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.endswith(layout.RESULT_SUFFIX) and entry.is_file():
                        found[entry.name[: -len(layout.RESULT_SUFFIX)]] = entry.path
        except FileNotFoundError:
            pass
    return found


def mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def stolen_tasks(folder: str) -> dict[str, str]:
    """task id -> the job that stole it (another task of its array runs it), from the markers in results/."""
    try:
        names = os.listdir(os.path.join(folder, layout.RESULTS))
    except OSError:
        return {}
    return dict(found for found in map(layout.parse_stolen_marker, names) if found)
