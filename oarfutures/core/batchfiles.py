"""Client side of the file protocol (see ``layout``): write a batch's task files (results: ``protocol.results``).

The functions of a batch are pickled once, however many calls it has (a closure holding a large model is written
once, not once per element); every task's calls go into the same file with an offset index, so a map of 100,000
calls creates one file, not 100,000.
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import warnings
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple, Union

from oarfutures.backends.commands import client_sys_path
from oarfutures.protocol import layout

Call = tuple[int, tuple, dict]  # (index into the batch's functions, args, kwargs)


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _origin(fn: Callable) -> Any:
    """The file a function's code comes from (cloudpickle hides it for code pickled by value)."""
    method = getattr(type(fn), "__call__", None)  # noqa: B004 - its code, for a callable object
    code = getattr(fn, "__code__", None) or getattr(method, "__code__", None)
    return getattr(code, "co_filename", None)


class PickledTask(NamedTuple):
    """A task whose calls were pickled when they were submitted (so an unpicklable one failed its own submit)."""

    blob: bytes
    calls: int


Task = Union[Sequence[Call], PickledTask]


def calls_in(task: Task) -> int:
    return task.calls if isinstance(task, PickledTask) else len(task)


def pickle_functions(functions: Sequence[Callable]) -> bytes:
    import cloudpickle  # at the first submit, not with the executors: ~10 ms an executor that submits nothing skips

    try:
        return cloudpickle.dumps(list(functions))
    except Exception as exc:
        names = ", ".join(getattr(f, "__qualname__", repr(f)) for f in functions)
        raise TypeError(f"cannot pickle the function to run ({names}): {exc}") from exc


def pickle_task(calls: Sequence[Call], number: int = 0) -> bytes:
    import cloudpickle  # at the first submit (see pickle_functions)

    try:
        return cloudpickle.dumps(list(calls))
    except Exception as exc:
        raise TypeError(f"cannot pickle the arguments of task {number}: {exc}") from exc


def write_batch(
    folder: str,
    batch: str,
    functions: Sequence[Callable],
    tasks: Sequence[Task],
    warn_bytes: int,
    max_resubmissions: int = 3,
) -> None:
    """Write the batch's files; raise in the caller (nothing submitted) when anything cannot be pickled."""
    fn_blob = pickle_functions(functions)
    _warn_if_large(fn_blob, warn_bytes, "the pickled function")
    blobs = []
    for number, calls in enumerate(tasks):
        blobs.append(calls.blob if isinstance(calls, PickledTask) else pickle_task(calls, number))
        _warn_if_large(blobs[-1], warn_bytes, f"the pickled arguments of task {number}")
    offsets = [0]
    for blob in blobs:
        offsets.append(offsets[-1] + len(blob))
    meta = {
        "sys_path": client_sys_path(),
        "origins": [_origin(f) for f in functions],
        "max_resubmissions": max_resubmissions,
    }
    os.mkdir(os.path.dirname(layout.claim_path(folder, batch, 0)), 0o700)
    head = pickle.dumps((meta, fn_blob))
    parts = [struct.pack(layout.TASK_FILE_HEADER, len(head), len(blobs)), head]
    parts += [struct.pack(f"<{len(offsets)}Q", *offsets), *blobs]
    _write_private(layout.batch_path(folder, batch), b"".join(parts))


def _warn_if_large(blob: bytes, limit: int, what: str) -> None:
    if limit and len(blob) > limit:
        warnings.warn(
            f"{what} is {len(blob) / 1e6:.1f} MB: pass large data as a file path instead "
            f"(this warning starts at warn_pickle_bytes={limit})",
            stacklevel=4,
        )


def remove_batch_files(folder: str, batch: str, tasks: int = 0, checkpointable: bool = True) -> None:
    """Remove the batch's task files, claims and delivered results (logs and the record stay); resume files only
    for a ``checkpointable`` batch, the only kind that writes any (a removal costs a system call per task)."""
    paths = [layout.batch_path(folder, batch)]
    for index in range(tasks):
        paths.append(layout.delivered_path(folder, batch, index))
        if checkpointable:
            paths.append(layout.resume_path(folder, batch, index))
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
    shutil.rmtree(os.path.dirname(layout.claim_path(folder, batch, 0)), ignore_errors=True)


def is_checkpointable(function: Callable) -> bool:
    return callable(getattr(function, "checkpoint", None))
