#!/bin/bash
# tests/clusters/oar/stop.sh - stop what start.sh started: unfinished OAR jobs,
# Almighty (oar-server), OAR's sshd on port 6667 and (unless OAR_KEEP_PG=1)
# PostgreSQL. Processes are ended by PID / process group read from their pid
# files, never by name (other services, e.g. Slurm, may run on this machine).
# Idempotent; always exits 0.
#   OAR_KEEP_PG=1  leave PostgreSQL running
set -uo pipefail
SERVER_PIDFILE=/var/run/oar-server.pid
SSHD_PIDFILE=/var/run/oar-node_sshd.pid
log() { echo "[oar-stop $(date +%T)] $*"; }
alive() { [ -s "$1" ] && ps -o stat= -p "$(cat "$1")" 2>/dev/null | grep -qv Z; }   # zombies do not count
# ids of unfinished jobs: `oarstat -J` with no -j prints one JSON object keyed by job id
unfinished() { oarstat -J 2>/dev/null | python3 -c 'import json, sys
try: print(" ".join(json.load(sys.stdin).keys()))
except Exception: pass'; }

# 1. delete unfinished jobs while the server still runs (otherwise they stay
#    "Running" in the database and their processes linger). root may oardel
#    any user's job.
if alive "$SERVER_PIDFILE" && command -v oarstat >/dev/null; then
    ids=$(unfinished)
    if [ -n "$ids" ]; then
        log "deleting jobs: $ids"
        oardel $ids >/dev/null 2>&1 || true
        for i in $(seq 1 60); do [ -z "$(unfinished)" ] && break; sleep 0.5; done
    fi
fi

# 2. Almighty: TERM, then KILL its whole process group (its children: sarko,
#    bipbip, the scheduler... are in the same group)
if alive "$SERVER_PIDFILE"; then
    pid=$(cat "$SERVER_PIDFILE"); pgid=$(ps -o pgid= -p "$pid" | tr -d ' ')
    log "stopping Almighty pid $pid (pgid $pgid)"
    kill -TERM "$pid"
    for i in $(seq 1 50); do ps -o stat= -p "$pid" 2>/dev/null | grep -qv Z || break; sleep 0.1; done
    if [ -n "$pgid" ] && [ "$pgid" != 0 ] && [ "$pgid" != 1 ]; then kill -KILL -- "-$pgid" 2>/dev/null || true; fi
fi
rm -f "$SERVER_PIDFILE"

# 3. OAR's persistent ssh ControlMaster (OAR_SSH_MUX=1), asked to exit via its socket
for sock in /var/lib/oar/.ssh/cm-*; do
    [ -S "$sock" ] || continue
    log "closing ssh ControlMaster $sock"
    su oar -s /bin/sh -c "/usr/bin/ssh -o ControlPath=$sock -O exit dummy" >/dev/null 2>&1 || rm -f "$sock"
done

# 4. OAR's sshd on 6667 (the listener only; job sessions were ended above)
if alive "$SSHD_PIDFILE"; then
    log "stopping oar sshd pid $(cat $SSHD_PIDFILE)"
    kill -TERM "$(cat $SSHD_PIDFILE)"
fi
rm -f "$SSHD_PIDFILE"

# 5. PostgreSQL (pg_ctlcluster stops it through its own pid file)
if [ "${OAR_KEEP_PG:-0}" != 1 ] && command -v pg_lsclusters >/dev/null; then
    read -r v c s < <(pg_lsclusters -h | awk 'NR==1{print $1, $2, $4}')
    if [ "${s:-}" = online ]; then log "stopping PostgreSQL $v/$c"; pg_ctlcluster "$v" "$c" stop -m fast; fi
fi
log "stopped"
exit 0
