"""Every ``OARFUTURES_*`` environment variable: who sets it, who reads it.

The client and a job share files (``layout``, ``results``) and, besides, these variables: the job script (rendered
by a backend) tells the worker what it cannot find in the folder, the worker tells the call where it runs, a
multi-task job's launcher tells each rank who it is. The user's own settings come last. Plain strings: the worker
imports this at every start.
"""

# ------------------------------------------------------------------ job script -> worker (backends render them)
#: the scheduler's id of this job (an array task's own id): steal markers, claims and errors name it
JOB_ID = "OARFUTURES_JOB_ID"
#: the task index of this array element, computed by the job script (shell arithmetic on the scheduler's index)
INDEX = "OARFUTURES_INDEX"
#: how many copies of the call a multi-task job runs (``nodes * tasks_per_node``); absent or 1: a single task
RANKS = "OARFUTURES_RANKS"
#: how many of them run on each node
TASKS_PER_NODE = "OARFUTURES_TASKS_PER_NODE"
#: where a multi-task job's ranks run and how they start, in the scheduler's terms (see ``worker.ranks``):
#: a command prefix that starts one copy of a command per rank on the job's nodes (Slurm: ``srun --ntasks=...``);
#: empty: the job's first process starts them itself, on its own node and through ``REMOTE_SHELL``
RANK_LAUNCH = "OARFUTURES_RANK_LAUNCH"
#: with ``RANK_LAUNCH``: the scheduler's variables that tell a rank who it is, as ``OURS=THEIRS`` pairs
#: (``OARFUTURES_RANK=SLURM_PROCID ...``)
RANK_VARIABLES = "OARFUTURES_RANK_VARIABLES"
#: the job's nodes, the first process's node first, separated by white space (rank 0's node: the master address)
NODES = "OARFUTURES_NODES"
#: the command that runs a shell command on another node of the job: ``REMOTE_SHELL host command`` (OAR: oarsh)
REMOTE_SHELL = "OARFUTURES_REMOTE_SHELL"
#: the scheduler's variables a rank on another node gets too (a remote shell starts a fresh login environment)
REMOTE_VARIABLES = "OARFUTURES_REMOTE_VARIABLES"
#: all of them: the local backend clears them (its ranks are processes of this machine, whatever its client inherited)
RANK_PLACEMENT = (RANK_LAUNCH, RANK_VARIABLES, NODES, REMOTE_SHELL, REMOTE_VARIABLES)
#: a command that asks the scheduler to run a checkpointed task again (Slurm: ``scontrol requeue <id>``)
REQUEUE_COMMAND = "OARFUTURES_REQUEUE_COMMAND"
#: seconds a checkpointed job must have run before it exits to run again (OAR resubmits only after 60 s)
MIN_RUNTIME = "OARFUTURES_MIN_RUNTIME"
#: set to 1 by a checkpointable job script when the checkpoint signal came before the worker started
SIGNALLED = "OARFUTURES_SIGNALLED"
#: stealing (see ``worker.stealing``): how long after its own task a job may start pending tasks of its array ...
STEAL_SECONDS = "OARFUTURES_STEAL_SECONDS"
#: ... the job's walltime in seconds, "unlimited", or empty (unknown: nothing is stolen) ...
WALLTIME = "OARFUTURES_WALLTIME"
#: ... when the job script started (epoch seconds) ...
JOB_START = "OARFUTURES_JOB_START"
#: ... and the array's tasks, ``ARRAY_FIRST .. ARRAY_FIRST + ARRAY_COUNT - 1`` of the batch
ARRAY_FIRST = "OARFUTURES_ARRAY_FIRST"
ARRAY_COUNT = "OARFUTURES_ARRAY_COUNT"
#: what the worker reads and removes before any call runs: nothing a call starts may inherit them
STEALING = (STEAL_SECONDS, WALLTIME, JOB_START, ARRAY_FIRST, ARRAY_COUNT)

# ------------------------------------------------------------------ worker -> the call
#: the job folder, for calls that keep files of their own next to the job's (checkpoints, logs)
JOB_FOLDER = "OARFUTURES_JOB_FOLDER"
#: our id of the task the call belongs to, ``<batch>_<index>`` (what ``oarfutures logs`` takes)
TASK_ID = "OARFUTURES_TASK_ID"

# ------------------------------------------------------------------ launcher -> each rank (``JobEnvironment``)
RANK = "OARFUTURES_RANK"
LOCAL_RANK = "OARFUTURES_LOCAL_RANK"
WORLD_SIZE = "OARFUTURES_WORLD_SIZE"
MASTER_ADDR = "OARFUTURES_MASTER_ADDR"
MASTER_PORT = "OARFUTURES_MASTER_PORT"
#: the scheduler's name of the rank's node
NODE = "OARFUTURES_NODE"
#: set for ranks that must end when their launcher does (they watch a pipe from it)
WATCH_LAUNCHER = "OARFUTURES_WATCH_LAUNCHER"
#: what every variable of the contract starts with: a rank on another node gets them all
PREFIX = "OARFUTURES_"

# ------------------------------------------------------------------ the user's settings, read by the client
#: where executors made without ``folder=`` create their job folders (default ``~/.oarfutures``)
FOLDER = "OARFUTURES_FOLDER"
#: days a finished default folder is kept (see ``core.retention``)
KEEP_DAYS = "OARFUTURES_KEEP_DAYS"
#: the backend ``AutoPoolExecutor`` uses: "oar", "slurm" or "local"
CLUSTER = "OARFUTURES_CLUSTER"
#: the only ones a job may inherit from the process that submits it; the others describe the submitting job
#: itself (a call that submits from inside a job, a rank among them), and its rank must not become the new job's
USER_SETTINGS = (FOLDER, KEEP_DAYS, CLUSTER)
