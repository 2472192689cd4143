"""Slurm: every batch is one ``sbatch --array`` (split only where MaxArraySize forces it).

States come from ``sacct`` where accounting is on, else from ``squeue -t all`` (which forgets a job after
MinJobAge: the core then fails the future rather than waiting). Both are asked once per poll for every live array
of the process, by array id, never once per job. Both print an array's pending tasks as one collapsed row
(``123_[5-999%4]``; a task gets a row of its own once it starts), so a query costs one row per distinct state, not
one per task, and the tasks of a collapsed row share one ``JobStatus``.
"""
from __future__ import annotations

import datetime
import getpass
import logging
import os
import re
import weakref
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

from oarfutures.backends import commands, params
from oarfutures.protocol import layout
from oarfutures.core import retention
from oarfutures.backends.base import Backend, BatchSubmission, JobState, JobStatus
from oarfutures.core.executor import JobExecutor, check_max_workers, folder_path
from oarfutures.protocol import variables
from oarfutures.protocol.signals import EARLY_SIGNAL_TRAP

logger = logging.getLogger("oarfutures")

STATES = {
    "PENDING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
    "PREEMPTED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "REVOKED": JobState.CANCELLED,
    "CANCELLED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
}

#: the parameters a SlurmPoolExecutor takes, with their defaults
PARAMETERS: Dict[str, Any] = {
    "partition": None,
    "walltime": None,
    "nodes": 1,
    "tasks_per_node": 1,
    "cpus_per_task": 1,
    "mem": None,
    "mem_gb": None,
    "gpus_per_node": None,
    "account": None,
    "qos": None,
    "name": "oarfutures",
    "setup": (),
    "additional_parameters": None,
    "checkpoint_seconds": 90,
    "steal_seconds": 60,
    **{option: None for option in params.SBATCH_OPTIONS},  # submitit's constraint=, gres=, exclude=...
}
CHECKERS: Dict[str, params.Checker] = {
    **{option: params.sbatch_value for option in params.SBATCH_OPTIONS},
    "partition": params.token,
    "walltime": params.walltime_seconds,
    "nodes": params.positive_int,
    "tasks_per_node": params.positive_int,
    "cpus_per_task": params.positive_int,
    "mem": params.token,
    "mem_gb": params.positive_number,
    "gpus_per_node": params.positive_int,
    "account": params.token,
    "qos": params.token,
    "name": params.token,
    "setup": params.setup_lines,
    "additional_parameters": lambda name, value: extra_options(name, value),
    "checkpoint_seconds": params.positive_int,
    "steal_seconds": params.non_negative_number,
}

#: sbatch options oarfutures writes itself (or that would break its use of sbatch), with what to use instead
RESERVED_OPTIONS = {
    "array": "map() makes the array and max_workers caps it",
    "output": "the logs go to <folder>/logs (choose folder=)",
    "error": "the logs go to <folder>/logs (choose folder=)",
    "open-mode": "the logs are appended so that a requeued task keeps them",
    "job-name": "use name=",
    "parsable": "oarfutures reads sbatch's answer itself",
    "wait": "sbatch would block until the job ends",
    "test-only": "it would submit nothing",
    "signal": "use checkpoint_seconds= (the signal is sent for Checkpointable calls)",
    "requeue": "Checkpointable calls are requeued by oarfutures",
    "dependency": "oarfutures chains the parts of a split array itself",
    "wrap": "oarfutures writes the batch script",
    "nodes": "use nodes=",
    "cpus-per-task": "use cpus_per_task=",
    "ntasks-per-node": "use tasks_per_node=",
    "mem": "use mem= or mem_gb=",
    "time": "use walltime= or timeout_min=",
    "partition": "use partition=",
    "account": "use account=",
    "qos": "use qos=",
    "gpus-per-node": "use gpus_per_node=",
}
SHORT_OPTIONS = {
    "a": "array", "o": "output", "e": "error", "J": "job-name", "W": "wait", "d": "dependency", "N": "nodes",
    "c": "cpus-per-task", "t": "time", "p": "partition", "A": "account", "q": "qos",
}
#: sbatch options of their own that are also prefixes of a reserved one
PREFIX_OPTIONS = ("gpus", "ntasks")

# Variables of a surrounding job that would leak into a nested submission (its memory, CPUs, array index...)
NESTED_JOB_PREFIXES = ("SLURM_", "SLURMD_", "SBATCH_", "SRUN_", "SALLOC_")
KEEP_VARIABLES = ("SLURM_CONF",)
# squeue and sacct cut a collapsed row's task list at 64 bytes by default (``16_[0-2,4-5,8-9,11-13,17,19-20,``: the
# tasks after the cut would look purged); 0 prints it whole
QUERY_VARIABLES = {"SLURM_BITSTR_LEN": "0"}


def extra_options(name: str, value: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``additional_parameters`` checked as any scheduler's, and none of the options oarfutures sets itself."""
    options = params.extra_options(name, value)
    for key in options:
        params.reserved_option(name, key, RESERVED_OPTIONS, SHORT_OPTIONS, PREFIX_OPTIONS)
    return options


def directive(key: str, value: Union[bool, str]) -> str:
    """One ``#SBATCH`` line: a one-letter key is a short option (``-C v100``), any other a long one."""
    option = f"-{key}" if len(key) == 1 else f"--{key.replace('_', '-')}"
    if value is True:
        return f"#SBATCH {option}"
    return f"#SBATCH {option} {value}" if len(key) == 1 else f"#SBATCH {option}={value}"


def log_pattern(folder: str, suffix: str) -> str:
    """``--output``/``--error`` value: quoted for sbatch (a space would end it), '%' kept literal ('%%')."""
    logs = os.path.join(params.job_folder("folder", folder), layout.LOGS).replace("%", "%%")
    return f'"{logs}/%A_%a.{suffix}"'


def validate(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Check and normalise Slurm parameters (generic and ``slurm_`` ones); raise naming the first bad one."""
    return params.check_all(params.for_backend(values, "slurm"), CHECKERS, "SlurmPoolExecutor parameter")


#: what tells a rank srun started who it is (see ``variables.RANK_VARIABLES``)
RANK_VARIABLES = {
    variables.RANK: "SLURM_PROCID",
    variables.LOCAL_RANK: "SLURM_LOCALID",
    variables.WORLD_SIZE: "SLURM_NTASKS",
    variables.NODE: "SLURMD_NODENAME",
}


def rank_placement(world_size: int, tasks_per_node: int) -> List[str]:
    """The job script's lines that let the worker start a multi-task job's ranks with srun (``worker.ranks``).

    Block distribution: ranks 0..k-1 on the first node (the master address), and so on; one rank that exits
    non-zero (its call raised, or it died) makes srun end the others on every node.
    """
    srun = (f"srun --ntasks={world_size} --ntasks-per-node={tasks_per_node} --distribution=block "
            "--kill-on-bad-exit=1")
    pairs = " ".join(f"{ours}={theirs}" for ours, theirs in RANK_VARIABLES.items())
    return [
        f'export {variables.RANK_LAUNCH}="{srun}" {variables.RANK_VARIABLES}="{pairs}"',
        f'export {variables.NODES}="$(scontrol show hostnames "$SLURM_JOB_NODELIST")"',
    ]


class SlurmBackend(Backend):
    name = "slurm"
    throttles = True
    query_interval = (1.0, 5.0)

    def __init__(self, folder: str, parameters: Mapping[str, Any], max_array_size: Optional[int] = None) -> None:
        self.folder = params.job_folder("folder", folder)
        self.parameters = {**PARAMETERS, **validate(parameters)}
        self._max_array_size = max_array_size
        self._accounting: Optional[bool] = None
        self._walltimes: Dict[Optional[str], str] = {}  # partition -> its jobs' default walltime (see walltime_of)
        self.environment = {**commands.clean_environment(NESTED_JOB_PREFIXES, KEEP_VARIABLES), **QUERY_VARIABLES}

    # ------------------------------------------------------------------ configuration read once from Slurm
    def _config(self) -> None:
        text = commands.run(["scontrol", "show", "config"], env=self.environment)
        found = re.search(r"^MaxArraySize\s*=\s*(\d+)", text, re.M)
        if self._max_array_size is None:
            self._max_array_size = int(found.group(1)) if found else 1001
        storage = re.search(r"^AccountingStorageType\s*=\s*(\S+)", text, re.M)
        self._accounting = bool(storage and storage.group(1) != "accounting_storage/none")

    def walltime_of(self, p: Mapping[str, Any]) -> str:
        """The effective walltime of the jobs, for stealing: seconds, "unlimited", or "" when unknown.

        ``walltime`` as Slurm applies it (whole minutes), else the partition's DefaultTime, else its MaxTime
        (``scontrol show partition``, asked once per partition; the default partition when none is given). A QOS
        or association limit below it is not seen: stealing then keeps to the partition's figure.
        """
        if p["walltime"]:
            return str(-(-p["walltime"] // 60) * 60)
        partition = p["partition"]
        if partition not in self._walltimes:
            self._walltimes[partition] = self._partition_walltime(partition)
        return self._walltimes[partition]

    def _partition_walltime(self, partition: Optional[str]) -> str:
        try:
            text = commands.run(["scontrol", "show", "partition", "-o", *([partition] if partition else [])], env=self.environment)
        except Exception as exc:  # noqa: BLE001 - stealing is an optimisation: without the figure, none
            logger.warning("oarfutures: the walltime of partition %s is unknown (%s): no stealing", partition or "(default)", exc)
            return ""
        for line in text.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            if partition is None and fields.get("Default") != "YES":
                continue
            for key in ("DefaultTime", "MaxTime"):
                value = fields.get(key, "NONE")
                if value == "UNLIMITED":
                    return "unlimited"
                if value != "NONE":
                    seconds = _parse_slurm_time(value)
                    return "" if seconds is None else str(seconds)
            return "unlimited"
        return ""

    @property
    def max_array_size(self) -> int:
        if self._max_array_size is None:
            self._config()
        return self._max_array_size  # type: ignore[return-value]

    @property
    def accounting(self) -> bool:
        if self._accounting is None:
            self._config()
        return bool(self._accounting)

    # ------------------------------------------------------------------ submission
    def validate(self, values: Mapping[str, Any]) -> Dict[str, Any]:
        return validate(values)

    def render_script(self, submission: BatchSubmission, first: int, count: int) -> str:
        """The sbatch script of one array: tasks ``first .. first+count-1`` of the batch."""
        p = {**self.parameters, **submission.options}
        array = f"0-{count - 1}" + (f"%{submission.max_running}" if submission.max_running else "")
        lines = ["#!/bin/bash", f"#SBATCH --job-name={p['name']}", f"#SBATCH --array={array}"]
        lines.append(f"#SBATCH --output={log_pattern(submission.folder, 'out')}")
        lines.append(f"#SBATCH --error={log_pattern(submission.folder, 'err')}")
        lines.append("#SBATCH --open-mode=append")  # a requeued task keeps the logs of its earlier runs
        lines += [f"#SBATCH --nodes={p['nodes']}", f"#SBATCH --cpus-per-task={p['cpus_per_task']}"]
        if p["tasks_per_node"] > 1:
            lines.append(f"#SBATCH --ntasks-per-node={p['tasks_per_node']}")
        if p["mem_gb"] and not p["mem"]:
            lines.append(f"#SBATCH --mem={int(p['mem_gb'] * 1024)}M")
        if p["walltime"]:
            lines.append(f"#SBATCH --time={_slurm_time(p['walltime'])}")
        for key, option in (("partition", "partition"), ("mem", "mem"), ("account", "account"), ("qos", "qos")):
            if p[key]:
                lines.append(f"#SBATCH --{option}={p[key]}")
        if p["gpus_per_node"]:
            lines.append(f"#SBATCH --gpus-per-node={p['gpus_per_node']}")
        lines += [directive(option, p[option]) for option in params.SBATCH_OPTIONS if p[option]]
        lines += [directive(key, value) for key, value in (p["additional_parameters"] or {}).items()]
        if submission.checkpointable:  # USR2 to the batch shell (which execs the worker) before the walltime
            lines += [f"#SBATCH --signal=B:USR2@{p['checkpoint_seconds']}", "#SBATCH --requeue"]
            lines.append(EARLY_SIGNAL_TRAP)
        world_size = p["nodes"] * p["tasks_per_node"]
        steal = p["steal_seconds"] and submission.steal_variables(p["steal_seconds"], self.walltime_of(p), world_size, first, count)
        if steal:  # first: OARFUTURES_JOB_START is when the job started, before the setup lines
            lines.append(steal)
        lines += list(p["setup"])
        job_id = "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
        lines.append(f'export {variables.JOB_ID}="{job_id}" {variables.NODE}="$SLURMD_NODENAME"')
        if world_size > 1:  # the worker launches the ranks with srun and gathers their results
            lines += [f"export {variables.RANKS}={world_size} {variables.TASKS_PER_NODE}={p['tasks_per_node']}",
                      *rank_placement(world_size, p["tasks_per_node"])]
        if submission.checkpointable:
            # the array task's own id: the task whose SLURM_JOB_ID is the array's id would requeue every task
            requeue = "scontrol requeue ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
            lines.append(f'export {variables.REQUEUE_COMMAND}="{requeue}"')
        lines.append(submission.worker_command(f"SLURM_ARRAY_TASK_ID + {first}"))
        return "\n".join(lines) + "\n"

    def submit(self, submission: BatchSubmission) -> List[str]:
        job_ids: List[str] = []
        previous = None
        step = self.max_array_size
        try:
            for first in range(submission.first, submission.first + submission.count, step):
                count = min(step, submission.first + submission.count - first)
                script = layout.script_path(submission.folder, submission.batch, first)
                with open(script, "w") as f:
                    f.write(self.render_script(submission, first, count))
                command = ["sbatch", "--parsable"]
                if previous and submission.max_running:  # keep the running cap across split arrays
                    command.append(f"--dependency=afterany:{previous}")
                out = commands.run(command + [script], env=self.environment, before_retry=lambda _, s=script: self._submitted(s))
                array_id = out.strip().split(";")[0]
                previous = array_id
                job_ids += [f"{array_id}_{i}" for i in range(count)]
        except BaseException:
            if job_ids:  # part of the batch went in: take it back, the caller gets the error and nothing runs
                self.cancel(sorted({j.split("_")[0] for j in job_ids}))
            raise
        return job_ids

    def _submitted(self, script: str) -> Optional[str]:
        """The array id if ``sbatch`` of this script went through after all (its answer timed out), else None.

        Each wave has its own script, and Slurm keeps a batch job's script path as its command: a retry after a
        lost answer must find the job, not submit the work twice.
        """
        out = commands.run(["squeue", "-h", "-t", "all", "-u", getpass.getuser(), "-o", "%F|%o"], env=self.environment)
        for line in out.splitlines():
            array_id, _, command = line.partition("|")
            if command == script:
                return array_id
        return None

    def cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:  # array tasks as ranges (123_[0-99999]): one request per array, not one per task
            commands.run(["scancel", *_ranges(job_ids)], env=self.environment)

    def interrupt(self, job_id: str) -> None:
        commands.run(["scancel", "--batch", "--signal=USR2", job_id], env=self.environment)

    # ------------------------------------------------------------------ state
    #: the last answer (weakly: it lives as long as someone uses it), with the command output it was read from: the
    #: same output gives the same dict object back (the core then knows that nothing moved without looking at each
    #: job). Shared by every SlurmBackend of the process, as their queries are (``query_group``)
    _last_answer: Optional[Tuple[Tuple[Any, ...], "weakref.ref[_Answer]"]] = None

    def query(self, job_ids: Sequence[str]) -> Dict[str, JobStatus]:
        """States of the arrays of these jobs: every task of them, those not asked about included (the caller looks
        up its own). A task's own row wins over a collapsed row that still lists it (sacct lags). The answer is
        shared (see ``_last_answer``): read it, never change it."""
        arrays = sorted({job_id.partition("_")[0] for job_id in job_ids})
        accounting = self.accounting
        out = self._sacct(arrays) if accounting else self._squeue(arrays)
        key = (accounting, arrays, out)
        last = SlurmBackend._last_answer
        if last is not None and last[0] == key:
            answer = last[1]()
            if answer is not None:
                return answer
        statuses, cut = _statuses(_sacct_rows(out) if accounting else _squeue_rows(out))
        if cut:  # never seen with SLURM_BITSTR_LEN=0; a cut list would make the tasks after the cut look purged
            logger.warning("oarfutures: Slurm printed the pending tasks of %s cut short; asking for them one by one", ", ".join(sorted(cut)))
            each_task, _ = _statuses(_squeue_rows(self._squeue(sorted(cut), each_task=True)))
            return {**each_task, **statuses}
        SlurmBackend._last_answer = (key, weakref.ref(statuses))
        return statuses

    def _sacct(self, arrays: Sequence[str]) -> str:
        # no --array (22.05 has none): pending tasks stay collapsed, as wanted
        return commands.run(
            ["sacct", "-X", "-n", "-P", "-j", ",".join(arrays), "-o", "JobID,State,ExitCode,Reason"], env=self.environment
        )

    def _squeue(self, arrays: Sequence[str], each_task: bool = False) -> str:
        """Without ``-r`` (``each_task``) the pending tasks of an array come as one collapsed row."""
        try:
            return commands.run(
                ["squeue", "-h", *(["-r"] if each_task else []), "-t", "all", "-j", ",".join(arrays),
                 "-O", "JobArrayID:|,State:|,Reason:|,exit_code:"],
                env=self.environment,
            )
        except commands.SchedulerCommandError as exc:
            if "Invalid job id specified" not in exc.stderr:
                raise
            return ""  # squeue fails this way only when every id asked for is unknown (purged after MinJobAge)

    def log_paths(self, job_id: str) -> List[str]:
        base = os.path.join(self.folder, layout.LOGS, job_id)
        return [base + ".out", base + ".err"]


#: one JobStatus per distinct answer, shared by every task (and query) that has it: a queue that did not move
#: gives the core the very objects it saw last time, and costs no object per task
_STATUS_CACHE: Dict[Tuple[str, Optional[str], str], JobStatus] = {}


def _status(state: str, exit_code: Optional[str], reason: str) -> JobStatus:
    key = (state, exit_code, reason)
    status = _STATUS_CACHE.get(key)
    if status is None:
        word = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0"
        common = STATES.get(word, JobState.PENDING)
        status = JobStatus(common, state, exit_code, "" if reason in ("None", "(null)") else reason)
        if len(_STATUS_CACHE) >= 10_000:  # reasons and exit codes are few; never grow without bound
            _STATUS_CACHE.clear()
        _STATUS_CACHE[key] = status
    return status


def _sacct_rows(out: str) -> Iterable[Tuple[str, JobStatus]]:
    for row in out.splitlines():
        fields = row.split("|")
        if len(fields) < 3:
            continue
        reason = fields[3] if len(fields) > 3 else ""
        yield fields[0], _status(fields[1], fields[2], reason)


def _squeue_rows(out: str) -> Iterable[Tuple[str, JobStatus]]:
    for row in out.splitlines():
        fields = [field.strip() for field in row.split("|")]
        if len(fields) >= 4:
            status = int(fields[3]) if fields[3].isdigit() else None  # a raw wait status: say it as sacct does
            exit_code = None if status is None else f"{status >> 8}:{status & 0x7F}"
            yield fields[0], _status(fields[1], exit_code, fields[2])


class _Answer(dict):
    """A query's answer: a plain dict that can be referred to weakly."""

    __slots__ = ("__weakref__",)


def _statuses(rows: Iterable[Tuple[str, JobStatus]]) -> Tuple[Dict[str, JobStatus], Set[str]]:
    """job id -> status from squeue/sacct rows, and the arrays whose collapsed row was cut short.

    A collapsed row (``12_[4-6,9%2]``) gives its one status to each of its tasks; rows of single jobs or tasks
    come last, so a task's own row wins over a collapsed row that still lists it (sacct lags behind slurmctld).
    """
    statuses: Dict[str, JobStatus] = _Answer()
    own = []
    cut: Set[str] = set()
    for job, status in rows:
        if not job.endswith("]") and "_[" not in job:
            own.append((job, status))
            continue
        try:
            statuses.update(dict.fromkeys(_expand(job), status))
        except ValueError:
            cut.add(job.partition("_")[0])
    statuses.update(own)
    return statuses, cut


def _expand(job: str) -> Iterable[str]:
    """'12_3' -> ['12_3']; '12_[4-6,9%2]' (pending tasks, collapsed) -> [12_4, 12_5, 12_6, 12_9];
    '12_[0-198:2]' (every other task) -> 12_0, 12_2, ... 12_198. ValueError if the list was cut short
    (``12_[0-2,4-5,`` or ``12_[0-2,4...]``)."""
    array, _, spec = job.partition("_")
    if not spec.startswith("["):
        return [job]
    if not spec.endswith("]") or "..." in spec:
        raise ValueError(f"task list cut short: {job}")
    prefix = array + "_"
    ids: List[str] = []
    for part in spec[1:-1].split("%")[0].split(","):
        if not part:
            continue
        span, _, step = part.partition(":")
        low, _, high = span.partition("-")
        # C-level iteration: a 100,000-task row costs no Python bytecode per task
        ids += map(prefix.__add__, map(str, range(int(low), int(high or low) + 1, int(step or 1))))
    return ids


#: scancel refuses a range of more tasks ("_parse_single_range: Too many hosts in range `0-99999'"): 0-65535 passes
MAX_SPAN = 65536


def _ranges(job_ids: Sequence[str]) -> List[str]:
    """['7_0', '7_1', '7_2', '7_5', '9'] -> ['9', '7_[0-2,5]']; spans of at most MAX_SPAN tasks."""
    tasks: Dict[str, List[int]] = {}
    plain = []
    for job_id in job_ids:
        array, _, task = job_id.partition("_")
        if task.isdigit():
            tasks.setdefault(array, []).append(int(task))
        else:
            plain.append(job_id)
    for array, indices in tasks.items():
        indices.sort()
        spans, start = [], indices[0]
        for previous, current in zip(indices, indices[1:] + [None]):
            if current != previous + 1 or previous - start + 1 >= MAX_SPAN:
                spans.append(f"{start}-{previous}" if previous != start else str(start))
                start = current
        plain.append(f"{array}_[{','.join(spans)}]")
    return plain


def _parse_slurm_time(text: str) -> Optional[int]:
    """Seconds of a Slurm time: "MM", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS"; None if unreadable."""
    found = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not found:
        return None
    days, a, b, c = (int(g) if g else None for g in found.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        return days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:
        return a * 3600 + b * 60 + c
    return a * 60 + (b or 0)


def _slurm_time(seconds: int) -> str:
    minutes = -(-seconds // 60)  # Slurm counts whole minutes
    return f"{minutes // 1440}-{minutes % 1440 // 60:02d}:{minutes % 60:02d}:00"


class SlurmPoolExecutor(JobExecutor):
    """Runs calls as Slurm jobs: ``submit`` is one ``sbatch``, ``map`` one job array.

    Parameters keep their ``sbatch`` meaning: ``partition``, ``walltime`` (seconds, timedelta or "H:MM:SS"),
    ``nodes``, ``cpus_per_task``, ``mem`` ("4G"), ``gpus_per_node``, ``account``, ``qos``, ``name``; ``setup`` lines
    run before the worker (module load, conda activate); ``additional_parameters`` adds any other ``#SBATCH``
    option (``{"constraint": "v100"}``, ``{"exclusive": True}`` for a flag, one-letter keys as short options) but
    not those oarfutures writes itself (``output``, ``array``...: the error names the parameter to use).
    ``max_workers`` caps running tasks (``--array=...%N``). ``steal_seconds``: for how long after its own call a
    task may run pending calls of its array in the same interpreter (0: never; see the README's "Stealing").
    """

    def __init__(
        self,
        max_workers: Optional[int] = None,
        *,
        folder: Optional[str] = None,
        partition: Optional[str] = None,
        walltime: Union[None, int, float, str, datetime.timedelta] = None,
        nodes: int = 1,
        cpus_per_task: int = 1,
        mem: Optional[str] = None,
        gpus_per_node: Optional[int] = None,
        account: Optional[str] = None,
        qos: Optional[str] = None,
        name: str = "oarfutures",
        setup: Sequence[str] = (),
        additional_parameters: Optional[Mapping[str, Any]] = None,
        checkpoint_seconds: int = 90,
        steal_seconds: float = 60,
        python: Optional[str] = None,
        max_array_size: Optional[int] = None,
        keep_files: bool = False,
        result_grace: Optional[float] = None,
        warn_pickle_bytes: int = 100_000_000,
        max_resubmissions: int = 3,
        mem_gb: Optional[float] = None,
        **parameters: Any,
    ) -> None:
        """Submit nothing yet: each ``submit``/``map`` becomes an ``sbatch --array`` with these parameters.

        Parameters are checked here, before anything is submitted: an unknown name is a ``TypeError`` listing the
        valid ones, a value that could escape its ``#SBATCH`` line a ``ValueError`` naming it.
        ``update_parameters()`` and ``options()`` change them later. The lines each parameter becomes are in the
        documentation's Slurm guide, rendered from this code.

        Args:
            max_workers: How many calls of this executor may run at once, across every ``submit`` and
                ``map`` (dask and joblib submit one call at a time). Given as ``--array=...%N`` with the slots left free, so Slurm holds the rest.
            folder: Job folder for task files, results, scripts and logs; it must be on a filesystem the
                compute nodes share. Default: a new private folder under ``$OARFUTURES_FOLDER`` or ``~/.oarfutures``. An
                existing folder owned by another user or writable by others is refused: task files are code.
            partition: ``--partition``; none lets Slurm pick its default partition.
            walltime: ``--time``, as seconds, a ``timedelta`` or ``"H:MM:SS"`` (Slurm rounds up to minutes);
                none takes the partition's default. It also bounds what a task may steal.
            nodes: ``--nodes`` per call; more than one makes a multi-task job (see ``JobEnvironment``).
            cpus_per_task: ``--cpus-per-task``: what one call may use for its own threads or processes.
            mem: ``--mem`` as Slurm spells it (``"4G"``); ``mem_gb`` (through ``update_parameters``) is the
                generic spelling shared with the other backends.
            gpus_per_node: ``--gpus-per-node``.
            account: ``--account``, for sites that charge hours to a project.
            qos: ``--qos``.
            name: ``--job-name``, what ``squeue`` shows.
            setup: Shell lines run before the worker (``module load``, ``conda activate``), because a job does
                not see the environment of the shell that submitted it.
            additional_parameters: Any other ``#SBATCH`` option, ``{"constraint": "v100"}``, ``True`` for a
                flag, one-letter keys as short options; options oarfutures writes itself are refused with the
                parameter to use instead.
            checkpoint_seconds: For a ``Checkpointable`` call, how long before the walltime Slurm sends the
                checkpoint signal (``--signal=B:USR2@N``): the time ``checkpoint()`` has to save its state.
            steal_seconds: For how long after its own call an array task may run pending calls of its array in
                the same interpreter (0: never), which saves a job start per stolen call.
            max_array_size: Slurm's ``MaxArraySize`` when you know it; read from ``scontrol show config`` at the
                first submission otherwise. Larger maps are split into several arrays.
            python: Interpreter the jobs run, as an absolute path (default: this one, ``sys.executable``). A
                cluster job starts with a fresh environment, so a bare ``python`` could be another interpreter
                without your packages.
            keep_files: Keep task and result files of delivered batches, so that ``attach()`` or
                ``oarfutures results`` can read them again later (they are removed otherwise: the folder
                would grow with every call).
            result_grace: Seconds a job that ended normally may take to show its result file before its future
                fails (default 60 s). Shared filesystems cache directory listings; a job that failed gets at
                most 5 s.
            warn_pickle_bytes: An argument pickled larger than this is named in a warning: it is written once
                per task and read by every job, and a big model in a closure is the usual culprit.
            max_resubmissions: How many times a ``Checkpointable`` call may come back before its future fails
                with ``JobFailedError``, so that a call that always gets preempted cannot loop forever.
            mem_gb: Memory per node in GB, the generic spelling every backend takes (``--mem`` here).
            **parameters: Any other parameter of this backend, by the name ``update_parameters`` takes:
                generic ones (``tasks_per_node``, ``timeout_min``...), ``slurm_``-prefixed ones, and
                submitit's spellings where they mean the same. A name that is none of these is refused with
                the list of valid ones.
        """
        check_max_workers(max_workers)
        explicit = dict(
            partition=partition,
            walltime=walltime,
            nodes=nodes,
            cpus_per_task=cpus_per_task,
            mem=mem,
            mem_gb=mem_gb,
            gpus_per_node=gpus_per_node,
            account=account,
            qos=qos,
            name=name,
            setup=setup,
            additional_parameters=additional_parameters,
            checkpoint_seconds=checkpoint_seconds,
            steal_seconds=steal_seconds,
        )
        # every parameter is checked (unknown names listed, submitit's spellings translated) before the folder
        # exists: a refused one leaves nothing behind
        path = params.job_folder("folder", folder_path(None, SlurmBackend.name) if folder is None else folder)
        given = {**params.changed_from_defaults(explicit, PARAMETERS), **parameters}
        backend = SlurmBackend(path, given, max_array_size)
        super().__init__(
            backend, max_workers, path, python, keep_files, result_grace, warn_pickle_bytes, max_resubmissions
        )
        if folder is None:  # one more default folder: the old finished ones go (see retention)
            retention.clean_default_folders_soon(os.path.dirname(self.folder))
