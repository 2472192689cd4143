"""Where a job folder keeps its files, shared by the client and the worker.

A *batch* is what one ``submit`` or ``map`` call produces: one scheduler array of *tasks* (one task per array
element; a task holds ``chunksize`` calls). Task ids are ours (``<batch>_<index>``), never the scheduler's, so the
worker can find its input before anyone knows which job id it got::

    folder/                      0700: task files are code
      .lock                      taken by processes that must take turns on the folder (attach, clean)
      tasks/<batch>.batch        the functions of the batch, pickled once, plus the client's sys.path; every
                                 task's calls, concatenated pickles, and their offsets, so a task reads only its
                                 slice (the format: ``TASK_FILE_HEADER`` and the ``protocol`` package)
      tasks/<batch>_<i>.resume.pkl   a checkpointed task's next calls (overrides its slice)
      claims/<batch>/<i>         who runs task i: created once, atomically, by its worker or by a cancel()
      claims/<batch>/<i>.<k>     the same for call k of a task of several calls (chunksize > 1)
      claims/owner-<random>      an owner's name (a worker's, "cancelled"), which its claims link to; a worker
                                 removes it as it ends (its claims keep it: hard links)
      results/<batch>_<i>.pkl    written by the worker to a temp name, then renamed: appears complete or not at all
                                 (its content: see ``results``)
      results/ranks/<batch>_<i>/<rank>.pkl   a multi-task job's rank's result (same format), gathered by its
                                 launcher into the task's result, then removed
      results/<batch>_<i>.stolen.<job>   empty marker: job <job> (another task of the array) claimed task i and
                                 runs it; the client then follows that job for it (see worker.stealing)
      results/delivered/         results a client has read, kept until the whole batch is delivered (re-attach)
      results/worker-<pid>-<k>.spare   resident local worker <pid>'s next result files, created ahead
                                 (see spare_result_paths)
      jobs/<batch>.json          what was submitted: task count, scheduler job ids (to re-attach after a crash)
      jobs/<batch>-<first>.sh    the submission script of the array starting at task <first>, for the user
      logs/                      stdout/stderr of every job, kept after results are collected
      logs/<batch>_<i>.stolen.out|err   the output of task i when another job of its array ran it (stolen)
      logs/worker-<pid>.out|err  a resident local worker's output of the call it runs now; moved to the call's
                                 own log files when the call ends, if it printed anything (see worker.resident)

Besides the files, the job script and the worker share environment variables (``variables``), a signal and an
exit status (``signals``). This module imports nothing heavy: the worker starts once per task.
"""

import errno
import os
import stat
import time

TASKS, RESULTS, JOBS, LOGS, CLAIMS = "tasks", "results", "jobs", "logs", "claims"
DELIVERED = os.path.join(RESULTS, "delivered")
RANKS = os.path.join(RESULTS, "ranks")
RESULT_SUFFIX = ".pkl"


def new_batch_id() -> str:
    """``<date>-<time>-<8 hex digits>``: batches sort by submission time, and no two in a folder share an id."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(4).hex()}"


def is_batch_id(text: str) -> bool:
    """Whether ``text`` has the form ``new_batch_id`` gives: a batch named on a command line becomes part of file
    paths, where ``../x`` would climb out of the folder."""
    parts = text.split("-")
    if len(parts) != 3 or not text.isascii():
        return False
    date, clock, random = parts
    digits = len(date) == 8 and date.isdigit() and len(clock) == 6 and clock.isdigit()
    return digits and random != "" and all(c in "0123456789abcdef" for c in random)


def task_id(batch: str, index: int) -> str:
    return f"{batch}_{index}"


def batch_path(folder: str, batch: str) -> str:
    """The batch's task file: one file, whatever its number of tasks (a file creation can cost ~0.6 ms of CPU,
    and dask makes a batch of each call)."""
    return os.path.join(folder, TASKS, batch + ".batch")


#: the start of a task file: the length of its functions' pickle, then its number of tasks (little-endian)
TASK_FILE_HEADER = "<QQ"


def resume_path(folder: str, batch: str, index: int) -> str:
    return os.path.join(folder, TASKS, task_id(batch, index) + ".resume.pkl")


def result_path(folder: str, batch: str, index: int) -> str:
    return os.path.join(folder, RESULTS, task_id(batch, index) + RESULT_SUFFIX)


def delivered_path(folder: str, batch: str, index: int) -> str:
    return os.path.join(folder, DELIVERED, task_id(batch, index) + RESULT_SUFFIX)


def record_path(folder: str, batch: str) -> str:
    return os.path.join(folder, JOBS, batch + ".json")


def script_path(folder: str, batch: str, first: int) -> str:
    """The job script of the array of ``batch`` that starts at task ``first`` (a batch may need several arrays)."""
    return os.path.join(folder, JOBS, f"{batch}-{first}.sh")


def ranks_folder(folder: str, batch: str, index: int) -> str:
    """Where the ranks of task ``index`` (a multi-task job) write their results."""
    return os.path.join(folder, RANKS, task_id(batch, index))


def rank_path(folder: str, batch: str, index: int, rank: int) -> str:
    return os.path.join(ranks_folder(folder, batch, index), f"{rank}.pkl")


#: what separates a task id from the stealing job's id in the name of a steal marker in results/
STOLEN = ".stolen."


def result_on_disk(folder: str, batch: str, index: int) -> bool:
    """Whether task ``index`` has a result, fresh or delivered. Looked up by opening it: NFS revalidates an
    open() (close-to-open), where a stat may use its cache."""
    for path in (result_path(folder, batch, index), delivered_path(folder, batch, index)):
        try:
            with open(path, "rb"):
                return True
        except FileNotFoundError:
            continue
    return False


def stolen_marker_path(folder: str, batch: str, index: int, job_id: str) -> str:
    return os.path.join(folder, RESULTS, task_id(batch, index) + STOLEN + job_id)


def parse_stolen_marker(name: str) -> "tuple[str, str] | None":
    """(task id, job id) from a steal marker's file name, None for any other name."""
    task, sep, job = name.partition(STOLEN)
    return (task, job) if sep and job and "." not in job else None


def log_paths(folder: str, job_id: str) -> "list[str]":
    """Where a job's stdout and stderr go: the scheduler writes them (Slurm's --output, OAR's -O and -E)."""
    base = os.path.join(folder, LOGS, job_id)
    return [base + ".out", base + ".err"]


def stolen_log_paths(folder: str, task: str) -> "list[str]":
    """Where a stolen task's stdout and stderr go (its own job's logs are another job's files)."""
    base = os.path.join(folder, LOGS, task + ".stolen")
    return [base + ".out", base + ".err"]


#: how many empty result files a resident local worker keeps ready (see spare_result_paths)
SPARE_RESULTS = 8


def spare_result_paths(folder: str, pid: int) -> "list[str]":
    """The empty files resident local worker ``pid`` keeps ready to write its next results into: creating a file
    can cost ~0.6 ms of CPU, which it spends while calls run rather than between them, several files at a time."""
    return [os.path.join(folder, RESULTS, f"worker-{pid}-{k}.spare") for k in range(SPARE_RESULTS)]


def spool_paths(folder: str, pid: int) -> "list[str]":
    """Where resident local worker ``pid`` writes the stdout and stderr of the call it runs."""
    base = os.path.join(folder, LOGS, f"worker-{pid}")
    return [base + ".out", base + ".err"]


def publish_spool(spool: str, log: str) -> bool:
    """Hand a call's output from a worker's spool file to the call's log file, if it printed anything.

    Most calls print nothing, and two log files per call were most of the file work of a short local call; so
    output goes to the worker's spool and becomes the call's log only when there is some: renamed when the log
    does not exist yet (True: the worker needs a new spool), else appended (a checkpointed call's next run).
    """
    try:
        if os.path.getsize(spool) == 0:
            return False
        if not os.path.lexists(log):
            os.rename(spool, log)
            return True
        with open(spool, "rb") as source, open(log, "ab") as target:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                target.write(chunk)
        os.truncate(spool, 0)  # its writers append (O_APPEND): they go on at the new end
    except FileNotFoundError:  # the folder was cleaned meanwhile
        pass
    return False


def lock_path(folder: str) -> str:
    return os.path.join(folder, ".lock")


def claim_path(folder: str, batch: str, index: int, call: "int | None" = None) -> str:
    name = str(index) if call is None else f"{index}.{call}"
    return os.path.join(folder, CLAIMS, batch, name)


#: the owner a cancel() writes into a claim; a worker writes ``run_owner(...)``
CANCELLED = "cancelled"
#: the start of the name of an owner's file in a batch's claims folder (see ``claim``)
OWNER_FILE_PREFIX = "owner-"


def run_owner(job_id: "str | None", host: str, pid: int) -> str:
    """The owner a worker writes into the claim of a call it runs: who to follow, or to kill, for it."""
    return f"run {job_id or '?'} {host} {pid}"


def parse_run_owner(owner: "str | None") -> "tuple[str | None, str, int] | None":
    """(job id or None, host, pid) of a worker's claim; None for a cancel's claim, no claim, or anything else."""
    parts = (owner or "").split()
    if len(parts) != 4 or parts[0] != "run" or not parts[3].isdigit():
        return None
    return (None if parts[1] == "?" else parts[1]), parts[2], int(parts[3])


def runner(folder: str, batch: str, index: int) -> "tuple[str | None, str, int] | None":
    """The worker that claimed task ``index`` to run it, as ``parse_run_owner`` gives it; None if none did."""
    return parse_run_owner(claim_owner(claim_path(folder, batch, index)))


def claim(path: str, owner: str) -> bool:
    """Take the claim at ``path`` for ``owner``: True if we got it, False if someone else holds it.

    A claim decides who runs a call, exactly once: the worker about to run it and a ``cancel()`` compete for
    the same name. The claim is a hard link, under the call's name, to a file holding the owner: ``link(2)``
    creates the name, pointing at content already written, in one atomic step that fails if the name exists,
    also on NFS (the classic lock of NFS clients). A reader never sees a claim without its owner. Each process
    writes its owner's file once per job folder (``claims/owner-<random>``) and links it for every call it
    claims, in any batch, so a claim allocates no inode: creating a file (or a symbolic link, as claims were
    before) costs ~0.6 ms of CPU on some filesystems, more than the rest of a short local call.
    """
    claims = os.path.dirname(os.path.dirname(path))
    try:
        os.link(_owner_file(claims, owner), path)
    except FileExistsError:
        return False
    except OSError as exc:  # its owner file has all the links it can take (EMLINK), or was removed: a new one
        if exc.errno not in (errno.EMLINK, errno.ENOENT):
            raise
        _owner_files.pop((claims, owner), None)
        try:
            os.link(_owner_file(claims, owner), path)  # (if the batch's folder is gone, this fails again)
        except FileExistsError:
            return False
    return True


#: (claims folder, owner) -> the file this process wrote there holding the owner, for its claims to link to
_owner_files: "dict[tuple[str, str], str]" = {}


def _owner_file(claims: str, owner: str) -> str:
    path = _owner_files.get((claims, owner))
    if path is None:
        # named at random, never a batch's name: nobody reads it before a claim links to it
        path = os.path.join(claims, f"{OWNER_FILE_PREFIX}{os.urandom(6).hex()}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, owner.encode())
        finally:
            os.close(fd)
        _owner_files[(claims, owner)] = path
    return path


def drop_owner_files() -> None:
    """Remove the names of this process's owner files as it ends: its claims keep their content (hard links)."""
    for path in _owner_files.values():
        try:
            os.remove(path)
        except OSError:  # the folder was cleaned meanwhile
            pass
    _owner_files.clear()


def claim_for_cancel(path: str) -> bool:
    """Take the claim at ``path`` for a cancellation: True if it is (now or already) a cancel's, False if a worker
    holds it."""
    return claim(path, CANCELLED) or claim_owner(path) == CANCELLED


def claim_owner(path: str) -> "str | None":
    """Who holds the claim at ``path`` (None: nobody)."""
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        pass
    try:  # a claim made before claims were hard links: a symbolic link to its owner (open() found no such file)
        return os.readlink(path)
    except OSError:
        return None


def claim_time(path: str) -> "float | None":
    """When the claim at ``path`` was last linked to its owner's file: the start of the call a worker runs now
    (a worker claims one call at a time); for a call that ended, results record their own start."""
    try:
        return os.lstat(path).st_ctime
    except OSError:
        return None


def make_folder(folder: str) -> None:
    """Create the job folder (private) or check an existing one; create its subfolders private.

    An existing folder is never chmodded (``folder="."`` is the user's project, a symlink may lead to a shared
    place): it is refused if another user owns it or others can write to it, since task files in it are code.
    """
    try:
        os.makedirs(os.path.dirname(folder) or ".", exist_ok=True)
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    check_owned(folder)
    for sub in (TASKS, RESULTS, DELIVERED, JOBS, LOGS, CLAIMS):
        path = os.path.join(folder, sub)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            check_owned(path)


def check_owned(path: str) -> None:
    """Refuse a folder another user owns or others can write to, naming it (before anything is written)."""
    info = os.stat(path)
    if info.st_uid != os.geteuid():
        raise UnsafeFolderError(
            f"folder {path} is owned by uid {info.st_uid}, not by you ({os.geteuid()}): choose a folder of your own"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFolderError(
            f"folder {path} is writable by other users (mode {stat.filemode(info.st_mode)}): task files are code, "
            "choose a private folder (or chmod go-w it)"
        )


class UnsafeFolderError(PermissionError):
    """A task file or its folder can be written by other users: loading it would run their code."""


def check_private(*paths: str) -> None:
    """Refuse paths that users other than the owner can write (group- or world-writable), or owned by others."""
    me = os.geteuid()
    for path in paths:
        info = os.stat(path)
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafeFolderError(
                f"refusing to load tasks: {path} is writable by other users "
                f"(mode {stat.filemode(info.st_mode)}); a task file is code, make it private (chmod 700)"
            )
        if info.st_uid not in (me, 0):
            raise UnsafeFolderError(f"refusing to load tasks: {path} is owned by uid {info.st_uid}, not by us ({me})")
