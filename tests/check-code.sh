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
passed=() failed=()
report() { # NAME STATUS: say how a check went, with the last lines of its log when it failed
    if [ "$2" = 0 ]; then
        echo "  ok      $1 ($(( $(date +%s) - T0 )) s)"; passed+=("$1")
    else
        echo "  FAILED  $1: last lines of $WORK/$1.log:"; tail -n 20 "$WORK/$1.log" | sed 's/^/    /'
        failed+=("$1")
    fi
}
check() { # NAME COMMAND...: run it in the repository, keep its output in WORK/NAME.log
    local name=$1; shift
    (cd "$REPO" && "$@") >"$WORK/$name.log" 2>&1
    report "$name" $?
}
write_junit() {
    [ -n "$JUNIT" ] || return 0
    {
        echo "<testsuite name=\"code\" tests=\"$(( ${#passed[@]} + ${#failed[@]} ))\" failures=\"${#failed[@]}\" errors=\"0\" skipped=\"0\">"
        for name in "${passed[@]}"; do echo "  <testcase classname=\"check-code\" name=\"$name\"/>"; done
        for name in "${failed[@]}"; do
            echo "  <testcase classname=\"check-code\" name=\"$name\"><failure message=\"see $WORK/$name.log\"/></testcase>"
        done
        echo "</testsuite>"
    } >"$JUNIT"
}
rm -rf "$WORK" && mkdir -p "$WORK"

# the venvs of 3 are made first: they mostly wait for the package index, while 1 and 2 use the processor
find_python() { # VERSION -> an interpreter of that version: on PATH, else pyenv's
    local v=$1 candidate
    for candidate in "$(command -v "python$v")" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c "import sys; assert '%d.%d' % sys.version_info[:2] == '$v'" 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}
venv_on() { # VERSION INTERPRETER: a venv with the wheel, pytest and pytest-timeout (pyproject.toml sets a timeout)
    local venv="$WORK/py$1"
    # as in check-docs-and-package.sh: that Python's own pip, into a venv without pip where it can (faster)
    if "$2" -m pip --python "$2" --version >/dev/null 2>&1; then
        "$2" -m venv --without-pip "$venv" &&
            "$2" -m pip --python "$venv/bin/python" install -q --disable-pip-version-check "$WHEEL" pytest pytest-timeout
    else
        "$2" -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check "$WHEEL" pytest pytest-timeout
    fi
}
mkdir "$WORK/src" && cp -r "$REPO/oarfutures" "$REPO/setup.cfg" "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/LICENSE" "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
"$VENV/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$WORK/wheel" "$WORK/src" >"$WORK/wheel.log" 2>&1
report wheel $?
WHEEL=$(ls "$WORK"/wheel/oarfutures-*.whl 2>/dev/null)
venvs=()
for v in "${PYTHONS[@]}"; do
    if [ -z "$WHEEL" ]; then
        echo "  FAILED  fast-$v: no wheel to install"; failed+=("fast-$v")
    elif python=$(find_python "$v"); then
        (venv_on "$v" "$python" >"$WORK/fast-$v.log" 2>&1; echo $? >"$WORK/venv-$v.status") &
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

write_junit
if [ ${#failed[@]} -gt 0 ]; then
    echo "code checks: ${#failed[@]} check(s) failed: ${failed[*]}"
    exit 1
fi
echo "code checks: every check passed in $(( $(date +%s) - T0 )) s"
