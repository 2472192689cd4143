#!/bin/bash
# Install (if needed) and start a real single-node Slurm 22.05 cluster on Debian 12 without systemd:
# munged, slurmctld, slurmd and, with WITH_SLURMDBD=1, MariaDB + slurmdbd so that sacct works.
# Idempotent: daemons already running with the wanted configuration are left alone (~0.1 s);
# a different configuration (mode, MaxArraySize, slurm.conf) restarts them.
# Exits non-zero with a message on stderr if the cluster does not come up.
#
#   WITH_SLURMDBD=0|1     accounting through slurmdbd (sacct works) or none (sacct exits 1:
#                         "Slurm accounting storage is disabled", as on many real sites). Default 0.
#   MAX_ARRAY_SIZE=N      slurm.conf MaxArraySize (default 100001; Slurm's real default is 1001)
#   CLEAN_STATE=1|0       on a (re)start, cancel all jobs and wipe slurmctld state and the accounting
#                         DB, so job ids restart at 1 (default 1). With 0 jobs survive the restart.
#   RESTART=1             restart the daemons even if nothing changed
#   SLURM_CONF_SRC=path   slurm.conf template (default: slurm.conf beside this script)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_TAG=start.sh
. "$HERE/lib.sh"
SLURM_CONF_SRC=${SLURM_CONF_SRC:-$HERE/slurm.conf}
WITH_SLURMDBD=${WITH_SLURMDBD:-0}
MAX_ARRAY_SIZE=${MAX_ARRAY_SIZE:-100001}
CLEAN_STATE=${CLEAN_STATE:-1}
RESTART=${RESTART:-0}
HOST=$(hostname -s)

die() { # MESSAGE [LOGFILE...]
    echo "start.sh: Slurm did not come up: $1" >&2; shift
    local f; for f in "$@"; do [ -r "$f" ] && { echo "--- last lines of $f:" >&2; tail -n 15 "$f" >&2; }; done
    exit 1
}
case "$WITH_SLURMDBD" in 0|1) ;; *) die "WITH_SLURMDBD must be 0 or 1, not '$WITH_SLURMDBD'";; esac
[[ "$MAX_ARRAY_SIZE" =~ ^[0-9]+$ ]] && [ "$MAX_ARRAY_SIZE" -ge 1 ] && [ "$MAX_ARRAY_SIZE" -le 4000001 ] \
    || die "MAX_ARRAY_SIZE must be an integer in 1..4000001 (Slurm's limit), not '$MAX_ARRAY_SIZE'"
[ "$(id -u)" = 0 ] || die "must run as root"
[ -r "$SLURM_CONF_SRC" ] || die "no slurm.conf template at $SLURM_CONF_SRC"

# 1. packages (nothing starts during install: there is no systemd/init to start it) ---------------
PKGS="munge slurm-client slurmctld slurmd"
[ "$WITH_SLURMDBD" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
missing=$(for p in $PKGS; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"; done)
if [ -n "$missing" ]; then
    log "installing: $(echo $missing)"
    apt-get -o DPkg::Lock::Timeout=600 update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        $missing >/dev/null || die "apt-get install $missing failed"
    log "packages installed"
fi

# a normal user, for tests of non-root submission (`runuser -u alice -- sbatch ...`)
id alice >/dev/null 2>&1 || { useradd -m alice; log "created user alice"; }

# 2. directories, munge key, slurm.conf ----------------------------------------------------------
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
chown slurm:slurm /var/spool/slurmctld /var/log/slurm
chown munge:munge /run/munge; chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then   # normally created by the munge package's postinst
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key; chmod 0600 /etc/munge/munge.key
fi
if [ "$WITH_SLURMDBD" = 1 ]; then
    acct='AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost'
else
    acct='AccountingStorageType=accounting_storage/none'
fi
new_conf=$(mktemp)
sed -e "s/@HOST@/$HOST/g" -e "s/@MAX_ARRAY_SIZE@/$MAX_ARRAY_SIZE/" -e "s#^@ACCOUNTING@\$#$acct#" \
    "$SLURM_CONF_SRC" > "$new_conf"
conf_changed=0
cmp -s "$new_conf" /etc/slurm/slurm.conf || conf_changed=1
install -m 0644 "$new_conf" /etc/slurm/slurm.conf; rm -f "$new_conf"

# 3. munged -----------------------------------------------------------------------------------------
if ! { running /run/munge/munged.pid munged && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }; then
    runuser -u munge -- /usr/sbin/munged || die "munged failed to start" /var/log/munge/munged.log
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || die "munge does not work" /var/log/munge/munged.log
    log "munged started (pid $(cat /run/munge/munged.pid))"
fi

# 4. stop the Slurm daemons if something changed ---------------------------------------------------
need_restart=$RESTART
[ "$conf_changed" = 1 ] && need_restart=1
{ running /run/slurmctld.pid slurmctld && running /run/slurmd.pid slurmd; } || need_restart=1
if [ "$need_restart" = 1 ]; then
    keep_jobs=0; [ "$CLEAN_STATE" = 1 ] || keep_jobs=1
    # cancels jobs first (no job process may outlive the wiped state), stops slurmd, slurmctld, slurmdbd;
    # mariadbd stays up if it is still needed
    KEEP_JOBS=$keep_jobs KEEP_DB=$WITH_SLURMDBD KEEP_MUNGE=1 LOG_TAG=start.sh "$HERE/stop.sh"
fi

# 5. accounting: MariaDB + slurmdbd, or neither ----------------------------------------------------
if [ "$WITH_SLURMDBD" = 1 ]; then
    if ! running /run/mysqld/mysqld.pid mariadbd; then
        mkdir -p /run/mysqld /var/log/mysql; chown mysql:mysql /run/mysqld /var/log/mysql
        /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
            --socket=/run/mysqld/mysqld.sock --log-error=/var/log/mysql/error.log </dev/null >/dev/null 2>&1 &
        for _ in $(seq 300); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
        mariadb -e 'select 1' >/dev/null 2>&1 || die "MariaDB not answering after 30 s" /var/log/mysql/error.log
        log "mariadbd started (pid $(cat /run/mysqld/mysqld.pid))"
    fi
    if [ "$need_restart" = 1 ] && [ "$CLEAN_STATE" = 1 ]; then
        # job ids restart at 1 below: start with an empty accounting DB too, or sacct mixes old and new jobs
        mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db"
    fi
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
                CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmdbpass';
                ALTER USER 'slurm'@'localhost' IDENTIFIED BY 'slurmdbpass';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    dbd_conf=$(mktemp)
    cat > "$dbd_conf" <<'CONF'
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmdbpass
CONF
    # slurmdbd refuses a config file readable by others (it holds the DB password)
    install -o slurm -g slurm -m 0600 "$dbd_conf" /etc/slurm/slurmdbd.conf; rm -f "$dbd_conf"
    if ! running /run/slurmdbd.pid slurmdbd; then
        /usr/sbin/slurmdbd || die "slurmdbd failed to start" /var/log/slurm/slurmdbd.log
        ok=0; for _ in $(seq 300); do sacctmgr -n list cluster >/dev/null 2>&1 && { ok=1; break; }; sleep 0.1; done
        [ $ok = 1 ] || die "slurmdbd not answering after 30 s" /var/log/slurm/slurmdbd.log
        log "slurmdbd started (pid $(cat /run/slurmdbd.pid))"
    fi
    # the cluster must exist in the DB before slurmctld registers, or no job is recorded
    sacctmgr -n list cluster format=cluster | grep -qw lab || sacctmgr -i add cluster lab >/dev/null \
        || die "sacctmgr add cluster lab failed" /var/log/slurm/slurmdbd.log
else
    # not needed in this mode: free the memory (no-op if they are not running)
    stop_pidfile /run/slurmdbd.pid slurmdbd
    stop_pidfile /run/mysqld/mysqld.pid mariadbd
fi

# 6. slurmctld + slurmd ------------------------------------------------------------------------------
if [ "$need_restart" = 1 ]; then
    if [ "$CLEAN_STATE" = 1 ]; then
        rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*
        : > /var/log/slurm/jobcomp.log; chown slurm:slurm /var/log/slurm/jobcomp.log
    fi
    /usr/sbin/slurmctld || die "slurmctld failed to start" /var/log/slurm/slurmctld.log   # daemonizes
    /usr/sbin/slurmd || die "slurmd failed to start" /var/log/slurm/slurmd.log            # registers at once
    for _ in $(seq 100); do running /run/slurmctld.pid slurmctld && running /run/slurmd.pid slurmd && break; sleep 0.1; done
    running /run/slurmctld.pid slurmctld || die "slurmctld is not running" /var/log/slurm/slurmctld.log
    running /run/slurmd.pid slurmd || die "slurmd is not running" /var/log/slurm/slurmd.log
    log "slurmctld (pid $(cat /run/slurmctld.pid)) and slurmd (pid $(cat /run/slurmd.pid)) started" \
        "(WITH_SLURMDBD=$WITH_SLURMDBD MAX_ARRAY_SIZE=$MAX_ARRAY_SIZE)"
else
    log "slurmctld and slurmd already running with this configuration"
fi

# 7. wait until the node is usable and the running config is the wanted one ------------------------
state=""
for _ in $(seq 300); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1 || true)
    case "$state" in
        idle|mixed|allocated) break ;;
        down*|drain*|fail*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.1
done
case "$state" in
    idle|mixed|allocated) ;;
    *) sinfo -R >&2 || true; die "node $HOST is '${state:-unknown}' after 30 s" /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log ;;
esac
conf=$(scontrol show config 2>/dev/null) || die "scontrol show config failed" /var/log/slurm/slurmctld.log
grep -Eq "^MaxArraySize += $MAX_ARRAY_SIZE\$" <<<"$conf" \
    || die "slurmctld runs with '$(grep ^MaxArraySize <<<"$conf")', wanted $MAX_ARRAY_SIZE"
if [ "$WITH_SLURMDBD" = 1 ]; then
    grep -q 'accounting_storage/slurmdbd' <<<"$conf" || die "slurmctld does not use slurmdbd"
    sacct -n -X -j 1 >/dev/null 2>&1 || die "sacct does not work: $(sacct -n -X -j 1 2>&1 | head -1)" /var/log/slurm/slurmdbd.log
fi
log "node $HOST is $state; Slurm is ready (WITH_SLURMDBD=$WITH_SLURMDBD MAX_ARRAY_SIZE=$MAX_ARRAY_SIZE)"
