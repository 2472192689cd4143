"""``python -m benchmarks [--quick] [--only NAME[,NAME...]]``: every comparison in one invocation.

Runs the cases below (each measurement in a child process, see ``common``), prints one table of medians and
ratios, writes each case's raw numbers to ``benchmarks/results/<case>.json`` and the table to
``benchmarks/results/summary.json``, draws the scaling plots (``benchmarks/results/*.png``) and refreshes the table
in ``benchmarks/README.md`` (between its ``<!-- table -->`` markers). A case run alone with ``--only`` replaces
its own rows; the other rows keep their last values (their date is in the JSON).

Cases (full / ``--quick`` sizes):

  slurm_array      1000 / 100 trivial calls on Slurm: oarfutures vs sbatch --array (floor) vs submitit
  oar_array        100 / 10 trivial calls on OAR (as alice): oarfutures vs oarsub --array (floor)
  client_cost      client cost of map for 10,000 and 100,000 calls (1,000 / 10,000): local vs ProcessPool,
                   and oarfutures vs submitit submitting a held Slurm array
  poller_cost      poller CPU and scheduler calls with 1,000 / 10,000 / 100,000 pending Slurm tasks
  latency          result file on disk -> future done; scancel -> future failed
  worker_startup   python -m oarfutures.worker on a trivial task vs python -c pass
  local_vs_pool    LocalPoolExecutor(2) vs ProcessPoolExecutor(2) on 400 / 100 calls of 5 ms: map,
                   submit + as_completed, dask.compute (200 / 50), joblib vs loky (200 / 50); wall and CPU
  dask_slurm       dask.compute of 200 / 50 tasks with SlurmPoolExecutor(max_workers=4): sbatch calls and the
                   most calls running at once

The machine is shared: every figure carries the 1-minute load average seen while it was measured.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import time

from benchmarks import common

CASES = (
    "slurm_array",
    "oar_array",
    "client_cost",
    "poller_cost",
    "latency",
    "worker_startup",
    "local_vs_pool",
    "dask_slurm",
)
README = os.path.join(common.HERE, "README.md")


class Context:
    """What every case's ``run(ctx)`` gets: the mode, the interpreter, the wrappers, and a cleanup policy."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.quick = args.quick
        self.keep = args.keep
        self.python = args.python or common.job_python()
        self.wrappers = common.make_wrappers(
            os.path.join(common.SCRATCH, "wrappers"), common.SLURM_COMMANDS + common.OAR_COMMANDS
        )

    def run_child(self, module: str, args: dict, **options) -> dict:
        """``common.run_child`` with this run's interpreter: every child, client and job, runs ``--python``."""
        return common.run_child(module, args, python=self.python, **options)

    def repeats(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def cleanup(self, folder: str) -> None:
        if not self.keep:
            shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------- table
def fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 100):
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


COLUMNS = (
    ("case", "case"),
    ("measure", "measure"),
    ("oarfutures", "oarfutures"),
    ("baseline", "baseline"),
    ("baseline_value", "baseline value"),
    ("ratio", "ratio"),
    ("target", "target"),
    ("load", "load 1m"),
    ("runs", "runs"),
)


def cells(r: dict) -> list:
    out = []
    for key, _ in COLUMNS:
        value = r.get(key)
        if key == "ratio" and value is not None:
            out.append(f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x")
        elif key == "target":  # an upper bound on the ratio (issue 13's targets); most rows have none
            if value is None:
                out.append("")
            elif isinstance(value, str):  # a bound on something other than the ratio, said in words
                out.append(value)
            else:
                met = "" if r.get("ratio") is None else (" met" if r["ratio"] <= value else " missed")
                out.append(f"≤{value:g}x{met}")
        else:
            out.append(fmt(value))
    return out


def _where(r: dict) -> str:
    return f"{r['case']}, {r['measure']}" + (f" vs {r['baseline']}" if r.get("baseline") else "")


def text_table(rows: list) -> str:
    table = [[title for _, title in COLUMNS]] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = []
    for number, line in enumerate(table):
        lines.append(
            "  ".join(c.ljust(w) if i < 2 or i in (3, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        )
        if number == 0:
            lines.append("-" * len(lines[0]))
    notes = [f"  * {_where(r)}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(lines + ([""] + notes if notes else []))


def markdown_table(rows: list) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |")
    notes = [f"- *{_where(r)}*: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(lines + ([""] + notes if notes else []))


def update_readme(summary: dict) -> None:
    """Replace the text between ``<!-- table -->`` and ``<!-- /table -->`` in the README with the latest table."""
    try:
        with open(README) as f:
            text = f.read()
    except FileNotFoundError:
        return
    start, end = "<!-- table -->", "<!-- /table -->"
    if start not in text or end not in text:
        return
    m = summary["machine"]
    body = (
        f"\n{markdown_table(summary['rows'])}\n\n"
        f"Last run {summary['date']} ({'--quick' if summary['quick'] else 'full'}; cases of other dates are kept "
        f"from their last run), {m['nproc']} CPUs, {m['ram_gb']} GB RAM, load average at start "
        f"{' / '.join(f'{x:.1f}' for x in m['loadavg'])}, job python {m['job_python']} "
        f"({m['job_python_version']}), {m['slurm']}, {m['oar']}; oarfutures {m['code']['git_head']!r}"
        f"{' + ' + str(len(m['code']['git_dirty'])) + ' edited file(s)' if m['code']['git_dirty'] else ''}.\n"
    )
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(README, "w") as f:
        f.write(head + start + body + end + tail)


# ---------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[8:]).strip(),
    )
    parser.add_argument("--quick", action="store_true", help="small N everywhere (under 3 minutes)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these cases (repeatable or comma-separated): {', '.join(CASES)}",
    )
    parser.add_argument(
        "--python",
        help="interpreter for clients and jobs (default: $OARF_BENCH_PYTHON, else the CI venv, else this one); "
        "it must import oarfutures, and the packages of benchmarks/requirements.txt for the cases that use them",
    )
    parser.add_argument("--keep", action="store_true", help=f"keep the scratch folders under {common.SCRATCH}")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the table in benchmarks/README.md")
    parser.add_argument(
        "--table",
        action="store_true",
        help="measure nothing: print the saved table, redraw the plots, refresh the README",
    )
    args = parser.parse_args(argv)
    if args.table:
        with open(os.path.join(common.RESULTS_DIR, "summary.json")) as f:
            summary = json.load(f)
        from benchmarks import plots

        plots.draw_all(common.RESULTS_DIR)
        if not args.no_readme:
            update_readme(summary)
        print(text_table(summary["rows"]))
        return 0
    only = [name for item in args.only for name in item.split(",") if name]
    unknown = sorted(set(only) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    selected = [c for c in CASES if not only or c in only]

    ctx = Context(args)
    if ctx.python == common.CI_PYTHON:  # the jobs import the venv's copy: measure the working tree
        print(f"oarfutures in {ctx.python}: {common.refresh_install(ctx.python)}", flush=True)
    machine = common.machine(ctx.python)
    machine["code"] = common.code_version(ctx.python)
    started = time.perf_counter()
    print(f"oarfutures benchmarks ({'quick' if args.quick else 'full'}): {', '.join(selected)}")
    print(
        f"machine: {machine['nproc']} CPUs, {machine['ram_gb']} GB, load {machine['loadavg']}; "
        f"job python {ctx.python} ({machine['job_python_version']}); Slurm {common.slurm_config()}"
    )
    print(
        f"oarfutures: {machine['code']['git_head']}, {len(machine['code']['git_dirty'])} file(s) edited since; "
        f"measured copy {machine['code']['installed']} (sha {machine['code']['installed_sha']})",
        flush=True,
    )

    summary_path = os.path.join(common.RESULTS_DIR, "summary.json")
    try:
        with open(summary_path) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        previous = {}
    case_rows = {c: previous.get("cases", {}).get(c, {}) for c in CASES}

    for name in selected:
        t0 = time.perf_counter()
        print(f"\n[{time.perf_counter() - started:5.0f} s] {name}", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            result = module.run(ctx)
        except Exception as exc:  # one broken case must not lose the others' numbers
            import traceback

            traceback.print_exc()
            result = {
                "name": name,
                "error": f"{type(exc).__name__}: {exc}",
                "rows": [common.row(name, "(case failed)", None, "", None, note=str(exc))],
            }
        result.update(
            machine=machine,
            quick=args.quick,
            seconds=time.perf_counter() - t0,
            date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            load_after=common.load(),
        )
        path = common.save(name, result)
        with open(os.path.join(common.RESULTS_DIR, "history.jsonl"), "a") as f:  # every run's table rows, kept
            f.write(
                json.dumps(
                    {
                        "date": result["date"],
                        "case": name,
                        "quick": args.quick,
                        "rows": result["rows"],
                        "code": machine["code"]["git_head"],
                        "load_after": result["load_after"],
                    },
                    default=str,
                )
                + "\n"
            )
        case_rows[name] = {"rows": result["rows"], "date": result["date"], "quick": args.quick}
        print(text_table(result["rows"]))
        print(f"  ({result['seconds']:.0f} s, raw numbers in {os.path.relpath(path)})", flush=True)

    rows = [r for c in CASES for r in case_rows[c].get("rows", [])]
    summary = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "machine": machine,
        "cases": case_rows,
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }
    common.save("summary", summary)
    try:
        from benchmarks import plots

        for path in plots.draw_all(common.RESULTS_DIR):
            print(f"plot: {os.path.relpath(path)}")
    except Exception as exc:  # matplotlib missing or a case without data: the numbers are saved anyway
        print(f"plots skipped: {type(exc).__name__}: {exc}")
    if not args.no_readme:
        update_readme(summary)
    print(
        f"\nall cases ({time.perf_counter() - started:.0f} s; load now {common.load():.1f}; "
        f"rows of cases not run this time are from their last run):\n"
    )
    print(text_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
