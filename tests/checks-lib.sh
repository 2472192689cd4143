# Sourced by check-code.sh and check-docs-and-package.sh: how a check runs, is reported and is counted, and how
# each Python the package claims gets a venv. The sourcing script sets REPO, WORK, JUNIT and T0 first.
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

finish() { # SUITE WHAT: write the JUnit file (one test case per check, for run-all.sh's summary), say how it
    #        went, and exit with the status
    if [ -n "$JUNIT" ]; then
        {
            echo "<testsuite name=\"$1\" tests=\"$(( ${#passed[@]} + ${#failed[@]} ))\" failures=\"${#failed[@]}\" errors=\"0\" skipped=\"0\">"
            for name in "${passed[@]}"; do echo "  <testcase classname=\"$1\" name=\"$name\"/>"; done
            for name in "${failed[@]}"; do
                echo "  <testcase classname=\"$1\" name=\"$name\"><failure message=\"see $WORK/$name.log\"/></testcase>"
            done
            echo "</testsuite>"
        } >"$JUNIT"
    fi
    if [ ${#failed[@]} -gt 0 ]; then
        echo "$2: ${#failed[@]} check(s) failed: ${failed[*]}"
        exit 1
    fi
    echo "$2: every check passed in $(( $(date +%s) - T0 )) s"
}

copy_source() { # the source tree as a release would see it, in WORK/src (no egg-info, build/ or caches)
    mkdir "$WORK/src" && cp -r "$REPO/oarfutures" "$REPO/setup.cfg" "$REPO/pyproject.toml" "$REPO/README.md" \
        "$REPO/LICENSE" "$WORK/src/" && find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
}

find_python() { # VERSION -> an interpreter of that version: on PATH, else pyenv's
    local v=$1 candidate
    for candidate in "$(command -v "python$v")" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c "import sys; assert '%d.%d' % sys.version_info[:2] == '$v'" 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}

venv_with() { # VENV INTERPRETER PACKAGE...: a venv of that Python with the packages
    local venv=$1 python=$2; shift 2
    # That Python's own pip installs (one pip for all of them fails on some: pip 23.0 cannot install into 3.12+,
    # pip 26 refuses 3.9); into a venv without pip of its own where it can (--python, pip >= 22.3), since
    # ensurepip costs ~7 s of CPU per venv; else into a venv with its pip.
    if "$python" -m pip --python "$python" --version >/dev/null 2>&1; then
        "$python" -m venv --without-pip "$venv" &&
            "$python" -m pip --python "$venv/bin/python" install -q --disable-pip-version-check "$@"
    else
        "$python" -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check "$@"
    fi
}
