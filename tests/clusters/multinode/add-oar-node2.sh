#!/bin/bash
# Turn the running single-node OAR of tests/clusters/oar/start.sh (resources on `hostname`) into a 2-node OAR
# cluster on ONE machine: a second host name (node2 -> 127.0.0.2, a loopback alias needing no setup) with its
# own core resources. OAR's sshd (port 6667, on 0.0.0.0) serves both names, so OAR and oarsh reach "node2" as a
# remote node. Run after start.sh (which marks resources of any other host Dead: this revives them). Idempotent.
# Also:
#  - makes oarsh work inside jobs (start.sh runs OAR_FAST=1, without a job resource manager):
#    OARSH_OARSTAT_CMD -> oarstat-for-oarsh.sh (installed under /usr/local/lib/oarfutures-tests, readable by
#    oar wherever the repository is); OPENSSH_CMD += -oSendEnv=OAR_JOB_USER...: with OAR_SSH_MUX=1 the
#    ControlMaster filters every multiplexed session's environment by ITS OWN SendEnv list, and without these
#    oarsh silently runs commands as user oar instead of the job owner;
#  - gives every resource a `memnode` property (MB, Grid'5000's name): MN_OAR_MEMNODE_HEAD on this host,
#    MN_OAR_MEMNODE_NODE2 on node2, so that a memory request (-p "memnode >= ...") selects a node. node2 has
#    the smaller value: OAR's resource order (network_address ASC) offers node2 first, so a job that asks for
#    more than node2 has lands on this host only if the property is really applied.
#   MN_OAR_NODE2          second host name                [node2]
#   MN_OAR_NODE2_IP       its address (/etc/hosts)        [127.0.0.2]
#   MN_OAR_NODE2_CORES    core resources on it            [4]
#   MN_OAR_MEMNODE_HEAD   memnode of this host's cores    [8192]
#   MN_OAR_MEMNODE_NODE2  memnode of node2's cores        [2048]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
N2=${MN_OAR_NODE2:-node2}; IP=${MN_OAR_NODE2_IP:-127.0.0.2}; NC=${MN_OAR_NODE2_CORES:-4}
MEM_HEAD=${MN_OAR_MEMNODE_HEAD:-8192}; MEM_N2=${MN_OAR_MEMNODE_NODE2:-2048}
HOST=$(hostname)
die() { echo "add-oar-node2.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
[[ "$N2" =~ ^[a-z][a-z0-9-]*$ ]] || die "MN_OAR_NODE2 must be a plain host name"
[[ "$IP" =~ ^127(\.[0-9]+){3}$ ]] || die "MN_OAR_NODE2_IP must be a loopback address"
[[ "$NC$MEM_HEAD$MEM_N2" =~ ^[0-9]+$ ]] || die "core counts and memnode values must be integers"
psql_oar() { su postgres -c "psql -XAtq -d oar -c \"$1\""; }
grep -qE "^[0-9.]+[[:space:]]+$N2([[:space:]]|\$)" /etc/hosts || echo "$IP $N2" >> /etc/hosts
# globally unique cpu/core values (OAR groups by property value: a second host with cpu=1 would make
# `-l /cpu=2` see one cpu)
have=$(psql_oar "SELECT count(*) FROM resources WHERE network_address='$N2'")
maxcpu=$(psql_oar "SELECT coalesce(max(cpu),0) FROM resources WHERE network_address<>'$N2'")
maxcore=$(psql_oar "SELECT coalesce(max(core),0) FROM resources WHERE network_address<>'$N2'")
for i in $(seq $((have + 1)) "$NC"); do
    oarnodesetting -a -h "$N2" -p host="$N2" -p cpu=$((maxcpu + 1)) -p core=$((maxcore + i)) \
        -p cpuset=$(( (i - 1) % $(nproc) )) >/dev/null
done
# memory property, in MB as on Grid'5000 (an integer column: `memnode >= 4096` compares numbers)
grep -qx memnode <<<"$(oarproperty -l)" || oarproperty -a memnode >/dev/null   # (no pipe: grep -q would SIGPIPE it)
oarnodesetting --sql "network_address='$HOST'" -p memnode="$MEM_HEAD" >/dev/null
oarnodesetting --sql "network_address='$N2'" -p memnode="$MEM_N2" >/dev/null
ids=$(psql_oar "SELECT string_agg(resource_id::text, ',') FROM resources WHERE network_address='$N2' AND state<>'Alive'")
[ -z "$ids" ] || oarnodesetting --sql "resource_id IN ($ids)" -s Alive >/dev/null
oarnodesetting --sql "network_address='$N2'" -p drain=NO >/dev/null
# oar.conf for oarsh (start.sh resets OPENSSH_CMD; remove-oar-node2.sh resets both)
C=/etc/oar/oar.conf
install -d -m 755 /usr/local/lib/oarfutures-tests
install -m 755 "$HERE/oarstat-for-oarsh.sh" /usr/local/lib/oarfutures-tests/oarstat-for-oarsh.sh
sed -i "s|^OARSH_OARSTAT_CMD=.*|OARSH_OARSTAT_CMD=\"/usr/local/lib/oarfutures-tests/oarstat-for-oarsh.sh\"|" $C
SE="-oSendEnv=OAR_CPUSET -oSendEnv=OAR_JOB_USER -oSendEnv=OAR_USER_CPUSET -oSendEnv=OAR_USER_GPUDEVICE"
if ! grep -q '^OPENSSH_CMD=.*SendEnv=OAR_JOB_USER' $C; then
    sed -i "s|^OPENSSH_CMD=\"\(.*\)\"|OPENSSH_CMD=\"\1 $SE\"|" $C
    # masters opened with the old options would keep dropping OAR_JOB_USER: let them go
    # (-O stop: no new sessions, exits when the running ones end)
    for s in /var/lib/oar/.ssh/cm-*; do [ -S "$s" ] && su oar -s /bin/sh -c "/usr/bin/ssh -o ControlPath=$s -O stop x" 2>/dev/null || true; done
fi
# oar must reach node2 through OAR's sshd (this also opens the ssh ControlMaster to it)
OPENSSH_CMD=$(sed -n 's/^OPENSSH_CMD="\(.*\)"/\1/p' $C)
for h in "$HOST" "$N2"; do
    su oar -s /bin/sh -c "$OPENSSH_CMD -o BatchMode=yes -o StrictHostKeyChecking=accept-new $h true" 2>/dev/null \
        || die "user oar cannot ssh to $h:6667"
done
for _ in $(seq 50); do
    [ "$(psql_oar "SELECT count(*) FROM resources WHERE network_address='$N2' AND state='Alive'")" = "$NC" ] && break; sleep 0.2
done
[ "$(psql_oar "SELECT count(*) FROM resources WHERE network_address='$N2' AND state='Alive'")" = "$NC" ] \
    || die "node2's resources are not Alive: $(oarnodes -s | tr '\n' ' ')"
echo "[add-oar-node2] hosts: $(oarnodes -l | tr '\n' ' '); memnode $HOST=$MEM_HEAD $N2=$MEM_N2"
