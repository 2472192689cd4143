"""Functions the tests run in workers (importable there: the client's sys.path travels with the task)."""

import os
import signal
import time


def square(x):
    return x * x


def add(a, b):
    return a + b


def raise_value_error(message):
    raise ValueError(message, 42)


def echo_kwargs(*args, **kwargs):
    return args, kwargs


class UnpicklableError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = __import__("threading").Lock()


def raise_unpicklable(message):
    raise UnpicklableError(message)


def return_lock():
    return __import__("threading").Lock()


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def exit_hard(code):
    os._exit(code)


def exit_hard_when(marker, code):
    """Kills its worker (``os._exit``) once ``marker`` exists (at most 60 s): a death at a moment the test picks."""
    deadline = time.monotonic() + 60
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    os._exit(code)


def segfault():
    import ctypes

    ctypes.string_at(0)


def sleep_and_return(seconds, value):
    time.sleep(seconds)
    return value


def record_interval(folder, name, seconds):
    """Write start and end times, so a test can see how many calls ran at once."""
    start = time.time()
    time.sleep(seconds)
    with open(os.path.join(folder, name), "w") as f:
        f.write(f"{start} {time.time()}")
    return name


def touch_and_sleep(path, seconds):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return path


def corrupt_own_result():
    """Write garbage where the worker will look for this task's result, then exit without replacing it."""
    folder, task = os.environ["OARFUTURES_JOB_FOLDER"], os.environ["OARFUTURES_TASK_ID"]
    with open(os.path.join(folder, "results", task + ".pkl"), "wb") as f:
        f.write(b"\x80\x05garbage")
    os._exit(0)


def size_of(data):
    return len(data)


def allocate_megabytes(megabytes):
    block = bytearray(megabytes * 1024 * 1024)
    time.sleep(5)
    return len(block)


def oar_environment():
    """What OAR told the job about itself (the test compares it with the future's job id)."""
    return {key: os.environ.get(key) for key in ("OAR_JOB_ID", "OAR_ARRAY_ID", "OAR_ARRAY_INDEX", "OAR_JOB_NAME")}


from oarfutures import Checkpointable, Resubmission  # noqa: E402


class Counter(Checkpointable):
    """Counts to a target, one step at a time; remembers at which count each run started."""

    def __init__(self):
        self.count = 0
        self.run_starts = []

    def __call__(self, target, step_seconds):
        self.run_starts.append(self.count)
        started = os.path.join(
            os.environ["OARFUTURES_JOB_FOLDER"], "logs", os.environ["OARFUTURES_TASK_ID"] + ".started"
        )
        open(started, "a").close()  # lets a test wait until the call is really running
        while self.count < target:
            time.sleep(step_seconds)
            self.count += 1
        return self.count, self.run_starts


class GivingUpCounter(Counter):
    def checkpoint(self, *args, **kwargs):
        return None


def count_slowly(target, step_seconds):
    """A plain function: not checkpointable."""
    started = os.path.join(os.environ["OARFUTURES_JOB_FOLDER"], "logs", os.environ["OARFUTURES_TASK_ID"] + ".started")
    open(started, "a").close()
    for _ in range(target):
        time.sleep(step_seconds)
    return target


__all__ = ["Resubmission"]  # re-exported for tests that build resubmissions by hand


def whoami(fail_rank=None):
    """Runs in every rank of a multi-task job."""
    from oarfutures import JobEnvironment

    env = JobEnvironment()
    if env.rank == fail_rank:
        raise RuntimeError(f"rank {env.rank} refuses")
    return env.rank, env.local_rank, env.world_size, env.master_addr


def print_and_return(out_text, err_text, value):
    """Writes one line to the job's stdout and one to its stderr (the command line's ``logs`` shows them)."""
    import sys

    print(out_text)
    print(err_text, file=sys.stderr)
    return value


def note_run(folder, name, seconds=0.0):
    """Leave one file per run (a call that runs twice leaves two), then sleep and return ``name``."""
    import os
    import tempfile
    import time

    os.makedirs(folder, exist_ok=True)
    tempfile.mkstemp(prefix=f"{name}.", dir=folder)
    time.sleep(seconds)
    return name


def runs_of(folder, name):
    import os

    return sum(1 for entry in os.listdir(folder) if entry.startswith(f"{name}.")) if os.path.isdir(folder) else 0


def _refuse_to_load(message):
    raise ValueError(message)


class FailsToLoad:
    """An argument that pickles fine in the client and raises when the worker unpickles it."""

    def __init__(self, message):
        self.message = message

    def __reduce__(self):
        return _refuse_to_load, (self.message,)


def _write_own_result(outcomes):
    """Write this task's result file as the worker would (temp file, then rename)."""
    import pickle

    folder, task = os.environ["OARFUTURES_JOB_FOLDER"], os.environ["OARFUTURES_TASK_ID"]
    path = os.path.join(folder, "results", task + ".pkl")
    with open(path + ".tmp-test", "wb") as f:
        pickle.dump({"outcomes": outcomes, "resubmissions": 0}, f)
    os.replace(path + ".tmp-test", path)


def write_two_outcomes_then_exit(x):
    """As the first call of a chunk of 3: leave a result with 2 outcomes only, and exit without the worker's own."""
    _write_own_result([("ok", 1), ("ok", 2)])
    os._exit(0)


def exit_and_write_result_later(delay, value):
    """Exit with no result while a detached helper writes a valid one ``delay`` seconds later (a slow NFS)."""
    import subprocess
    import sys

    folder, task = os.environ["OARFUTURES_JOB_FOLDER"], os.environ["OARFUTURES_TASK_ID"]
    path = os.path.join(folder, "results", task + ".pkl")
    code = (
        "import os, pickle, sys, time\n"
        "time.sleep(float(sys.argv[1]))\n"
        "with open(sys.argv[2] + '.tmp-late', 'wb') as f:\n"
        "    pickle.dump({'outcomes': [('ok', sys.argv[3])], 'resubmissions': 0}, f)\n"
        "os.replace(sys.argv[2] + '.tmp-late', sys.argv[2])\n"
    )
    subprocess.Popen(
        [sys.executable, "-c", code, str(delay), path, str(value)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os._exit(0)


def pid_and_task_id(_=None):
    """Which process ran the call, and the task id its environment names."""
    import os

    return os.getpid(), os.environ["OARFUTURES_TASK_ID"]


def print_everywhere(text):
    """Output through every path a call has: Python, the raw file descriptors, C stdio, a child process."""
    import ctypes
    import os
    import subprocess
    import sys

    print(f"{text} python")
    print(f"{text} python-err", file=sys.stderr)
    os.write(1, f"{text} fd\n".encode())
    ctypes.CDLL(None).printf(f"{text} c-stdio-unflushed".encode())  # no newline: sits in C's buffer
    subprocess.run(["echo", f"{text} child"], check=True)
    return text


def shout(text):
    """Print ``text`` to stdout and stderr (what a task's logs must show), and return it."""
    import sys

    print(f"out: {text}")
    print(f"err: {text}", file=sys.stderr)
    return text


class CountingCall:
    """A callable with state: each call sees the object as it was submitted, however many calls a worker runs."""

    def __init__(self):
        self.calls = 0

    def __call__(self, _):
        self.calls += 1
        return self.calls


def print_then_wait(text, marker):
    """Prints, then returns once ``marker`` exists (at most 60 s): a call whose output is read while it runs."""
    import os
    import time

    print(text, flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    return text


def print_then_kill_self(text):
    """Prints, then dies by SIGKILL: what it printed must still reach its logs."""
    import os
    import signal

    print(text, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def allreduce(timeout=60):
    """Every rank of a multi-task job meets the others at ``master_addr:master_port`` over plain TCP, as
    ``torch.distributed`` would: rank 0 listens there, sums the ranks' values (10 ** rank) and sends the sum back
    to each. Returns what the rank knows: (rank, local_rank, world_size, node, master_addr, master_port, sum)."""
    import socket
    import struct

    from oarfutures import JobEnvironment

    env = JobEnvironment()
    deadline = time.time() + timeout
    if env.rank == 0:
        with socket.create_server((env.master_addr, env.master_port)) as server:
            server.settimeout(timeout)
            peers = [server.accept()[0] for _ in range(env.world_size - 1)]
            values = [struct.unpack("!qq", _receive(peer, 16))[1] for peer in peers]
            total = 1 + sum(values)
            for peer in peers:
                peer.sendall(struct.pack("!q", total))
                peer.close()
    else:
        while True:
            try:
                peer = socket.create_connection((env.master_addr, env.master_port), timeout=5)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        with peer:
            peer.settimeout(timeout)
            peer.sendall(struct.pack("!qq", env.rank, 10**env.rank))
            (total,) = struct.unpack("!q", _receive(peer, 8))
    return env.rank, env.local_rank, env.world_size, env.node, env.master_addr, env.master_port, total


def _receive(peer, size):
    data = b""
    while len(data) < size:
        chunk = peer.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        data += chunk
    return data


def rank_stays(record_folder, marker, fail_rank=None):
    """In every rank: start a child process with ``marker`` on its command line, record
    "rank node own-pid child-pid" in ``record_folder``, then sleep. Rank ``fail_rank`` raises once every rank has
    recorded itself (so that all of them run on all nodes when it fails)."""
    import subprocess
    import sys

    from oarfutures import JobEnvironment

    env = JobEnvironment()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)", marker])
    path = os.path.join(record_folder, f"rank{env.rank}")
    with open(path + ".tmp", "w") as f:
        f.write(f"{env.rank} {env.node} {os.getpid()} {child.pid}")
    os.replace(path + ".tmp", path)
    if env.rank == fail_rank:
        deadline = time.time() + 120
        while sum(1 for n in os.listdir(record_folder) if n.startswith("rank") and "." not in n) < env.world_size:
            assert time.time() < deadline, "the other ranks never started"
            time.sleep(0.1)
        raise RuntimeError(f"rank {env.rank} gives up")
    time.sleep(900)


def array_position(_):
    """Which OAR subjob ran this call: its job id and its index in the array."""
    return os.environ.get("OAR_JOB_ID"), os.environ.get("OAR_ARRAY_INDEX")


def environment_variable(name):
    return os.environ.get(name)


def nested_slurm_environment(folder, x):
    """Runs in a Slurm array task and submits one job from there: what the outer and the inner job saw."""
    from oarfutures import SlurmPoolExecutor

    outer = os.environ.get("SLURM_ARRAY_TASK_ID"), os.environ.get("SLURM_MEM_PER_NODE")
    with SlurmPoolExecutor(folder=folder) as executor:
        # (not os.environ.get: a bound method pickles os.environ with it, the outer job's variables)
        inner = [executor.submit(environment_variable, name) for name in ("SLURM_ARRAY_TASK_ID", "SLURM_MEM_PER_NODE")]
        return outer, tuple(f.result(timeout=120) for f in inner), executor.submit(square, x).result(timeout=120)


def oar_nodes(_=None):
    """The hosts OAR gave the job ($OAR_NODEFILE)."""
    with open(os.environ["OAR_NODEFILE"]) as f:
        return sorted({line.strip() for line in f if line.strip()})


class _ExitsWhilePickled:
    """A value whose pickling ends its process after a moment: the call returned, its result is never written."""

    def __reduce__(self):
        import os
        import time

        time.sleep(0.3)
        os._exit(3)


def exit_while_the_result_is_written():
    return _ExitsWhilePickled()


def importer_of_preloaded(_=None):
    """Which process imported ``preloaded`` (the fork server if it was preloaded), this one, and its parent."""
    import preloaded

    return preloaded.IMPORTED_BY, os.getpid(), os.getppid()
