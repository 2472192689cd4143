"""mkdocs hook: the ``#SBATCH``/``#OAR`` lines the documentation shows are rendered by the backends themselves.

A page holds a marker, ``<!-- scheduler-lines: generic -->`` or ``<!-- scheduler-script: oar-seed -->``, and the
build replaces it with a table (what each parameter adds to the job script on Slurm and on OAR) or a whole
script, made by ``SlurmBackend.render_script`` and ``OarBackend.render_script`` from the same code that submits.
A hand-written table would drift the day a parameter changed; this one cannot. An unknown marker fails the build.

Nothing is submitted and no scheduler command runs: stealing is switched off in the rendering (with it, Slurm's
script would ask ``scontrol`` for the partition's walltime), so the output does not depend on the machine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

FOLDER = "/home/me/jobs"
PYTHON = "/home/me/venv/bin/python"
BATCH = "20261201-120000-0a1b2c3d"

#: rows of the generic table: the parameters as AutoPoolExecutor / update_parameters() take them
GENERIC_ROWS: list[dict[str, Any]] = [
    {"walltime": "1:30:00"},
    {"timeout_min": 90},
    {"nodes": 2},
    {"tasks_per_node": 4},
    {"cpus_per_task": 8},
    {"gpus_per_node": 1},
    {"mem_gb": 4},
    {"name": "train"},
    {"setup": ["module load python/3.11"]},
]
SLURM_ROWS: list[dict[str, Any]] = [
    {"slurm_partition": "gpu"},
    {"slurm_mem": "4G"},
    {"slurm_account": "myproject"},
    {"slurm_qos": "high"},
    {"slurm_checkpoint_seconds": 300},
    {"slurm_additional_parameters": {"constraint": "v100"}},
    {"slurm_additional_parameters": {"exclusive": True}},
    {"slurm_additional_parameters": {"C": "v100"}},
]
OAR_ROWS: list[dict[str, Any]] = [
    {"oar_queue": "production"},
    {"oar_cores": 4},
    {"oar_resources": "/cluster=1/nodes=2"},
    {"oar_properties": "cluster='grele'"},
    {"oar_mem_gb": 16, "oar_memory_property": "memnode"},
    {"oar_project": "myproject"},
    {"oar_job_types": ["besteffort"]},
    {"oar_additional_parameters": {"t": "besteffort"}},
    {"oar_checkpoint_seconds": 300},
]
#: whole scripts: (backend, parameters, checkpointable)
SCRIPTS: dict[str, tuple[str, dict[str, Any], bool]] = {
    # the Grid'5000 page's OAR example: production queue, 2 minutes, one GPU, besteffort
    "oar-seed": (
        "oar",
        {
            "oar_queue": "production",
            "oar_walltime": "0:2:0",
            "nodes": 1,
            "gpus_per_node": 1,
            "oar_additional_parameters": {"t": "besteffort"},
        },
        False,
    ),
    "slurm-basic": ("slurm", {"slurm_partition": "cpu", "walltime": "1:00:00", "mem_gb": 4, "cpus_per_task": 2}, False),
    "slurm-checkpoint": ("slurm", {"walltime": "2:00:00"}, True),
    "oar-checkpoint": ("oar", {"walltime": "2:00:00"}, True),
}


def render(backend: str, parameters: dict[str, Any], checkpointable: bool = False, count: int = 1) -> list[str]:
    """The job script's lines for a batch of ``count`` tasks with these (generic or prefixed) parameters."""
    from oarfutures.backends.base import BatchSubmission
    from oarfutures.backends.oar import OarBackend
    from oarfutures.backends.slurm import SlurmBackend

    cls = {"slurm": SlurmBackend, "oar": OarBackend}[backend]
    adapter = cls(FOLDER, {"steal_seconds": 0})
    options = adapter.validate(parameters)
    submission = BatchSubmission(BATCH, 0, count, FOLDER, PYTHON, None, options, checkpointable)
    text = adapter.render_script(submission, 0, count) if backend == "slurm" else adapter.render_script(submission)[0]
    return text.splitlines()


def added_lines(backend: str, parameters: dict[str, Any], checkpointable: bool = False) -> list[str] | None:
    """What these parameters change in the script: its lines that the default script lacks (None: refused)."""
    # checkpoint_seconds only shows in the script of a Checkpointable call: compare two of those
    checkpointable = checkpointable or any(key.endswith("checkpoint_seconds") for key in parameters)
    try:
        lines = render(backend, parameters, checkpointable)
    except (TypeError, ValueError):
        return None
    baseline = set(render(backend, {}, checkpointable and bool(parameters)))
    added = [line for line in lines if line not in baseline]
    directives = [line for line in added if line.startswith(("#SBATCH", "#OAR"))]
    return directives or added


def _cell(lines: Sequence[str] | None) -> str:
    if lines is None:
        return "refused (not a parameter there)"
    if not lines:
        return "ignored"
    return "<br>".join(f"`{line.replace('|', '&#124;')}`" for line in lines)


def _call(parameters: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in parameters.items())


def table(rows: Sequence[dict[str, Any]]) -> str:
    out = ["| parameter | Slurm: the job script gets | OAR: the job script gets |", "|---|---|---|"]
    for parameters in rows:
        note = " (a `Checkpointable` call)" if any(k.endswith("checkpoint_seconds") for k in parameters) else ""
        slurm, oar = _cell(added_lines("slurm", parameters)), _cell(added_lines("oar", parameters))
        out.append(f"| `{_call(parameters)}`{note} | {slurm} | {oar} |")
    out.append(
        f"| a `Checkpointable` call | {_cell(added_lines('slurm', {}, True))} | {_cell(added_lines('oar', {}, True))} |"
    )
    return "\n".join(out)


def baseline_block(backend: str) -> str:
    lines = [line for line in render(backend, {}) if line.startswith(("#SBATCH", "#OAR"))]
    return "```bash\n" + "\n".join(lines) + "\n```"


def script(name: str) -> str:
    backend, parameters, checkpointable = SCRIPTS[name]
    return "```bash\n" + "\n".join(render(backend, parameters, checkpointable)) + "\n```"


TABLES = {"generic": GENERIC_ROWS, "slurm": SLURM_ROWS, "oar": OAR_ROWS}
MARKER = re.compile(r"<!-- scheduler-(lines|script|defaults): ([\w-]+) -->")


def replace_markers(markdown: str) -> str:
    def one(match: re.Match[str]) -> str:
        kind, name = match.groups()
        if kind == "lines" and name in TABLES:
            return table(TABLES[name])
        if kind == "script" and name in SCRIPTS:
            return script(name)
        if kind == "defaults" and name in ("slurm", "oar"):
            return baseline_block(name)
        raise ValueError(f"unknown documentation marker {match.group(0)}")

    return MARKER.sub(one, markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """mkdocs calls this for every page before rendering it."""
    return replace_markers(markdown)
