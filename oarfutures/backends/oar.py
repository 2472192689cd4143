"""OAR 2.5: every batch is one ``oarsub --array N``; tasks find their input through ``OAR_ARRAY_INDEX``.

The options are written as ``#OAR`` lines into ``jobs/<batch>-<first>.sh`` (for the user to read, and valid for
``oarsub -S`` by hand) and passed to ``oarsub`` on its command line with the command ``exec <script>``: OAR runs
the command through the user's login shell and signals that one process, so only an ``exec`` chain (login shell
-> script -> python) lets the checkpoint signal reach the worker whatever the login shell (dash forks under
``-S``, and its death would orphan the worker).

Subjobs are matched to tasks by their ``array_index`` as OAR reports it, never by sorting job ids. States come
from one ``oarstat -f -J`` call per poll for every live job; a job OAR resubmitted (idempotent, exit 99) is
followed to its new id.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from oarfutures.backends import commands, params
from oarfutures.backends.base import Backend, BatchSubmission, JobState, JobStatus
from oarfutures.protocol import layout, variables
from oarfutures.protocol.signals import CHECKPOINT_SIGNAL, EARLY_SIGNAL_TRAP, RESUBMIT

MIN_RUNTIME = 65  # seconds a checkpointed worker stays before its exit 99, for OAR to resubmit it
#: the job script's line that lets the worker start a multi-task job's ranks (``worker.ranks``): the job's nodes
#: (``$OAR_NODEFILE`` has one line per core; on one line: the variable travels on oarsh's command line), OAR's
#: remote shell, and what a rank on another node must get of OAR's own variables (oarsh starts it with a fresh
#: login environment)
RANK_PLACEMENT = (
    f'export {variables.NODES}="$(uniq "$OAR_NODEFILE" | tr "\\n" " ")" {variables.REMOTE_SHELL}=oarsh '
    f'{variables.REMOTE_VARIABLES}="OAR_JOB_ID OAR_JOBID OAR_ARRAY_ID OAR_ARRAY_INDEX OAR_JOB_NAME OAR_NODEFILE '
    'OAR_NODE_FILE OAR_JOB_WALLTIME_SECONDS OAR_WORKDIR"'
)

PENDING_STATES = {"Waiting", "Hold", "toLaunch", "Launching", "toAckReservation"}
RUNNING_STATES = {"Running", "Finishing", "Suspended", "Resuming", "toError"}

PARAMETERS: dict[str, Any] = {
    "queue": None,
    "walltime": None,
    "nodes": 1,
    "cores": None,
    "gpus_per_node": None,
    "resources": None,
    "properties": None,
    "project": None,
    "name": "oarfutures",
    "job_types": (),
    "setup": (),
    "additional_parameters": None,
    "checkpoint_seconds": 90,
    "tasks_per_node": 1,
    "cpus_per_task": None,
    "mem_gb": None,
    "memory_property": "memnode",
    "steal_seconds": 60,
}
CHECKERS: dict[str, params.Checker] = {
    "queue": params.token,
    "walltime": params.walltime_seconds,
    "nodes": params.required_positive_int,
    "cores": params.positive_int,
    "gpus_per_node": params.positive_int,
    "resources": params.optional_line,
    "properties": params.optional_line,
    "project": params.token,
    "name": params.token,
    "job_types": params.as_tuple,
    "setup": params.setup_lines,
    "additional_parameters": lambda name, value: extra_options(name, value),
    "checkpoint_seconds": params.required_positive_int,
    "tasks_per_node": params.required_positive_int,
    "cpus_per_task": params.positive_int,
    "mem_gb": params.positive_number,
    "memory_property": params.identifier,
    "steal_seconds": params.non_negative_number,
}

#: oarsub options oarfutures passes itself (or that would break its use of oarsub), with what to use instead
RESOURCES = "use nodes=, cores=, gpus_per_node= and walltime=, or resources= for the whole -l text"
RESERVED_OPTIONS = {
    "resource": RESOURCES,
    "name": "use name=",
    "stdout": "the logs go to <folder>/logs (choose folder=)",
    "stderr": "the logs go to <folder>/logs (choose folder=)",
    "queue": "use queue=",
    "property": "use properties=",
    "project": "use project=",
    "array": "map() makes the array and max_workers caps it",
    "array-param-file": "map() makes the array",
    "directory": "the job runs in its folder (choose folder=)",
    "checkpoint": "use checkpoint_seconds= (asked for Checkpointable calls)",
    "signal": "Checkpointable calls get the signal oarfutures' worker handles",
    "scanscript": "oarfutures passes the options on oarsub's command line",
    "interactive": "oarfutures runs batch jobs",
    "connect": "oarfutures runs batch jobs",
    "json": "oarfutures reads oarsub's plain answer",
    "xml": "oarfutures reads oarsub's plain answer",
    "yaml": "oarfutures reads oarsub's plain answer",
    "dumper": "oarfutures reads oarsub's plain answer",
    "help": "it would submit nothing",
    "version": "it would submit nothing",
}
SHORT_OPTIONS = {
    "l": "resource",
    "n": "name",
    "O": "stdout",
    "E": "stderr",
    "q": "queue",
    "p": "property",
    "d": "directory",
    "S": "scanscript",
    "I": "interactive",
    "C": "connect",
    "J": "json",
    "X": "xml",
    "Y": "yaml",
    "D": "dumper",
    "h": "help",
    "V": "version",
}


#: oarsub's other options (OAR 2.5's ``GetOptions`` table): the two that take no value, and those that need one
FLAG_OPTIONS = ("hold", "use-job-key")
VALUE_OPTIONS = (
    "type",
    "reservation",
    "stagein",
    "stagein-md5sum",
    "notify",
    "anterior",
    "resubmit",
    "import-job-key-inline-priv",
    "import-job-key-from-file",
    "export-job-key-to-file",
)
OTHER_SHORT_OPTIONS = {
    "t": "type",
    "r": "reservation",
    "s": "stagein",
    "a": "anterior",
    "k": "use-job-key",
    "i": "import-job-key-from-file",
    "e": "export-job-key-to-file",
}


def extra_options(name: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    """``additional_parameters`` checked as any scheduler's, none of the options oarfutures sets itself, and each
    value given as its option expects.

    A value becomes an ``oarsub`` argument of its own after its option. After a flag, oarsub would read it as
    further options (``{"hold": "-d/"}`` is ``--hold -d /``) or as the command; and an option that needs a value,
    given True, would take our next argument for its value. Job types (``t``, as Grid'5000 writes ``besteffort``)
    are checked as ``job_types=`` checks them: OAR's admission rules paste them into SQL.
    """
    options = params.extra_options(name, value)
    for key, item in options.items():
        params.reserved_option(name, key, RESERVED_OPTIONS, SHORT_OPTIONS)
        option = _oarsub_option(key)
        if option in FLAG_OPTIONS and item is not True:
            raise ValueError(f"{name}[{key!r}]={item!r}: --{option} takes no value, give True")
        if option in VALUE_OPTIONS and item is True:
            raise ValueError(f"{name}[{key!r}]: --{option} needs a value")
        if option == "type":
            params.token(f"{name}[{key!r}]", item)
    return options


def _oarsub_option(key: str) -> str | None:
    """The oarsub option (of ``FLAG_OPTIONS`` and ``VALUE_OPTIONS``) a key names, as Getopt::Long reads it: a
    one-letter key is a short option; a longer one its name or an unambiguous prefix, in any case."""
    if len(key) == 1:
        return OTHER_SHORT_OPTIONS.get(key)
    option = key.replace("_", "-").lower()
    names = FLAG_OPTIONS + VALUE_OPTIONS
    matches = [n for n in names if n == option] or [n for n in names if n.startswith(option)]
    return matches[0] if len(matches) == 1 else None


def validate(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check and normalise OAR parameters (generic and ``oar_`` ones); raise naming the first bad one."""
    return params.check_all(params.for_backend(values, "oar"), CHECKERS, "OarPoolExecutor parameter")


def resource_request(p: Mapping[str, Any]) -> str:
    """The ``-l`` value: ``/nodes=1/core=4,walltime=0:10:00``; one core on one node unless told otherwise."""
    if p["resources"]:
        request = p["resources"]
    else:
        request = f"/nodes={p['nodes']}"
        if p["gpus_per_node"]:
            request += f"/gpu={p['gpus_per_node']}"
        # cores per node: as given, else one per task times its CPUs (one core by default, with no GPU asked)
        cores = p["cores"] or (p["cpus_per_task"] or 1) * p["tasks_per_node"]
        if p["cores"] or p["cpus_per_task"] or p["tasks_per_node"] > 1 or not p["gpus_per_node"]:
            request += f"/core={cores}"
    if p["walltime"] and "walltime" not in request:
        request += f",walltime={params.hms(p['walltime'])}"
    return request


def oarsub_options(p: Mapping[str, Any], folder: str) -> list[tuple[str, str | None]]:
    """(option, value) pairs, rendered both as ``#OAR`` lines and as ``oarsub`` arguments.

    ``-d``: oarsub takes the launching directory from ``$PWD`` otherwise, and fails without it (cron, ``env -i``).
    The log paths are relative to it: OAR opens them after entering that directory, and refuses any path with
    other characters than letters, digits, space and ``_./-%`` (a folder named ``a;b`` or ``x+1`` would fail).
    OAR's ``-S`` reads a ``#OAR`` value to the end of its line, so values are written unquoted.
    """
    options: list[tuple[str, str | None]] = [
        ("-l", resource_request(p)),
        ("-n", p["name"]),
        ("-d", params.job_folder("folder", folder)),
        ("-O", f"{layout.LOGS}/%jobid%.out"),
        ("-E", f"{layout.LOGS}/%jobid%.err"),
    ]
    if p["queue"]:
        options.append(("-q", p["queue"]))
    properties = [p["properties"]] if p["properties"] else []
    if p["mem_gb"]:  # OAR has no memory request: select nodes by a memory property (Grid'5000: memnode, in MB)
        properties.append(f"{p['memory_property']} >= {int(p['mem_gb'] * 1024)}")
    if properties:
        options.append(("-p", properties[0] if len(properties) == 1 else " AND ".join(f"({x})" for x in properties)))
    if p["project"]:
        options.append(("--project", p["project"]))
    options += [("-t", job_type) for job_type in p["job_types"]]
    for key, value in (p["additional_parameters"] or {}).items():
        option = f"-{key}" if len(key) == 1 else f"--{key.replace('_', '-')}"
        options.append((option, None if value is True else str(value)))
    return options


class OarBackend(Backend):
    name = "oar"
    throttles = False  # OAR arrays have no running cap: the core submits in waves
    query_interval = (2.0, 10.0)  # each oarstat costs ~0.2 s or more on the server
    CHECKERS = CHECKERS
    SUBMITIT_SPELLINGS: ClassVar[Mapping[str, str]] = {"n": "name", "gpu": "gpus_per_node"}
    SUBMITIT_REFUSED: ClassVar[Mapping[str, str]] = {"max_num_timeout": "use max_resubmissions= (an executor option)"}

    @classmethod
    def answers_here(cls) -> bool:
        """OAR's clients are installed and ``oarstat`` answers; never for root or oar, whose jobs OAR refuses."""
        if getpass.getuser() in ("root", "oar"):
            return False
        question = ["oarstat", "-s", "-j", "1"]  # -j 0 reads as no id: exit 255
        return commands.probe("oar", ("oarsub", "oarstat", "oardel"), question) is not None

    def __init__(self, folder: str, parameters: Mapping[str, Any]) -> None:
        self.folder = params.job_folder("folder", folder)
        self.parameters = {**PARAMETERS, **validate(parameters)}

    def validate(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return validate(values)

    def render_script(self, submission: BatchSubmission) -> tuple[str, list[str]]:
        """The job script (with its options as ``#OAR`` lines) and the matching ``oarsub`` arguments."""
        p = {**self.parameters, **submission.options}
        options = oarsub_options(p, submission.folder)
        lines = ["#!/bin/bash"]
        arguments = []
        for option, value in options:
            lines.append(f"#OAR {option}" + (f" {value}" if value is not None else ""))
            arguments += [option] + ([value] if value is not None else [])
        if submission.checkpointable:  # the signal before the walltime, and resubmission on exit 99 (RESUBMIT)
            checkpoint, number = str(p["checkpoint_seconds"]), str(int(CHECKPOINT_SIGNAL))
            for option, value in (("-t", "idempotent"), ("--checkpoint", checkpoint), ("--signal", number)):
                lines.append(f"#OAR {option} {value}")
                arguments += [option, value]
        lines.append(f"#OAR --array {submission.count}")
        if submission.checkpointable:
            lines.append(EARLY_SIGNAL_TRAP)
        world_size = p["nodes"] * p["tasks_per_node"]
        # the walltime OAR gave the job: the parameter, or what the admission rules set (the queue's default)
        walltime = f"${{OAR_JOB_WALLTIME_SECONDS:-{p['walltime'] or ''}}}"
        steal = p["steal_seconds"] and submission.steal_variables(p["steal_seconds"], lambda: walltime, world_size)
        if steal:  # first: OARFUTURES_JOB_START is when the job started, before the setup lines
            lines.append(steal)
        lines += list(p["setup"])
        lines.append(f'export {variables.JOB_ID}="$OAR_JOB_ID"')
        if world_size > 1:  # the worker launches the ranks (oarsh to other nodes) and gathers their results
            lines += [
                f"export {variables.RANKS}={world_size} {variables.TASKS_PER_NODE}={p['tasks_per_node']}",
                RANK_PLACEMENT,
            ]
        if submission.checkpointable:
            # OAR resubmits an exit 99 only if stop_time - start_time > 60, in whole seconds, and the start_time it
            # records can be up to 2 s after the job really started (oar_meta_sched sets it from its own clock,
            # which runs ahead when it is called often): 65 s of the worker's time is more than 60 of OAR's
            lines.append(f"export {variables.MIN_RUNTIME}={MIN_RUNTIME}")
        lines.append(submission.worker_command(f"OAR_ARRAY_INDEX - 1 + {submission.first}"))
        return "\n".join(lines) + "\n", arguments

    def can_gather(self, options: Mapping[str, Any]) -> bool:
        return not self._reserves(options)  # a reservation is one job: see submit

    def _reserves(self, options: Mapping[str, Any]) -> bool:
        extra = {**(self.parameters["additional_parameters"] or {}), **(options.get("additional_parameters") or {})}
        return bool({"r", "reservation"} & set(extra))

    def submit(self, submission: BatchSubmission) -> list[str]:
        if submission.count > 1 and self._reserves(submission.options):
            # OAR 2.5 leaves every subjob but the first of a reserved array in toAckReservation until it kills them
            raise ValueError(
                "an OAR advance reservation (additional_parameters 'r') only works for one job: use submit()"
            )
        text, arguments = self.render_script(submission)
        script = layout.script_path(submission.folder, submission.batch, submission.first)
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        command = f"exec {shlex.quote(script)}"  # OAR runs it through the user's login shell
        try:
            out = commands.run(
                ["oarsub", "--array", str(submission.count), *arguments, command],
                before_retry=lambda _: self._submitted(command),
            )
        except commands.SchedulerCommandError as exc:
            raise _memory_hint(exc, {**self.parameters, **submission.options}) from None
        job_ids = re.findall(r"^OAR_JOB_ID=(\d+)$", out, re.M)
        if len(job_ids) != submission.count:
            self.cancel(job_ids)
            raise commands.SchedulerCommandError(["oarsub"], 0, out, f"expected {submission.count} OAR_JOB_ID lines")
        if len(job_ids) == 1:  # no OAR_ARRAY_ID line for an array of one
            return job_ids
        array = re.search(r"^OAR_ARRAY_ID=(\d+)$", out, re.M)
        return self._by_index(array.group(1) if array else job_ids[0], job_ids)

    def _submitted(self, command: str) -> str | None:
        """oarsub's output, rebuilt, if the submission went through after all (its answer was lost), else None.

        Each wave has its own script, which OAR keeps as the job's command: a retry must find the jobs, not
        submit the work twice.
        """
        out = commands.run(["oarstat", "-J", "-u", getpass.getuser()])
        jobs = json.loads(out) if out.strip() else {}
        mine = sorted(
            (int(job["array_index"]), str(job_id), str(job["array_id"]))
            for job_id, job in jobs.items()
            if job.get("command") == command
        )
        if not mine:
            return None
        return "".join(f"OAR_JOB_ID={job_id}\n" for _, job_id, _ in mine) + f"OAR_ARRAY_ID={mine[0][2]}\n"

    def _by_index(self, array_id: str, job_ids: list[str]) -> list[str]:
        """Job ids in task order, from OAR's own array_index of each subjob."""
        out = commands.run(["oarstat", "-J", "--array", array_id])
        jobs = json.loads(out) if out.strip() else {}
        by_index = {int(job["array_index"]): str(job_id) for job_id, job in jobs.items()}
        ordered = [by_index.get(i + 1) for i in range(len(job_ids))]
        if None in ordered:  # OAR forgot nothing it just created; if it did, its printed order is all we have
            return job_ids
        return ordered  # type: ignore[return-value]

    def cancel(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        try:
            commands.run(["oardel", *job_ids])
        except commands.SchedulerCommandError as exc:
            # a job OAR already forgot makes oardel exit 1 ("Cannot frag N"), after it handled the others
            if any(not line.startswith("Cannot frag") for line in exc.stderr.strip().splitlines()):
                raise

    def interrupt(self, job_id: str) -> None:
        commands.run(["oardel", "-c", job_id])

    def query(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        arguments = [a for job_id in job_ids for a in ("-j", job_id)]
        out = commands.run(["oarstat", "-f", "-J", *arguments])
        jobs = json.loads(out) if out.strip() else {}
        return {str(job_id): job_status(job) for job_id, job in jobs.items()}

    @classmethod
    def inspector(cls, folder: str) -> OarBackend:
        return cls(folder, {})

    def earlier_runs(self, job_ids: Sequence[str]) -> dict[str, list[str]]:
        """Every OAR job that ran the same task as each of these jobs (resubmissions), oldest first; one oarstat.

        OAR resubmits a checkpointed task (exit 99 of an idempotent job) under a new job id with logs of its own,
        keeping its array id and array index: the runs of a task are the jobs sharing the (array_id, array_index)
        of any one of them. Raises SchedulerCommandError when OAR cannot say.
        """
        ids = sorted({j for j in job_ids if j.isdigit()}, key=int)
        if not ids:
            return {}
        where = (
            "(array_id, array_index) IN (SELECT array_id, array_index FROM jobs WHERE job_id IN ("
            + ", ".join(ids)
            + "))"
        )
        out = commands.run(["oarstat", "-J", "--sql", where])
        jobs = json.loads(out) if out.strip() else {}
        groups: dict[tuple[Any, Any], list[str]] = {}
        key_of: dict[str, tuple[Any, Any]] = {}
        for job_id, job in jobs.items():
            key = (job.get("array_id"), job.get("array_index"))
            groups.setdefault(key, []).append(str(job_id))
            key_of[str(job_id)] = key
        return {j: sorted(groups[key_of[j]], key=int) if j in key_of else [j] for j in ids}


def _memory_hint(exc: commands.SchedulerCommandError, p: Mapping[str, Any]) -> commands.SchedulerCommandError:
    """oarsub's refusal of a job asking for memory, with what the request became: OAR has no memory request, and
    its own words ("not enough resources", an SQL error) do not say that the memory property was the cause."""
    if not p["mem_gb"]:
        return exc
    prop, megabytes = p["memory_property"], int(p["mem_gb"] * 1024)
    text = (exc.stdout + exc.stderr).lower()
    if f'"{prop.lower()}" does not exist' in text:
        hint = f"mem_gb={p['mem_gb']:g}: this OAR cluster has no resource property {prop!r} (memory_property= names it)"
    elif "not enough resources" in text:
        asked = f"mem_gb={p['mem_gb']:g} asks for resources with {prop} >= {megabytes} (MB)"
        hint = f"{asked}: none matches, with the rest of the request"
    else:
        return exc
    return commands.SchedulerCommandError(exc.command, exc.returncode, exc.stdout, f"{exc.stderr.rstrip()}\n{hint}\n")


def job_status(job: Mapping[str, Any]) -> JobStatus:
    """Map one ``oarstat -f -J`` record onto the common states."""
    state = job.get("state", "")
    events = job.get("events") or []
    kinds = [event.get("type", "") for event in events]
    exit_code = _exit_code(job.get("exit_code"))
    for event in events:
        if event.get("type") == "RESUBMIT_JOB_AUTOMATICALLY":
            found = re.search(r"=>\s*(\d+)", event.get("description", ""))
            if found:
                return JobStatus(JobState.PENDING, state, exit_code, "resubmitted by OAR", follow_up=found.group(1))
    reason = "; ".join(
        f"{e.get('type')}: {e.get('description', '')}".strip()
        for e in events
        if e.get("type") != "SWITCH_INTO_TERMINATE_STATE"
    )
    if state in PENDING_STATES:
        return JobStatus(JobState.PENDING, state)
    if state in RUNNING_STATES:
        return JobStatus(JobState.RUNNING, state)
    if state == "Terminated":
        if exit_code == str(RESUBMIT):  # OAR writes its resubmission and this state together: it will not resubmit now
            reason = _not_resubmitted(job, reason)
        common = JobState.COMPLETED if job.get("exit_code") == 0 else JobState.FAILED
        return JobStatus(common, state, exit_code, reason)
    if "WALLTIME" in kinds:
        return JobStatus(JobState.TIMEOUT, "Error (walltime exceeded)", exit_code, reason)
    if "FRAG_JOB_REQUEST" in kinds:
        return JobStatus(JobState.CANCELLED, "Error (deleted)", exit_code, reason)
    return JobStatus(JobState.FAILED, state or "Error", exit_code, reason)


def _not_resubmitted(job: Mapping[str, Any], reason: str) -> str:
    """Why a job that asked to be resubmitted (exit 99) was not: OAR's own rule, with the numbers it used."""
    ran = (job.get("stopTime") or 0) - (job.get("startTime") or 0)
    why = (
        "OAR did not resubmit it: it resubmits an exit 99 of an idempotent job that ran more than 60 s"
        f" (this one: {ran} s)"
    )
    return f"{why}; {reason}" if reason else why


def _exit_code(status: int | None) -> str | None:
    """OAR's exit_code is a raw wait status (exit 3 is 768): say it as a person would."""
    if status is None:
        return None
    if status & 0x7F:
        return f"signal {status & 0x7F}"
    return str(status >> 8)
