#!/bin/bash
# The whole test suite on a fresh machine, as CI runs it (.ci/run calls exactly this):
#   1. a virtual environment from /usr/bin/python3 under /var/tmp, readable by every user (OAR jobs run as a
#      normal user with a fresh environment: the worker's interpreter must be an absolute path they can read);
#   2. the real Slurm and OAR clusters, installed from Debian's packages and started by tests/clusters/*;
#   3. pytest: local and Slurm tests as root, the local tests again as a normal user (root hides permission
#      bugs), Slurm again with accounting (slurmdbd + sacct), OAR tests as the unprivileged user OAR requires;
#      before the clusters, the documentation and packaging checks (tests/check-docs-and-package.sh: the docs
#      site built with warnings as errors, sdist and wheel, twine check, the wheel on Python 3.9 to 3.13). The
#      examples of the docs pages run in the pytest phases (tests/test_docs.py). Then the code checks
#      (tests/check-code.sh: ruff, ruff format, mypy, and the fast tier on Python 3.9 to 3.13).
#   4. the multinode phase: a second, two-node Slurm (tests/clusters/multinode/start-slurm-2nodes.sh, its own
#      ports, reached with SLURM_CONF) and a second OAR node (add-oar-node2.sh: node2 on 127.0.0.2, added after
#      the OAR phase so that the other OAR tests run on the single node they were written for); the tests
#      marked multinode run there only.
# A cluster that does not come up fails the run; nothing is skipped (CI=true makes a missing scheduler command a
# failure, not a skip). The last line sums up every phase.
#   OARFUTURES_CI_DIR   where the venv and the test copy live           [/var/tmp/oarfutures-ci]
#   PYTEST_ARGS         extra pytest arguments for every phase (e.g. "-x -k cancel")
#   PYTEST_WORKERS      tests run side by side in this many processes (they mostly wait for jobs)  [3]
set -uo pipefail
export CI=true
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${OARFUTURES_CI_DIR:-/var/tmp/oarfutures-ci}
USER_OAR=alice
T0=$(date +%s)
step() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
die() { echo "run-all.sh: $*" >&2; exit 1; }

step "virtual environment in $RUN/venv"
mkdir -p "$RUN" && chmod 755 "$RUN"
if [ ! -x "$RUN/venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$RUN/venv" 2>/dev/null || {
        apt-get -o DPkg::Lock::Timeout=600 update -qq && apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3-venv >/dev/null
        /usr/bin/python3 -m venv "$RUN/venv"; } || die "cannot create a virtual environment"
fi
# a regular (not editable) install: the package then lives inside the venv, readable by the OAR test user
"$RUN/venv/bin/pip" install -q --disable-pip-version-check --upgrade "$REPO[test,docs,release,lint]" || die "pip install failed"
rm -rf "$RUN/src" && mkdir -p "$RUN/src" && cp -r "$REPO/tests" "$REPO/examples" "$REPO/docs" "$REPO/pyproject.toml" "$RUN/src/"
chmod -R a+rX "$RUN"
PYTEST=("$RUN/venv/bin/python" -m pytest -p no:cacheprovider -q -rfE --durations=10 -n "${PYTEST_WORKERS:-3}" ${PYTEST_ARGS:-})
rm -f "$RUN"/*.xml
status=0

step "documentation and packaging checks"
bash "$REPO/tests/check-docs-and-package.sh" "$RUN/venv" "$RUN/docs-and-package" "$RUN/docs-and-package.xml" || status=1
step "code checks"
bash "$REPO/tests/check-code.sh" "$RUN/venv" "$RUN/check-code" "$RUN/check-code.xml" || status=1

step "Slurm (no accounting)"
WITH_SLURMDBD=0 bash "$REPO/tests/clusters/slurm/start.sh" || die "Slurm did not start"
step "OAR"
bash "$REPO/tests/clusters/oar/start.sh" || die "OAR did not start"

phase() { # NAME USER PYTEST-ARGS...
    local name=$1 user=$2; shift 2
    step "pytest: $name"
    if [ "$user" = root ]; then
        (cd "$RUN/src" && "${PYTEST[@]}" --junitxml="$RUN/$name.xml" "$@") || status=1
    else
        (cd "$RUN/src" && runuser -u "$user" -- env CI=true HOME="/home/$user" PATH="$PATH" \
            "${PYTEST[@]}" --basetemp="/tmp/oarfutures-pytest-$user" --junitxml="/tmp/$name.xml" "$@") || status=1
        cp "/tmp/$name.xml" "$RUN/$name.xml" 2>/dev/null || true
    fi
}
LOCAL='not slurm and not oar and not accounting and not array_limit and not admin and not multinode'
phase local-and-slurm root tests -m "not oar and not accounting and not array_limit and not multinode" -k "not never_hang"
# (the docs pages' examples ran as root already: as a normal user they would only cost time)
phase local-as-user "$USER_OAR" tests -m "$LOCAL" -k "not examples_of_each_page"
step "Slurm with accounting (slurmdbd) and Slurm's default MaxArraySize"
WITH_SLURMDBD=1 MAX_ARRAY_SIZE=1001 bash "$REPO/tests/clusters/slurm/start.sh" || die "Slurm with slurmdbd did not start"
export OARFUTURES_EXPECT_ACCOUNTING=1
# what depends on the accounting mode: state queries (sacct instead of squeue), exit codes, array splitting
phase slurm-accounting root tests/test_slurm.py tests/test_faults.py -m "slurm and not slow and not multinode" -k "not ten_thousand and not 1000_calls"
unset OARFUTURES_EXPECT_ACCOUNTING
# The admin test of the first phase restarts OAR's server while a job starts; OAR may then fail to kill that job
# minutes later and mark the node Suspected (seen: every OAR test then waited for resources). A cold restart
# turns such jobs into Error, ends their processes and sets the resources Alive.
step "OAR restarted cold before its phase"
OAR_KEEP_PG=1 bash "$REPO/tests/clusters/oar/stop.sh" >/dev/null
bash "$REPO/tests/clusters/oar/start.sh" || die "OAR did not restart"
phase oar "$USER_OAR" tests -m "oar and not multinode"

# Multi-node calls on two "nodes" of this machine, told apart by the schedulers' node names: ranks over srun and
# oarsh, a TCP rendezvous at master_addr:master_port, and no rank left on either node after a failure or a kill.
step "two-node Slurm (n1, n2) beside the single-node one, and OAR's second node (node2)"
bash "$REPO/tests/clusters/multinode/start-slurm-2nodes.sh" || die "the two-node Slurm did not start"
bash "$REPO/tests/clusters/multinode/add-oar-node2.sh" || die "OAR's node2 could not be added"
export SLURM_CONF=/var/tmp/slurm-2nodes/slurm-2nodes.conf   # every Slurm client of the next phase: the 2-node one
phase multinode-slurm root tests -m "multinode and slurm"
unset SLURM_CONF
phase multinode-oar "$USER_OAR" tests -m "multinode and oar"

step "summary"
"$RUN/venv/bin/python" - "$RUN"/*.xml <<'PY'
import sys, xml.etree.ElementTree as ET
total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for path in sys.argv[1:]:
    root = ET.parse(path).getroot()
    for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        for key in total:
            total[key] += int(suite.get(key, 0))
failed = total["failures"] + total["errors"]
passed = total["tests"] - failed - total["skipped"]
print(f"all phases: {passed} passed, {failed} failed, {total['skipped']} skipped")
PY
[ "$status" = 0 ] || echo "run-all.sh: at least one phase failed" >&2
exit $status
