"""Scaling plots from the JSON in ``benchmarks/results/`` (matplotlib, PNG). Called by ``python -m benchmarks``;
``python -m benchmarks.plots`` redraws them from the saved numbers without measuring anything."""

from __future__ import annotations

import json
import os
import sys

from benchmarks import common


def _load(folder: str, name: str):
    try:
        with open(os.path.join(folder, f"{name}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _subtitle(record: dict) -> str:
    loads = [
        r.get(k)
        for r in record.get("runs", [])
        for k in ("load_start", "load_end")
        if isinstance(r.get(k), (int, float))
    ]
    load = f"load {min(loads):.1f}-{max(loads):.1f}" if loads else ""
    m = record.get("machine", {})
    return f"{record.get('date', '')[:16]}, {m.get('nproc', '?')} CPUs, {load}"


def poller(folder: str, plt) -> str:
    record = _load(folder, "poller_cost")
    runs = sorted((r for r in (record or {}).get("runs", []) if "error" not in r), key=lambda r: r["n"])
    if not runs:
        return ""
    n = [r["n"] for r in runs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(n, [r["poller_cpu_per_second"] for r in runs], "o-", label="poller thread")
    a.plot(n, [r["process_cpu_per_second"] for r in runs], "s--", label="whole client process")
    a.plot(n, [r["scheduler_command_cpu_per_second"] for r in runs], "^:", label="squeue/sacct processes")
    a.set(
        xscale="log",
        yscale="log",
        xlabel="pending futures (held Slurm tasks)",
        ylabel="CPU seconds per second",
        title="client CPU while futures wait",
    )
    a.grid(True, which="both", alpha=0.3)
    a.legend()
    b.plot(n, [r["scheduler_calls_per_minute"] for r in runs], "o-", label="squeue/sacct/scontrol calls")
    b.plot(n, [r["queries_per_minute"] for r in runs], "s--", label="poller state queries")
    b2 = b.twinx()
    b2.plot(
        n,
        [1000 * common.median(r["query_wall_seconds"]) for r in runs],
        "^:",
        color="tab:red",
        label="ms per query (right)",
    )
    b2.set_ylabel("ms per query (wall)", color="tab:red")
    b.set(
        xscale="log",
        xlabel="pending futures (held Slurm tasks)",
        ylabel="calls per minute",
        title="scheduler load",
        ylim=(0, None),
    )
    b.grid(True, which="both", alpha=0.3)
    lines = b.get_legend_handles_labels()[0] + b2.get_legend_handles_labels()[0]
    b.legend(lines, [line.get_label() for line in lines], fontsize=8)
    window = runs[0].get("window_seconds", 0)
    config = common.slurm_brief(runs[-1].get("slurm_config") or {})
    fig.suptitle(f"poller cost over a {window:.0f} s window after map() ({_subtitle(record)}; {config})", fontsize=9)
    fig.tight_layout()
    path = os.path.join(folder, "poller_scaling.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def client(folder: str, plt) -> str:
    record = _load(folder, "client_cost")
    runs = [r for r in (record or {}).get("runs", []) if "error" not in r]
    if not runs:
        return ""
    sizes = sorted({r["n"] for r in runs})
    labels = {
        "local": "oarfutures local",
        "process_pool": "ProcessPoolExecutor",
        "slurm_oarfutures": "oarfutures Slurm (stub sbatch)",
        "slurm_submitit": "submitit Slurm (stub sbatch)",
    }
    styles = {"local": "o-", "process_pool": "s--", "slurm_oarfutures": "^-", "slurm_submitit": "v--"}
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for side, label in labels.items():
        xs, us, rss = [], [], []
        for n in sizes:
            sel = [r for r in runs if r["side"] == side and r["n"] == n]
            if sel:
                xs.append(n)
                us.append(1e6 * common.median([r["map_seconds"] for r in sel]) / n)
                key = "rss_bytes_per_pending_call" if side in ("local", "process_pool") else "rss_bytes_per_call"
                rss.append(common.median([r[key] for r in sel]))
        a.plot(xs, us, styles[side], label=label)
        b.plot(xs, rss, styles[side], label=label)
    a.set(
        xscale="log",
        yscale="log",
        xlabel="calls in one map()",
        ylabel="microseconds per call",
        title="map() until it returns",
    )
    b.set(xscale="log", xlabel="calls in one map()", ylabel="bytes", title="client RSS growth per call")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"client cost of map ({_subtitle(record)})", fontsize=10)
    fig.tight_layout()
    path = os.path.join(folder, "client_scaling.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency(folder: str, plt) -> str:
    record = _load(folder, "latency")
    runs = [r for r in (record or {}).get("runs", []) if r.get("latencies")]
    if not runs:
        return ""
    titles = {
        "files": "result file -> done (Slurm, poller scan)",
        "local": "result file -> done (local)",
        "kill": "scancel -> failed (Slurm)",
    }
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in runs:
        values = sorted(r["latencies"])
        ax.step(
            values,
            [(i + 1) / len(values) for i in range(len(values))],
            where="post",
            label=f"{titles.get(r['side'], r['side'])} (n={len(values)})",
        )
    ax.set(xscale="log", xlabel="seconds", ylabel="fraction of futures", title="latency to the future's transition")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(_subtitle(record), fontsize=9)
    fig.tight_layout()
    path = os.path.join(folder, "latency_cdf.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_all(folder: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return [p for p in (poller(folder, plt), client(folder, plt), latency(folder, plt)) if p]


if __name__ == "__main__":
    for p in draw_all(common.RESULTS_DIR):
        print(p)
    sys.exit(0)
