"""Where a job folder keeps its files, shared by the client and the worker.

A *batch* is what one ``submit`` or ``map`` call produces: one scheduler array of *tasks* (one task per array
element; a task holds ``chunksize`` calls). Task ids are ours (``<batch>_<index>``), never the scheduler's, so the
worker can find its input before anyone knows which job id it got::

    folder/                      0700: task files are code
      tasks/<batch>.fn.pkl       the functions of the batch, pickled once, plus the client's sys.path
      tasks/<batch>.args.pkl     every task's calls, concatenated pickles ...
      tasks/<batch>.index        ... and their offsets (N+1 little-endian uint64), so a task reads only its slice
      tasks/<batch>_<i>.resume.pkl   a checkpointed task's next calls (overrides its slice)
      results/<batch>_<i>.pkl    written by the worker to a temp name, then renamed: appears complete or not at all
      results/delivered/         results a client has read, kept until the whole batch is delivered (re-attach)
      jobs/<batch>.json          what was submitted: task count, scheduler job ids (to re-attach after a crash)
      jobs/<batch>.sh            the submission script, for the user to read
      logs/                      stdout/stderr of every job, kept after results are collected

This module imports nothing heavy: the worker starts once per task.
"""
import os
import stat

TASKS, RESULTS, JOBS, LOGS = "tasks", "results", "jobs", "logs"
DELIVERED = os.path.join(RESULTS, "delivered")
RESULT_SUFFIX = ".pkl"


def task_id(batch: str, index: int) -> str:
    return f"{batch}_{index}"


def functions_path(folder: str, batch: str) -> str:
    return os.path.join(folder, TASKS, batch + ".fn.pkl")


def args_path(folder: str, batch: str) -> str:
    return os.path.join(folder, TASKS, batch + ".args.pkl")


def index_path(folder: str, batch: str) -> str:
    return os.path.join(folder, TASKS, batch + ".index")


def resume_path(folder: str, batch: str, index: int) -> str:
    return os.path.join(folder, TASKS, task_id(batch, index) + ".resume.pkl")


def result_path(folder: str, batch: str, index: int) -> str:
    return os.path.join(folder, RESULTS, task_id(batch, index) + RESULT_SUFFIX)


def delivered_path(folder: str, batch: str, index: int) -> str:
    return os.path.join(folder, DELIVERED, task_id(batch, index) + RESULT_SUFFIX)


def record_path(folder: str, batch: str) -> str:
    return os.path.join(folder, JOBS, batch + ".json")


def script_path(folder: str, batch: str) -> str:
    return os.path.join(folder, JOBS, batch + ".sh")


def make_folder(folder: str) -> None:
    """Create the folder tree private to its owner (task pickles run as code when loaded)."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    for sub in (TASKS, RESULTS, DELIVERED, JOBS, LOGS):
        os.makedirs(os.path.join(folder, sub), mode=0o700, exist_ok=True)


class UnsafeFolderError(PermissionError):
    """A task file or its folder can be written by other users: loading it would run their code."""


def check_private(*paths: str) -> None:
    """Refuse paths that users other than the owner can write (group- or world-writable), or owned by others."""
    me = os.geteuid()
    for path in paths:
        info = os.stat(path)
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafeFolderError(
                f"refusing to load tasks: {path} is writable by other users "
                f"(mode {stat.filemode(info.st_mode)}); a task file is code, make it private (chmod 700)"
            )
        if info.st_uid not in (me, 0):
            raise UnsafeFolderError(f"refusing to load tasks: {path} is owned by uid {info.st_uid}, not by us ({me})")
