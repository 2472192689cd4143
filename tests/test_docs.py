"""Every code example of the documentation runs, so the docs cannot drift from the code.

The ```python blocks of each page under docs/ run in order as one script (a page reads as one session), in a
fresh folder, on the local backend. A block preceded by ``<!-- run: slurm -->`` or ``<!-- run: oar -->`` needs
that cluster: it runs alone, in the phase of run-all.sh that has it. ``<!-- not-run: why -->`` is for code that is
not oarfutures' (the submitit side of the migration guide) and must say why. A ```bash block preceded by
``<!-- run: shell -->`` runs after the page's python blocks, in the same folder, with this interpreter's
``oarfutures`` command first on PATH. A block that only includes a file of
examples/ (``--8<-- "examples/x.py"``) is run by test_examples.py.

The mkdocs hook that renders the scheduler lines is checked here too, against the backends' own rendering.
"""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from conftest import require_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*$")
MARK = re.compile(r"^\s*<!-- (?P<kind>run|not-run): (?P<what>.+?) -->\s*$")
INCLUDE = re.compile(r'^\s*--8<-- "(?P<path>[^"]+)"\s*$')


def pages():
    return sorted(name for name in os.listdir(DOCS) if name.endswith(".md")) if os.path.isdir(DOCS) else []


def blocks(text):
    """(language, mark, code, line number) of each fenced block; mark is the comment just before it, if any."""
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, start = match.group("indent"), i
        body, i = [], i + 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mark = MARK.match(previous)
        found.append(
            (match.group("lang"), mark and (mark.group("kind"), mark.group("what")), "\n".join(body), start + 1)
        )
    return found


def read(page):
    with open(os.path.join(DOCS, page)) as f:
        return f.read()


def python_blocks(page, kind):
    """The page's python blocks to run locally (kind None) or on one cluster (kind "slurm"/"oar")."""
    chosen = []
    for lang, mark, code, line in blocks(read(page)):
        if lang not in ("python", "py"):
            continue
        include = [INCLUDE.match(x) for x in code.splitlines() if x.strip()]
        if include and all(include):
            continue  # a file of examples/, run by test_examples.py
        if mark and mark[0] == "not-run":
            continue
        if (mark[1] if mark and mark[0] == "run" else None) == kind:
            chosen.append((line, code))
    return chosen


def run_script(code, tmp_path, cluster):
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "OARFUTURES_CLUSTER": cluster, "OARFUTURES_FOLDER": str(tmp_path / "folders")}
    return subprocess.run(
        [sys.executable, str(script)], cwd=str(tmp_path), capture_output=True, text=True, timeout=300, env=env
    )


def page_script(page, kind):
    return "\n\n".join(f"# --- {page}, line {line}\n{code}" for line, code in python_blocks(page, kind))


LOCAL_PAGES = [page for page in pages() if python_blocks(page, None)]


def shell_blocks(page):
    """The page's ```bash blocks marked ``<!-- run: shell -->``: they run after its python blocks, in their folder."""
    return [
        (line, code)
        for lang, mark, code, line in blocks(read(page))
        if lang in ("bash", "sh") and mark == ("run", "shell")
    ]


@pytest.mark.parametrize("page", LOCAL_PAGES)
def test_the_examples_of_each_page_run_on_the_local_backend(page, tmp_path):
    done = run_script(page_script(page, None), tmp_path, "local")
    assert done.returncode == 0, f"{page}: its examples failed\n{done.stdout}\n{done.stderr}"
    env = {
        **os.environ,
        "OARFUTURES_CLUSTER": "local",
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
    }
    for line, code in shell_blocks(page):  # the commands the page shows, with this interpreter's oarfutures
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", code],
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, f"{page}, line {line}: the shell block failed\n{done.stdout}\n{done.stderr}"


def cluster_blocks(kind):
    return [
        pytest.param(page, line, code, id=f"{page}:{line}")
        for page in pages()
        for line, code in python_blocks(page, kind)
    ]


@pytest.mark.slurm
@pytest.mark.parametrize("page,line,code", cluster_blocks("slurm"))
def test_the_slurm_examples_run_on_slurm(page, line, code, tmp_path):
    require_command("sbatch")
    done = run_script(code, tmp_path, "slurm")
    assert done.returncode == 0, f"{page}, line {line}: failed on Slurm\n{done.stdout}\n{done.stderr}"


@pytest.mark.oar
@pytest.mark.parametrize("page,line,code", cluster_blocks("oar"))
def test_the_oar_examples_run_on_oar(page, line, code, tmp_path):
    require_command("oarsub")
    done = run_script(code, tmp_path, "oar")
    assert done.returncode == 0, f"{page}, line {line}: failed on OAR\n{done.stdout}\n{done.stderr}"


def test_every_mark_is_known_and_every_skip_says_why():
    for page in pages():
        for _lang, mark, _code, line in blocks(read(page)):
            if mark:
                kind, what = mark
                assert (kind == "not-run" and len(what) > 10) or what in ("slurm", "oar", "shell"), (
                    f"{page}:{line}: {mark}"
                )


def test_included_examples_exist():
    for page in pages():
        for _lang, _mark, code, line in blocks(read(page)):
            for include in filter(None, (INCLUDE.match(x) for x in code.splitlines())):
                assert os.path.isfile(os.path.join(ROOT, include.group("path"))), f"{page}:{line}: {include.group(0)}"


def test_the_docs_have_examples_to_run():
    assert len(LOCAL_PAGES) >= 5, "the pages' python blocks were not found: is docs/ copied next to tests/?"


# ---------------------------------------------------------------- the scheduler lines the docs show
def load_hook():
    spec = importlib.util.spec_from_file_location("scheduler_lines", os.path.join(DOCS, "_hooks", "scheduler_lines.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_parameter_tables_show_what_the_backends_write():
    hook = load_hook()
    text = hook.table([{"walltime": "1:30:00"}, {"slurm_partition": "gpu"}, {"oar_queue": "production"}])
    assert "| `walltime='1:30:00'` | `#SBATCH --time=0-01:30:00` | `#OAR -l /nodes=1/core=1,walltime=1:30:00` |" in text
    assert "| `slurm_partition='gpu'` | `#SBATCH --partition=gpu` | ignored |" in text
    assert "| `oar_queue='production'` | ignored | `#OAR -q production` |" in text


def test_every_marker_of_the_pages_renders_and_an_unknown_one_fails():
    hook = load_hook()
    for page in pages():
        assert "<!-- scheduler-" not in hook.replace_markers(read(page)), page
    with pytest.raises(ValueError, match="unknown documentation marker"):
        hook.replace_markers("<!-- scheduler-lines: nonsense -->")


# ---------------------------------------------------------------- the migration guide covers the seed page
#: a distinctive line of each code example of the Grid'5000 "Submitit" page (shared/reference); the migration
#: guide must show each in a submitit block followed by the oarfutures version, which runs
SEED_EXAMPLES = {
    "basic usage": "job_addition = executor.submit(add, 5, 7)  # will compute add(5, 7)",
    "parameters": 'executor.update_parameters(slurm_partition="cpu_devel", oar_queue="default")',
    "OarExecutor parameters": 'executor.update_parameters(walltime="0:0:5", queue="default")',
    "OAR example": 'oar_additional_parameters={"t": "besteffort"})',
    "checkpointable class": "class MyCheckpointableAlgorithm(submitit.helpers.Checkpointable):",
    "Slurm template": "return submitit.helpers.DelayedSubmission(self, *args, **kwargs)  # submits to requeuing",
    "OAR template": "time.sleep(60)",
    "preemption": "job._interrupt()",
    "job array": "jobs = executor.map_array(add, a, b)",
}


@pytest.mark.parametrize("example", sorted(SEED_EXAMPLES))
def test_the_migration_guide_shows_each_seed_example_next_to_running_oarfutures_code(example):
    found = blocks(read("migrating.md"))
    for i, (_lang, mark, code, line) in enumerate(found):
        if mark == ("not-run", "submitit code, shown for comparison") and SEED_EXAMPLES[example] in code:
            following = found[i + 1] if i + 1 < len(found) else None
            assert following and following[0] == "python" and not following[1], (
                f"line {line}: no oarfutures block after it"
            )
            return
    pytest.fail(f"the seed page's {example} example ({SEED_EXAMPLES[example]!r}) is not in docs/migrating.md")
