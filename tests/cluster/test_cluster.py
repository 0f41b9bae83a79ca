"""The namespace cluster itself: hosts with their own names and addresses on a private network, and a
teardown that leaves nothing behind, even when the test using the cluster fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil

from tests.cluster.netns_cluster import IFNAME, SUBNET, NamespaceCluster, namespace_pids, namespaces
from tests.slurm.slurm_jobs import REPO


def test_each_host_has_its_name_and_address_and_reaches_the_others_only_on_the_private_network(cluster, capsys):
    with capsys.disabled():
        print(f"\n{cluster.hosts}-host cluster started in {cluster.startup_seconds:.2f} s")
    result = cluster.run(["srun", "-N2", "-n2", "-l", "sh", "-c",
                          f'echo "$(hostname) $SLURM_PROCID $(getent ahostsv4 node1 | head -n1 | cut -d" " -f1)" '
                          f'"$(ip -o -4 addr show {IFNAME} | tr -s " " | cut -d" " -f4)"'])
    assert result.returncode == 0, result.stderr
    lines = sorted(line.split(": ", 1)[1] for line in result.stdout.splitlines())
    assert lines == [f"node1 0 {SUBNET}.1 {SUBNET}.1/24", f"node2 1 {SUBNET}.1 {SUBNET}.2/24"]
    for host in cluster.names:  # no default route: nothing can leave the subnet
        routes = subprocess.run(["ip", "-n", cluster.namespace(host), "-4", "route"], capture_output=True,
                                text=True, check=True).stdout
        assert [line.split()[0] for line in routes.strip().splitlines()] == [f"{SUBNET}.0/24"], routes
    # The machine's own namespace has no address on the subnet (no packet is sent to check it).
    own = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert f"{SUBNET}." not in own


def test_teardown_check_sees_a_leftover_namespace_and_process(tmp_path):
    """Negative control for leftovers(): a namespace with a live process in it is reported, then removed."""
    stray = NamespaceCluster(tmp_path, hosts=1)
    subprocess.run(["ip", "netns", "add", stray.namespace("node1")], check=True)
    sleeper = subprocess.Popen(["nsenter", f"--net=/run/netns/{stray.namespace('node1')}", "sleep", "600"])
    try:
        assert sleeper.pid in namespace_pids(stray.namespace("node1"))
        left = stray.leftovers()
        assert f"namespace {stray.namespace('node1')}" in left
        assert f"process {sleeper.pid} in {stray.namespace('node1')}" in left
        stray.stop()
        assert sleeper.wait(timeout=30) != 0
        assert stray.leftovers() == []
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        subprocess.run(["ip", "netns", "del", stray.namespace("node1")], capture_output=True)


def test_a_failing_test_still_tears_the_cluster_down(tmp_path):
    record = tmp_path / "record.json"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/cluster/failing_case.py", f"--basetemp={tmp_path / 'inner'}"],
                            capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**os.environ, "MLT_RECORD": str(record)})
    assert result.returncode == 1 and "1 failed" in result.stdout, result.stdout[-3000:]
    assert "fails on purpose" in result.stdout
    seen = json.loads(record.read_text())
    assert [name for name in namespaces() if name.startswith(seen["prefix"] + "-")] == []
    stray = []
    for process in psutil.process_iter():
        try:
            command = " ".join(process.cmdline())
            if (seen["root"] in command or seen["sockets"] in command
                    or process.environ().get("SLURM_CONF") == seen["conf"]):
                stray.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    assert stray == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert IFNAME not in links and "br0" not in links
    assert not os.path.exists(seen["sockets"])
