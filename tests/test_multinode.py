"""Multi-node calls on the real two-node Slurm and OAR that tests/clusters/multinode/ starts (run-all.sh's
multinode phase: Slurm as root with SLURM_CONF naming the two-node cluster, OAR as alice with node2 added).

Both "nodes" are this machine, so ``hostname`` is the same on both: ranks tell nodes apart by the scheduler's node
name (``JobEnvironment().node``). The cleanup tests look for the call's processes on both nodes by what their
command lines carry (the job folder, a marker given to the call), and by the pids the ranks recorded.
"""

import os
import secrets
import subprocess

import pytest

from oarfutures import AutoPoolExecutor, JobFailedError
from oarfutures.backends.commands import SchedulerCommandError

import tasks
from conftest import require_command, wait_for

pytestmark = pytest.mark.multinode

CLUSTERS = [pytest.param("slurm", marks=pytest.mark.slurm), pytest.param("oar", marks=pytest.mark.oar)]


def cluster_nodes(cluster):
    """The cluster's node names; fails (CI) or skips unless there are two."""
    if cluster == "slurm":
        require_command("sbatch")
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=60).stdout
    else:
        require_command("oarsub")
        out = subprocess.run(["oarnodes", "-l"], capture_output=True, text=True, timeout=60).stdout
    nodes = sorted(set(out.split()))
    if len(nodes) < 2:
        message = f"{cluster} has one node ({nodes}): start tests/clusters/multinode/ (run-all.sh's multinode phase)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return nodes


@pytest.fixture(params=CLUSTERS)
def cluster(request):
    cluster_nodes(request.param)
    return request.param


def two_by_two(cluster, folder, **parameters):
    return AutoPoolExecutor(folder=folder, cluster=cluster, nodes=2, tasks_per_node=2, timeout_min=10, **parameters)


def test_four_ranks_two_per_node_rendezvous_at_the_master_address_and_all_reduce(cluster, folder):
    with two_by_two(cluster, folder) as executor:
        results = executor.submit(tasks.allreduce).result(timeout=300)
    ranks, local_ranks, world_sizes, nodes, addresses, ports, sums = zip(*results)
    assert list(ranks) == [0, 1, 2, 3] and list(local_ranks) == [0, 1, 0, 1] and set(world_sizes) == {4}
    assert nodes[0] == nodes[1] != nodes[2] == nodes[3], nodes  # two ranks on each of two nodes
    assert set(nodes) <= set(cluster_nodes(cluster))
    assert set(addresses) == {nodes[0]} and len(set(ports)) == 1  # rank 0's node, one port for all
    assert set(sums) == {1111}  # 10**0 + 10**1 + 10**2 + 10**3, seen by every rank


# ------------------------------------------------------------------------------------------------ cleanup
def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, waiting to be reaped
    except (OSError, IndexError):
        return False


def processes_of(folder, marker):
    """(pid, command line) of every live process on this machine (both nodes) that belongs to the call's ranks:
    a rank (``oarfutures.worker <folder> ... --rank``, also as ``oarsh``'s command and its remote shell) or a
    process a rank started (the marker). The job's first process, which launched the ranks, is not one: it ends
    with its job, right after it wrote the result (a local resident worker even stays for the next call)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (marker in command or (folder in command and "--rank" in command)) and _alive(name):
            found.append((int(name), command))
    return found


def leftovers(folder, marker, records):
    recorded = [pid for r in records for pid in (r[2], r[3]) if _alive(pid)]
    return recorded + processes_of(folder, marker)


def read_records(path):
    records = []
    for name in sorted(os.listdir(path)):
        if name.startswith("rank") and "." not in name:
            rank, node, pid, child = open(os.path.join(path, name)).read().split()
            records.append((int(rank), node, int(pid), int(child)))
    return records


def assert_two_ranks_on_each_node(records, cluster):
    nodes = [node for _, node, _, _ in sorted(records)]
    assert len(nodes) == 4 and nodes[0] == nodes[1] != nodes[2] == nodes[3], records
    assert set(nodes) <= set(cluster_nodes(cluster))


@pytest.fixture
def stay(tmp_path, folder):
    """Where the ranks record themselves, and a marker only this test's processes carry."""
    path = tmp_path / "ranks"
    path.mkdir()
    marker = f"oarfutures-multinode-{secrets.token_hex(6)}"
    yield str(path), marker
    for pid, _ in processes_of(folder, marker):  # a failed test must not leave them to the next ones
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def test_a_failing_rank_fails_the_call_and_every_rank_on_both_nodes_is_gone(cluster, folder, stay):
    path, marker = stay
    with two_by_two(cluster, folder) as executor:
        future = executor.submit(tasks.rank_stays, path, marker, 3)  # rank 3: on the second node
        with pytest.raises(RuntimeError, match="rank 3 gives up") as info:
            future.result(timeout=150)
        # at once, before any grace: the launcher stops the other ranks before it writes the task's result
        assert leftovers(folder, marker, read_records(path)) == []
    assert "rank 3 of 4" in info.value.__cause__.text and "raise RuntimeError" in info.value.__cause__.text
    assert_two_ranks_on_each_node(read_records(path), cluster)


def wait_for_four_ranks(path, future):
    wait_for(lambda: len(read_records(path)) == 4 or future.done(), 240, "the four ranks to start")
    assert not future.done(), future.exception()


@pytest.mark.parametrize("how", ["abort", "scheduler"])
def test_a_running_multinode_call_killed_leaves_no_rank_on_either_node(cluster, folder, stay, how):
    """``abort()`` (what leaving a ``with`` block by an exception does; ``future.cancel()`` of a running call
    returns False and stops nothing, as in concurrent.futures), or ``scancel``/``oardel`` from outside."""
    path, marker = stay
    with two_by_two(cluster, folder) as executor:
        future = executor.submit(tasks.rank_stays, path, marker)
        wait_for_four_ranks(path, future)
        records = read_records(path)
        assert_two_ranks_on_each_node(records, cluster)
        assert len(leftovers(folder, marker, records)) >= 8  # the ranks and their children, seen where they run
        if how == "abort":
            executor.abort("the test aborts")
        else:
            kill = ["scancel", future.job_id] if cluster == "slurm" else ["oardel", future.job_id]
            subprocess.run(kill, check=True, capture_output=True, timeout=60)
        with pytest.raises(JobFailedError):  # the call was running: it fails, it is not cancelled
            future.result(timeout=120)
        if how == "scheduler":  # the future fails once the scheduler says the job ended: by then nothing is left
            assert leftovers(folder, marker, records) == []
        else:  # abort() fails the futures as soon as scancel/oardel returned; the kill follows (seen: 0.3 s on
            # Slurm, 2.5 s on OAR, whose oardel is asynchronous)
            wait_for(lambda: leftovers(folder, marker, records) == [], 20, "every process of the call to end")


# ------------------------------------------------------------------------------ OAR memory requests (memnode)
def memnode_of_hosts():
    """{host: memnode values} from oarnodes (add-oar-node2.sh: 8192 on the first host, 2048 on node2, which OAR's
    resource order offers first: a job lands on the first host only if its memory request is applied)."""
    import json

    out = subprocess.run(["oarnodes", "-J"], capture_output=True, text=True, timeout=60, check=True).stdout
    found = {}
    for resource in json.loads(out).values():
        properties = resource.get("properties", resource)
        found.setdefault(properties["network_address"], set()).add(properties.get("memnode"))
    return found


@pytest.mark.oar
def test_mem_gb_on_oar_lands_only_where_memnode_allows_and_says_why_when_nothing_matches(folder):
    cluster_nodes("oar")
    memnode = memnode_of_hosts()
    big = [host for host, values in memnode.items() if values and min(int(v or 0) for v in values) >= 4096]
    small = [host for host, values in memnode.items() if values and max(int(v or 0) for v in values) < 4096]
    assert big and small, f"the test cluster should have nodes on both sides of 4096 MB: {memnode}"
    with AutoPoolExecutor(folder=folder, cluster="oar", timeout_min=5, mem_gb=4, steal_seconds=0) as executor:
        # several calls (one array): each subjob may go anywhere memnode >= 4096 allows, never to a small node
        hosts = [h for nodes in executor.map(tasks.oar_nodes, range(3), timeout=300) for h in nodes]
        assert set(hosts) <= set(big), (hosts, memnode)
        refused = r"mem_gb=64 asks for resources with memnode >= 65536 \(MB\): none matches"
        with pytest.raises(SchedulerCommandError, match=refused):
            executor.options(mem_gb=64).submit(tasks.oar_nodes)
    without = {"mem_gb": 1, "oar_memory_property": "nosuchmemory"}
    with AutoPoolExecutor(folder=folder, cluster="oar", timeout_min=5, **without) as executor:
        with pytest.raises(SchedulerCommandError, match="this OAR cluster has no resource property 'nosuchmemory'"):
            executor.submit(tasks.oar_nodes)
