"""A task's result file, ``results/<batch>_<i>.pkl``: what each of its calls did, written by the worker.

On disk it is a pickle of ``{"outcomes": [...], "resubmissions": n}`` (plus ``"stolen_by": job id`` when another
job of the array ran the task), one outcome per call, in call order, each a plain tuple:

- ``("ok", value)``: the call returned ``value`` (``Returned``);
- ``("error", pickled exception or None, type name, message, traceback text)``: it raised (``Raised``). The
  exception travels pickled (with its traceback, by tblib) and, for readers that cannot or will not unpickle it
  (the command line, an exception class missing on the client), as plain strings too.

Plain tuples, so that reading a result needs none of our classes; in memory they are the named tuples below,
which index as the tuples do. A multi-task job's ranks write the same format, one outcome each, under
``layout.rank_path``. The worker imports this at every start: tblib and traceback only when a call fails.
"""

import pickle
from operator import itemgetter

OK, ERROR = "ok", "error"


class _Named(tuple):
    """A tuple with named fields, built from a tuple: ``collections.namedtuple`` would cost every worker start
    0.1 to 0.3 ms per class (it compiles code for each), ``typing.NamedTuple`` the import of typing."""

    __slots__ = ()
    _fields: "tuple[str, ...]" = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={v!r}' for n, v in zip(self._fields, self))})"


class Returned(_Named):
    """A call that returned ``value`` (``tag`` is always ``OK``)."""

    __slots__ = ()
    _fields = ("tag", "value")
    ok = True
    tag = property(itemgetter(0))
    value = property(itemgetter(1))


class Raised(_Named):
    """A call that raised (``tag`` is always ``ERROR``): the pickled exception (None if it cannot travel), its
    type's qualified name, ``str()`` of it and the formatted remote traceback."""

    __slots__ = ()
    _fields = ("tag", "exception", "type_name", "message", "traceback")
    ok = False
    tag = property(itemgetter(0))
    exception = property(itemgetter(1))
    type_name = property(itemgetter(2))
    message = property(itemgetter(3))
    traceback = property(itemgetter(4))

    def to_exception(self) -> BaseException:
        """The remote exception with its traceback text as ``__cause__``, or a ``RemoteError`` stand-in."""
        from oarfutures.errors import RemoteTraceback

        exc: BaseException
        try:
            exc = pickle.loads(self.exception) if self.exception is not None else self._stand_in()
        except Exception:
            exc = self._stand_in()
        exc.__cause__ = RemoteTraceback(self.traceback)
        return exc

    def _stand_in(self) -> BaseException:
        from oarfutures.errors import RemoteError

        return RemoteError(self.type_name, self.message, self.traceback)


#: the outcome of a call whose future was cancelled before the call started (the client ignores it)
NOT_RUN = Raised((ERROR, None, "CancelledError", "the call was cancelled before it started", ""))


def returned(value: object) -> Returned:
    return Returned((OK, value))


def raised(exc: BaseException, skip_frames: int = 0) -> Raised:
    """The outcome of a call that raised ``exc``, leaving out the ``skip_frames`` outermost frames (the worker's)."""
    import traceback

    tb = exc.__traceback__
    for _ in range(skip_frames):
        tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    exc.__traceback__ = tb
    blob: bytes | None
    try:
        from tblib import pickling_support

        pickling_support.install(exc)
        blob = pickle.dumps(exc)
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt: find out here, not in the client
    except Exception:
        blob = None
    return Raised((ERROR, blob, type(exc).__qualname__, str(exc), text))


def outcome(item: tuple) -> "Returned | Raised":
    """The named outcome of a tuple read from a result file (one of ours, or of its length: checked)."""
    named = Returned(item) if item[0] == OK else Raised(item)
    if len(named) != len(named._fields):
        raise ValueError(f"not an outcome: a tuple of {len(item)} items tagged {item[0]!r}")
    return named


class Result(_Named):
    """A result file read: the outcomes, how many times the task was resubmitted after a checkpoint, and the job
    that ran it when that was not the task's own job (a stealer), else None."""

    __slots__ = ()
    _fields = ("outcomes", "resubmissions", "stolen_by")
    outcomes = property(itemgetter(0))
    resubmissions = property(itemgetter(1))
    stolen_by = property(itemgetter(2))


class CorruptResultError(Exception):
    """A result file exists but cannot be read (truncated, corrupted, written by something else)."""


def dump_result(
    outcomes: "list", resubmissions: int = 0, stolen_by: "str | None" = None, started: "float | None" = None
) -> bytes:
    """The bytes of a result file; a value that cannot be pickled becomes a PicklingError naming its type.
    ``started``: when the run began (``time.time()``), for the command line's runtimes."""
    extra: dict[str, object] = {"stolen_by": stolen_by} if stolen_by else {}
    if started is not None:
        extra["started"] = started
    plain = [tuple(item) for item in outcomes]  # no class of ours on disk
    try:
        return pickle.dumps({"outcomes": plain, "resubmissions": resubmissions, **extra}, pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    safe = []
    for item in plain:
        try:
            pickle.dumps(item)
            safe.append(item)
        except Exception as exc:
            kind = type(item[1]).__qualname__ if item[0] == OK else item[2]
            what = "result" if item[0] == OK else "exception"
            problem = pickle.PicklingError(f"the {what} of type {kind} cannot be pickled: {exc!r}")
            safe.append(tuple(raised(problem)))
    return pickle.dumps({"outcomes": safe, "resubmissions": resubmissions, **extra}, protocol=pickle.HIGHEST_PROTOCOL)


def read_result(path: str, delivered: str = "") -> Result:
    """Read a task's result file; ``delivered`` is where it is looked for when it is gone from ``path`` (another
    client of the same folder may have delivered it first). Raises CorruptResultError, also when it is missing."""
    for candidate in (path, delivered):
        try:
            # unbuffered: the pickle's frames are read whole anyway, and a buffer costs an lseek, an ioctl and
            # an object for every result read
            with open(candidate, "rb", buffering=0) as f:
                data = pickle.load(f)
            outcomes = [outcome(item) for item in data["outcomes"]]
            return Result((outcomes, int(data["resubmissions"]), data.get("stolen_by")))
        except FileNotFoundError as exc:
            missing = exc
            continue
        except Exception as exc:
            raise CorruptResultError(f"result file {candidate} cannot be read: {exc!r}") from exc
    raise CorruptResultError(f"result file {path} cannot be read: {missing!r}") from missing
