"""The public executors: one class per scheduler, each the executor core (``core.executor.JobExecutor``) bound
to that scheduler's backend, and ``AutoPoolExecutor``, which picks one of them: a function named after submitit's
``AutoExecutor`` and our classes, returning an instance of the chosen class, so that the result is a plain
``concurrent.futures.Executor`` and ``isinstance(ex, SlurmPoolExecutor)`` tells which one was picked.

A constructor spells its scheduler's parameters out (so that a signature and the documentation show them), checks
the arguments every executor takes in one place (``CoreSettings.check``), builds its backend from them, and hands
both to the core, which creates the folder last: a refused argument leaves nothing behind.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import textwrap
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Callable, TypeVar

from oarfutures import auto, registry
from oarfutures.backends import params
from oarfutures.backends.base import Backend
from oarfutures.backends.local import LocalBackend
from oarfutures.core.executor import SUBMITTED_AHEAD_PER_LOCAL_WORKER, JobExecutor
from oarfutures.core.settings import CoreSettings

#: the arguments every executor takes that are the core's, not its scheduler's (``CoreSettings``)
CORE_ARGUMENTS = ("python", "keep_files", "result_grace", "warn_pickle_bytes", "max_resubmissions")
#: their ``Args:`` entries, written once for the three constructors; ``{grace}`` is the backend's default
_CORE_ARGUMENTS_DOC = """\
            python: Interpreter the jobs run, as an absolute path (default: this one, ``sys.executable``). A
                cluster job starts with a fresh environment, so a bare ``python`` could be another interpreter
                without your packages.
            keep_files: Keep task and result files of delivered batches, so that ``attach()`` or
                ``oarfutures results`` can read them again later (they are removed otherwise: the folder
                would grow with every call).
            result_grace: Seconds a job that ended normally may take to show its result file before its future
                fails (default {grace:g} s). Shared filesystems cache directory listings; a job that failed gets at
                most 5 s.
            warn_pickle_bytes: An argument pickled larger than this is named in a warning: it is written once
                per task and read by every job, and a big model in a closure is the usual culprit.
            max_resubmissions: How many times a ``Checkpointable`` call may come back before its future fails
                with ``JobFailedError``, so that a call that always gets preempted cannot loop forever.
"""
#: the line a constructor's docstring has in their place, at whatever indent the docstring has (Python 3.13
#: strips a docstring's common indent when it compiles it, older ones keep it)
_CORE_ARGUMENTS_MARK = re.compile(r"^( *)\(" + ", ".join(CORE_ARGUMENTS) + r": see CORE_ARGUMENTS\)\n", re.MULTILINE)

E = TypeVar("E", bound=type)


def _with_core_arguments(grace: float) -> Callable[[E], E]:
    """Put the core arguments' entries where the constructor's docstring marks them (API reference, ``help()``),
    ``grace`` being its backend's ``result_grace``: a number, not the backend class, so that defining the Slurm and
    OAR executors does not import their backends. ``tests/unit/test_api_docs.py`` fails if a constructor forgets
    the mark or documents another grace than its backend's."""

    def document(cls: E) -> E:
        init = cls.__init__  # type: ignore[misc]
        if init.__doc__:  # (none under python -OO)
            entries = textwrap.dedent(_CORE_ARGUMENTS_DOC.format(grace=grace))
            init.__doc__ = _CORE_ARGUMENTS_MARK.sub(lambda mark: textwrap.indent(entries, mark[1]), init.__doc__)
        return cls

    return document


@_with_core_arguments(Backend.result_grace)  # (Slurm's backend keeps the default)
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
        max_workers: int | None = None,
        *,
        folder: str | None = None,
        partition: str | None = None,
        walltime: int | float | str | datetime.timedelta | None = None,
        nodes: int = 1,
        cpus_per_task: int = 1,
        mem: str | None = None,
        gpus_per_node: int | None = None,
        account: str | None = None,
        qos: str | None = None,
        name: str = "oarfutures",
        setup: Sequence[str] = (),
        additional_parameters: Mapping[str, Any] | None = None,
        checkpoint_seconds: int = 90,
        steal_seconds: float = 60,
        python: str | None = None,
        max_array_size: int | None = None,
        keep_files: bool = False,
        result_grace: float | None = None,
        warn_pickle_bytes: int = 100_000_000,
        max_resubmissions: int = 3,
        mem_gb: float | None = None,
        **parameters: Any,
    ) -> None:
        """Submit nothing yet: each ``submit``/``map`` becomes an ``sbatch --array`` with these parameters.

        Parameters are checked here, before anything is submitted: an unknown name is a ``TypeError`` listing the
        valid ones, a value that could escape its ``#SBATCH`` line a ``ValueError`` naming it.
        ``update_parameters()`` and ``options()`` change them later. The lines each parameter becomes are in the
        documentation's Slurm guide, rendered from this code.

        Args:
            max_workers: How many calls of this executor may run at once, across every ``submit`` and
                ``map`` (dask and joblib submit one call at a time). Given as ``--array=...%N`` with the slots
                left free, so Slurm holds the rest.
            folder: Job folder for task files, results, scripts and logs; it must be on a filesystem the
                compute nodes share. Default: a new private folder under ``$OARFUTURES_FOLDER`` or
                ``~/.oarfutures``. An existing folder owned by another user or writable by others is refused: task
                files are code.
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
            (python, keep_files, result_grace, warn_pickle_bytes, max_resubmissions: see CORE_ARGUMENTS)
            mem_gb: Memory per node in GB, the generic spelling every backend takes (``--mem`` here).
            **parameters: Any other parameter of this backend, by the name ``update_parameters`` takes:
                generic ones (``tasks_per_node``, ``timeout_min``...), ``slurm_``-prefixed ones, and
                submitit's spellings where they mean the same. A name that is none of these is refused with
                the list of valid ones.
        """
        from oarfutures.backends.slurm import PARAMETERS, SlurmBackend  # here: a local executor never loads it

        settings = CoreSettings.check(
            SlurmBackend, max_workers, folder, python, keep_files, result_grace, warn_pickle_bytes, max_resubmissions
        )
        explicit = {
            "partition": partition,
            "walltime": walltime,
            "nodes": nodes,
            "cpus_per_task": cpus_per_task,
            "mem": mem,
            "mem_gb": mem_gb,
            "gpus_per_node": gpus_per_node,
            "account": account,
            "qos": qos,
            "name": name,
            "setup": setup,
            "additional_parameters": additional_parameters,
            "checkpoint_seconds": checkpoint_seconds,
            "steal_seconds": steal_seconds,
        }
        # (unknown names listed, submitit's spellings translated)
        given = {**params.changed_from_defaults(explicit, PARAMETERS), **parameters}
        super().__init__(SlurmBackend(settings.folder, given, max_array_size), settings)


@_with_core_arguments(Backend.result_grace)  # (OAR's backend keeps the default)
class OarPoolExecutor(JobExecutor):
    """Runs calls as OAR jobs: ``submit`` is one ``oarsub``, ``map`` one ``oarsub --array``.

    ``queue`` -> ``-q``; ``nodes``/``cores``/``gpus_per_node``/``walltime`` -> one ``-l`` line such as
    ``/nodes=1/core=4,walltime=0:10:00`` (one core on one node by default; ``resources`` gives the raw ``-l``
    text instead); ``properties`` -> ``-p``; ``project`` -> ``--project``; ``job_types`` -> ``-t`` (besteffort,
    idempotent...); ``additional_parameters`` -> any other option (``{"t": "besteffort"}`` -> ``#OAR -t
    besteffort``), except those oarfutures passes itself (``-O``, ``-l``, ``-d``...: the error names the parameter to
    use); ``setup`` lines run before the worker. ``max_workers`` caps running tasks: OAR arrays have no
    cap of their own, so tasks are submitted in waves as earlier ones finish. ``steal_seconds``: for how long
    after its own call a job may run pending calls of its array in the same interpreter (0: never; see the
    README's "Stealing").
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        folder: str | None = None,
        queue: str | None = None,
        walltime: int | float | str | datetime.timedelta | None = None,
        nodes: int = 1,
        cores: int | None = None,
        gpus_per_node: int | None = None,
        resources: str | None = None,
        properties: str | None = None,
        project: str | None = None,
        name: str = "oarfutures",
        job_types: Sequence[str] = (),
        setup: Sequence[str] = (),
        additional_parameters: Mapping[str, Any] | None = None,
        checkpoint_seconds: int = 90,
        steal_seconds: float = 60,
        python: str | None = None,
        keep_files: bool = False,
        result_grace: float | None = None,
        warn_pickle_bytes: int = 100_000_000,
        max_resubmissions: int = 3,
        mem_gb: float | None = None,
        **parameters: Any,
    ) -> None:
        """Submit nothing yet: each ``submit``/``map`` becomes an ``oarsub --array`` with these parameters.

        Parameters are checked here, before anything is submitted: an unknown name is a ``TypeError`` listing the
        valid ones, a value that could escape its ``#OAR`` line a ``ValueError`` naming it.
        ``update_parameters()`` and ``options()`` change them later (also the generic ``tasks_per_node``,
        ``cpus_per_task``, ``mem_gb`` and ``memory_property``). The lines each parameter becomes are in the
        documentation's OAR guide, rendered from this code.

        Args:
            max_workers: How many calls of this executor may run at once, across every ``submit`` and
                ``map`` (dask and joblib submit one call at a time). OAR arrays have no running cap of their
                own: tasks are submitted in waves.
            folder: Job folder for task files, results, scripts and logs; it must be on a filesystem the
                compute nodes share (your home on Grid'5000). Default: a new private folder under
                ``$OARFUTURES_FOLDER`` or ``~/.oarfutures``. An existing folder owned by another user or writable
                by others is refused: task files are code.
            queue: ``-q`` (``default``, ``production``, ``besteffort``...); none lets OAR pick its default.
            walltime: The ``walltime=`` of the ``-l`` line, as seconds, a ``timedelta`` or ``"H:MM:SS"``; none
                takes the queue's default. It also bounds what a job may steal.
            nodes: ``-l /nodes=N`` per call; more than one makes a multi-task job (see ``JobEnvironment``).
            cores: ``/core=N`` per node in the ``-l`` line (one core unless told otherwise or a GPU is asked).
            gpus_per_node: ``/gpu=N`` per node in the ``-l`` line.
            resources: The whole ``-l`` text instead (``"/cluster=1/nodes=2"``), for requests the parameters
                above cannot spell; ``walltime`` is appended unless it is already in it.
            properties: ``-p``, an SQL filter on node properties (``"gpu_model='A100'"``).
            project: ``--project``, for sites that account by project.
            name: ``-n``, what ``oarstat`` shows.
            job_types: ``-t`` values (``"besteffort"``, ``"exotic"``...); ``idempotent`` is added for
                ``Checkpointable`` calls.
            setup: Shell lines run before the worker (``module load``, ``conda activate``), because OAR starts a
                job with a fresh login environment.
            additional_parameters: Any other ``oarsub`` option, ``{"t": "besteffort"}`` becomes
                ``#OAR -t besteffort``; options oarfutures passes itself (``-l``, ``-O``, ``-d``...) are refused
                with the parameter to use instead.
            checkpoint_seconds: For a ``Checkpointable`` call, how long before the walltime OAR sends the
                checkpoint signal (``--checkpoint``): the time ``checkpoint()`` has to save its state.
            steal_seconds: For how long after its own call a job may run pending calls of its array in the same
                interpreter (0: never), which saves a job start per stolen call.
            (python, keep_files, result_grace, warn_pickle_bytes, max_resubmissions: see CORE_ARGUMENTS)
            mem_gb: Memory per node in GB: OAR has no memory request, so it selects resources whose
                ``memory_property`` (Grid'5000's ``memnode``, in MB) is at least that much.
            **parameters: Any other parameter of this backend, by the name ``update_parameters`` takes:
                generic ones (``tasks_per_node``, ``timeout_min``...), ``oar_``-prefixed ones, and submitit's
                spellings where they mean the same. A name that is none of these is refused with the list of
                valid ones.
        """
        from oarfutures.backends.oar import PARAMETERS, OarBackend  # here: a local executor never loads it

        settings = CoreSettings.check(
            OarBackend, max_workers, folder, python, keep_files, result_grace, warn_pickle_bytes, max_resubmissions
        )
        explicit = {
            "queue": queue,
            "walltime": walltime,
            "nodes": nodes,
            "cores": cores,
            "gpus_per_node": gpus_per_node,
            "resources": resources,
            "properties": properties,
            "project": project,
            "name": name,
            "job_types": job_types,
            "setup": setup,
            "additional_parameters": additional_parameters,
            "checkpoint_seconds": checkpoint_seconds,
            "steal_seconds": steal_seconds,
            "mem_gb": mem_gb,
        }
        # (unknown names listed, submitit's spellings translated)
        given = {**params.changed_from_defaults(explicit, PARAMETERS), **parameters}
        super().__init__(OarBackend(settings.folder, given), settings)


@_with_core_arguments(LocalBackend.result_grace)
class LocalPoolExecutor(JobExecutor):
    """Runs calls in worker subprocesses on this machine, at most ``max_workers`` at once.

    The embedded default when no scheduler is found; it goes through the same task files, worker and poller as
    the cluster executors, so what works here works there.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        folder: str | None = None,
        python: str | None = None,
        keep_files: bool = False,
        result_grace: float | None = None,
        warn_pickle_bytes: int = 100_000_000,
        max_resubmissions: int = 3,
        preload: str | Sequence[str] = (),
        **parameters: Any,
    ) -> None:
        """Start no process yet: resident workers start with the first calls and leave after 10 s idle.

        Args:
            max_workers: How many calls of this executor may run at once, across every ``submit`` and
                ``map`` (dask and joblib submit one call at a time). Also the number of resident worker
                processes (default: the CPU count).
            folder: Job folder for task files, results, scripts and logs; it must be on a filesystem the
                workers can read (here, any local folder). Default: a new private folder under
                ``$OARFUTURES_FOLDER`` or ``~/.oarfutures``. An existing folder owned by another user or writable
                by others is refused: task files are code.
            (python, keep_files, result_grace, warn_pickle_bytes, max_resubmissions: see CORE_ARGUMENTS)
            preload: Modules (dotted names, like ``"dask"``) imported once, before the workers start, by the
                process that forks them, so that each worker has them at once instead of importing them itself
                (``multiprocessing``'s forkserver preload). ``dask.compute`` with ``scheduler=executor`` costs each
                worker 0.1 s of CPU importing ``dask`` otherwise. A module that cannot be imported is named on
                stderr; one that starts a thread when imported (numpy, with its BLAS threads) cannot be preloaded:
                a process with threads cannot fork safely, so the calls then fail, and stderr says why.
            **parameters: The generic parameters (``walltime``, ``mem_gb``, ``tasks_per_node``...), accepted so
                that a script written for a cluster runs unchanged here; only ``tasks_per_node`` and ``nodes``
                (the ranks of a multi-task call) act on this machine. A name that is none of them is refused
                with the list of valid ones.
        """
        settings = CoreSettings.check(
            LocalBackend, max_workers, folder, python, keep_files, result_grace, warn_pickle_bytes, max_resubmissions
        )
        modules = params.module_names("preload", preload)
        backend = LocalBackend(max_workers or os.cpu_count() or 1, settings.folder, modules)
        # the generic parameters (mem_gb=, timeout_min=...) are accepted, so that a script runs unchanged here
        backend.parameters.update(backend.validate(parameters))
        super().__init__(backend, settings)
        self._max_workers = SUBMITTED_AHEAD_PER_LOCAL_WORKER * backend.max_workers  # see there: dask reads it
        # weakly: an executor the user dropped is not kept alive by its backend's slots (its futures still resolve)
        backend.on_job_end = functools.partial(_job_ended, weakref.ref(self))


def _job_ended(executor: weakref.ref[JobExecutor], job_id: str) -> None:
    live = executor()
    if live is not None:
        live.job_ended(job_id)


def AutoPoolExecutor(
    max_workers: int | None = None, *, folder: str | None = None, cluster: str | None = None, **parameters: Any
) -> JobExecutor:
    """An executor for the scheduler found here (or ``cluster=``, or ``$OARFUTURES_CLUSTER``).

    One script then runs unchanged on a Grid'5000 front-end, a Slurm login node and a laptop. It returns an
    instance of the chosen class (``isinstance(ex, SlurmPoolExecutor)`` tells which), so everything documented
    for ``LocalPoolExecutor``, ``SlurmPoolExecutor`` and ``OarPoolExecutor`` applies to it.

    Args:
        max_workers: How many calls may run at once, as for the chosen executor.
        folder: The job folder, as for the chosen executor.
        cluster: ``"oar"``, ``"slurm"`` or ``"local"`` to force a backend (``$OARFUTURES_CLUSTER`` does the same
            without editing the script); by default OAR if ``oarsub`` answers (not as root: OAR refuses it),
            else Slurm if its controller answers, else local.
        **parameters: Generic ones (``walltime`` or ``timeout_min``, ``nodes``, ``tasks_per_node``,
            ``cpus_per_task``, ``gpus_per_node``, ``mem_gb``, ``name``, ``setup``) mean the same on every backend;
            ``oar_``/``slurm_`` prefixed ones (``oar_queue``, ``slurm_partition``...) apply on their scheduler
            only, overriding the generic one there, and are ignored elsewhere, which is what lets one script
            name both. Also the core arguments every executor takes: ``python``, ``keep_files``,
            ``result_grace``, ``warn_pickle_bytes``, ``max_resubmissions``.

    Raises:
        ValueError: ``cluster`` is not one of the three, or a parameter value is refused.
        TypeError: A parameter name is unknown to the chosen backend (the message lists the valid ones).
    """
    chosen = cluster or os.environ.get(auto.CLUSTER_VARIABLE) or auto.detect_cluster()
    if chosen not in registry.NAMES:
        raise ValueError(f"cluster={chosen!r} is not one of {', '.join(registry.NAMES)}")
    # given to the constructor, which checks them before it makes the folder (a refused one leaves none behind);
    # keyword by keyword they are the same as update_parameters()'s (the generic name, then the prefixed one)
    executor: JobExecutor = registry.executor_class(chosen)(max_workers, folder=folder, **parameters)
    return executor
