"""The contract between the client and its jobs: read this package to know everything they tell each other.

The client (``core``, ``backends``) and a job (``worker``) never talk directly: the client writes files into the
job folder and a job script, the job writes files back. Everything they share is here:

- ``layout``: every path of the job folder (drawn as a tree in its docstring), and the claims, hard links to
  a file naming who runs a call, that make a call run once or never;
- the task file (written by ``core.batchfiles``, read by ``worker.taskfiles``): ``tasks/<batch>.batch`` holds,
  one after the other, ``layout.TASK_FILE_HEADER`` (F, the length of the next part, and N, the number of
  tasks), F bytes of a pickle of ``(meta, functions)`` (``meta`` a dict: ``sys_path``, the client's import
  path, ``origins``, the file each function comes from, ``max_resubmissions``; ``functions`` the batch's
  functions pickled once by cloudpickle), N+1 offsets (little-endian uint64) into what follows, and every
  task's calls as concatenated pickles, each a list of ``(function index, args, kwargs)``, task i's between
  offsets i and i+1; ``tasks/<batch>_<i>.resume.pkl`` is what a checkpointed task runs next, a dict of
  ``functions``, ``calls``, ``done`` (the outcomes so far) and ``resubmissions``;
- ``results``: the result file of a task, its outcomes as named types, their dump and read;
- ``variables``: every ``OARFUTURES_*`` environment variable, who sets it and who reads it;
- ``signals``: the checkpoint signal, the exit status of a task that must run again, and that of a local fork
  server refusing its preload.

Its modules import nothing heavy: the worker imports them at every start.
"""
