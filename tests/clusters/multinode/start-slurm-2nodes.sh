#!/bin/bash
# A second, separate Slurm 22.05 cluster of TWO nodes on this one machine, beside the single-node one that
# tests/clusters/slurm/start.sh runs: one slurmctld (port 17817) and two slurmd processes (`slurmd -N n1`,
# `slurmd -N n2`, ports 17001-17002). Debian's slurmd is built with MULTIPLE_SLURMD=Yes (`scontrol show config`).
# Its state, pid and log files live under $MN_SLURM_DIR; munged is the single-node cluster's (start that first).
# Clients must `export SLURM_CONF=$MN_SLURM_DIR/slurm-2nodes.conf`: without it they silently talk to the
# single-node cluster, where a 2-node job never runs. Always a clean start (no job survives). Exit 0 = both idle.
#   MN_SLURM_DIR  where config/state go                 [/var/tmp/slurm-2nodes]
#   MN_NODES      number of slurmd "nodes" n1..nN       [2]
#   MN_CPUS       CPUs advertised per node              [8]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_TAG=start-slurm-2nodes
. "$HERE/../slurm/lib.sh"
D=${MN_SLURM_DIR:-/var/tmp/slurm-2nodes}; N=${MN_NODES:-2}; CPUS=${MN_CPUS:-8}
HOST=$(hostname -s)
die() { echo "start-slurm-2nodes.sh: $1" >&2; shift; local f; for f in "$@"; do [ -r "$f" ] && tail -n 15 "$f" >&2; done; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
[[ "$N" =~ ^[0-9]+$ && "$CPUS" =~ ^[0-9]+$ ]] || die "MN_NODES and MN_CPUS must be integers"
mkdir -p "$D/state/ctld"; chmod 755 "$D"
export SLURM_CONF=$D/slurm-2nodes.conf
MN_SLURM_DIR=$D bash "$HERE/stop-slurm-2nodes.sh" >/dev/null 2>&1 || true
rm -rf "$D"/state/ctld/* "$D"/state/slurmd-*; : > "$D/state/jobcomp.log"; chown -R slurm:slurm "$D/state"
cat > "$SLURM_CONF" <<CONF
# written by tests/clusters/multinode/start-slurm-2nodes.sh; the settings of tests/clusters/slurm/slurm.conf
ClusterName=mlab
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=17817
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$D/state/jobcomp.log
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2,sched_min_interval=0,batch_sched_delay=0,default_queue_depth=1000
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=100
ReturnToService=2
Epilog=/bin/true
StateSaveLocation=$D/state/ctld
# %n = the node name given with slurmd -N: every slurmd has its own spool dir, pid file and log
SlurmdSpoolDir=$D/state/slurmd-%n
SlurmdPidFile=$D/state/slurmd-%n.pid
SlurmdLogFile=$D/state/slurmd-%n.log
SlurmctldPidFile=$D/state/slurmctld.pid
SlurmctldLogFile=$D/state/slurmctld.log
SlurmctldDebug=info
SlurmdDebug=info
MaxArraySize=100001
MinJobAge=3600
KillWait=5
InactiveLimit=0
MessageTimeout=10
SlurmdTimeout=300
SlurmctldTimeout=120
SlurmdParameters=config_overrides
# NodeHostname = the real host; Port = one per slurmd (the range is spread over n[1-N])
NodeName=n[1-$N] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17001-$((17000 + N)) CPUs=$CPUS RealMemory=$((CPUS * 1000)) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
chmod 644 "$SLURM_CONF"
munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || die "munged is not running (tests/clusters/slurm/start.sh starts it)"
/usr/sbin/slurmctld -f "$SLURM_CONF" || die "slurmctld failed" "$D/state/slurmctld.log"
# node names must resolve, as on a real cluster (jobs use them as addresses: master_addr, srun -w)
for i in $(seq 1 "$N"); do getent hosts "n$i" >/dev/null || echo "127.0.0.1 n$i" >> /etc/hosts; done
for i in $(seq 1 "$N"); do /usr/sbin/slurmd -f "$SLURM_CONF" -N "n$i" || die "slurmd -N n$i failed" "$D/state/slurmd-n$i.log"; done
log "slurmctld + $N slurmd started"
for _ in $(seq 300); do
    [ "$(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l)" = "$N" ] && break; sleep 0.1
done
[ "$(sinfo -h -N -t idle -o %N | sort -u | wc -l)" = "$N" ] || { sinfo -N >&2; die "the $N nodes are not idle after 30 s" "$D/state/slurmctld.log"; }
log "nodes $(sinfo -h -o %N) idle; clients: export SLURM_CONF=$SLURM_CONF"
