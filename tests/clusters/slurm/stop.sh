#!/bin/bash
# Stop what start.sh started, by pid file only: cancel all jobs, then slurmd, slurmctld,
# slurmdbd, mariadbd, munged. Safe to run when nothing is running. Always exits 0.
#   KEEP_JOBS=1   do not cancel jobs (slurmctld saves them; used by start.sh with CLEAN_STATE=0)
#   KEEP_DB=1     leave mariadbd running (start.sh uses it when it restarts in WITH_SLURMDBD=1 mode)
#   KEEP_MUNGE=1  leave munged running
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_TAG=${LOG_TAG:-stop.sh}
. "$HERE/lib.sh"

if [ "${KEEP_JOBS:-0}" != 1 ] && running /run/slurmctld.pid slurmctld; then
    # %F = array job id (= job id for non-array jobs): one scancel per array, also for pending
    # tasks that squeue shows collapsed as 12_[3-9]
    jobs=$(squeue -h -o %F 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then log "cancelling jobs: $jobs"; scancel $jobs 2>/dev/null; fi
    # wait (max 15 s) until no job is pending/running/completing and no slurmstepd socket is left,
    # so that no job process outlives slurmd
    active=""
    for _ in $(seq 150); do
        active=$(squeue -h -o %i 2>/dev/null; ls /var/spool/slurmd/ 2>/dev/null | grep -E '_[0-9]+\.[0-9]+$')
        [ -z "$active" ] && break; sleep 0.1
    done
    [ -n "$active" ] && echo "stop.sh: still active after 15 s: $(echo $active)" >&2
fi
stop_pidfile /run/slurmd.pid slurmd
stop_pidfile /run/slurmctld.pid slurmctld
stop_pidfile /run/slurmdbd.pid slurmdbd
[ "${KEEP_DB:-0}" = 1 ] || stop_pidfile /run/mysqld/mysqld.pid mariadbd
[ "${KEEP_MUNGE:-0}" = 1 ] || stop_pidfile /run/munge/munged.pid munged
exit 0
