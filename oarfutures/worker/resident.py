"""A resident worker of the local backend, forked by the backend's fork server (``worker.forkserver``).

Starting an interpreter costs far more than a short call, so the local backend keeps up to ``max_workers`` of these
(as ``ProcessPoolExecutor`` does) and sends each one task after task. Each task runs exactly as in a one-shot job
process (``running.run_task``: the same claim, task files, result file and checkpoint protocol), so ``attach()``
and the CLI see no difference. Its output goes to the worker's spool files and becomes the task's own log files
when the task ends, if it printed anything: a quiet call creates no log file. A call that kills the
process fails only its own task: the backend sees the pipe close, reports the exit status and starts a new worker.

The protocol, one line each way per step, on two pipes that are not the call's stdin or stdout:
the backend writes a JSON request; the worker answers ``started`` once the task listens for the checkpoint signal
(so an ``interrupt()`` is never sent to a worker that would drop it; before it claims the call, so a worker that
dies before ``started`` never ran it), ``ended`` when the call returned and its result is about to be written (the
backend may send the next request now: the worker finds it waiting), and ``done <exit status>`` when the task has
ended; or ``refused <reason>`` if the task cannot start (the spool files cannot be opened).
"""

import contextlib
import functools
import json
import os
import signal
import sys
import threading
import traceback

from oarfutures.protocol import layout
from oarfutures.protocol.signals import CHECKPOINT_SIGNAL
from oarfutures.worker.running import TaskRun, run_task
from oarfutures.worker.taskfiles import HOST, BatchFiles


def serve(requests, replies):
    """Run requested tasks until the backend closes the request pipe (idle, shutdown) or dies."""
    console = os.dup(1), os.dup(2)  # the client's own stdout/stderr, where output goes while no spool is in place
    batch_files = _LastBatch()
    # its job ids are task ids, which its claims' names say already: one owner for all its calls, so that they
    # all link to one owner file (see layout.claim)
    owner = layout.run_owner(None, HOST, os.getpid())
    environment: dict = {}  # the job variables as the last request set them: most stay the same from call to call
    spool = None
    spares = _Spares()
    try:
        for line in requests:
            request = json.loads(line)
            for name, value in request["environment"].items():
                if environment.get(name) != value:
                    os.environ[name] = environment[name] = value
            task = _Task(request["folder"], request["batch"], request["index"], owner, spares)
            if spool is None or spool.folder != task.folder:
                if spool is not None:
                    spool.close()
                    spool = None
                try:
                    spool = _Spool(task.folder, console)
                except OSError as exc:  # the task cannot start, the worker can go on with the next one
                    os.write(replies, f"refused {exc}\n".encode())
                    continue
            task.before_result = functools.partial(_call_ended, task, replies, spool, request["logs"])
            code = _run(task, replies, batch_files.open)
            # what it printed instead of a result (say, why it did not run); after a result nothing of ours prints
            if code or not task.logs_published:
                spool.publish(request["logs"])
            os.write(replies, f"done {code}\n".encode())
    finally:
        if spool is not None:
            spool.close()
        spares.close()
        layout.drop_owner_files()


class _Task(TaskRun):
    """A task this worker runs: its result goes into a spare file, made while calls run (``_Spares``)."""

    def __init__(self, folder, batch, index, owner, spares):
        super().__init__(folder, batch, index, owner)
        self.durable = False  # a crash of this machine takes the client and its futures with it
        self.logs_published = False  # the call's output became its logs, just before its result
        self.spare = functools.partial(spares.take, folder)
        self._spares = spares

    def enter_call(self):
        self._spares.want(self.folder)  # (the thread makes more now, if few are left, while the call runs)
        super().enter_call()


def _call_ended(task, replies, spool, logs):
    """Just before the result is written: the backend may send the next call now, which this worker then finds
    waiting when it is done; and the call's output becomes its logs, complete before its result appears."""
    os.write(replies, b"ended\n")
    spool.publish(logs)
    task.logs_published = True


class _Spares:
    """The empty files the worker's next results are written into (``layout.spare_result_paths``), made ahead by a
    thread of its own while calls run: creating a file costs 0.03-0.9 ms of CPU on some disks, which then delays
    neither a call nor its result. The thread makes them several at a time, once only a few are left: waking it
    for each call cost more CPU (two context switches and a handful of futex calls) than the file itself on a fast
    disk. A result is written into the open descriptor, which the thread made for it alone."""

    LOW = 2  # the thread is woken when no more than this many are left

    def __init__(self):
        self._lock = threading.Lock()
        self._folder = None  # the folder they are made for: the last task's
        self._names = []  # the spares' paths in that folder (looked at for every file made)
        self._ready = []  # (path, open descriptor) of those made for it, oldest first
        self._taken = None  # the path of the one given to the last result: reusable once that result is written
        self._making = False  # the thread was woken and has not finished
        self._closed = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._make, name="oarfutures-spare", daemon=True)
        self._thread.start()

    def want(self, folder):
        """A task of ``folder`` starts: the last result is written, and its name can be made again."""
        with self._lock:
            self._taken = None
            if folder != self._folder:
                stale, self._ready, self._folder = self._ready, [], folder
                self._names = layout.spare_result_paths(folder, os.getpid())
            else:
                stale = []
            wake = len(self._ready) <= self.LOW and not self._making
            self._making = self._making or wake
        for spare in stale:
            _discard(spare)
        if wake:
            self._wake.set()

    def take(self, folder):
        """A spare of ``folder`` as (path, open descriptor), now the caller's to write, close and rename; None if
        none is ready (the caller makes a file of its own)."""
        with self._lock:
            if folder != self._folder or not self._ready:
                return None
            spare = self._ready.pop(0)
            self._taken = spare[0]
            return spare

    def _make(self):
        while True:
            self._wake.wait()
            self._wake.clear()
            while True:
                with self._lock:
                    if self._closed:
                        return
                    folder = self._folder
                    busy = {path for path, _ in self._ready} | {self._taken}
                    free = [name for name in self._names if name not in busy]
                    if not free:
                        self._making = False
                        break
                    path = free[0]
                try:
                    made = path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
                except OSError:  # the folder is gone: results make files of their own
                    with self._lock:
                        self._making = False
                    break
                with self._lock:
                    kept = folder == self._folder and not self._closed
                    if kept:
                        self._ready.append(made)
                if not kept:  # made for a folder left meanwhile
                    _discard(made)

    def close(self):
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, []
        self._wake.set()
        self._thread.join(timeout=5)
        for spare in ready:
            _discard(spare)


def _discard(spare):
    """Close and remove a spare (path, descriptor) that no result will be written into."""
    if spare is not None:
        os.close(spare[1])
        with contextlib.suppress(OSError):
            os.remove(spare[0])


def _run(task, replies, open_batch):
    task.listen()
    os.write(replies, b"started\n")
    try:
        return run_task(task, open_batch=open_batch)
    except Exception:  # our own failure (say, the disk is full): the job fails with it, as a one-shot worker would
        traceback.print_exc()
        return 1
    finally:
        # a checkpoint signal from now on was meant for the task that just ended: it must not reach the next one
        signal.signal(CHECKPOINT_SIGNAL, signal.SIG_IGN)


class _Spool:
    """This worker's two spool files (``layout.publish_spool``), in place of its file descriptors 1 and 2: the
    output of the calls it runs, C code's and subprocesses' included. They stay in place from call to call, as
    the worker prints nothing between calls (each change of descriptors cost a system call per call); the
    console (the client's own stdout and stderr) is back once the spool is closed."""

    def __init__(self, folder, console):
        self.folder = folder
        self.console = console
        self.paths = layout.spool_paths(folder, os.getpid())
        out = self._open(self.paths[0])
        try:
            err = self._open(self.paths[1])
        except OSError:
            os.close(out)
            raise
        flush_output()
        for target, fd in ((1, out), (2, err)):
            self._put(fd, target)

    @staticmethod
    def _open(path):
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)

    @staticmethod
    def _put(fd, target):
        os.dup2(fd, target)
        os.close(fd)

    def publish(self, logs):
        """The call's output, if any, becomes its log files (before its result appears: a finished future's
        logs are complete)."""
        flush_output()
        for target, path, log in zip((1, 2), self.paths, logs):
            if os.fstat(target).st_size and layout.publish_spool(path, log):
                self._put(self._open(path), target)

    def close(self):
        flush_output()
        for target, saved, path in zip((1, 2), self.console, self.paths):
            os.dup2(saved, target)
            with contextlib.suppress(OSError):  # (not empty: a call's child process still writes to it)
                if os.path.getsize(path) == 0:
                    os.remove(path)


class _LastBatch:
    """The files of the batch this worker ran last, kept open: a map's tasks come one after the other."""

    def __init__(self):
        self._key, self._files = None, None

    def open(self, folder, batch):
        if self._key != (folder, batch):
            if self._files is not None:
                self._files.close()
            self._key, self._files = None, None
            self._files = BatchFiles(folder, batch)
            self._key = (folder, batch)
        return self._files


def flush_output():
    """C stdio needs no flush: the worker runs under ``python -u``, which also makes C's stdout unbuffered."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a call may have replaced or closed them
            pass
