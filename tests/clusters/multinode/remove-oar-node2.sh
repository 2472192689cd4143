#!/bin/bash
# Undo add-oar-node2.sh: drain node2 (wait at most 60 s for its jobs), delete its resources, its /etc/hosts
# line and the oar.conf changes for oarsh. The memnode property stays (harmless to jobs that do not ask for it).
set -euo pipefail
N2=${MN_OAR_NODE2:-node2}
[[ "$N2" =~ ^[a-z][a-z0-9-]*$ ]] || { echo "MN_OAR_NODE2 must be a plain host name" >&2; exit 1; }
psql_oar() { su postgres -c "psql -XAtq -d oar -c \"$1\""; }
ids=$(psql_oar "SELECT resource_id FROM resources WHERE network_address='$N2'")
if [ -n "$ids" ]; then
    oarnodesetting -h "$N2" -p drain=YES >/dev/null
    for _ in $(seq 120); do
        [ "$(psql_oar "SELECT count(*) FROM jobs j JOIN assigned_resources a ON a.moldable_job_id=j.assigned_moldable_job JOIN resources r ON r.resource_id=a.resource_id WHERE r.network_address='$N2' AND j.state NOT IN ('Terminated','Error')")" = 0 ] && break; sleep 0.5
    done
    oarnodesetting --sql "network_address='$N2'" -s Dead -n >/dev/null
    for _ in $(seq 50); do
        [ "$(psql_oar "SELECT count(*) FROM resources WHERE network_address='$N2' AND state<>'Dead'")" = 0 ] && break; sleep 0.2
    done
    for r in $ids; do oarremoveresource "$r" >/dev/null; done
fi
sed -i "/^[0-9.]*[[:space:]]\+$N2\$/d" /etc/hosts
sed -i 's|^OARSH_OARSTAT_CMD=.*|OARSH_OARSTAT_CMD="/usr/bin/oarstat"|' /etc/oar/oar.conf
sed -i 's|^\(OPENSSH_CMD=.*\) -oSendEnv=OAR_CPUSET -oSendEnv=OAR_JOB_USER -oSendEnv=OAR_USER_CPUSET -oSendEnv=OAR_USER_GPUDEVICE"|\1"|' /etc/oar/oar.conf
for s in /var/lib/oar/.ssh/cm-*; do [ -S "$s" ] && su oar -s /bin/sh -c "/usr/bin/ssh -o ControlPath=$s -O stop x" 2>/dev/null || true; done
su oar -s /bin/sh -c "ssh-keygen -R '[$N2]:6667' -f /var/lib/oar/.ssh/known_hosts" >/dev/null 2>&1 || true
rm -f /var/lib/oar/.ssh/known_hosts.old
echo "[remove-oar-node2] hosts: $(oarnodes -l | tr '\n' ' ')"
