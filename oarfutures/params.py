"""Checking scheduler parameters before anything is written or submitted.

Values end up in ``#SBATCH``/``#OAR`` lines of a shell script: a newline there would start a new line of shell, so
every value is checked here and rejected with the parameter's name, never escaped and written.
"""
from __future__ import annotations

import datetime
import re
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

TOKEN = re.compile(r"^[A-Za-z0-9_.:+@%/,=\-\[\]]+$")
FORBIDDEN_IN_LINE = ("\n", "\r", "\x00")


Checker = Callable[[str, Any], Any]

#: the parameters with one meaning on every backend (the local one accepts and ignores what it cannot apply)
GENERIC = ("walltime", "timeout_min", "nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node", "mem_gb", "name", "setup")
BACKEND_PREFIXES = ("oar_", "slurm_", "local_")


def for_backend(values: Mapping[str, Any], backend: str) -> Dict[str, Any]:
    """Keep the generic parameters and ``<backend>_`` ones (prefix stripped, overriding the generic one);
    drop the other schedulers' prefixed parameters, which only apply there."""
    own = f"{backend}_"
    result = {k: v for k, v in values.items() if not k.startswith(BACKEND_PREFIXES)}
    result.update({k[len(own) :]: v for k, v in values.items() if k.startswith(own)})
    if "timeout_min" in result:  # submitit's name; walltime in minutes
        minutes = result.pop("timeout_min")
        result.setdefault("walltime", None if minutes is None else positive_number("timeout_min", minutes) * 60)
    return result


def check_all(values: Mapping[str, Any], checkers: Mapping[str, Checker], what: str) -> Dict[str, Any]:
    """Check every value with its checker; unknown names are a TypeError listing the valid ones."""
    check_names(values, checkers, what)
    return {key: checkers[key](key, value) for key, value in values.items()}


def check_names(given: Iterable[str], valid: Iterable[str], what: str) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise TypeError(f"unknown {what} {', '.join(map(repr, unknown))}; valid ones are: {', '.join(sorted(valid))}")


def token(name: str, value: Any) -> Optional[str]:
    """A single word (queue, partition, account, job name, memory size): no spaces, quotes or newlines."""
    if value is None:
        return None
    text = str(value)
    if not TOKEN.match(text):
        raise ValueError(f"{name}={value!r} is not allowed: use letters, digits and _.:+@%/,=-[] only")
    return text


def line(name: str, value: Any) -> str:
    """Free text that must stay on one line (properties, setup commands, extra options)."""
    text = str(value)
    if any(c in text for c in FORBIDDEN_IN_LINE):
        raise ValueError(f"{name}={value!r} must be a single line (no newline, carriage return or NUL)")
    return text


def positive_number(name: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


def optional_line(name: str, value: Any) -> Optional[str]:
    return None if value is None else line(name, value)


def positive_int(name: str, value: Any, allow_none: bool = True) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def walltime_seconds(name: str, value: Any) -> Optional[int]:
    """Seconds from a number of seconds, a timedelta, or "[D-]H:MM:SS" / "MM:SS" text."""
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", value.strip()):
        text = value.strip()
        days = 0
        if "-" in text:
            day_text, text = text.split("-", 1)
            days = int(day_text)
        parts = [int(p) for p in text.split(":")]
        while len(parts) < 3:
            parts.insert(0, 0)
        seconds = days * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    else:
        raise ValueError(f"{name}={value!r} is not a walltime: give seconds, a timedelta or 'H:MM:SS'")
    if seconds <= 0:
        raise ValueError(f"{name}={value!r} must be positive")
    return int(-(-seconds // 1))


def hms(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def setup_lines(name: str, value: Any) -> Tuple[str, ...]:
    """Shell lines run before the worker (module load, conda activate): shell by design, one line each."""
    if isinstance(value, str):
        value = [value]
    return tuple(line(name, item) for item in value or ())


def extra_options(name: str, value: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``additional_parameters``: option name -> value (True for a flag), each kept on its own line."""
    result = {}
    for key, item in (value or {}).items():
        token(f"{name} key", key)
        result[key] = True if item is True else line(f"{name}[{key!r}]", item)
    return result


def as_tuple(name: str, value: Any) -> Sequence[str]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    return tuple(token(name, v) for v in value)  # type: ignore[misc]
