"""Reading a task's files, and claiming the task (or one call of it) before anything runs.

The batch's files are written by the client (``core.batchfiles``): the functions pickled once, every task's calls
in one file with an offset index (see ``layout``). A call is a tuple ``(index into the functions, args, kwargs)``.
``pickle.load`` pulls in cloudpickle (or anything else) only when a payload asks for it.
"""

import os
import pickle
import struct
import sys
import types

from oarfutures.protocol import layout, results, variables

DYNAMIC_CODE = "<dynamic-code>"  # the file name cloudpickle gives code it pickled by value
KNOWN_FUNCTIONS_KEPT = 16  # the latest few: a dask graph alternates between a handful of functions
#: only functions pickled this small are kept for later batches: a larger pickle holds data (a closure's model,
#: say), which 16 kept functions would pin in the worker's memory, and whose unpickling a cache would barely shorten
KNOWN_FUNCTION_BYTES = 64 * 1024
_known_functions: dict = {}  # plain functions unpickled for earlier batches, by their pickled bytes and origins


class BatchFiles:
    """A batch's task files, checked and opened once: a resident local worker runs many tasks of one batch.

    Plain functions are unpickled once too and kept from call to call, as a ``ProcessPoolExecutor`` worker keeps
    the modules it imported (a call sees what earlier calls in the same worker did to its globals, as it would
    there); also across batches whose functions were pickled to the same few bytes (dask and joblib send the same
    function in batch after batch, and unpickling it again cost each of their calls ~0.1 ms). Any other callable
    (an object with ``__call__``, a ``functools.partial``) is unpickled for each task, as ``ProcessPoolExecutor``
    unpickles it for each call: a call never sees what an earlier one did to it.
    """

    def __init__(self, folder, batch):
        path = layout.batch_path(folder, batch)
        self._fd = os.open(path, os.O_RDONLY)
        try:
            layout.check_private(folder, os.path.join(folder, layout.TASKS), path)
            header = struct.calcsize(layout.TASK_FILE_HEADER)
            head_size, tasks = struct.unpack(layout.TASK_FILE_HEADER, os.pread(self._fd, header, 0))
            self.meta, self.fn_blob = pickle.loads(os.pread(self._fd, head_size, header))
        except BaseException:
            os.close(self._fd)
            raise
        self._offsets = header + head_size  # then the N+1 offsets, then the calls
        self._calls = self._offsets + 8 * (tasks + 1)
        self._functions = None

    def functions(self):
        if self._functions is not None:
            return self._functions
        add_client_path(self.meta["sys_path"])
        # (a large pickle is not even looked up: hashing it would cost more than a small one's unpickling)
        key = (self.fn_blob, tuple(self.meta["origins"])) if len(self.fn_blob) <= KNOWN_FUNCTION_BYTES else None
        if key in _known_functions:
            self._functions = _known_functions[key]
            return self._functions
        functions = pickle.loads(self.fn_blob)
        restore_file_names(functions, self.meta["origins"])
        if all(isinstance(f, (types.FunctionType, types.BuiltinFunctionType)) for f in functions):
            self._functions = functions
            if key is not None:
                _remember(key, functions)
        return functions

    def calls(self, index):
        start, end = struct.unpack("<QQ", os.pread(self._fd, 16, self._offsets + 8 * index))
        return pickle.loads(os.pread(self._fd, end - start, self._calls + start))

    def close(self):
        os.close(self._fd)


def add_client_path(paths):
    """The client's import path, after ours: modules next to the user's script (or a test folder) import here."""
    sys.path.extend(p for p in paths if p not in sys.path)


def _remember(key, functions):
    if len(_known_functions) >= KNOWN_FUNCTIONS_KEPT:
        del _known_functions[next(iter(_known_functions))]  # the oldest
    _known_functions[key] = functions


def read_task(folder, batch, index, files=None, resumable=True):
    """Return (meta, functions, calls, outcomes so far, resubmissions so far) of one task.

    A checkpointed task's resume file, when there is one, replaces its slice of the batch: the calls still to
    run, with what the earlier runs already returned.
    ``files``: the batch's files already opened (a resident worker's); else they are opened and closed here.
    ``resumable=False``: this run took the task's claim first (``FIRST_RUN``), so no earlier run left a resume
    file, and none is looked for.
    """
    own = files is None
    files = BatchFiles(folder, batch) if own else files
    try:
        meta = files.meta
        functions = files.functions()
        resume = layout.resume_path(folder, batch, index) if resumable else ""
        if resume and os.path.exists(resume):
            layout.check_private(resume)
            with open(resume, "rb") as f:
                state = pickle.load(f)
            done = [results.outcome(item) for item in state["done"]]
            return meta, state["functions"], state["calls"], done, state["resubmissions"]
        return meta, functions, files.calls(index), [], 0
    finally:
        if own:
            files.close()


def restore_file_names(functions, origins):
    """Give code pickled by value its real file name back, so remote tracebacks show the user's source lines.

    cloudpickle names such code ``<dynamic-code>``; the client recorded where each function came from.
    Functions and classes it uses from the same module (its globals, its closure) get the same name.
    """
    for fn, origin in zip(functions, origins):
        if origin is None or (not _is_dynamic(fn) and not _is_dynamic(type(fn).__call__)):
            continue  # pickled by reference: its code already names its file
        targets = [fn, type(fn)] + list(getattr(fn, "__globals__", {}).values())
        targets += [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _cell_filled(c)]
        for target in targets:
            members = list(vars(target).values()) if isinstance(target, type) else []
            for candidate in [target] + members:
                if _is_dynamic(candidate):
                    try:
                        candidate.__code__ = _renamed(candidate.__code__, origin)
                    except (AttributeError, TypeError):
                        pass


def _is_dynamic(obj):
    code = getattr(obj, "__code__", None)
    return isinstance(code, types.CodeType) and code.co_filename == DYNAMIC_CODE


def _cell_filled(cell):
    try:
        cell.cell_contents  # noqa: B018 - reading it is the test: an empty cell raises
    except ValueError:
        return False
    return True


def _renamed(code, filename):
    consts = tuple(_renamed(c, filename) if hasattr(c, "co_filename") else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


# ---------------------------------------------------------------------------------------------- claims
HOST = os.uname().nodename


def job_owner():
    """What this process writes into the claims it takes: who to follow, or to kill, for the call."""
    return layout.run_owner(os.environ.get(variables.JOB_ID), HOST, os.getpid())


#: what ``claim_task`` returns when this run took the claim first (any other true value: it resumes a checkpoint)
FIRST_RUN = "first run"


def claim_task(folder, batch, index, owner):
    """Win the task's claim before running anything: a call runs once, and never after its cancel() won.

    A run that finds the claim held by an earlier run of the same task goes on only if that run checkpointed
    (its resume file exists); otherwise the task already ran (say, a scheduler requeued it after a node failure)
    and running it twice is what the claim prevents. True (``FIRST_RUN`` if no run held it before) if it may run.
    """
    path = layout.claim_path(folder, batch, index)
    try:
        if layout.claim(path, owner):
            return FIRST_RUN
        holder = layout.claim_owner(path) or ""
    except OSError as exc:
        print(f"oarfutures worker: cannot claim task {layout.task_id(batch, index)}: {exc}", file=sys.stderr)
        return False
    if layout.parse_run_owner(holder) and os.path.exists(layout.resume_path(folder, batch, index)):
        return True
    why = "its future was cancelled" if holder == layout.CANCELLED else f"it was started before ({holder})"
    print(f"oarfutures worker: task {layout.task_id(batch, index)} not run: {why}", file=sys.stderr)
    return False


def claim_call(folder, batch, index, call, owner):
    """The claim of one call of a task of several: cancel() of one future of a chunk takes this one."""
    path = layout.claim_path(folder, batch, index, call)
    try:
        if layout.claim(path, owner):
            return True
        return layout.parse_run_owner(layout.claim_owner(path)) is not None  # ours, from a run before a checkpoint
    except OSError:  # the batch's files were removed meanwhile (aborted, cleaned): run nothing more
        return False
