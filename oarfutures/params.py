"""Checking scheduler parameters before anything is written or submitted.

Values end up in ``#SBATCH``/``#OAR`` lines of a shell script: a newline there would start a new line of shell, so
every value is checked here and rejected with the parameter's name, never escaped and written.
"""
from __future__ import annotations

import datetime
import math
import os
import re
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

TOKEN = re.compile(r"[A-Za-z0-9_.:+@%/,=\-\[\]]+")  # always fullmatch: "$" would let a trailing newline through
OPTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
FORBIDDEN_IN_LINE = ("\n", "\r", "\x00")
#: what a job folder may not hold: control characters end a directive line; sbatch reads '"' as a quote; OAR
#: writes the log paths and the launching directory into single-quoted Perl and bash strings ("'" and "\\")
FORBIDDEN_IN_FOLDER = re.compile(r"""[\x00-\x1f\x7f"'\\]""")


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
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    text = str(value)
    if not TOKEN.fullmatch(text):
        raise ValueError(f"{name}={value!r} is not allowed: use letters, digits and _.:+@%/,=-[] only")
    return text


def line(name: str, value: Any) -> str:
    """Free text that must stay on one line (properties, setup commands, extra options)."""
    if not isinstance(value, str):  # bytes would render as "b'...'", other objects as their repr
        raise TypeError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    if any(c in value for c in FORBIDDEN_IN_LINE):
        raise ValueError(f"{name}={value!r} must be a single line (no newline, carriage return or NUL)")
    return value


def _number(name: str, value: Any, what: str) -> float:
    """A finite int or float: NaN passes every comparison and inf no conversion, so both are refused here."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def positive_number(name: str, value: Any) -> Optional[float]:
    return None if value is None else _number(name, value, "a positive number")


def non_negative_number(name: str, value: Any) -> float:
    """A finite number >= 0 (0 switches the feature off), e.g. ``steal_seconds``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds >= 0, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
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
    if not math.isfinite(seconds) or seconds <= 0:  # NaN passes "<= 0", and int() of it names no parameter
        raise ValueError(f"{name}={value!r} must be a positive, finite walltime")
    return int(-(-seconds // 1))


def hms(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def setup_lines(name: str, value: Any) -> Tuple[str, ...]:
    """Shell lines run before the worker (module load, conda activate): shell by design, one line each."""
    if isinstance(value, str):
        value = [value]
    return tuple(line(name, item) for item in _sequence(name, value))


def extra_options(name: str, value: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``additional_parameters``: option name -> value (True for a flag), each kept on its own line.

    None and False are refused rather than dropped: "--x=None" was never meant, and silently leaving an option
    out that the user wrote down hides the mistake; leaving the key out says it.
    """
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping of option names to values, got {type(value).__name__}")
    result: Dict[str, Any] = {}
    for key, item in (value or {}).items():
        if not isinstance(key, str) or not OPTION_NAME.fullmatch(key):
            raise ValueError(f"{name} key {key!r} is not an option name: use letters, digits, '-' and '_' only")
        result[key] = _option_value(f"{name}[{key!r}]", item)
    return result


def _option_value(name: str, item: Any) -> Union[bool, str]:
    if item is True:
        return True
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        if not math.isfinite(item):
            raise ValueError(f"{name}={item!r} is not a number a scheduler can read")
        return str(item)
    if isinstance(item, str):
        return line(name, item)
    raise TypeError(f"{name}={item!r}: give a string or a number, or True for a flag (leave the key out to omit it)")


def reserved_option(
    name: str, key: str, reserved: Mapping[str, str], short: Mapping[str, str], allowed: Iterable[str] = ()
) -> None:
    """Refuse an ``additional_parameters`` key naming an option the package sets itself, saying what to use.

    ``short`` maps one-letter options to their long names. The schedulers' option parsers (getopt_long, Perl's
    Getopt::Long) take any unambiguous prefix of a long option, so "outp" is "output" too, unless it is an option
    of its own (``allowed``, e.g. Slurm's "gpus" beside "gpus-per-node").
    """
    option = short.get(key, key.replace("_", "-").lower())
    for reserved_name, advice in reserved.items():
        abbreviated = len(option) > 1 and reserved_name.startswith(option) and option not in allowed
        if option == reserved_name or abbreviated:
            raise ValueError(f"{name} {key!r} (--{reserved_name}) is not accepted: {advice}")


def job_folder(name: str, path: Union[str, "os.PathLike[str]"]) -> str:
    """The absolute job folder, refused if a ``#SBATCH``/``#OAR`` line or a log path cannot hold it.

    Spaces and shell characters are fine (the backends quote the folder wherever a shell reads it); control
    characters (a newline ends the directive line), '"' (sbatch's quote character), "'" and backslash (OAR pastes
    the paths into single-quoted Perl and bash) are not.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path, got {type(path).__name__} {path!r}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a text path, got {text!r}")
    text = os.path.abspath(text)  # a relative path is as good as the current folder it is joined to
    if FORBIDDEN_IN_FOLDER.search(text):
        raise ValueError(
            f"{name}={text!r} cannot be written into a job script: no control characters, quotes or backslashes"
        )
    return text


def _sequence(name: str, value: Any) -> Sequence[Any]:
    """A list or tuple of items; bytes would otherwise iterate as one integer per byte."""
    if value is None:
        return ()
    if isinstance(value, (bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a string or a list of strings, got {type(value).__name__} {value!r}")
    return list(value)


def as_tuple(name: str, value: Any) -> Sequence[str]:
    if isinstance(value, str):
        value = [value]
    return tuple(token(name, v) for v in _sequence(name, value))  # type: ignore[misc]
