"""The zygote: a thread-free process that forks workers in about a millisecond.

    node manager ══ socketpair (msgpack) ══▶ zygote ──fork──▶ worker, worker, ...
        {"fork": worker_id}  ──▶           reaps children and reports {"exit": pid, "status"}
        ◀── {"forked": worker_id, "pid"}

It imports what workers need once, so a forked worker starts warm.  Each worker dies with the
zygote (PR_SET_PDEATHSIG) and the zygote dies with the node manager, so a SIGKILLed node leaves
no process behind.  When the socket closes the zygote kills every worker it made and exits.
"""
from __future__ import annotations

import gc
import os
import select
import signal
import socket

import msgpack

from .. import procutil


def run_zygote(sock: socket.socket, worker_config: dict, close_fds=()):
    procutil.die_with_parent()
    procutil.set_name("luminary::zygote")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    # One BLAS/OpenMP thread per worker unless the user chose otherwise (as Ray does): a task
    # gets one CPU, and a zygote must have no threads when it forks.
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["LUMINARY_OMP_FROM_CPUS"] = "1"   # each task's num_cpus sets it (executor)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    # warm imports: every worker inherits them
    from ..worker import worker_main  # noqa: F401
    rpipe, wpipe = os.pipe()
    os.set_blocking(wpipe, False)
    signal.set_wakeup_fd(wpipe)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    children = set()
    unpacker = msgpack.Unpacker(raw=False)
    preloaded = False
    while True:
        try:
            ready, _, _ = select.select([sock, rpipe], [], [], 0.05 if not preloaded else None)
        except InterruptedError:
            ready = []
        if not ready and not preloaded:
            preloaded = True
            _preload()
            continue
        if rpipe in ready:
            try:
                os.read(rpipe, 4096)
            except BlockingIOError:
                pass
        out = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            out.append({"exit": pid, "status": os.waitstatus_to_exitcode(status)})
        if sock in ready:
            data = sock.recv(65536)
            if not data:
                for pid in children:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                for pid in children:
                    try:
                        os.waitpid(pid, 0)
                    except OSError:
                        pass
                os._exit(0)
            unpacker.feed(data)
            for req in unpacker:
                # what the zygote holds lives as long as any worker: out of the collector's way
                # (a worker's full collections skip it, and never write to these shared pages)
                gc.freeze()
                pid = os.fork()
                if pid == 0:
                    os.close(rpipe)
                    os.close(wpipe)
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    sock.close()
                    from ..worker.worker_main import run_and_exit
                    run_and_exit(dict(worker_config, **req))
                children.add(pid)
                out.append({"forked": req["worker_id"], "pid": pid})
        if out:
            sock.sendall(b"".join(msgpack.packb(m) for m in out))


def _preload():
    """Import heavy, commonly used modules while idle so later workers start with them."""
    try:
        import numpy  # noqa: F401
    except ImportError:
        pass
