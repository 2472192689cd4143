#!/bin/bash
# Stop the 2-node Slurm cluster of start-slurm-2nodes.sh, by its pid files only (the single-node cluster and
# munged are left alone): cancel its jobs, then its slurmd processes and its slurmctld. Always exits 0.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_TAG=stop-slurm-2nodes
. "$HERE/../slurm/lib.sh"
D=${MN_SLURM_DIR:-/var/tmp/slurm-2nodes}
export SLURM_CONF=$D/slurm-2nodes.conf
if running "$D/state/slurmctld.pid" slurmctld; then   # (a client with no controller hangs ~60 s: ask only if it runs)
    jobs=$(squeue -h -o %F 2>/dev/null | sort -u | tr '\n' ' ')
    [ -n "${jobs// /}" ] && scancel $jobs 2>/dev/null
    for _ in $(seq 150); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.1; done
fi
for f in "$D"/state/slurmd-*.pid; do [ -e "$f" ] && stop_pidfile "$f" slurmd; done
stop_pidfile "$D/state/slurmctld.pid" slurmctld
exit 0
