"""Scheduler names and what serves each: the one table ``AutoPoolExecutor``, the command line and ``attach()`` read.

A batch record names its scheduler ("slurm", "oar", "local"); whoever meets such a name looks it up here instead
of branching on it. Entries are dotted paths, imported on first use: the command line of a Slurm folder never
imports OAR's module, and the job side never imports this table at all.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple


class Scheduler(NamedTuple):
    backend: str  # "module:Class" of its ``backends.base.Backend``, which also says if it answers here
    executor: str  # "module:Class" of its public executor


SCHEDULERS: dict[str, Scheduler] = {
    "slurm": Scheduler("oarfutures.backends.slurm:SlurmBackend", "oarfutures.executors:SlurmPoolExecutor"),
    "oar": Scheduler("oarfutures.backends.oar:OarBackend", "oarfutures.executors:OarPoolExecutor"),
    "local": Scheduler("oarfutures.backends.local:LocalBackend", "oarfutures.executors:LocalPoolExecutor"),
}
NAMES: tuple[str, ...] = tuple(SCHEDULERS)
#: the schedulers ``AutoPoolExecutor`` tries, in this order (``Backend.answers_here``), before the local one: OAR
#: first, as a Grid'5000 front-end may also carry Slurm's clients
DETECTION_ORDER: tuple[str, ...] = ("oar", "slurm")


def _load(dotted: str) -> Any:
    module, name = dotted.split(":")
    return getattr(importlib.import_module(module), name)


def backend_class(name: str) -> Any:
    """The backend class of scheduler ``name``; KeyError for a name this version does not know."""
    return _load(SCHEDULERS[name].backend)


def executor_name(name: str) -> str:
    """The public executor's class name of scheduler ``name``, for messages (nothing is imported)."""
    return SCHEDULERS[name].executor.rpartition(":")[2]


def executor_class(name: str) -> Any:
    """The public executor class of scheduler ``name``; KeyError for a name this version does not know."""
    return _load(SCHEDULERS[name].executor)
