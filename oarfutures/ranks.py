"""Multi-task jobs: ``nodes * tasks_per_node`` copies of one call, each knowing its rank.

The job's first process (the worker, started by the job script as usual) becomes a launcher: it starts the
ranks (``srun`` on Slurm; on OAR, ``oarsh`` to the nodes of ``$OAR_NODEFILE`` or a plain process on its own
node; plain processes locally), waits for all of them, and writes the task's single result: the list of the
ranks' results, or the error of the first rank that failed (with its traceback). A rank that dies without a
result is named in the error, so the future never waits for it.
"""
import os
import pickle
import shlex
import socket
import subprocess
import sys
import zlib

from oarfutures import layout

ENVIRONMENT = ("OARFUTURES_RANK", "OARFUTURES_LOCAL_RANK", "OARFUTURES_WORLD_SIZE", "OARFUTURES_MASTER_ADDR", "OARFUTURES_MASTER_PORT")


def rank_path(folder, batch, index, rank):
    return os.path.join(folder, layout.RESULTS, "ranks", layout.task_id(batch, index), f"{rank}.pkl")


def launch(folder, batch, index, world_size, tasks_per_node, launcher):
    """Start every rank, wait for them, and return the task's outcomes (one: the list of rank results)."""
    os.makedirs(os.path.dirname(rank_path(folder, batch, index, 0)), mode=0o700, exist_ok=True)
    command = [sys.executable, "-u", "-m", "oarfutures.worker", folder, batch, str(index), "--rank"]
    port = 20000 + zlib.crc32(layout.task_id(batch, index).encode()) % 20000
    if launcher == "srun":
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", os.environ.get("SLURM_JOB_NODELIST", "")], capture_output=True, text=True
        ).stdout.split() or [socket.gethostname()]
        env = {**os.environ, "OARFUTURES_MASTER_ADDR": hosts[0], "OARFUTURES_MASTER_PORT": str(port)}
        processes = [subprocess.Popen(["srun", f"--ntasks={world_size}", "--kill-on-bad-exit=0", *command], env=env)]
    else:
        hosts = _oar_hosts() if launcher == "oar" else [socket.gethostname()]
        processes = []
        for rank in range(world_size):
            host = hosts[min(rank // tasks_per_node, len(hosts) - 1)]
            env = {
                "OARFUTURES_RANK": str(rank),
                "OARFUTURES_LOCAL_RANK": str(rank % tasks_per_node),
                "OARFUTURES_WORLD_SIZE": str(world_size),
                "OARFUTURES_MASTER_ADDR": hosts[0],
                "OARFUTURES_MASTER_PORT": str(port),
            }
            if host == socket.gethostname() or len(hosts) == 1:
                processes.append(subprocess.Popen(command, env={**os.environ, **env}))
            else:  # another node of the job: OAR's own remote shell reaches it
                remote = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(command)
                processes.append(subprocess.Popen(["oarsh", host, remote]))
    codes = [process.wait() for process in processes]
    return [gather(folder, batch, index, world_size, codes)]


def _oar_hosts():
    """The job's nodes in order (``$OAR_NODEFILE`` has one line per core)."""
    with open(os.environ["OAR_NODEFILE"]) as f:
        return list(dict.fromkeys(line.strip() for line in f if line.strip()))


def gather(folder, batch, index, world_size, codes):
    """One outcome for the task: ("ok", [rank results]) or the first failing rank's error."""
    from oarfutures.worker import error_outcome

    values = []
    for rank in range(world_size):
        path = rank_path(folder, batch, index, rank)
        try:
            with open(path, "rb") as f:
                (outcome,) = pickle.load(f)["outcomes"]
            os.remove(path)
        except (OSError, ValueError, KeyError, pickle.UnpicklingError, EOFError):
            from oarfutures.errors import JobFailedError

            reason = f"rank {rank} of {world_size} ended without a result (launcher exit statuses {codes})"
            return error_outcome(JobFailedError(layout.task_id(batch, index), os.environ.get("OARFUTURES_JOB_ID"), "FAILED", reason=reason))
        if outcome[0] != "ok":
            return outcome[:4] + (f"(rank {rank} of {world_size})\n{outcome[4]}",)
        values.append(outcome[1])
    try:
        os.rmdir(os.path.dirname(rank_path(folder, batch, index, 0)))
    except OSError:
        pass
    return ("ok", values)


def rank_environment():
    """In a rank process: its rank from the launcher, or from srun's variables."""
    if "OARFUTURES_RANK" not in os.environ and "SLURM_PROCID" in os.environ:
        os.environ["OARFUTURES_RANK"] = os.environ["SLURM_PROCID"]
        os.environ["OARFUTURES_LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
        os.environ["OARFUTURES_WORLD_SIZE"] = os.environ.get("SLURM_NTASKS", "1")
    return int(os.environ["OARFUTURES_RANK"])
