"""Multi-task jobs: ``nodes * tasks_per_node`` copies of one call, each knowing its rank and node.

The job's first process (the worker, started by the job script as usual) becomes a launcher: it starts the
ranks, waits for all of them, and writes the task's single result: the list of the ranks' results, or the error
of the first rank that failed (with its traceback). A rank that dies without a result is named in the error, so
the future never waits for it.

How ranks are placed is the scheduler's business, which its backend writes into the job script (see
``variables.RANK_PLACEMENT``), so that nothing here names a scheduler: a launch command that starts every rank
(Slurm's ``srun``), or the job's nodes and a remote shell (OAR's ``$OAR_NODEFILE`` and ``oarsh``): the launcher
then starts the ranks of its own node as processes and the others through the remote shell. Locally, with
neither, every rank is a process of this machine.

No rank outlives its call, on any node:

- a rank whose call raises (or that dies) exits non-zero, and the launcher then stops every other rank before it
  writes the task's result: ``srun --kill-on-bad-exit`` does it on Slurm; elsewhere the launcher ends them;
- a rank the launcher started watches it through its standard input, a pipe that only the launcher holds open
  (through the remote shell's ssh channel for a rank on another node): when the launcher ends, whatever killed
  it (``oardel``, the walltime, a failed rank), the rank sees end-of-file, kills the processes of its group and
  exits.
  Without cpusets OAR's ``oardel`` kills the processes of the job's first node only, and a process ``oarsh``
  started on another node would otherwise run on. On Slurm, ``scancel`` ends the steps on every node itself.
"""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib

from oarfutures.protocol import layout, results, variables

#: variables a rank on another node gets from the launcher (a remote shell starts it with a fresh login
#: environment); every OARFUTURES_* variable goes too, and those the job script names (``REMOTE_VARIABLES``)
REMOTE_VARIABLES = ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV")
#: seconds the launcher gives the other ranks to end once it stopped them, before it kills what is left here
STOP_GRACE = 20.0
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


def launch(folder, batch, index, world_size, tasks_per_node):
    """Start every rank, wait for them, and return the task's outcomes (one: the list of rank results)."""
    os.makedirs(layout.ranks_folder(folder, batch, index), mode=0o700, exist_ok=True)
    command = [sys.executable, "-u", "-m", "oarfutures.worker", folder, batch, str(index), "--rank"]
    port = 20000 + zlib.crc32(layout.task_id(batch, index).encode()) % 20000
    hosts = _hosts()
    rank_launch = shlex.split(os.environ.get(variables.RANK_LAUNCH, ""))
    if rank_launch:  # the scheduler starts the ranks on every node, and ends them all when one exits non-zero
        env = {**os.environ, variables.MASTER_ADDR: hosts[0], variables.MASTER_PORT: str(port)}
        codes = [subprocess.Popen(rank_launch + command, env=env).wait()]
    else:
        codes = _launch_processes(folder, command, world_size, tasks_per_node, port, hosts)
    return [gather(folder, batch, index, world_size, codes)]


def _launch_processes(folder, command, world_size, tasks_per_node, port, hosts):
    """Start the ranks as processes here and through the remote shell; stop them all as soon as one fails."""
    here = _this_host(hosts)
    remote_shell = shlex.split(os.environ.get(variables.REMOTE_SHELL, ""))
    processes = []
    try:
        for rank in range(world_size):
            host = hosts[min(rank // tasks_per_node, len(hosts) - 1)]
            env = {
                variables.RANK: str(rank),
                variables.LOCAL_RANK: str(rank % tasks_per_node),
                variables.WORLD_SIZE: str(world_size),
                variables.MASTER_ADDR: hosts[0],
                variables.MASTER_PORT: str(port),
                variables.NODE: host,
                variables.WATCH_LAUNCHER: "1",
            }
            if host == here:  # its own session: its process group holds what it starts, and nothing else
                env = {**os.environ, **env}
                local = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, start_new_session=True)
                processes.append(local)
            else:  # another node of the job: the remote shell's ssh channel carries the launcher's pipe
                if not remote_shell:
                    raise ValueError(f"rank {rank} is to run on node {host}, and the job script names no remote shell")
                remote = _remote_command(folder, command, env)
                processes.append(subprocess.Popen([*remote_shell, host, remote], stdin=subprocess.PIPE))
        return _wait(processes)
    finally:
        _stop(processes)


def _remote_command(folder, command, rank_env):
    """The shell command the remote shell runs on another node (it lands in $HOME, with a login environment)."""
    passed = set(REMOTE_VARIABLES) | set(os.environ.get(variables.REMOTE_VARIABLES, "").split())
    env = {k: v for k, v in os.environ.items() if k.startswith(variables.PREFIX) or k in passed}
    env.update(rank_env)
    assignments = [f"{k}={v}" for k, v in sorted(env.items()) if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
    return f"cd {shlex.quote(folder)} && exec env {shlex.join(assignments)} {shlex.join(command)}"


def _wait(processes):
    """Wait for every rank; the first that fails (non-zero exit) stops the others. Return the exit statuses."""
    while True:
        codes = [p.poll() for p in processes]
        if all(code is not None for code in codes):
            return codes
        if any(code not in (None, 0) for code in codes):
            _stop(processes)
            return [p.returncode for p in processes]
        time.sleep(0.1)


def _stop(processes):
    """End every rank still running: its pipe closes (on end-of-file a rank ends its process group and exits),
    then what remains here is killed, with the processes of each local rank's group. Waits for them: no rank may
    outlive the task's result."""
    for process in processes:
        if process.stdin is not None and not process.stdin.closed:
            try:
                process.stdin.close()
            except OSError:
                pass
    deadline = time.monotonic() + STOP_GRACE
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill(process)
        if _local(process):  # a local rank: what it started, gone too
            _end_group(process.pid, 5.0)


def _kill(process):
    try:
        if _local(process):
            os.killpg(process.pid, signal.SIGKILL)  # a local rank leads its own process group
        else:
            process.kill()
        process.wait(5)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _local(process):
    """Whether a rank runs here, as a process of its own (not through the remote shell)."""
    return bool(process.args) and process.args[0] == sys.executable


def _hosts():
    """The job's nodes in order, each once and a plain host name; this machine alone when the job names none."""
    hosts = list(dict.fromkeys(os.environ.get(variables.NODES, "").split()))
    bad = [h for h in hosts if not HOST_NAME.match(h)]
    if bad:
        raise ValueError(f"unexpected host names in ${variables.NODES}: {bad!r}")
    return hosts or [socket.gethostname()]


def _this_host(hosts):
    """Which of the job's hosts the launcher runs on: the one with this machine's name, else the first (the
    schedulers start a job on its first node)."""
    names = {socket.gethostname(), socket.gethostname().split(".")[0], socket.getfqdn()}
    return next((h for h in hosts if h in names), hosts[0])


def gather(folder, batch, index, world_size, codes):
    """One outcome for the task: the list of the ranks' values, or the first failing rank's error.

    A rank that raised wins over ranks without a result (those the launcher stopped because of it)."""
    outcomes = {}
    for rank in range(world_size):
        path = layout.rank_path(folder, batch, index, rank)
        try:
            (outcomes[rank],) = results.read_result(path).outcomes
            os.remove(path)
        except (OSError, ValueError, results.CorruptResultError):
            pass
    try:
        os.rmdir(layout.ranks_folder(folder, batch, index))
    except OSError:
        pass
    for rank, outcome in sorted(outcomes.items()):
        if not outcome.ok:
            return results.Raised(outcome[:4] + (f"(rank {rank} of {world_size})\n{outcome.traceback}",))
    missing = [rank for rank in range(world_size) if rank not in outcomes]
    if missing:
        from oarfutures.errors import JobFailedError

        reason = f"rank {missing[0]} of {world_size} ended without a result (launcher exit statuses {codes})"
        job_id = os.environ.get(variables.JOB_ID)
        return results.raised(JobFailedError(layout.task_id(batch, index), job_id, "FAILED", reason=reason))
    return results.returned([outcomes[rank].value for rank in range(world_size)])


def rank_environment():
    """In a rank process: its rank from the launcher, or from the scheduler's variables (``RANK_VARIABLES``)."""
    if variables.RANK not in os.environ:  # started by the job's launch command, which sets the scheduler's own
        for pair in os.environ.get(variables.RANK_VARIABLES, "").split():
            ours, _, theirs = pair.partition("=")
            if ours.startswith(variables.PREFIX) and theirs in os.environ:
                os.environ[ours] = os.environ[theirs]
    _own_process_group()
    if os.environ.pop(variables.WATCH_LAUNCHER, "") == "1":
        watch_launcher()
    return int(os.environ[variables.RANK])


def _own_process_group():
    """Lead a process group of its own (unless it already does): what the call starts can then be found and
    ended with the rank, and nothing else is."""
    if os.getpgrp() != os.getpid():
        try:
            os.setpgid(0, 0)
        except OSError:
            pass


def end_own_processes(wait=5.0):
    """When a rank's call is over: kill what it started and left running (a process whose parent exits leaves
    the job's process tree, and Slurm's proctrack/linuxproc or OAR without cpusets would never end it), and wait
    (at most ``wait`` seconds) until they are gone, so that none is left when the call's future fails."""
    me = os.getpid()
    if os.getpgrp() == me:
        # srun starts every rank of a step in the first rank's process group, and a rank leaves it for a group of
        # its own only once its imports are done: the sibling ranks still in it (the same command line as this
        # one) are not this rank's to end
        with open("/proc/self/cmdline", "rb") as f:
            siblings = f.read()
        _end_group(me, wait, spare=siblings)


def _end_group(pgid, wait, spare=None):
    """SIGKILL every live process of group ``pgid`` (but this one, and those whose command line is ``spare``)
    until none is left or ``wait`` has passed."""
    deadline = time.monotonic() + wait
    while True:
        members = _group_members(pgid, spare)
        if not members or time.monotonic() > deadline:
            return
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def _group_members(pgid, spare=None):
    """Live processes (zombies are dead) of process group ``pgid``, this one and those whose command line is
    ``spare`` excluded (Linux's /proc)."""
    me, members = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid or fields[0] == "Z":
                continue
            if spare is not None:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if f.read() == spare:
                        continue
            members.append(int(name))
        except (OSError, IndexError, ValueError):
            pass
    return members


def watch_launcher():
    """End this rank, and every process it started, when its launcher ends (its stdin pipe reaches EOF).

    The rank leads its own process group (``_own_process_group``), so the kill reaches the processes its call
    started and nothing else. The call gets ``/dev/null`` as its standard input.
    """
    pipe = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)

    def wait_for_eof():
        while True:
            try:
                if not os.read(pipe, 4096):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        try:
            end_own_processes()  # what the call started, gone before this rank exits
        finally:
            os._exit(1)

    threading.Thread(target=wait_for_eof, name="oarfutures-launcher-watch", daemon=True).start()
