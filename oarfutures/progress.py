"""A progress bar for long maps and as_completed loops: tqdm when it is installed, nothing otherwise."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def track(iterable: Iterable[T], total: int | None = None, description: str = "oarfutures") -> Iterator[T]:
    """``for y in track(ex.map(f, xs), total=len(xs))`` or ``for f in track(as_completed(futures))``."""
    try:
        from tqdm import tqdm
    except ImportError:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with tqdm(total=total, desc=description, unit="call") as bar:
        for item in iterable:
            yield item
            bar.update(1)
