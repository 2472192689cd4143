#!/bin/bash
# The code checks of CI (tests/run-all.sh runs this; it needs no cluster):
#   1. `ruff check` and `ruff format --check` on the whole tree, with the rule set written down in pyproject.toml;
#   2. `mypy` on the package (its configuration is in pyproject.toml too: the package ships py.typed, so its
#      annotations are part of its API);
#   3. the fast tier on every Python the package claims, 3.9 to 3.13: tests/unit/ (parsers, script rendering,
#      parameters: no cluster, no call run) and the concurrent.futures contract on the local backend
#      (tests/test_cpython_conformance.py, what a new Python is likeliest to change). Each Python has its own
#      venv with the package installed from one wheel built here (one build instead of five; parallel in-tree
#      builds of one source tree clobber each other's build/). The scenario tests run on the venv's Python in
#      run-all.sh's phases. An interpreter that cannot be found fails the check: it says so, never skips.
# Usage: check-code.sh VENV WORKDIR [JUNIT_XML]    (VENV has oarfutures[lint] installed: ruff and mypy)
# With JUNIT_XML, each check is also written there as a test case, so that run-all.sh's summary counts them.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$1 WORK=$2 JUNIT=${3:-}
PYTHONS=(3.9 3.10 3.11 3.12 3.13)
FAST_TIER="tests/unit tests/test_cpython_conformance.py"
T0=$(date +%s)
. "$REPO/tests/checks-lib.sh"
rm -rf "$WORK" && mkdir -p "$WORK"

# the venvs of 3 are made first: they mostly wait for the package index, while 1 and 2 use the processor
copy_source
"$VENV/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$WORK/wheel" "$WORK/src" >"$WORK/wheel.log" 2>&1
report wheel $?
WHEEL=$(ls "$WORK"/wheel/oarfutures-*.whl 2>/dev/null)
venvs=()
for v in "${PYTHONS[@]}"; do
    if [ -z "$WHEEL" ]; then
        echo "  FAILED  fast-$v: no wheel to install"; failed+=("fast-$v")
    elif python=$(find_python "$v"); then
        # pytest-timeout: pyproject.toml sets a timeout
        (venv_with "$WORK/py$v" "$python" "$WHEEL" pytest pytest-timeout >"$WORK/fast-$v.log" 2>&1
            echo $? >"$WORK/venv-$v.status") &
        venvs+=("$v")
    else
        echo "  FAILED  fast-$v: no Python $v interpreter found (on PATH or under pyenv)"; failed+=("fast-$v")
    fi
done

# 1 and 2: caches in WORK, not in the repository
check ruff-check "$VENV/bin/ruff" check --no-cache .
check ruff-format "$VENV/bin/ruff" format --no-cache --check .
check mypy "$VENV/bin/mypy" --cache-dir "$WORK/mypy-cache"

# 3: the fast tier against the installed package, in two lanes of one Python at a time (the conformance tests wait
# on their workers, but a loaded machine makes their timings flaky). pytest's own script, not `python -m pytest`,
# which would put the repository first on sys.path and test the source tree instead.
fast_tier() { # VERSION: wait for its venv, then run the tier; its status in WORK/fast-VERSION.status
    while [ ! -e "$WORK/venv-$1.status" ]; do sleep 1; done
    [ "$(cat "$WORK/venv-$1.status")" = 0 ] &&
        (cd "$REPO" && "$WORK/py$1/bin/pytest" -p no:cacheprovider -q $FAST_TIER) >>"$WORK/fast-$1.log" 2>&1
    echo $? >"$WORK/fast-$1.status"
}
lanes=("" "")
for i in "${!venvs[@]}"; do lanes[i % 2]+=" ${venvs[i]}"; done
for lane in "${lanes[@]}"; do (for v in $lane; do fast_tier "$v"; done) & done
wait
for v in "${venvs[@]}"; do report "fast-$v" "$(cat "$WORK/fast-$v.status")"; done

finish check-code "code checks"
