#!/bin/bash
# The documentation and packaging checks of CI (tests/run-all.sh runs this; it needs no cluster):
#   1. the documentation site builds with `mkdocs build --strict`: a broken link or anchor, an unresolved API
#      cross-reference, a docstring naming a parameter the signature lacks, or an unknown scheduler-lines marker
#      fails it (the pages' examples themselves run in tests/test_docs.py);
#   2. `python -m build` makes the sdist and the wheel, `twine check --strict` accepts them, and the wheel holds
#      the LICENSE and the metadata PyPI shows (author, keywords, classifiers, extras);
#   3. the wheel built from the source tree installs (with its dependencies from the index) on every Python the
#      package claims, 3.9 to 3.13, each then running one call on the local backend. The wheel is pure Python
#      (py3-none-any): `pip install .` would build this same wheel on each, at ~20 s per interpreter, and
#      parallel in-tree builds of one source tree clobber each other's build/ (seen). An interpreter that cannot
#      be found fails the check: it says so, never skips.
# Usage: check-docs-and-package.sh VENV WORKDIR [JUNIT_XML]    (VENV has oarfutures[docs,release] installed)
# With JUNIT_XML, each check is also written there as a test case, so that run-all.sh's summary counts them.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$1 WORK=$2 JUNIT=${3:-}
PYTHONS=(3.9 3.10 3.11 3.12 3.13)
T0=$(date +%s)
. "$REPO/tests/checks-lib.sh"
rm -rf "$WORK" && mkdir -p "$WORK"
copy_source

# 1. the documentation: built from the repository (the API reference reads its docstrings). Never with -q:
#    mkdocs then drops warnings before --strict counts them, and a broken link passes (seen).
check docs-build env NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict -f "$REPO/mkdocs.yml" -d "$WORK/site"

# 2. sdist and wheel, and what PyPI would show of them
check build "$VENV/bin/python" -m build --outdir "$WORK/dist" "$WORK/src"
check twine "$VENV/bin/twine" check --strict "$WORK"/dist/*
check wheel-contents "$VENV/bin/python" - "$WORK"/dist/*.whl "$WORK/src/oarfutures/__init__.py" <<'PY'
import re, sys, zipfile
from email.parser import Parser
wheel = zipfile.ZipFile(sys.argv[1])
names = wheel.namelist()
assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names), names
assert "oarfutures/py.typed" in names
meta = Parser().parsestr(wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
assert meta["Author"] and meta["Keywords"] and meta["License"] == "MIT", dict(meta)
classifiers = meta.get_all("Classifier")
for version in ("3.9", "3.10", "3.11", "3.12", "3.13"):
    assert f"Programming Language :: Python :: {version}" in classifiers, version
assert any(c.startswith("Development Status ::") for c in classifiers)
assert {"joblib", "dask", "progress"} <= set(meta.get_all("Provides-Extra")), meta.get_all("Provides-Extra")
assert meta["Requires-Python"] == ">=3.9"
# the version lives in one place, oarfutures.__version__, which setup.cfg reads
version = re.search(r'^__version__ = "([^"]+)"', open(sys.argv[2]).read(), re.M).group(1)
assert meta["Version"] == version, (meta["Version"], version)
print("wheel:", sys.argv[1].rsplit("/", 1)[-1], "holds LICENSE, py.typed and the metadata")
PY

# 3. the wheel on each Python, side by side (they mostly wait for the package index)
install_on() { # VERSION INTERPRETER
    local venv="$WORK/py$1"
    venv_with "$venv" "$2" "$WORK"/dist/*.whl &&
        (cd "$WORK" && OARFUTURES_CLUSTER=local "$venv/bin/python" -c "
import sys, oarfutures
with oarfutures.AutoPoolExecutor(max_workers=1, folder='$WORK/jobs$1') as ex:
    assert ex.submit(pow, 2, 10).result() == 1024
print('oarfutures', oarfutures.__version__, 'installed and ran a call on Python', sys.version.split()[0])")
}
pids=()
for v in "${PYTHONS[@]}"; do
    if python=$(find_python "$v"); then
        install_on "$v" "$python" >"$WORK/pip-install-$v.log" 2>&1 &
        pids+=("$v:$!")
    else
        echo "  FAILED  pip-install-$v: no Python $v interpreter found (on PATH or under pyenv)"; failed+=("pip-install-$v")
    fi
done
for entry in "${pids[@]}"; do
    v=${entry%%:*}
    if wait "${entry#*:}"; then
        echo "  ok      pip-install-$v ($(( $(date +%s) - T0 )) s): $(tail -n 1 "$WORK/pip-install-$v.log")"
        passed+=("pip-install-$v")
    else
        echo "  FAILED  pip-install-$v: last lines of $WORK/pip-install-$v.log:"; tail -n 20 "$WORK/pip-install-$v.log" | sed 's/^/    /'
        failed+=("pip-install-$v")
    fi
done

finish check-docs-and-package "docs and packaging"
