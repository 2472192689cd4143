"""The signal and the exit statuses that pass between a scheduler, a job script and the worker.

A checkpointable job is told it will be stopped by ``CHECKPOINT_SIGNAL`` (Slurm's ``--signal=B:USR2``, OAR's
``--signal=12``, the local backend's ``interrupt()``); a worker that saved its task's next calls asks to be run
again by exiting with ``RESUBMIT``.
"""

import signal

from oarfutures.protocol import variables

#: exit status of a checkpointed task that must run again: OAR resubmits an idempotent job on exactly this status,
#: the local backend requeues the task on it (Slurm requeues through ``variables.REQUEUE_COMMAND`` instead)
RESUBMIT = 99
CHECKPOINT_SIGNAL = signal.SIGUSR2
#: exit status of a local fork server that will not fork: a module of its ``preload`` started a thread
PRELOAD_REFUSED = 3
#: the first command of a checkpointable job script: a signal while it runs (setup lines) is passed to the worker
EARLY_SIGNAL_TRAP = f"trap 'export {variables.SIGNALLED}=1' {CHECKPOINT_SIGNAL.name[3:]}"
