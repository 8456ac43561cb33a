"""Starting node processes: used by init(), the ``luminary start`` command and cluster_utils.

A node process reads its config (with the cluster secret) from stdin and prints one JSON line
when it listens.  ``watch_stdin`` keeps the pipe open so the node ends when its starter dies.
"""
from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import time

import msgpack

from .. import procutil
from ..config import DEFAULT_STORE_FRACTION


def total_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30


def new_session_dir(parent=None, prefix="session"):
    procutil.cleanup_stale_sessions()
    root = parent or procutil.session_root()
    os.makedirs(root, mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    path = os.path.join(root, f"{prefix}_{stamp}_{os.getpid()}_{os.urandom(3).hex()}")
    os.makedirs(os.path.join(path, "logs"), mode=0o700)
    if prefix != "session" and prefix != "node":
        # a driver's or a test cluster's directory: removed by the next start if its owner was killed
        with open(os.path.join(path, "owner.pid"), "w") as f:
            f.write(str(os.getpid()))
    return path


def start_node(*, secret, session_dir, head, gcs_address=None, node_ip="127.0.0.1", gcs_port=None,
               tcp_port=None, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None,
               memory=None, watch_stdin=True, exit_with_driver=False, gcs_storage=None, daemon=False,
               timeout=30.0):
    """Start one node process; returns (Popen, info dict from its ready line)."""
    if object_store_memory is None:
        object_store_memory = int(total_memory() * DEFAULT_STORE_FRACTION)
    object_store_memory = int(object_store_memory) // 4096 * 4096
    if object_store_memory < 1 << 20:
        raise ValueError("object_store_memory must be at least 1 MiB")
    cfg = {"secret": secret, "session_dir": session_dir, "head": head, "node_ip": node_ip,
           "num_cpus": os.cpu_count() if num_cpus is None else num_cpus, "num_gpus": num_gpus or 0,
           "resources": resources or {}, "object_store_memory": object_store_memory,
           "memory": memory or int(total_memory() * 0.7), "exit_with_driver": exit_with_driver,
           "watch_stdin": watch_stdin, "remove_session_dir": True}
    if gcs_address:
        cfg["gcs_address"] = gcs_address
    if gcs_port is not None:
        cfg["gcs_port"] = gcs_port
    if tcp_port is not None:
        cfg["tcp_port"] = tcp_port
    if gcs_storage:
        cfg["gcs_storage"] = gcs_storage
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    err = open(os.path.join(session_dir, "logs", "node.err"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "luminary._private.node"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=err, start_new_session=True, close_fds=True, env=env)
    err.close()
    blob = msgpack.packb(cfg, use_bin_type=True)
    proc.stdin.write(struct.pack("<I", len(blob)) + blob)
    proc.stdin.flush()
    info = read_ready_line(proc, session_dir, timeout)
    if daemon:
        proc.stdin.close()
        proc.stdout.close()
    return proc, info


def read_ready_line(proc, session_dir, timeout=30.0):
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"The node did not start within {timeout}s; see {session_dir}/logs")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                proc.wait()
                log = ""
                try:
                    with open(os.path.join(session_dir, "logs", "node.err")) as f:
                        log = f.read()[-2000:]
                except OSError:
                    pass
                raise RuntimeError(f"The node exited during start-up (code {proc.returncode}).\n{log}")
            buf += chunk
    info = json.loads(buf.decode())
    if "error" in info:
        proc.wait(timeout=10)
        raise RuntimeError(info["error"])
    return info


def stop_node(proc, timeout=10.0):
    """End a node started with watch_stdin: closing its stdin makes it shut down its processes."""
    try:
        proc.stdin.close()
    except Exception:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for f in (proc.stdout,):
        try:
            f.close()
        except Exception:
            pass


# --- cluster files: how drivers and joining nodes find a cluster and its secret ----------------

def clusters_dir():
    path = os.path.join(procutil.session_root(), "clusters")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def cluster_file(gcs_address):
    host, port = gcs_address[4:].rsplit(":", 1) if gcs_address.startswith("tcp:") else gcs_address.rsplit(":", 1)
    return os.path.join(clusters_dir(), f"{host}_{port}.json")


def write_cluster_file(gcs_address, secret, extra=None):
    path = cluster_file(gcs_address)
    secret_path = path[:-5] + ".secret"
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    data = dict(extra or {}, gcs_address=gcs_address, secret_file=secret_path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    return path


def remove_cluster_file(gcs_address):
    path = cluster_file(gcs_address)
    for p in (path, path[:-5] + ".secret"):
        try:
            os.unlink(p)
        except OSError:
            pass


def read_secret(gcs_address, secret_file=None):
    candidates = [secret_file, os.environ.get("LUMINARY_SECRET_FILE"), cluster_file(gcs_address)[:-5] + ".secret"]
    for path in candidates:
        if path and os.path.exists(path):
            with open(path, "rb") as f:
                return f.read()
    raise ConnectionError(
        f"No secret for the cluster at {gcs_address[4:] if gcs_address.startswith('tcp:') else gcs_address}: "
        "every Luminary connection proves the cluster's secret. On the head's machine it is in "
        f"{clusters_dir()}; elsewhere copy that .secret file (mode 0600) and point LUMINARY_SECRET_FILE "
        "(or --secret-file) at it.")


def normalize_address(address):
    if address.startswith("tcp:"):
        return address
    if address.startswith("luminary://") or address.startswith("ray://"):
        address = address.split("://", 1)[1]
    if ":" not in address:
        raise ValueError(f"Bad cluster address {address!r}: expected HOST:PORT (the head's GCS port).")
    return "tcp:" + address
