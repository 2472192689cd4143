"""Retention of the default job folders: finished ones older than ``OARFUTURES_KEEP_DAYS`` days are removed.

An executor made without ``folder=`` gets a new folder under ``$OARFUTURES_FOLDER`` or ``~/.oarfutures`` every
time, so that base grows with every script run. When such an executor starts, the folders of the base that
oarfutures made itself (named ``<backend>-<date>-<time>-<hex>``) are removed if they are *finished* and *old*:

- finished: every batch record is complete (nothing left to re-attach to), and no live process of this host is
  named as the client of one of them;
- old: nothing in the folder, its subfolders or its records changed for ``OARFUTURES_KEEP_DAYS`` days (30 by
  default; ``off`` keeps everything).

Folders given with ``folder=`` are never touched: they are the user's. It runs once per process, on a daemon
thread, so that a constructor never waits for it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import threading
import time

from oarfutures.core import records
from oarfutures.protocol import layout, variables

logger = logging.getLogger("oarfutures")

KEEP_DAYS_VARIABLE = variables.KEEP_DAYS
DEFAULT_KEEP_DAYS = 30.0
#: the names ``executor.folder_path`` gives new default folders; nothing else under the base is ever removed
DEFAULT_FOLDER_NAME = re.compile(r"(local|slurm|oar)-\d{8}-\d{6}-[0-9a-f]{6}")

_started = False
_start_lock = threading.Lock()


def keep_days() -> float | None:
    """Days a finished default folder is kept (None: forever), from ``$OARFUTURES_KEEP_DAYS``."""
    text = os.environ.get(KEEP_DAYS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_KEEP_DAYS
    if text.lower() == "off":
        return None
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days > 0 or days == float("inf"):
        logger.warning("oarfutures: %s=%r is not days > 0 or 'off': keeping every folder", KEEP_DAYS_VARIABLE, text)
        return None
    return days


def clean_default_folders_soon(base: str) -> None:
    """Start the retention pass over ``base`` on a daemon thread, once per process."""
    global _started
    with _start_lock:
        if _started:
            return
        _started = True
    days = keep_days()
    if days is None:
        return
    thread = threading.Thread(target=_clean_quietly, args=(base, days), name="oarfutures-retention", daemon=True)
    thread.start()


def _clean_quietly(base: str, days: float) -> None:
    try:
        removed = clean_default_folders(base, days)
    except Exception as exc:  # retention is housekeeping: never the user's problem
        logger.warning("oarfutures: cleaning old folders of %s failed: %s", base, exc)
        return
    if removed:
        logger.info("oarfutures: removed %d finished folder(s) older than %g day(s) from %s", len(removed), days, base)


def clean_default_folders(base: str, days: float, now: float | None = None) -> list[str]:
    """Remove the finished folders of ``base`` that nothing changed in for ``days`` days; return their paths."""
    cutoff = (time.time() if now is None else now) - days * 86400
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    removed = []
    for name in sorted(names):
        folder = os.path.join(base, name)
        if DEFAULT_FOLDER_NAME.fullmatch(name) and is_removable(folder, cutoff):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def is_removable(folder: str, cutoff: float) -> bool:
    """A real folder of ours, unchanged since ``cutoff``, with only complete batches and no live client."""
    try:
        info = os.lstat(folder)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        return False
    if last_change(folder) >= cutoff:
        return False
    batches = records.load_all(folder)
    jobs = os.path.join(folder, layout.JOBS)
    records_found = len([n for n in os.listdir(jobs) if n.endswith(".json")]) if os.path.isdir(jobs) else 0
    if records_found != len(batches):  # an unreadable record: its batch might be unfinished
        return False
    return all(b.complete and not _followed(b.client) for b in batches)


def _followed(client: str) -> bool:
    """Whether the process named as a batch's client may still use the folder (this very process included)."""
    return bool(client) and (client == records.client_name() or records.client_alive(client))


def last_change(folder: str) -> float:
    """The latest mtime of the folder, its subfolders and its records: a batch written or tidied touches one."""
    times = [os.stat(folder).st_mtime]
    for sub in (layout.TASKS, layout.RESULTS, layout.DELIVERED, layout.JOBS, layout.LOGS, layout.CLAIMS):
        path = os.path.join(folder, sub)
        try:
            times.append(os.stat(path).st_mtime)
        except OSError:
            continue
    jobs = os.path.join(folder, layout.JOBS)
    try:
        with os.scandir(jobs) as entries:
            times += [e.stat().st_mtime for e in entries]
    except OSError:
        pass
    return max(times)
