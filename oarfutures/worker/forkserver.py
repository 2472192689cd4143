"""The local backend's fork server: ``python -u -m oarfutures.worker.forkserver CONTROL_FD CLIENT_PID [PRELOAD]``.

Each resident worker (``worker.resident``) used to be an interpreter of its own, and starting one costs ~0.1 s of
CPU (most of it importing ``cloudpickle``), paid again after every crash and every idle spell. This process pays
it once per executor: it imports the worker's modules and ``cloudpickle``, then forks a worker each time its
client asks, in about a millisecond. It runs no thread, so forking it is safe, unlike forking the client
(``ProcessPoolExecutor``'s ``fork``, which CPython is moving away from for that reason).

The control socket (``SOCK_SEQPACKET``: one JSON message per packet, file descriptors alongside) carries, from the
client, ``{"fork": TOKEN}`` with the worker's request pipe, reply pipe, stdout and stderr, and ``{"signal": SIG,
"pid": PID}``; and to it ``{"forked": TOKEN, "pid": PID}`` (or ``"error"``) and ``{"exited": PID, "status":
CODE}`` once a worker has been reaped (``subprocess``'s convention: ``-SIG`` if a signal killed it), since only
this process, the workers' parent, can learn how they ended. Signals go through here too: a pid is signalled only
while it is an unreaped child of this process, so a signal never reaches a process that took a dead worker's pid.

``PRELOAD`` (JSON: ``{"modules": [...], "path": [...]}``, the executor's ``preload``) names modules this process
imports before it forks any worker, the client's import path after its own, so that every worker has them as a
``ProcessPoolExecutor`` worker has its client's, instead of importing them itself (dask: 0.1 s of CPU per worker). A
module that starts a thread when imported makes this process unsafe to fork: it then says so and exits
(``PRELOAD_REFUSED``), which fails the calls with that status; the client starts no other server for them.

A worker reads its environment and working directory, the client's at the moment it asked, as the first line on
its request pipe, then serves requests as ``worker.resident`` describes. A worker dies with this process, and this
process with its client (``PR_SET_PDEATHSIG``), as a job dies with its scheduler. Closing the control socket
tells this process to leave.
"""

import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import traceback

import cloudpickle  # noqa: F401  (imported once here rather than in every worker: most payloads need it)

from oarfutures.protocol.signals import PRELOAD_REFUSED
from oarfutures.worker import resident
from oarfutures.worker.taskfiles import add_client_path

WORKER_FDS = 4  # request pipe, reply pipe, stdout, stderr


def serve_forks(control):
    """Fork a worker per request until the client closes the control socket (or dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the client and the calls, not for their parent
    wake_read, wake_write = os.pipe()
    for fd in (wake_read, wake_write):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a handler of our own, so that it writes wake_write
    children: set = set()
    server = os.getpid()
    # what the server imported stays in the workers, untouched by their garbage collections, which would otherwise
    # copy every page of it into each worker (copy on write)
    gc.freeze()
    while True:
        ready = select.select([control, wake_read], [], [])[0]
        if wake_read in ready:
            while _read_some(wake_read):
                pass
        _reap(control, children)
        if control not in ready:
            continue
        message, fds, _, _ = socket.recv_fds(control, 4096, WORKER_FDS)
        if not message:
            return
        request = json.loads(message)
        if "signal" in request:
            if request["pid"] in children:  # not reaped: still this worker, not a process that took its pid
                os.kill(request["pid"], request["signal"])
            continue
        try:
            pid = os.fork()
        except OSError as exc:
            _send(control, {"forked": request["fork"], "error": str(exc)})
        else:
            if pid == 0:
                _become_worker(control, (wake_read, wake_write), fds, server)
            children.add(pid)
            _send(control, {"forked": request["fork"], "pid": pid})
        finally:
            for fd in fds:  # the worker has its own copies now (the child never comes back here)
                os.close(fd)


def _read_some(fd):
    try:
        return os.read(fd, 512)
    except BlockingIOError:
        return b""


def _reap(control, children):
    """Tell the client how each worker that ended since the last look ended."""
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        children.discard(pid)
        _send(control, {"exited": pid, "status": os.waitstatus_to_exitcode(status)})


def _send(control, message):
    control.send(json.dumps(message).encode())


def _become_worker(control, wake, fds, server):
    """In the forked child: undo what only the server needed, take the client's descriptors, and serve."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        control.close()
        for fd in wake:
            os.close(fd)
        requests, replies, out, err = fds
        for fd, target in ((out, 1), (err, 2)):
            os.dup2(fd, target)
            os.close(fd)
        for fd in (requests, replies):  # nothing a call starts may hold them: the client reads its end to EOF
            os.set_inheritable(fd, False)
        die_with(server)
        requests = os.fdopen(requests, "r")
        setup = requests.readline()
        if setup:
            _take_setting(json.loads(setup))
            resident.serve(requests, replies)
        resident.flush_output()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)  # as ProcessPoolExecutor's workers leave: no interpreter teardown, and never back in the server loop


def _take_setting(setup):
    """The client's environment and working directory when it asked for this worker, as a new process gets them."""
    os.environ.clear()
    os.environ.update(setup["environment"])
    if setup["cwd"] is not None:
        try:
            os.chdir(setup["cwd"])
        except OSError:  # removed since: the worker runs where the server does, as a new process would have
            pass


def die_with(parent):
    """Be killed when ``parent`` dies (Linux), as a job dies with its scheduler: without it a worker of a killed
    client runs on beside the calls attach() settles. If the parent died before this took effect, this process
    has another parent already: it leaves at once."""
    try:
        import ctypes  # here, not in the client: it costs ~5 ms to import

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def preload(request):
    """Import the modules of ``request`` (see above); one that cannot be imported is named on stderr, and the calls
    that need it fail as they would without it."""
    add_client_path(request["path"])
    for name in request["modules"]:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # a typo, a module this interpreter lacks, an error in the module
            print(f"oarfutures fork server: preload={name!r} could not be imported: {exc!r}", file=sys.stderr)
    if _threads() > 1:  # a forked child would hold copies of locks that no thread of its own can release
        print(
            f"oarfutures fork server: importing preload={request['modules']!r} started a thread, and a process with "
            "threads cannot fork safely: no worker starts (leave out the module that starts it)",
            file=sys.stderr,
        )
        os._exit(PRELOAD_REFUSED)


def _threads():
    try:
        return len(os.listdir("/proc/self/task"))  # also the threads of C libraries (OpenMP pools...)
    except OSError:
        import threading

        return threading.active_count()


if __name__ == "__main__":
    die_with(int(sys.argv[2]))
    if len(sys.argv) > 3:
        preload(json.loads(sys.argv[3]))
    try:
        serve_forks(socket.socket(fileno=int(sys.argv[1])))
    except ConnectionError:  # the client is gone (and this process is about to be killed with it)
        pass
    os._exit(0)
