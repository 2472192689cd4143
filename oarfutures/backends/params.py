"""Checking scheduler parameters before anything is written or submitted.

Values end up in ``#SBATCH``/``#OAR`` lines of a shell script: a newline there would start a new line of shell, so
every value is checked here and rejected with the parameter's name, never escaped and written.
"""

from __future__ import annotations

import datetime
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

from oarfutures import registry

TOKEN = re.compile(r"[A-Za-z0-9_.:+@%/,=\-\[\]]+")  # always fullmatch: "$" would let a trailing newline through
OPTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
FORBIDDEN_IN_LINE = ("\n", "\r", "\x00")
#: what a job folder may not hold: control characters end a directive line; sbatch reads '"' as a quote; OAR
#: writes the log paths and the launching directory into single-quoted Perl and bash strings ("'" and "\\")
FORBIDDEN_IN_FOLDER = re.compile(r"""[\x00-\x1f\x7f"'\\]""")


Checker = Callable[[str, Any], Any]

#: the parameters with one meaning on every backend (the local one accepts and ignores what it cannot apply)
GENERIC = (
    "walltime",
    "timeout_min",
    "nodes",
    "tasks_per_node",
    "cpus_per_task",
    "gpus_per_node",
    "mem_gb",
    "name",
    "setup",
)
BACKEND_PREFIXES = ("oar_", "slurm_", "local_")


def for_backend(values: Mapping[str, Any], backend: str) -> dict[str, Any]:
    """Keep the generic parameters and ``<backend>_`` ones (prefix stripped, overriding the generic one), in
    oarfutures' spelling (submitit's is translated, or refused naming ours: see ``Backend.SUBMITIT_SPELLINGS``).

    The other schedulers' prefixed parameters only apply there, but their names are checked all the same: a typo
    in ``oar_queu`` must not pass silently because this script happens to run on Slurm today.
    """
    own = f"{backend}_"
    check_other_prefixes(values, backend)
    generic = respelled({k: v for k, v in values.items() if not k.startswith(BACKEND_PREFIXES)}, backend)
    prefixed = respelled({k[len(own) :]: v for k, v in values.items() if k.startswith(own)}, backend)
    if prefixed.keys() & WALLTIME_NAMES:  # slurm_time=... wins over a generic timeout_min=..., as in submitit
        generic = {k: v for k, v in generic.items() if k not in WALLTIME_NAMES}
    result = {**generic, **prefixed}
    if "timeout_min" in result:  # submitit's name; walltime in minutes
        minutes = positive_number("timeout_min", result.pop("timeout_min"))
        result.setdefault("walltime", None if minutes is None else minutes * 60)
    return result


#: the two ways of giving a walltime (``timeout_min`` in minutes, as submitit does)
WALLTIME_NAMES = frozenset(("walltime", "timeout_min"))

#: submitit spellings accepted when false (their default, and oarfutures' behaviour), refused when true
SUBMITIT_OFF_ONLY: dict[str, str] = {
    "stderr_to_stdout": "a job's stderr stays in logs/<job>.err beside its .out; executor.logs(future) and "
    "`oarfutures logs` show both",
}


def respelled(values: Mapping[str, Any], backend: str) -> dict[str, Any]:
    """``values`` with submitit's spellings replaced by oarfutures' own; a refused one is a TypeError saying what
    to use, and giving a parameter under both spellings is one too (which one was meant?)."""
    cls = registry.backend_class(backend)
    result: dict[str, Any] = {}
    for key, value in values.items():
        if key in SUBMITIT_OFF_ONLY:
            if value:
                raise TypeError(f"{key}={value!r} is not supported: {SUBMITIT_OFF_ONLY[key]}")
            continue
        advice = cls.SUBMITIT_REFUSED.get(key)
        if advice is not None:
            raise TypeError(f"{key} (a submitit parameter) is not accepted by oarfutures: {advice}")
        target = cls.SUBMITIT_SPELLINGS.get(key, key)
        if target != key and target in values:
            raise TypeError(f"{key} is submitit's spelling of {target}: give one of them, not both")
        result[target] = value
    return result


def parameter_names(backend: str) -> Iterable[str]:
    """Every parameter name a backend takes: its checkers' and submitit's spellings of them."""
    cls = registry.backend_class(backend)
    return set(cls.CHECKERS) | set(GENERIC) | set(cls.SUBMITIT_SPELLINGS) | set(SUBMITIT_OFF_ONLY)


def check_other_prefixes(values: Iterable[str], backend: str) -> None:
    """Refuse a name prefixed for another backend that this other backend would refuse (``oar_queu`` on Slurm)."""
    for key in values:
        other = next((p[:-1] for p in BACKEND_PREFIXES if key.startswith(p)), None)
        if other is None or other == backend:
            continue
        name = key[len(other) + 1 :]
        advice = registry.backend_class(other).SUBMITIT_REFUSED.get(name)
        if advice is not None:
            raise TypeError(f"{key} (a submitit parameter) is not accepted by oarfutures: {advice}")
        valid = parameter_names(other)
        if name not in valid:
            listed = ", ".join(sorted(valid))
            executor = registry.executor_name(other)
            raise TypeError(f"unknown {executor} parameter {name!r} in {key!r}; valid ones are: {listed}")


def changed_from_defaults(given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor keywords the caller changed: an untouched default must not count as given, or
    ``SlurmPoolExecutor(job_name="x")`` would clash with the default ``name``, and ``slurm_name=`` could not
    override it."""
    return {key: value for key, value in given.items() if key not in defaults or not _same(value, defaults[key])}


def _same(value: Any, default: Any) -> bool:
    """The default itself, or an equal value of its type: ``True == 1``, but ``nodes=True`` is a mistake to name."""
    return value is default or (type(value) is type(default) and value == default)


def check_all(values: Mapping[str, Any], checkers: Mapping[str, Checker], what: str) -> dict[str, Any]:
    """Check every value with its checker; unknown names are a TypeError listing the valid ones."""
    check_names(values, checkers, what)
    return {key: checkers[key](key, value) for key, value in values.items()}


def check_names(given: Iterable[str], valid: Iterable[str], what: str) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise TypeError(f"unknown {what} {', '.join(map(repr, unknown))}; valid ones are: {', '.join(sorted(valid))}")


def token(name: str, value: Any) -> str | None:
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


def positive_number(name: str, value: Any) -> float | None:
    return None if value is None else _number(name, value, "a positive number")


def non_negative_number(name: str, value: Any) -> float:
    """A finite number >= 0 (0 switches the feature off), e.g. ``steal_seconds``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds >= 0, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return value


def optional_line(name: str, value: Any) -> str | None:
    return None if value is None else line(name, value)


def positive_int(name: str, value: Any) -> int | None:
    """A count that may be left unset (None: the scheduler's default, e.g. ``gpus_per_node``)."""
    return None if value is None else required_positive_int(name, value)


def required_positive_int(name: str, value: Any) -> int:
    """A count that has no unset meaning (``nodes``, ``checkpoint_seconds``): None is refused here, naming it,
    rather than failing at the first submission as ``None * 1`` or being written as ``--nodes=None``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def non_negative_int(name: str, value: Any) -> int:
    """A count where 0 means none (``max_resubmissions``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def identifier(name: str, value: Any) -> str:
    """A name pasted into an expression of the scheduler's (OAR's ``memory_property``): letters, digits, '_'."""
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise ValueError(f"{name}={value!r} is not a property name: letters, digits and '_', not starting with a digit")
    return value


def walltime_seconds(name: str, value: Any) -> int | None:
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


def setup_lines(name: str, value: Any) -> tuple[str, ...]:
    """Shell lines run before the worker (module load, conda activate): shell by design, one line each."""
    if isinstance(value, str):
        value = [value]
    return tuple(line(name, item) for item in _sequence(name, value))


def module_names(name: str, value: Any) -> tuple[str, ...]:
    """Modules to import by name (``preload``): dotted identifiers, which no command line or path reads otherwise."""
    if isinstance(value, str):
        value = [value]
    names = tuple(_sequence(name, value))
    for item in names:
        if not isinstance(item, str) or not MODULE_NAME.fullmatch(item):
            raise ValueError(f"{name}: {item!r} is not a module name (dotted Python identifiers, like 'dask.local')")
    return names


def extra_options(name: str, value: Mapping[Any, Any] | None) -> dict[str, Any]:
    """``additional_parameters``: option name -> value (True for a flag), each kept on its own line.

    None and False are refused rather than dropped: "--x=None" was never meant, and silently leaving an option
    out that the user wrote down hides the mistake; leaving the key out says it.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping of option names to values, got {type(value).__name__}")
    result: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not OPTION_NAME.fullmatch(key):
            raise ValueError(f"{name} key {key!r} is not an option name: use letters, digits, '-' and '_' only")
        result[key] = _option_value(f"{name}[{key!r}]", item)
    return result


def _option_value(name: str, item: Any) -> bool | str:
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


def path_text(name: str, path: Any) -> str:
    """A path given as text or ``os.PathLike``, as text; bytes, other objects and control characters (a NUL,
    a newline: no script line or file name should hold one) are refused naming the parameter."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path, got {type(path).__name__} {path!r}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a text path, got {text!r}")
    if CONTROL_CHARACTER.search(text):
        raise ValueError(f"{name}={text!r} must not hold control characters (newline, NUL...)")
    return text


def job_folder(name: str, path: str | os.PathLike[str]) -> str:
    """The absolute job folder, refused if a ``#SBATCH``/``#OAR`` line or a log path cannot hold it.

    Spaces and shell characters are fine (the backends quote the folder wherever a shell reads it); control
    characters (a newline ends the directive line), '"' (sbatch's quote character), "'" and backslash (OAR pastes
    the paths into single-quoted Perl and bash) are not.
    """
    text = os.path.abspath(path_text(name, path))  # a relative path is as good as the current folder it is joined to
    if FORBIDDEN_IN_FOLDER.search(text):
        raise ValueError(
            f"{name}={text!r} cannot be written into a job script: no control characters, quotes or backslashes"
        )
    return text


#: sbatch options submitit takes as parameters of their own, which Slurm executors take too (one
#: ``#SBATCH --<option>=<value>`` line each; ``additional_parameters`` holds any other option)
SBATCH_OPTIONS = (
    "constraint",
    "exclude",
    "gres",
    "comment",
    "nodelist",
    "exclusive",
    "wckey",
    "mail_type",
    "mail_user",
    "cpus_per_gpu",
    "gpus_per_task",
    "mem_per_gpu",
    "mem_per_cpu",
)
#: sbatch splits its directives at blanks into one list of words, reads quotes and backslashes, and takes an
#: unescaped '#' for the start of a comment
SBATCH_VALUE = re.compile(r"[^\s\"'\\#\x00-\x1f\x7f]+")
SBATCH_VALUE_RULE = "one word, no blanks, quotes, backslashes, '#' or control codes"


def sbatch_value(name: str, value: Any) -> bool | str | None:
    """The value of one of ``SBATCH_OPTIONS``: None, "" and False leave it out (submitit's defaults), True is a
    flag (``exclusive=True``), a number or a word its value (``constraint="v100&ib"``, ``nodelist="n[1-4]"``)."""
    if value is None or value is False or value == "":
        return None
    if value is True:
        return True
    if isinstance(value, int) and value > 0:
        return str(value)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, a positive integer or True, got {type(value).__name__} {value!r}")
    if not SBATCH_VALUE.fullmatch(value):
        raise ValueError(f"{name}={value!r} is not allowed: {SBATCH_VALUE_RULE}")
    return value


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
