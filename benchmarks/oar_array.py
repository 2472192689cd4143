"""N trivial calls on the real OAR, as the unprivileged user OAR requires: oarfutures vs a plain ``oarsub --array``.

Both contenders run in a child process started with ``runuser -u alice`` from a folder alice owns, with the same
interpreter (the CI venv) for the client and the jobs:

* **floor**: ``oarsub --array N -l /core=1,walltime=0:5:0 "<python> -c pass"``, then ``oarstat -s -j ID ...``
  (all ids, one call) back to back (0.1 s pause; each call takes 0.2-0.5 s) until every subjob is Terminated or
  Error; OAR's own ``stopTime`` of the last subjob (1 s resolution) is recorded as a cross-check;
* **oarfutures**: ``list(OarPoolExecutor(walltime="0:5:0", python=<python>).map(noop, range(N)))`` (one core on
  one node per subjob, the same request as the floor's).

Before each contender, the benchmark waits (up to 90 s) until no job of anybody is waiting in OAR's queue.
Wall time runs from just before ``oarsub`` to every result in the client (floor: every subjob over). oarstat,
oarsub and oardel calls are counted by the PATH wrappers of ``common``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

from benchmarks import common

NAME = "oar_array"
SIDES = ("floor", "oarfutures")
FLOOR_TARGET = 0.5  # issue 13: 100 trivial calls take at most half the bare array's time
POLL = 0.1  # floor: pause between oarstat calls (each call itself takes 0.2-0.5 s here)
OVER = {"Terminated", "Error"}


def noop(x):
    return x


# ---------------------------------------------------------------------- child (runs as alice)
def measure(args: dict) -> dict:
    side, n, python, name = args["side"], args["n"], args["python"], args["name"]
    limit = args.get("limit", 400)
    out: dict = {
        "side": side,
        "calls": n,
        "load_start": common.load(),
        "python": python,
        "user": os.environ.get("USER"),
    }
    if side == "floor":
        t0 = time.perf_counter()
        text = subprocess.run(
            ["oarsub", "--array", str(n), "-n", name, "-l", "/core=1,walltime=0:5:0", f"{python} -c pass"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        ids = re.findall(r"^OAR_JOB_ID=(\d+)$", text, re.M)
        out["submit_seconds"] = time.perf_counter() - t0
        states: dict = {}
        try:
            while time.perf_counter() - t0 < limit:
                lines = subprocess.run(
                    ["oarstat", "-s", *[a for i in ids for a in ("-j", i)]], capture_output=True, text=True
                ).stdout.splitlines()
                found = [line.split(":", 1)[1].strip() for line in lines if ":" in line]
                states = {s: found.count(s) for s in set(found)}
                if len(found) == len(ids) and set(found) <= OVER:
                    break
                time.sleep(POLL)
            out["wall_seconds"] = time.perf_counter() - t0
        finally:
            if not set(states) <= OVER or sum(states.values()) != len(ids):
                subprocess.run(["oardel", *ids], capture_output=True)
        out["final_states"] = states
        out["ok"] = states.get("Terminated") == n
        out["oar_span_seconds"] = _oar_span(ids, time.time() - out["wall_seconds"])
    else:
        import oarfutures
        from oarfutures.backends.oar import OarBackend

        out["oarfutures_file"] = oarfutures.__file__
        with common.StateQueries(OarBackend) as queries:
            ex = oarfutures.OarPoolExecutor(folder=os.path.abspath("jobs"), walltime="0:5:0", python=python, name=name)
            try:
                t0 = time.perf_counter()
                results = ex.map(noop, range(n), timeout=limit)
                out["submit_seconds"] = time.perf_counter() - t0
                values = list(results)
                out["wall_seconds"] = time.perf_counter() - t0
            except BaseException:
                ex.abort("benchmark failed")
                raise
            ex.shutdown()
        out["ok"] = values == list(range(n))
        out["poller_queries"] = queries.count
    return out


def _oar_span(ids, submitted_epoch):
    """OAR's own view: last subjob's stopTime minus the submission moment (1 s resolution), or None."""
    try:
        env = {k: v for k, v in os.environ.items() if k != common.CALLS_VARIABLE}  # not counted: after the run
        text = subprocess.run(
            ["oarstat", "-f", "-J", *[a for i in ids for a in ("-j", i)]],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        ).stdout
        stops = [job.get("stopTime") or 0 for job in json.loads(text).values()]
        return max(stops) - submitted_epoch if stops and all(stops) else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


# ---------------------------------------------------------------------- orchestrator
def run(ctx) -> dict:
    n = 10 if ctx.quick else 100
    repeats = ctx.repeats(quick=1, full=1)
    runs = []
    for r in range(repeats):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            folder = common.scratch(f"{NAME}-{side}", user=common.OAR_USER)
            name = f"bench-{side[:5]}-{os.getpid()}-{r}"
            quiet = common.wait_for_quiet(common.oar_queue, ("W", "L"))  # Waiting, Launching
            before = {"oar_queue": quiet["queue_at_start"], **quiet}
            calls = os.path.join(folder, "calls.log")
            print(
                f"  {NAME}: {side} with {n} calls as {common.OAR_USER} (load {common.load():.1f}, "
                f"queue {before['oar_queue']})",
                flush=True,
            )
            res = ctx.run_child(
                NAME,
                {"side": side, "n": n, "python": ctx.python, "name": name},
                folder=folder,
                wrappers=ctx.wrappers,
                calls=calls,
                user=common.OAR_USER,
                timeout=600,
            )
            res.update(before, repeat=r, scheduler_calls=common.count_calls(calls))
            _delete_leftovers(name)
            runs.append(res)
            ctx.cleanup(folder)
    return {"name": NAME, "calls": n, "runs": runs, "rows": rows(runs, n)}


def _delete_leftovers(name: str) -> None:
    """After a failed child: delete its still unfinished jobs (found by their unique name), as their owner."""
    try:
        text = subprocess.run(
            ["oarstat", "-J", "-u", common.OAR_USER], capture_output=True, text=True, timeout=60
        ).stdout
        jobs = json.loads(text) if text.strip() else {}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return
    ids = [str(i) for i, job in jobs.items() if job.get("name") == name and job.get("state") not in OVER]
    if ids:
        subprocess.run(["runuser", "-u", common.OAR_USER, "--", "oardel", *ids], capture_output=True)


def rows(runs: list, n: int) -> list:
    by = {side: [r for r in runs if r.get("side") == side and "error" not in r] for side in SIDES}
    wall = {side: common.median([r["wall_seconds"] for r in by[side]]) for side in SIDES}
    stat = {
        side: common.median([(r.get("scheduler_calls") or {}).get("oarstat", 0) for r in by[side]]) for side in SIDES
    }
    case = f"oar_array N={n}"
    load = common.load_range(*by["floor"], *by["oarfutures"])
    out = [
        common.row(
            case,
            "submit -> all done [s]",
            wall["oarfutures"],
            "oarsub --array floor",
            wall["floor"],
            unit="s",
            runs=len(by["oarfutures"]),
            load=load,
            target=FLOOR_TARGET,
        ),
        common.row(
            case,
            "oarstat calls",
            stat["oarfutures"],
            "oarsub --array floor",
            stat["floor"],
            load=load,
            ratio_=None,
            note="the floor polls back to back (measuring device); oarfutures' count includes "
            "the oarstat --array that orders subjobs after oarsub",
        ),
    ]
    queues = "; ".join(f"{r['side']}: {r.get('oar_queue')}" for r in runs)
    span = common.median([r.get("oar_span_seconds") for r in by["floor"]])
    out[0]["note"] = (
        f"OAR's own stopTime says the floor took {span:.0f} s; " if span else ""
    ) + f"jobs in the OAR queue (everyone's) at each start: {queues}"
    failed = [f"{r.get('side')}: {r['error']}" for r in runs if "error" in r]
    failed += [
        f"{r.get('side')}: not all ok ({r.get('final_states')})" for r in runs if "error" not in r and not r.get("ok")
    ]
    if failed:
        out[0]["note"] = "; ".join(failed) + "; " + out[0]["note"]
    return out


if __name__ == "__main__":
    common.child_main(measure)
