"""``results``: re-attach to the folder's unfinished batches, as ``executor.attach()`` does, and print every call's
result in order (as text, JSON, or a pickle)."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from concurrent import futures as cf
from typing import Any

from oarfutures import registry
from oarfutures.cli.folder import CliError, open_folder
from oarfutures.core import records
from oarfutures.errors import RemoteError
from oarfutures.protocol import layout


def _error_parts(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, RemoteError):
        return exc.type_name, exc.message
    return type(exc).__name__, str(exc)


def _traceback_text(exc: BaseException) -> str | None:
    cause = exc.__cause__
    return getattr(cause, "text", None)


def _jsonable(value: Any) -> tuple[bool, Any]:
    try:
        json.dumps(value, allow_nan=False)
        return True, value
    except (TypeError, ValueError, RecursionError):
        return False, None


def _picklable(item: Any) -> Any:
    try:
        pickle.dumps(item)
        return item
    except Exception:
        if isinstance(item, BaseException):
            name, message = _error_parts(item)
            return RemoteError(name, message, _traceback_text(item) or "")
        return RemoteError(type(item).__qualname__, f"cannot pickle {type(item).__qualname__}: {item!r}"[:500], "")


def reattaching_executor(name: str, folder: str) -> Any:
    """An executor of scheduler ``name`` on the folder that keeps its files: printing results twice gives them
    twice."""
    try:
        executor_class = registry.executor_class(name)
    except KeyError:
        raise CliError(f"batches of backend {name!r} cannot be re-attached by this version of oarfutures") from None
    return executor_class(folder=folder, keep_files=True)


def cmd_results(args: argparse.Namespace) -> int:
    folder = open_folder(args.folder)
    unfinished = [
        r for r in records.load_all(folder) if not r.complete and os.path.exists(layout.batch_path(folder, r.batch))
    ]
    names = sorted({r.backend for r in unfinished})
    if len(names) > 1:
        raise CliError(
            f"the unfinished batches of {folder} were submitted to several backends ({', '.join(names)}): "
            "re-attach from Python, one executor per backend"
        )
    if not unfinished:
        print(
            "no unfinished batch to re-attach: the results of complete batches were delivered and removed",
            file=sys.stderr,
        )
    items: list[Any] = []
    documents: list[dict[str, Any]] = []
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    executor = reattaching_executor(names[0], folder) if names else None
    try:
        futures = executor.attach() if executor is not None else []
        position: dict[str, int] = {}
        for future in futures:
            call = position[future.task_id] = position.get(future.task_id, -1) + 1
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                error = future.exception(timeout)
            except cf.TimeoutError:
                raise CliError(f"timed out after {args.timeout:g} s waiting for task {future.task_id}") from None
            except cf.CancelledError as exc:
                error = exc
            if error is not None:
                name, message = _error_parts(error)
                items.append(error)
                documents.append(
                    {
                        "task_id": future.task_id,
                        "call": call,
                        "ok": False,
                        "type": name,
                        "message": message,
                        "traceback": _traceback_text(error),
                    }
                )
                if not args.json and not args.pickle:
                    first = message.splitlines()[0] if message else ""
                    print(f"ERROR {name}: {first}", flush=True)
                continue
            value = future.result()
            items.append(value)
            ok, jsonable = _jsonable(value)
            documents.append(
                {
                    "task_id": future.task_id,
                    "call": call,
                    "ok": True,
                    "repr": repr(value),
                    **({"value": jsonable} if ok else {}),
                }
            )
            if not args.json and not args.pickle:
                print(repr(value), flush=True)
    finally:
        if executor is not None:
            # Cluster jobs outlive us and stay for the next attach: leave them alone (cancelling a future cancels
            # its job). Jobs that die with their client (local workers) are ours: stop them rather than wait for
            # them at exit.
            ours = not executor.backend.jobs_outlive_client
            if ours:
                executor.backend.cancel(executor.live_job_ids())
            executor.shutdown(wait=False, cancel_futures=ours)
    if args.pickle:
        with open(args.pickle, "wb") as f:
            pickle.dump([_picklable(item) for item in items], f)
        print(f"wrote {len(items)} result(s) to {args.pickle}", file=sys.stderr)
    if args.json:
        print(json.dumps(documents, indent=2))
    return 0
