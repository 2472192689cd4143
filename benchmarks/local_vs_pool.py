"""The local backend against the standard pools, on issue 13's targets: ``max_workers=2``, calls of 5 ms.

Four scenarios, each with oarfutures' ``LocalPoolExecutor(max_workers=2)`` and with its baseline:

* ``map``: ``list(ex.map(work, range(400)))``; baseline ``concurrent.futures.ProcessPoolExecutor(max_workers=2)``
  (both with their default chunksize, 1);
* ``submit``: 400 ``ex.submit(work, i)``, then ``as_completed`` over them; same baseline;
* ``dask``: ``dask.compute(total, scheduler=ex)`` of a graph of 200 independent ``dask.delayed(work)(i)`` and one
  ``sum`` of them (the graph is built before the clock starts); same baseline as the scheduler;
* ``joblib``: ``joblib.Parallel(n_jobs=2)`` of 200 ``delayed(work)(i)`` through ``oarfutures.joblib_backend``
  (``parallel_config(backend="oarfutures", executor=LocalPoolExecutor(max_workers=2))``) vs joblib's own ``loky``
  backend with ``n_jobs=2``; joblib's default automatic batching on both sides, as users call it.

* ``map_tmpfs``, a diagnostic without a target: ``map`` again, oarfutures' folder on tmpfs (``/dev/shm``), against
  the same baseline. Each call creates a file (its result), and on a disk where that is slow (this VM's ext4 has
  no journal, and scans the inodes deleted in the last minutes for each new one: ~0.7 ms) the difference between
  the two ``map`` rows is what the disk costs, not the code.
* ``map_journaled``, a diagnostic without a target: ``map`` again, the folder on an ext4 *with* a journal, made in a
  file and mounted through a loop device for the run (as root; left out where that fails). Without a journal, ext4
  skips the inodes deleted in the last minute or more when it allocates one, reading each (``find_inode_bit``):
  with a journal it does not, as on the file systems users' folders live on.
* ``dask_preload``, a diagnostic without a target: ``dask`` again with ``LocalPoolExecutor(preload=["dask"])``: the
  fork server imports dask once instead of each worker, as a ``ProcessPoolExecutor`` worker has its client's.

``work`` (defined here, so a ``__main__`` function in the child, as in a user's script) sleeps 5 ms: the floor of
400 calls on 2 workers is 1 s. ``--quick``: 100 and 50 calls.

**Wall time** runs from creating the executor to the return of its ``shutdown()`` (``with ex: ...``, as users
write it), the same for every contender: for loky, whose workers outlive ``Parallel``, that is the shutdown of
joblib's reusable loky executor. The time to the last result (shutdown excluded) is kept in the JSON as well.

**CPU** is that of every process of the measurement: the child's own (``RUSAGE_SELF``), its waited-for descendants
(``RUSAGE_CHILDREN``, after ``shutdown`` has reaped the workers) and any descendant still unreaped then (alive or
zombie, read from ``/proc``; the child makes itself the subreaper of orphans so none escapes): the child's own
CPU from just before the executor is made to the return of ``shutdown()`` (so imports do not count), its
descendants' until they have used no CPU for 1 s (at most 15 s after shutdown), so that a worker still exiting
after ``shutdown()`` returned, or a helper such as loky's resource tracker, counts in full.

Every (scenario, side) is one child process (the chosen job interpreter, see ``common.job_python``); each repeat
runs every scenario's two sides back to back, in alternating order. Figures are medians over repeats; the ratio is
oarfutures' median over the baseline's, both measured in this invocation; the target beside it is issue 13's. The
CPU time the host stole from this VM during each run is kept and noted (``common.stolen_seconds``), and a pair of
which one run lost more than ``STOLEN_LIMIT`` of the VM's CPU time to it runs again (at most ``PAIR_RETRIES``
times; the pairs set aside stay in the JSON).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time

from benchmarks import common

NAME = "local_vs_pool"
SLEEP = 0.005
WORKERS = 2
SCENARIOS = ("map", "submit", "dask", "joblib", "map_tmpfs", "map_journaled", "dask_preload")
SIDES = ("baseline", "oarfutures")
BASELINES = {
    "map": "ProcessPoolExecutor",
    "submit": "ProcessPoolExecutor",
    "dask": "ProcessPoolExecutor",
    "joblib": "joblib loky",
    "map_tmpfs": "ProcessPoolExecutor",
    "map_journaled": "ProcessPoolExecutor",
    "dask_preload": "ProcessPoolExecutor",
}
TARGETS = {
    "map": 1.2,
    "submit": 1.2,
    "dask": 1.5,
    "joblib": 1.5,
    "map_tmpfs": None,
    "map_journaled": None,
    "dask_preload": None,
}
MAPS = ("map", "map_tmpfs", "map_journaled")  # the same calls, the folder on three file systems
CPU_TARGET = 2.0
TMPFS = "/dev/shm"
JOURNALED_MB = 512  # the size of the journaled ext4's image file (sparse until written)
#: a pair of runs one of which lost more than this share of the VM's CPU time to the host runs again, at most
#: PAIR_RETRIES times (the pairs set aside are kept in the JSON): a noisy neighbour moved a ratio by 0.5x
STOLEN_LIMIT = 0.05
PAIR_RETRIES = 2


def work(x):
    time.sleep(SLEEP)
    return x


def sizes(quick: bool) -> dict:
    full = {"map": 400, "submit": 400, "dask": 200, "joblib": 200, "dask_preload": 200}
    full.update(map_tmpfs=full["map"], map_journaled=full["map"])
    return {scenario: calls // 4 for scenario, calls in full.items()} if quick else full


def describe(scenario: str, n: int) -> str:
    return {
        "map": f"map {n}",
        "submit": f"submit {n} + as_completed",
        "dask": f"dask.compute {n} tasks + sum",
        "joblib": f"joblib Parallel {n}",
        "map_tmpfs": f"map {n}, folder on tmpfs (diagnostic)",
        "map_journaled": f"map {n}, folder on a journaled ext4 (diagnostic)",
        "dask_preload": f"dask.compute {n} tasks + sum, preload=['dask'] (diagnostic)",
    }[scenario]


# ---------------------------------------------------------------------- child
def _oarfutures_executor(args: dict, folder: str, preload: tuple = ()):
    import oarfutures

    return oarfutures.LocalPoolExecutor(max_workers=WORKERS, folder=folder, python=args["python"], preload=preload)


def _shutdown_loky() -> None:
    """Stop joblib's reusable loky executor (it outlives ``Parallel`` to be reused) and wait for its workers."""
    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True)


def measure(args: dict) -> dict:
    import concurrent.futures as cf

    scenario, side, n = args["scenario"], args["side"], args["n"]
    out: dict = {"scenario": scenario, "side": side, "calls": n, "load_start": common.load()}
    elsewhere = {"map_tmpfs": TMPFS, "map_journaled": args.get("journaled")}.get(scenario)
    folder = tempfile.mkdtemp(dir=elsewhere) if elsewhere else os.path.abspath("jobs")
    out["subreaper"] = common.become_subreaper()
    expected = list(range(n))
    graph = None
    if scenario in ("dask", "dask_preload"):
        import dask

        graph = dask.delayed(sum)([dask.delayed(work)(i) for i in range(n)])
        out["versions"] = {"dask": dask.__version__}
    if scenario == "joblib":
        import joblib
        from joblib.externals import loky

        out["versions"] = {"joblib": joblib.__version__, "loky (joblib's)": loky.__version__}
        if side == "oarfutures":
            import oarfutures.joblib_backend  # registers the joblib backend "oarfutures"
    if side == "oarfutures":
        import oarfutures

        out["versions"] = {**out.get("versions", {}), "oarfutures": oarfutures.__version__}
    else:
        import multiprocessing

        out["start_method"] = multiprocessing.get_start_method()

    cpu0 = common.tree_cpu()
    stolen0 = common.stolen_seconds()
    t0 = time.perf_counter()
    if scenario == "joblib":
        import joblib

        calls = (joblib.delayed(work)(i) for i in range(n))
        if side == "oarfutures":
            ex = _oarfutures_executor(args, folder)
            with joblib.parallel_config(backend="oarfutures", executor=ex, n_jobs=WORKERS):
                parallel = joblib.Parallel()
                values = parallel(calls)
        else:
            with joblib.parallel_config(backend="loky", n_jobs=WORKERS):
                parallel = joblib.Parallel()
                values = parallel(calls)
        t_last = time.perf_counter()
        ex.shutdown() if side == "oarfutures" else _shutdown_loky()
        out["batch_size"] = str(getattr(parallel, "batch_size", "?"))
        out["effective_batch_size"] = getattr(getattr(parallel, "_backend", None), "_effective_batch_size", None)
        ok = values == expected
    else:
        preload = ("dask",) if scenario == "dask_preload" else ()
        if side == "oarfutures":
            ex = _oarfutures_executor(args, folder, preload)
        else:
            ex = cf.ProcessPoolExecutor(max_workers=WORKERS)
        if scenario in MAPS:
            values = list(ex.map(work, range(n)))
            ok = values == expected
        elif scenario == "submit":
            futures = [ex.submit(work, i) for i in range(n)]
            values = [f.result() for f in cf.as_completed(futures)]
            ok = sorted(values) == expected
        elif scenario in ("dask", "dask_preload"):
            import dask

            (total,) = dask.compute(graph, scheduler=ex)
            ok = total == sum(expected)
        else:
            raise ValueError(f"unknown scenario {scenario!r}")
        t_last = time.perf_counter()
        ex.shutdown()
    t_end = time.perf_counter()
    cpu1 = common.tree_cpu()
    stolen1 = common.stolen_seconds()
    if elsewhere:
        shutil.rmtree(folder, ignore_errors=True)
    out["cpu_seconds_at_shutdown"] = sum(cpu1[part] - cpu0[part] for part in ("self", "children", "unreaped"))
    settled = _settle(cpu1)

    out["ok"] = ok
    out["wall_seconds"] = t_end - t0  # creation -> shutdown returned
    out["to_last_result_seconds"] = t_last - t0
    out["shutdown_seconds"] = t_end - t_last
    out["cpu_seconds_self"] = cpu1["self"] - cpu0["self"]  # the client's own, up to shutdown
    for part in ("children", "unreaped"):
        out[f"cpu_seconds_{part}"] = settled[part] - cpu0[part]
    out["cpu_seconds"] = sum(out[f"cpu_seconds_{part}"] for part in ("self", "children", "unreaped"))
    out["settle_seconds"] = settled["settle_seconds"]
    out["stolen_seconds"] = None if stolen0 is None or stolen1 is None else stolen1 - stolen0
    out["unreaped_after_settling"] = common.unreaped_descendants()[:10]
    return out


def _settle(cpu: dict, quiet: float = 1.0, limit: float = 15.0) -> dict:
    """Wait until the descendants stop using CPU (none for ``quiet`` s, at most ``limit`` s after shutdown) and
    return their CPU then: a worker still exiting after ``shutdown()`` returned (the last one writes its result,
    then tears its interpreter down) or a helper process (loky's resource tracker) counts in full."""
    t0 = last_change = time.perf_counter()
    total = cpu["children"] + cpu["unreaped"]
    while time.perf_counter() - last_change < quiet and time.perf_counter() - t0 < limit:
        time.sleep(0.1)
        cpu = common.tree_cpu()
        if cpu["children"] + cpu["unreaped"] > total + 0.005:
            total, last_change = cpu["children"] + cpu["unreaped"], time.perf_counter()
    cpu["settle_seconds"] = time.perf_counter() - t0
    return cpu


# ---------------------------------------------------------------------- orchestrator
def run(ctx) -> dict:
    n = sizes(ctx.quick)
    repeats = ctx.repeats(3, 5)  # (the per-repeat CPU ratios of one run spread by ~0.3x: 5 make the median firmer)
    runs, set_aside = [], []
    with _journaled_ext4() as journaled:
        available = {"map_tmpfs": os.path.isdir(TMPFS), "map_journaled": journaled is not None}
        scenarios = [s for s in SCENARIOS if available.get(s, True)]
        for r in range(repeats):
            for i, scenario in enumerate(scenarios):
                for attempt in range(1 + PAIR_RETRIES):
                    pair = [
                        _run_side(ctx, r, scenario, side, n[scenario], journaled)
                        for side in (SIDES if (r + i + attempt) % 2 == 0 else SIDES[::-1])
                    ]
                    if attempt == PAIR_RETRIES or not any(_stolen_share(res) > STOLEN_LIMIT for res in pair):
                        break
                    print(f"    the host stole more than {STOLEN_LIMIT:.0%} of a run: the pair runs again", flush=True)
                    set_aside += pair
                runs += pair
    return {
        "name": NAME,
        "calls": n,
        "sleep_seconds": SLEEP,
        "max_workers": WORKERS,
        "repeats": repeats,
        "runs": runs,
        "set_aside": set_aside,
        "rows": rows(runs, n, len(set_aside) // 2),
    }


@contextlib.contextmanager
def _journaled_ext4():
    """A journaled ext4 made in a sparse file under the scratch folder and mounted through a loop device, for
    ``map_journaled``; None (and a line saying why) where that cannot be done (not root, no loop device)."""
    base = common.scratch(f"{NAME}-journaled")
    image, mount = os.path.join(base, "ext4.img"), os.path.join(base, "mnt")
    mounted = False
    try:
        os.mkdir(mount)
        with open(image, "wb") as f:
            f.truncate(JOURNALED_MB << 20)
        # initialised now, not by a kernel thread while the runs are measured
        mkfs = ["mkfs.ext4", "-q", "-F", "-O", "has_journal", "-E", "lazy_itable_init=0,lazy_journal_init=0", image]
        subprocess.run(mkfs, check=True, capture_output=True, text=True)
        subprocess.run(["mount", "-o", "loop", image, mount], check=True, capture_output=True, text=True)
        mounted = True
    except (OSError, subprocess.CalledProcessError) as exc:
        why = getattr(exc, "stderr", "") or exc
        print(f"  {NAME}: no journaled ext4 for map_journaled, its rows are left out: {why}", flush=True)
    try:
        yield mount if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", mount], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _run_side(ctx, r: int, scenario: str, side: str, n: int, journaled: str | None = None) -> dict:
    folder = common.scratch(f"{NAME}-{scenario}-{side}")
    print(f"  {NAME} {r + 1}: {scenario} {side} N={n} (load {common.load():.1f})", flush=True)
    args = {"scenario": scenario, "side": side, "n": n, "python": ctx.python, "journaled": journaled}
    res = ctx.run_child(NAME, args, folder=folder, timeout=900)
    res.setdefault("scenario", scenario)
    res["repeat"] = r
    if "error" in res:
        print(f"    error: {res['error']}\n{res.get('stderr', '')}", flush=True)
    else:
        print(
            f"    wall {res['wall_seconds']:.2f} s, CPU {res['cpu_seconds']:.2f} s, stolen "
            f"{res.get('stolen_seconds') or 0:.2f} s{'' if res.get('ok') else ', WRONG RESULTS'}",
            flush=True,
        )
    ctx.cleanup(folder)
    return res


def _stolen_share(res: dict) -> float:
    """The share of a run's wall time that the host took from this VM (out of its 2 CPUs' time)."""
    stolen, wall = res.get("stolen_seconds"), res.get("wall_seconds")
    return stolen / (wall * os.cpu_count()) if stolen and wall else 0.0


def _s(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _pairwise(runs: list, scenario: str, key: str) -> str:
    """min-max of the per-repeat ratios (each repeat's two sides ran back to back): how much load moved them."""
    ratios = []
    for r in sorted({x["repeat"] for x in runs}):
        pair = {x["side"]: x for x in runs if x["repeat"] == r and x.get("scenario") == scenario and "error" not in x}
        if len(pair) == 2 and pair["baseline"][key]:
            ratios.append(pair["oarfutures"][key] / pair["baseline"][key])
    return f"{min(ratios):.2f}-{max(ratios):.2f}x" if ratios else "n/a"


def rows(runs: list, n: dict, pairs_set_aside: int = 0) -> list:
    case = f"local_vs_pool {int(SLEEP * 1000)} ms calls, {WORKERS} workers"
    out = []
    for kind, key in (("wall", "wall_seconds"), ("CPU", "cpu_seconds")):
        for scenario in SCENARIOS:
            mine = [r for r in runs if r.get("scenario") == scenario]
            if not mine:
                continue
            good = {s: [r for r in mine if r.get("side") == s and "error" not in r] for s in SIDES}
            value = {s: common.median([r[key] for r in good[s]]) for s in SIDES}
            if kind == "wall":
                last = {s: common.median([r["to_last_result_seconds"] for r in good[s]]) for s in SIDES}
                note = (
                    f"creation to shutdown; to last result {_s(last['oarfutures'])} vs "
                    f"{_s(last['baseline'])} s; floor {n[scenario] * SLEEP / WORKERS:.2f} s"
                )
            else:
                client = {s: common.median([r["cpu_seconds_self"] for r in good[s]]) for s in SIDES}
                unreaped = {s: common.median([r["cpu_seconds_unreaped"] for r in good[s]]) for s in SIDES}
                note = (
                    f"client + all descendants; the client alone {_s(client['oarfutures'])} vs "
                    f"{_s(client['baseline'])} s"
                )
                if any(v and v > 0.005 for v in unreaped.values()):
                    note += (
                        f"; in processes still unreaped after shutdown {_s(unreaped['oarfutures'])} vs "
                        f"{_s(unreaped['baseline'])} s"
                    )
            note += f"; per-repeat ratios {_pairwise(mine, scenario, key)}"
            stolen = {s: common.median([r.get("stolen_seconds") for r in good[s]]) for s in SIDES}
            if any(v and v > 0.005 for v in stolen.values()):
                note += f"; CPU stolen by the host {_s(stolen['oarfutures'])} vs {_s(stolen['baseline'])} s"
            if pairs_set_aside:
                note += f"; {pairs_set_aside} pair(s) of all scenarios run again for stolen CPU"
            failed = [
                f"{r.get('side')}: {r.get('error') or 'wrong results'}" for r in mine if "error" in r or not r.get("ok")
            ]
            if failed:
                note += "; FAILED " + "; ".join(failed)
            out.append(
                common.row(
                    case,
                    f"{describe(scenario, n[scenario])}: {kind} [s]",
                    value["oarfutures"],
                    BASELINES[scenario],
                    value["baseline"],
                    unit="s",
                    runs=min(len(good["oarfutures"]), len(good["baseline"])),
                    load=common.load_range(*mine),
                    note=note,
                    target=TARGETS[scenario] if kind == "wall" or TARGETS[scenario] is None else CPU_TARGET,
                )
            )
    return out


if __name__ == "__main__":
    common.child_main(measure)
