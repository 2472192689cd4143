#!/bin/bash
# tests/clusters/oar/start.sh - install (if needed), configure and start a real
# single-node OAR 2.5.9 "cluster" on Debian 12 without systemd, then submit a
# smoke job. Idempotent: a second run leaves running daemons alone, re-applies
# the configuration edits and only adds what is missing. Must run as root.
#
# Exit status: 0 when OAR is up, its core resources are Alive and (unless
# disabled) a smoke job as $OAR_TEST_USER reached Terminated; non-zero with an
# "ERROR:" line on stderr otherwise.
#
# Environment knobs:
#   OAR_TEST_USER   unprivileged user that submits jobs; OAR's admission rules
#                   refuse root and oar (oarsub exits 254)          [alice]
#   OAR_NB_CORES    number of "core" resources declared on this host. They are
#                   slots, not real CPUs (the machine has 2): 16 gave the best
#                   throughput for job arrays of short tasks here     [16]
#   OAR_FAST        1 = no per-job ssh round-trips that only matter on real
#                   clusters (job resource manager, sentinelle ping) [1]
#   OAR_SSH_MUX     1 = OAR's ssh calls to the node (port 6667) reuse one
#                   persistent OpenSSH ControlMaster connection      [1]
#   OAR_SCHED_MIN_GAP  SCHEDULER_MIN_TIME_BETWEEN_2_CALLS; OAR's default 5 makes
#                   a job submitted <5 s after the previous scheduler pass wait
#                   ~10 s more (Almighty's 10 s idle loop)             [0]
#   OAR_LOG_LEVEL   1..3 (log: /var/log/oar.log)                      [2]
#   OAR_RESET_DB    1 = drop and recreate the OAR database (job ids restart at
#                   1); only honoured while Almighty is stopped       [0]
#   OAR_SMOKE_TEST  1 = submit a `true` job as OAR_TEST_USER, wait for it [1]
#   OAR_NO_INSTALL  1 = never run apt-get; fail if packages are missing [0]
set -euo pipefail

OAR_TEST_USER=${OAR_TEST_USER:-alice}
OAR_NB_CORES=${OAR_NB_CORES:-16}
OAR_FAST=${OAR_FAST:-1}
OAR_SSH_MUX=${OAR_SSH_MUX:-1}
OAR_LOG_LEVEL=${OAR_LOG_LEVEL:-2}
OAR_RESET_DB=${OAR_RESET_DB:-0}
OAR_SMOKE_TEST=${OAR_SMOKE_TEST:-1}
OAR_SCHED_MIN_GAP=${OAR_SCHED_MIN_GAP:-0}
OAR_NO_INSTALL=${OAR_NO_INSTALL:-0}
WORKDIR=${OAR_WORKDIR:-/var/lib/oar-testbed}   # pristine oar.conf backup + logs

CONF=/etc/oar/oar.conf
SERVER_PIDFILE=/var/run/oar-server.pid
SSHD_PIDFILE=/var/run/oar-node_sshd.pid
PACKAGES="oar-server oar-server-pgsql oar-node oar-user oar-user-pgsql postgresql openssh-server"
T0=$(date +%s.%N)

log() { echo "[oar-start $(date +%T)] $*"; }
die() { echo "[oar-start] ERROR: $*" >&2; exit 1; }
elapsed() { awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $1}"; }
# a pid file whose process exists and is not a zombie (PID 1 here reaps late)
alive() { [ -s "$1" ] && ps -o stat= -p "$(cat "$1")" 2>/dev/null | grep -qv Z; }

[ "$(id -u)" = 0 ] || die "must run as root"
mkdir -p "$WORKDIR"

# --- 0. Debian packages ---------------------------------------------------------
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    [ "$OAR_NO_INSTALL" != 1 ] || die "missing Debian packages:$missing"
    log "installing:$missing"
    t=$(date +%s.%N)
    export DEBIAN_FRONTEND=noninteractive
    # Another job (e.g. a Slurm install) may hold the apt/dpkg locks: wait for them.
    apt-get -o DPkg::Lock::Timeout=600 -qq update >"$WORKDIR/apt.log" 2>&1 \
        || { cat "$WORKDIR/apt.log" >&2; die "apt-get update failed"; }
    # No service starts during the install here (this image's /usr/sbin/policy-rc.d
    # exits 101, and there is no systemd); everything is started by hand below.
    apt-get -o DPkg::Lock::Timeout=600 -qq install -y $PACKAGES >>"$WORKDIR/apt.log" 2>&1 \
        || { cat "$WORKDIR/apt.log" >&2; die "apt-get install failed"; }
    log "installed in $(elapsed "$t") s"
fi
for b in /usr/sbin/oar-server /usr/bin/oarsub /usr/sbin/oar-database /usr/sbin/sshd /usr/bin/pg_lsclusters; do
    [ -x "$b" ] || die "$b missing after install of: $PACKAGES"
done

HOST=$(hostname)
# OAR reaches the node by ssh to this name: it must resolve.
getent hosts "$HOST" >/dev/null || { log "adding $HOST to /etc/hosts"; echo "127.0.0.1 $HOST" >> /etc/hosts; }

# --- 1. oar.conf ------------------------------------------------------------------
[ -f "$WORKDIR/oar.conf.orig" ] || cp -p "$CONF" "$WORKDIR/oar.conf.orig"
setconf() {   # setconf KEY VALUE -> KEY="VALUE", replacing a (commented) line or appending
    local k=$1 v=$2
    if grep -qE "^#?[[:space:]]*$k[[:space:]]*=" "$CONF"; then
        sed -i -E "0,/^#?[[:space:]]*$k[[:space:]]*=.*/s||$k=\"$v\"|" "$CONF"
    else
        echo "$k=\"$v\"" >> "$CONF"
    fi
}
unsetconf() { sed -i -E "s|^([[:space:]]*$1[[:space:]]*=)|#\1|" "$CONF"; }   # comment out KEY=

setconf DB_TYPE Pg
setconf DB_HOSTNAME 127.0.0.1
setconf DB_PORT 5432
setconf DB_BASE_PASSWD oar             # the package leaves the passwords empty;
setconf DB_BASE_PASSWD_RO oar_ro       # oar-database --create uses these
setconf SERVER_HOSTNAME localhost
setconf LOG_LEVEL "$OAR_LOG_LEVEL"
setconf SCHEDULER_JOB_SECURITY_TIME 1  # default 60 s gap between two jobs on a resource
setconf SCHEDULER_MIN_TIME_BETWEEN_2_CALLS "$OAR_SCHED_MIN_GAP"   # see header
setconf FINAUD_FREQUENCY 30            # default 300: node check, also repairs a Suspected node
# Never CPUSET_PATH: no cgroup/cpuset here, and the cpuset job_resource_manager's
# clean step deletes every file the job user owns in /tmp, /var/tmp and /dev/shm.
unsetconf CPUSET_PATH
if [ "$OAR_FAST" = 1 ]; then
    unsetconf JOB_RESOURCE_MANAGER_PROPERTY_DB_FIELD   # no per-job ssh init/clean
    unsetconf PINGCHECKER_SENTINELLE_SCRIPT_COMMAND   # no per-job ssh "ping" of the node...
    setconf PINGCHECKER_GENERIC_COMMAND /bin/true      # ...a no-op check instead
else
    setconf JOB_RESOURCE_MANAGER_PROPERTY_DB_FIELD cpuset
    setconf PINGCHECKER_SENTINELLE_SCRIPT_COMMAND "/usr/lib/oar/sentinelle.pl -t 30 -w 20"
    unsetconf PINGCHECKER_GENERIC_COMMAND
fi
if [ "$OAR_SSH_MUX" = 1 ]; then
    setconf OPENSSH_CMD "/usr/bin/ssh -p 6667 -e none -oControlMaster=auto -oControlPath=/var/lib/oar/.ssh/cm-%C -oControlPersist=600"
else
    setconf OPENSSH_CMD "/usr/bin/ssh -p 6667 -e none"
fi
chown oar:root "$CONF"; chmod 600 "$CONF"
# sshd's default MaxSessions=10 would cap concurrent jobs over one multiplexed connection
grep -q '^MaxSessions' /etc/oar/sshd_config || echo 'MaxSessions 256' >> /etc/oar/sshd_config

# --- 2. PostgreSQL ------------------------------------------------------------------
read -r PGVER PGCLUSTER PGSTATUS < <(pg_lsclusters -h | awk 'NR==1{print $1, $2, $4}') || true
[ -n "${PGVER:-}" ] || die "no PostgreSQL cluster (try: pg_createcluster 15 main)"
if [ "$PGSTATUS" != online ]; then
    log "starting PostgreSQL $PGVER/$PGCLUSTER"
    pg_ctlcluster "$PGVER" "$PGCLUSTER" start || die "PostgreSQL $PGVER/$PGCLUSTER did not start"
fi
for i in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL not ready on 127.0.0.1:5432"

# --- 3. OAR database -----------------------------------------------------------------
psql_admin() { su postgres -c "psql -XAtq -d ${2:-postgres} -c \"$1\"" 2>/dev/null; }
if [ "$OAR_RESET_DB" = 1 ] && ! alive "$SERVER_PIDFILE"; then
    log "dropping the OAR database (OAR_RESET_DB=1)"
    psql_admin "DROP DATABASE IF EXISTS oar" || true
fi
if [ "$(psql_admin "SELECT 1 FROM pg_database WHERE datname='oar'")" != 1 ]; then
    log "creating the OAR database"
    psql_admin "DROP ROLE IF EXISTS oar_ro" || true
    psql_admin "DROP ROLE IF EXISTS oar" || true
    (cd / && oar-database --create --db-is-local >"$WORKDIR/oar-database.log" 2>&1) \
        || { cat "$WORKDIR/oar-database.log" >&2; die "oar-database --create failed"; }
fi
oar-database --check >/dev/null 2>&1 || die "oar-database --check failed"

# --- 4. resources: OAR_NB_CORES "core" resources on this host ---------------------------
props=$(oarproperty -l)
grep -qx host <<<"$props" || oarproperty -a host -c >/dev/null
grep -qx cpu  <<<"$props" || oarproperty -a cpu >/dev/null
grep -qx core <<<"$props" || oarproperty -a core >/dev/null
# resources of another host name (database kept from another machine) -> Dead
others=$(psql_admin "SELECT string_agg(resource_id::text, ',') FROM resources WHERE network_address <> '$HOST' AND state <> 'Dead'" oar)
[ -z "$others" ] || oarnodesetting --sql "resource_id IN ($others)" -s Dead -n >/dev/null
have=$(psql_admin "SELECT count(*) FROM resources WHERE network_address='$HOST'" oar)
for i in $(seq $((have + 1)) "$OAR_NB_CORES"); do
    oarnodesetting -a -h "$HOST" -p host="$HOST" -p cpu=1 -p core="$i" -p cpuset=$(( (i - 1) % $(nproc) )) >/dev/null
done
# the first OAR_NB_CORES resources Alive (a previous run may have left them
# Suspected/Absent), any extra ones (OAR_NB_CORES lowered since) Dead
ids() { psql_admin "SELECT string_agg(resource_id::text, ',') FROM (SELECT resource_id, state FROM resources WHERE network_address='$HOST' ORDER BY resource_id $1) r WHERE $2" oar; }
to_dead=$(ids "OFFSET $OAR_NB_CORES" "state <> 'Dead'")
to_alive=$(ids "LIMIT $OAR_NB_CORES" "state <> 'Alive'")
[ -z "$to_dead" ]  || oarnodesetting --sql "resource_id IN ($to_dead)" -s Dead -n >/dev/null
[ -z "$to_alive" ] || oarnodesetting --sql "resource_id IN ($to_alive)" -s Alive >/dev/null

# the tests hold jobs in Waiting with advance reservations, several at once (pytest runs 3 processes): the
# stock rule "no more than 2 waiting advance reservations per user" (#12) would refuse the third at random
rule=$(oaradmissionrules -S -Y 2>/dev/null | sed -n 's/^--- (\([0-9]*\)) RULE.*/\1/p' | while read -r id; do
    if oaradmissionrules -s "$id" -f 2>/dev/null | grep -q 'waiting advance reservations'; then echo "$id"; fi; done)
[ -z "$rule" ] || oaradmissionrules -m "$rule" -N >/dev/null || die "cannot disable the reservation limit (rule $rule)"

# --- 5. the unprivileged submitter ---------------------------------------------------------
# (|| id: tolerate another script creating the same user at the same moment)
id "$OAR_TEST_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$OAR_TEST_USER" || id "$OAR_TEST_USER" >/dev/null \
    || die "cannot create user $OAR_TEST_USER"
# OAR runs every job as `<login shell> -c "<command>"` and sends oardel -c/-s
# signals to that shell only. bash execs a lone command, dash (/bin/sh, what a
# plain `useradd` gives, e.g. when another script created the user first) does
# not: then the signal never reaches the job's script. An existing user is left
# as it is; submit "exec /abs/script" to be independent of it (FACTS.md).
USER_SHELL=$(getent passwd "$OAR_TEST_USER" | cut -d: -f7)

# --- 6. OAR's sshd on port 6667 (oar-node): the server starts every job through it -------
if alive "$SSHD_PIDFILE"; then
    log "oar sshd already running (pid $(cat $SSHD_PIDFILE))"
else
    mkdir -p /run/sshd; chmod 755 /run/sshd
    /usr/sbin/sshd -f /etc/oar/sshd_config -o PidFile="$SSHD_PIDFILE" 2>/dev/null || die "oar sshd (port 6667) did not start"
    for i in $(seq 1 30); do alive "$SSHD_PIDFILE" && break; sleep 0.1; done
    alive "$SSHD_PIDFILE" || die "oar sshd (port 6667) did not start"
    log "oar sshd started on port 6667 (pid $(cat $SSHD_PIDFILE))"
fi
# (with OAR_SSH_MUX=1 this also opens the persistent ControlMaster connection)
OPENSSH_CMD=$(sed -n 's/^OPENSSH_CMD="\(.*\)"/\1/p' "$CONF")
su oar -s /bin/sh -c "$OPENSSH_CMD -o BatchMode=yes $HOST true" >/dev/null 2>&1 \
    || die "user oar cannot ssh to $HOST:6667"

# --- 7. OAR server (Almighty) ----------------------------------------------------------------
if alive "$SERVER_PIDFILE"; then
    log "Almighty already running (pid $(cat $SERVER_PIDFILE))"
else
    # Cold start: jobs still unfinished in the database belong to a server run that
    # is gone (crash, machine restart, stop without stop.sh). Left alone they stay
    # "Running" forever. Queue OAR's own SWITCH_INTO_ERROR_STATE event for them:
    # Almighty's first NodeChangeState pass turns them into Error.
    stale=$(psql_admin "INSERT INTO event_logs (type, job_id, date, description, to_check)
        SELECT 'SWITCH_INTO_ERROR_STATE', job_id, extract(epoch from now())::int,
               'tests/clusters/oar/start.sh: stale job left by a previous OAR server run', 'YES'
        FROM jobs WHERE state NOT IN ('Terminated','Error') RETURNING job_id" oar | tr '\n' ' ')
    [ -z "${stale// /}" ] || log "stale unfinished jobs set to Error: $stale"
    # Their processes may still run (Almighty killed, node side untouched) and
    # would go on using the CPUs: end the process group of each one's oarexec,
    # found through OAR's own pid file and checked by its command line
    # ("perl - <jobid> OAREXEC"), so a reused pid is never hit.
    for j in $stale; do
        f=/var/lib/oar/pid_of_oarexec_for_jobId_$j
        [ -s "$f" ] || continue
        p=$(cat "$f")
        if ps -o args= -p "$p" 2>/dev/null | grep -q "^perl - $j OAREXEC"; then
            g=$(ps -o pgid= -p "$p" | tr -d ' ')
            if [ -n "$g" ] && [ "$g" -gt 1 ] && [ "$g" != "$(ps -o pgid= -p $$ | tr -d ' ')" ]; then
                log "killing leftover processes of stale job $j (oarexec pid $p, process group $g)"
                kill -KILL -- "-$g" 2>/dev/null || true
            fi
        fi
        rm -f "$f"
    done
    touch /var/log/oar.log; chown oar /var/log/oar.log
    /usr/sbin/oar-server || die "oar-server failed to start (see /var/log/oar.log)"
    for i in $(seq 1 100); do ss -ltn | grep -q ':6666 ' && break; sleep 0.1; done
    ss -ltn | grep -q ':6666 ' || die "Almighty is not listening on port 6666 (see /var/log/oar.log)"
    log "Almighty started (pid $(cat $SERVER_PIDFILE))"
    if [ -n "${stale// /}" ]; then
        ids=$(echo $stale | tr ' ' ',')
        for i in $(seq 1 60); do
            [ "$(psql_admin "SELECT count(*) FROM jobs WHERE job_id IN ($ids) AND state NOT IN ('Terminated','Error')" oar)" = 0 ] && break
            sleep 0.5
        done
    fi
fi

# --- 8. resources Alive -------------------------------------------------------------------------
for i in $(seq 1 100); do
    n=$(psql_admin "SELECT count(*) FROM resources WHERE state='Alive' AND network_address='$HOST'" oar)
    [ "$n" = "$OAR_NB_CORES" ] && break; sleep 0.2
done
[ "$n" = "$OAR_NB_CORES" ] || die "$n Alive resources on $HOST, wanted $OAR_NB_CORES (oarnodes; /var/log/oar.log)"

# --- 9. smoke job ---------------------------------------------------------------------------------
if [ "$OAR_SMOKE_TEST" = 1 ]; then
    t=$(date +%s.%N)
    # oarsub must run from a directory the user can enter (OAR records it as the
    # job's working directory); output goes nowhere.
    out=$(cd /tmp && runuser -u "$OAR_TEST_USER" -- oarsub -l /core=1,walltime=0:01:00 -O /dev/null -E /dev/null true 2>&1) \
        || die "smoke test: oarsub as $OAR_TEST_USER failed: $out"
    id=$(sed -n 's/^OAR_JOB_ID=//p' <<<"$out")
    [ -n "$id" ] || die "smoke test: no OAR_JOB_ID in: $out"
    st=""
    for i in $(seq 1 240); do     # 60 s
        st=$(oarstat -s -j "$id" | sed -n "s/^$id: //p")
        case "$st" in Terminated|Error) break;; esac; sleep 0.25
    done
    [ "$st" = Terminated ] || die "smoke test job $id is '$st' after $(elapsed "$t") s (oarstat -f -j $id; /var/log/oar.log)"
    log "smoke test job $id: $st in $(elapsed "$t") s"
fi
log "OAR ready in $(elapsed "$T0") s: $n Alive core resources on $HOST; submit as '$OAR_TEST_USER' (login shell $USER_SHELL): runuser -u $OAR_TEST_USER -- oarsub ..."
