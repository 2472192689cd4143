"""Start-up cost of one task: ``python -u -m oarfutures.worker FOLDER BATCH 0`` on a trivial task vs ``python -c pass``.

Two tasks are written with the package's own ``batchfiles.write_batch``, one call each: ``noop``, a ``__main__``
function of this child, pickled by value by cloudpickle as a user's script function is (the worker must import
cloudpickle to load it), and ``operator.neg``, pickled by reference as any function of an importable module is
(plain ``pickle`` loads it: no cloudpickle in the worker). Each worker run also reports whether it imported
cloudpickle (``-X importtime``, once per case). All commands run with the job interpreter, alternately, 30 times
each (10 with ``--quick``), from the same folder; the result and claim files are removed between runs.
``/usr/bin/python3 -c pass`` is timed too: the venv's own start-up overhead (its ``site`` with ``.pth`` files).
``python -m benchmarks.profiling worker`` lists the imports.
"""

from __future__ import annotations

import contextlib
import operator
import os
import subprocess
import sys
import time

from benchmarks import common

NAME = "worker_startup"


def noop(x):
    return x


def make_task(folder: str) -> str:
    """The two one-call batches in ``folder`` (created private, as executors do); returns the by-value one's name."""
    import cloudpickle

    from oarfutures.core import batchfiles
    from oarfutures.protocol import layout

    if noop.__module__ != "__main__":  # imported (by benchmarks.profiling): still ship it by value, as in the child
        cloudpickle.register_pickle_by_value(sys.modules[noop.__module__])
    layout.make_folder(folder)
    batchfiles.write_batch(folder, "bench", [noop], [[(0, (1,), {})]], 100_000_000)
    batchfiles.write_batch(folder, "byref", [operator.neg], [[(0, (1,), {})]], 100_000_000)
    return "bench"


# ---------------------------------------------------------------------- child
def measure(args: dict) -> dict:
    from oarfutures.protocol import layout

    python, runs = args["python"], args["runs"]
    folder = os.path.abspath("task")
    batch = make_task(folder)
    workers = {
        "worker": [python, "-u", "-m", "oarfutures.worker", folder, batch, "0"],
        "worker, by reference": [python, "-u", "-m", "oarfutures.worker", folder, "byref", "0"],
    }
    imports_cloudpickle = {}
    for name, command in workers.items():
        done = subprocess.run([command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True)
        imports_cloudpickle[name] = "cloudpickle" in done.stderr
    commands = {
        **workers,
        "python -c pass": [python, "-c", "pass"],
        "/usr/bin/python3 -c pass": ["/usr/bin/python3", "-c", "pass"],
    }
    times = {name: [] for name in commands}
    results = os.path.join(folder, "results")
    codes, wrote = set(), 0
    for _ in range(runs):
        for name, command in commands.items():
            for entry in os.listdir(results):
                if entry.endswith(".pkl"):
                    os.remove(os.path.join(results, entry))
            for claimed in ("bench", "byref"):  # a task runs once: its claim goes too, or the next run skips it
                with contextlib.suppress(FileNotFoundError):
                    os.remove(layout.claim_path(folder, claimed, 0))
            t0 = time.perf_counter()
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            times[name].append(time.perf_counter() - t0)
            codes.add((name, done.returncode, done.stderr[-300:].decode(errors="replace")))
            if name in workers:
                wrote += any(e.endswith(".pkl") for e in os.listdir(results))
    return {
        "runs": runs,
        "times": times,
        "worker_wrote_result": wrote == runs * len(workers),
        "imports_cloudpickle": imports_cloudpickle,
        "exit_codes": sorted({(n, c) for n, c, _ in codes}),
        "worker_stderr": sorted({e for n, c, e in codes if n in workers and e})[:2],
    }


# ---------------------------------------------------------------------- orchestrator
def run(ctx) -> dict:
    runs = 10 if ctx.quick else 30
    folder = common.scratch(NAME)
    print(f"  {NAME}: {runs} runs of each (load {common.load():.1f})", flush=True)
    res = ctx.run_child(NAME, {"python": ctx.python, "runs": runs}, folder=folder, timeout=300)
    ctx.cleanup(folder)
    return {"name": NAME, "runs": [res], "rows": rows(res)}


def rows(res: dict) -> list:
    if "error" in res:
        return [common.row(NAME, "(failed)", None, "", None, note=res["error"])]
    t = {name: common.median(values) for name, values in res["times"].items()}
    load = common.load_range(res)
    note = "" if res.get("worker_wrote_result") else "the worker wrote no result!"
    imported = res.get("imports_cloudpickle", {})
    rows = []
    for name, what in (("worker", "by value (a __main__ function)"), ("worker, by reference", "by reference")):
        if name not in t:
            continue
        cloudpickle = {True: "imports cloudpickle", False: "no cloudpickle"}.get(imported.get(name), "")
        rows.append(
            common.row(
                f"worker_startup ({res['runs']} runs)",
                f"trivial task {what}, wall [s]",
                t[name],
                "python -c pass",
                t["python -c pass"],
                unit="s",
                runs=res["runs"],
                load=load,
                note=note
                or f"{cloudpickle}; /usr/bin/python3 -c pass (no venv): {t['/usr/bin/python3 -c pass'] * 1000:.0f} ms",
            )
        )
    return rows


if __name__ == "__main__":
    common.child_main(measure)
