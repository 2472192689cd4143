"""The job side: the process a job runs, its ranks, the local backend's resident workers, ``JobEnvironment``.

It starts once per task on a cluster, so it imports only the protocol and what the task asks for: nothing here
imports the client's executors, threads or scheduler commands.
"""
