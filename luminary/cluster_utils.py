"""``luminary.cluster_utils.Cluster``: a multi-node cluster on one machine, for tests.

Each node is a real node-manager process (with its own object store and workers) talking to the
others over TCP on loopback; the first node is the head and runs the GCS.
"""
from __future__ import annotations

import os
import shutil
import signal
import time

from ._private.node import launch
from ._private.worker import state


class Node:
    def __init__(self, proc, info, session_dir, head):
        self.process = proc
        self.info = info
        self.session_dir = session_dir
        self.head = head
        self.node_id = info["node_id"]
        self.unique_id = info["node_id"]
        self.node_manager_address = "127.0.0.1"
        self.address = info.get("tcp_address")

    def __repr__(self):
        return f"Node({self.node_id[:8]}{', head' if self.head else ''})"


class Cluster:
    def __init__(self, initialize_head=False, connect=False, head_node_args=None, shutdown_at_exit=True):
        self.secret = os.urandom(32)
        self.root = launch.new_session_dir(prefix="cluster")
        self.head_node = None
        self.worker_nodes = []
        self.gcs_address = None
        self.connected = False
        self._n = 0
        if initialize_head:
            self.add_node(**(head_node_args or {}))
            if connect:
                self.connect()
        if shutdown_at_exit:
            import atexit
            atexit.register(self.shutdown)

    @property
    def address(self):
        return self.gcs_address[4:] if self.gcs_address else None

    def add_node(self, wait=True, num_cpus=1, num_gpus=0, resources=None, object_store_memory=None, **kwargs):
        from ._private.worker.options import check_node_resources
        check_node_resources(num_cpus, num_gpus, resources, kwargs.get("memory"), object_store_memory)
        head = self.head_node is None
        self._n += 1
        session_dir = os.path.join(self.root, f"node{self._n}")
        os.mkdir(session_dir, 0o700)
        os.mkdir(os.path.join(session_dir, "logs"), 0o700)
        proc, info = launch.start_node(
            secret=self.secret, session_dir=session_dir, head=head, gcs_address=self.gcs_address,
            node_ip="127.0.0.1", gcs_port=0 if head else None, tcp_port=0, num_cpus=num_cpus,
            num_gpus=num_gpus, resources=resources, object_store_memory=object_store_memory or (512 << 20),
            memory=kwargs.get("memory"), watch_stdin=True, exit_with_driver=False)
        node = Node(proc, info, session_dir, head)
        if head:
            self.head_node = node
            self.gcs_address = info["gcs_address"]
            launch.write_cluster_file(self.gcs_address, self.secret, {"kind": "cluster_utils"})
        else:
            self.worker_nodes.append(node)
        if wait:
            self.wait_for_nodes()
        return node

    def remove_node(self, node, allow_graceful=True):
        """End a node: gracefully, or with SIGKILL (every process of the node dies with it)."""
        if allow_graceful:
            launch.stop_node(node.process)
        else:
            try:
                os.killpg(node.process.pid, signal.SIGKILL)
            except OSError:
                node.process.kill()
            node.process.wait()
            for f in (node.process.stdin, node.process.stdout):
                try:
                    f.close()
                except Exception:
                    pass
        shutil.rmtree(node.session_dir, ignore_errors=True)
        if node is self.head_node:
            self.head_node = None
        elif node in self.worker_nodes:
            self.worker_nodes.remove(node)

    def list_all_nodes(self):
        return ([self.head_node] if self.head_node else []) + list(self.worker_nodes)

    def wait_for_nodes(self, timeout=30):
        from ._private.worker.connect import query_nodes
        want = {n.node_id for n in self.list_all_nodes()}
        deadline = time.monotonic() + timeout
        while True:
            alive = {n["NodeID"] for n in query_nodes(self.gcs_address, self.secret) if n["Alive"]}
            if want <= alive:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes {sorted(want - alive)} did not register within {timeout}s")
            time.sleep(0.05)

    def connect(self, namespace=None):
        import luminary
        luminary.init(address=self.address, namespace=namespace)
        self.connected = True

    def shutdown(self):
        if self.connected and state.core is not None:
            import luminary
            luminary.shutdown()
        self.connected = False
        for node in list(self.worker_nodes):
            self.remove_node(node)
        if self.head_node is not None:
            self.remove_node(self.head_node)
        if self.gcs_address:
            launch.remove_cluster_file(self.gcs_address)
        shutil.rmtree(self.root, ignore_errors=True)
