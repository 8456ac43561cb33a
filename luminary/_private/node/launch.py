"""Starting node processes: used by init(), the ``luminary start`` command and cluster_utils.

A node process reads its config (with the cluster secret) from stdin and prints one JSON line
when it listens.  ``watch_stdin`` keeps the pipe open so the node ends when its starter dies.
"""
from __future__ import annotations

import json
import os
import select
import stat
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
    """A fresh 0700 session directory under this user's checked root (or under ``parent``)."""
    if parent is None:
        procutil.cleanup_stale_sessions()
        root = procutil.session_root()
    else:
        root = parent
        os.makedirs(root, mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    path = os.path.join(root, f"{prefix}_{stamp}_{os.getpid()}_{os.urandom(3).hex()}")
    os.mkdir(path, 0o700)          # fails if anything (a planted link included) already has the name
    procutil.check_private_dir(path)
    os.mkdir(os.path.join(path, "logs"), 0o700)
    if prefix != "session" and prefix != "node":
        # a driver's or a test cluster's directory: removed by the next start if its owner was killed
        procutil.write_pid_marker(os.path.join(path, "owner.pid"))
    return path


def start_node(*, secret, session_dir, head, gcs_address=None, node_ip="127.0.0.1", gcs_port=None,
               tcp_port=None, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None,
               memory=None, watch_stdin=True, exit_with_driver=False, gcs_storage=None, daemon=False,
               timeout=30.0, system=None, job_api=None, job_port_retries=0):
    """Start one node process; returns (Popen, info dict from its ready line)."""
    from ..worker.options import check_node_resources
    check_node_resources(num_cpus, num_gpus, resources, memory, object_store_memory)
    from ..logfiles import rotation_from_env
    log_rotation = rotation_from_env(os.environ)      # workers' log files (bad values raise here)
    if object_store_memory is None:
        object_store_memory = int(total_memory() * DEFAULT_STORE_FRACTION)
    object_store_memory = int(object_store_memory) // 4096 * 4096
    if object_store_memory < 1 << 20:
        raise ValueError("object_store_memory must be at least 1 MiB")
    if num_gpus is None:   # as Ray: the GPUs CUDA_VISIBLE_DEVICES or nvidia-smi shows
        from ..accelerators import accelerator_resource, detect_gpus
        num_gpus, model = detect_gpus()
        if num_gpus and model:
            resources = dict(resources or {})
            resources.setdefault(accelerator_resource(model), 1.0)
    cfg = {"secret": secret, "session_dir": session_dir, "head": head, "node_ip": node_ip,
           "num_cpus": os.cpu_count() if num_cpus is None else num_cpus, "num_gpus": num_gpus or 0,
           "resources": resources or {}, "object_store_memory": object_store_memory,
           "memory": memory or int(total_memory() * 0.7), "exit_with_driver": exit_with_driver,
           "watch_stdin": watch_stdin, "remove_session_dir": True, "system": dict(system or {}),
           "log_rotation": log_rotation}
    if gcs_address:
        cfg["gcs_address"] = gcs_address
    if gcs_port is not None:
        cfg["gcs_port"] = gcs_port
    if tcp_port is not None:
        cfg["tcp_port"] = tcp_port
    if gcs_storage:
        cfg["gcs_storage"] = gcs_storage
    if job_api is not None:      # (host, port) of the head's job API
        cfg["job_host"], cfg["job_port"] = job_api
        cfg["job_port_retries"] = int(job_port_retries)
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    err = os.fdopen(os.open(os.path.join(session_dir, "logs", "node.err"),
                            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), "wb")
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
    return procutil.state_dir("clusters")


def cluster_file(gcs_address):
    host, port = gcs_address[4:].rsplit(":", 1) if gcs_address.startswith("tcp:") else gcs_address.rsplit(":", 1)
    if not port.isdigit() or not host or not all(c.isalnum() or c in ".-_:[]" for c in host) or host.startswith("."):
        raise ValueError(f"Bad cluster address {gcs_address!r}: expected HOST:PORT.")
    return os.path.join(clusters_dir(), f"{host}_{port}.json")


def write_cluster_file(gcs_address, secret, extra=None):
    """The cluster's secret (created exclusively, 0600) and its address file, in the checked root."""
    path = cluster_file(gcs_address)
    secret_path = path[:-5] + ".secret"
    # this head just bound the port, so a file left for it belongs to a cluster that is gone
    for p in (secret_path, path):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    procutil.write_private_file(secret_path, secret)
    data = dict(extra or {}, gcs_address=gcs_address, secret_file=secret_path)
    procutil.write_private_file(path, json.dumps(data), replace=True)
    return path


def remove_cluster_file(gcs_address):
    try:
        path = cluster_file(gcs_address)
    except ValueError:
        return
    for p in (path, path[:-5] + ".secret"):
        try:
            os.unlink(p)
        except OSError:
            pass


def read_cluster_file(path):
    """A cluster's address file, checked (ours, 0600, not a link) before it is trusted."""
    data = json.loads(procutil.read_private_file(path, "cluster address file"))
    if not isinstance(data, dict) or not isinstance(data.get("gcs_address"), str):
        raise ValueError(f"{path} is not a Luminary cluster file; remove it.")
    return data


def read_named_secret(path, source):
    """A secret file the user named (--secret-file, $LUMINARY_SECRET_FILE): it must exist, be a
    regular file owned by you (or root), and not be writable by other users."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FileNotFoundError(f"The secret file {path} (from {source}) does not exist. Copy the head node's "
                                ".secret file there (mode 0600) or correct the path.") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise procutil.UnsafePathError(f"The secret file {path} (from {source}) is not a regular file.")
        if st.st_uid not in (os.getuid(), 0):
            raise procutil.UnsafePathError(f"The secret file {path} (from {source}) is owned by uid {st.st_uid}, "
                                           "not by you: another user could have chosen its content.")
        if st.st_mode & 0o022:
            raise procutil.UnsafePathError(f"The secret file {path} (from {source}) is writable by other users "
                                           f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod 600 {path}.")
        secret = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    if not secret:
        raise ValueError(f"The secret file {path} (from {source}) is empty.")
    return secret


def read_secret(gcs_address, secret_file=None):
    if secret_file:
        return read_named_secret(secret_file, "--secret-file")
    if os.environ.get("LUMINARY_SECRET_FILE"):
        return read_named_secret(os.environ["LUMINARY_SECRET_FILE"], "$LUMINARY_SECRET_FILE")
    path = cluster_file(gcs_address)[:-5] + ".secret"
    try:
        return procutil.read_private_file(path, "cluster secret")
    except FileNotFoundError:
        pass
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
