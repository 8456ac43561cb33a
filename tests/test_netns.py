"""Two hosts on one machine: the head in this network namespace, a worker node in another one
joined by a veth pair.  Everything between them crosses a real (virtual) network link."""
import os
import shutil
import subprocess
import sys

import pytest

from _backend import IS_RAY, poll_for

pytestmark = [pytest.mark.timeout(180), pytest.mark.skipif(IS_RAY, reason="Luminary's command-line tool")]

NS = "lumtest_b"
HEAD_IP, NODE_IP = "10.231.0.1", "10.231.0.2"


def _can_use_netns():
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = subprocess.run(["ip", "netns", "add", "lumtest_probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns add` is not allowed here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "lumtest_probe"], capture_output=True)
    return None


def sh(*cmd, check=True):
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


@pytest.fixture
def two_hosts():
    why = _can_use_netns()
    if why:
        pytest.skip(why)
    sh("ip", "netns", "del", NS, check=False)
    sh("ip", "link", "del", "lumveth0", check=False)
    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "link", "add", "lumveth0", "type", "veth", "peer", "name", "lumveth1")
        sh("ip", "link", "set", "lumveth1", "netns", NS)
        sh("ip", "addr", "add", f"{HEAD_IP}/24", "dev", "lumveth0")
        sh("ip", "link", "set", "lumveth0", "up")
        sh("ip", "netns", "exec", NS, "ip", "addr", "add", f"{NODE_IP}/24", "dev", "lumveth1")
        sh("ip", "netns", "exec", NS, "ip", "link", "set", "lumveth1", "up")
        sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
        yield
    finally:
        subprocess.run([sys.executable, "-m", "luminary.cli.main", "stop"], capture_output=True, timeout=60)
        sh("ip", "link", "del", "lumveth0", check=False)
        sh("ip", "netns", "del", NS, check=False)


def test_nodes_on_separate_network_hosts(two_hosts):
    cli = [sys.executable, "-m", "luminary.cli.main"]
    port = "6391"
    head = sh(*cli, "start", "--head", "--port", port, "--node-ip-address", HEAD_IP, "--num-cpus", "1")
    assert HEAD_IP in head.stdout
    joined = sh("ip", "netns", "exec", NS, *cli, "start", "--address", f"{HEAD_IP}:{port}",
                "--node-ip-address", NODE_IP, "--num-cpus", "1", "--resources", '{"far": 1}')
    assert "joined" in joined.stdout
    code = f"""
import numpy as np, luminary as ray
ray.init(address="{HEAD_IP}:{port}")
assert len([n for n in ray.nodes() if n["Alive"]]) == 2
@ray.remote(resources={{"far": 1}})
def remote_host(a):
    import socket
    return ray.get_runtime_context().get_node_id(), int(a.sum()), np.full(30 << 20, 3, dtype=np.uint8)
node, total, back = ray.get(remote_host.remote(np.ones(25 << 20, dtype=np.uint8)))
print("far node", node, total, int(back.sum()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{25 << 20} {3 * (30 << 20)}" in out.stdout
    status = sh(*cli, "status", "--address", f"{HEAD_IP}:{port}")
    assert NODE_IP in status.stdout and "2 alive" in status.stdout
