"""What a result file says of its calls, read without running its code: the command line may not even be able to
import the classes of the values it holds (they live in the user's program)."""

from __future__ import annotations

import pickle
from typing import Any

from oarfutures.protocol import results


class _Opaque:
    """Stands for any object of a result while only its structure is read (no user class is imported)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _SkeletonUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _Opaque

    def persistent_load(self, pid: Any) -> Any:
        return None


def result_errors(path: str) -> tuple[int, list[str], float | None]:
    """(number of calls, "Type: message" of each failed call, when the run began if the worker said) of a result
    file, without running its code.

    The outcomes' values are not rebuilt (their classes may not even be importable here): only the tags and the
    error texts the worker stored as plain strings are read. An unreadable file counts as one failure.
    """
    try:
        with open(path, "rb") as f:
            data = _SkeletonUnpickler(f).load()
        outcomes = [results.outcome(item) for item in data["outcomes"]]
        errors = [f"{o.type_name}: {o.message}" for o in outcomes if isinstance(o, results.Raised)]
        started = data.get("started")
        return len(outcomes), errors, started if isinstance(started, float) else None
    except FileNotFoundError:
        raise
    except Exception as exc:
        return 0, [f"CorruptResultError: result file cannot be read ({exc!r})"], None
