"""Entry point of a node process: ``python -m luminary._private.node``, config on stdin.

    node process ─┬─ fork ─▶ GCS            (head node only; dies with the node: PDEATHSIG; restarted
                  │                          by gcs_supervisor.py when it dies and its storage persists)
                  ├─ fork ─▶ zygote ─ fork ─▶ workers   (each dies with its parent)
                  └─ runs the node manager's event loop
The config (msgpack, length-prefixed) arrives on stdin so the cluster secret never appears on a
command line; one JSON line on stdout says where the node listens.  When started by ``init()``,
stdin stays open: its end means the driver died and the node ends its whole cluster.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import mmap
import os
import socket
import struct
import sys

import msgpack

from .. import procutil


def read_config(fd=0) -> dict:
    head = _read_exact(fd, 4)
    (n,) = struct.unpack("<I", head)
    return msgpack.unpackb(_read_exact(fd, n), raw=False)


def _read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise SystemExit("node: config stream closed early")
        buf += chunk
    return buf


def main():
    cfg = read_config()
    session_dir = cfg["session_dir"]
    os.makedirs(os.path.join(session_dir, "logs"), mode=0o700, exist_ok=True)
    log_path = os.path.join(session_dir, "logs", "node.log")
    os.close(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    logging.basicConfig(filename=log_path, level=logging.INFO,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    procutil.set_name("luminary::node")
    # PID and start time: the next start removes this directory only once this very process is gone
    procutil.write_pid_marker(os.path.join(session_dir, "node.pid"))

    capacity = int(cfg["object_store_memory"])
    arena_fd = os.memfd_create("luminary-object-store", 0)
    os.ftruncate(arena_fd, capacity)
    arena = mmap.mmap(arena_fd, capacity, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    gcs_pid = None
    lock_token = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"   # this head's GCSs, restarts included
    if cfg.get("head"):
        if cfg.get("gcs_port") is not None:
            gcs_address = f"tcp:{cfg['node_ip']}:{cfg['gcs_port']}"
        else:
            gcs_address = f"unix:{os.path.join(session_dir, 'gcs.sock')}"
        r, w = os.pipe()
        gcs_pid = os.fork()
        if gcs_pid == 0:
            os.close(r)
            try:
                procutil.die_with_parent()
                procutil.set_name("luminary::gcs")
                arena.close()
                os.close(arena_fd)
                from ..gcs.server import run_gcs
                run_gcs(cfg["secret"], gcs_address, w, cfg.get("gcs_storage"), lock_token, session_dir=session_dir)
            finally:
                os._exit(1)
        os.close(w)
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(r, 1024)
            if not chunk:
                print(json.dumps({"error": "the GCS failed to start; see logs/node.log"}), flush=True)
                sys.exit(1)
            line += chunk
        os.close(r)
        line = line.decode().strip()
        if line.startswith("error:storage:"):
            print(json.dumps({"error": f"the GCS storage cannot be used: {line[14:]}"}), flush=True)
            _reap_children(gcs_pid)
            _cleanup(cfg, session_dir)
            sys.exit(1)
        if line.startswith("error:"):
            print(json.dumps({"error": f"the GCS could not listen on {gcs_address[4:]}: {line[6:]}"}), flush=True)
            _cleanup(cfg, session_dir)
            sys.exit(1)
        cfg["gcs_address"] = line

    parent_sock, child_sock = socket.socketpair()
    zpid = os.fork()
    if zpid == 0:
        parent_sock.close()
        try:
            from .zygote import run_zygote
            worker_cfg = {"secret": cfg["secret"], "session_dir": session_dir,
                          "nm_address": f"unix:{os.path.join(session_dir, 'nm.sock')}",
                          "arena_fd": arena_fd, "capacity": capacity, "node_ip": cfg["node_ip"],
                          "gcs_address": cfg["gcs_address"], "tcp": cfg.get("tcp_port") is not None,
                          "log_rotation": cfg.get("log_rotation"), "system": cfg.get("system") or {}}
            run_zygote(child_sock, worker_cfg)
        finally:
            os._exit(1)
    child_sock.close()

    from ..rpc.loop import new_event_loop
    from .manager import NodeManager
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    supervisor = None
    if gcs_pid:
        from .gcs_supervisor import GcsSupervisor
        supervisor = GcsSupervisor(gcs_pid, secret=cfg["secret"], address=cfg["gcs_address"],
                                   storage=cfg.get("gcs_storage"), lock_token=lock_token, session_dir=session_dir,
                                   on_give_up=lambda why: nm.shutdown(why))
    nm = NodeManager(cfg, parent_sock, arena_fd, arena, gcs_supervisor=supervisor)
    if supervisor is not None:
        supervisor.watch()
    try:
        loop.run_until_complete(nm.start())
    except Exception as e:
        logging.exception("node manager failed to start")
        print(json.dumps({"error": f"node manager failed to start: {type(e).__name__}: {e}"}), flush=True)
        nm.shutdown("start failed")
        _cleanup(cfg, session_dir)
        sys.exit(1)
    print(json.dumps({"node_id": nm.node_id.hex(), "nm_address": nm.address, "tcp_address": nm.tcp_address,
                      "gcs_address": cfg["gcs_address"], "pid": os.getpid(), "arena_fd": arena_fd,
                      "session_dir": session_dir, "job_api": getattr(nm, "job_api", None)}), flush=True)
    gc.freeze()      # everything built at start-up lives as long as the node: out of the collector's way
    why = loop.run_until_complete(nm.stopped)
    logging.info("node stopped: %s", why)
    # give the loop a moment to flush replies (e.g. the shutdown request's answer)
    loop.run_until_complete(asyncio.sleep(0.01))
    _reap_children(supervisor.pid if supervisor else None, zpid)
    _cleanup(cfg, session_dir)


def _reap_children(*pids):
    import signal
    import time
    for pid in pids:
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    deadline = time.monotonic() + 2
    for pid in pids:
        if not pid:
            continue
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.005)


def _cleanup(cfg, session_dir):
    if cfg.get("remove_session_dir", True):
        import shutil
        shutil.rmtree(session_dir, ignore_errors=True)
