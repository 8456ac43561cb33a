"""The head node process keeps its GCS running.

    head node process ── fork ──▶ GCS (first start)
           │  pidfd readable: the GCS exited (SIGKILL, crash)
           ├─ persistent storage ──▶ start ``python -m luminary._private.gcs`` on the same storage and
           │                         address (backoff 0.1 s .. 2 s, up to MAX_TRIES in a row)
           └─ memory storage ──────▶ the cluster's state is gone: the head node shuts down
A fresh interpreter, not a fork of the running node manager: the GCS must not inherit the node
manager's sockets, event loop or arena.  The config (with the secret) goes on stdin; one line on
stdout says where it listens.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import struct
import subprocess
import sys

import msgpack

from ..gcs.storage import parse_spec

logger = logging.getLogger(__name__)
MAX_TRIES = 8


class GcsSupervisor:
    def __init__(self, pid, *, secret, address, storage, lock_token, session_dir, on_give_up):
        self.pid = pid
        self.secret = secret
        self.address = address
        self.storage = storage
        self.lock_token = lock_token
        self.session_dir = session_dir
        self.on_give_up = on_give_up
        self.persistent = parse_spec(storage)[0] != "memory"
        self.stopping = False
        self.restarts = 0
        self._pidfd = None
        self._proc = None

    def watch(self):
        loop = asyncio.get_event_loop()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError:      # already gone
            loop.call_soon(self._exited)
            return
        loop.add_reader(self._pidfd, self._exited)

    def _exited(self):
        loop = asyncio.get_event_loop()
        if self._pidfd is not None:
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        status = _reap(self.pid, self._proc)
        if self.stopping:
            return
        if not self.persistent:
            logger.error("the GCS (pid %d) exited (%s); this cluster keeps its state in memory, so it ends",
                         self.pid, status)
            self.on_give_up("the GCS died and this cluster kept its state in memory (start the head with "
                            "`luminary start --head` to have it restarted)")
            return
        logger.error("the GCS (pid %d) exited (%s); restarting it on %s", self.pid, status, self.storage)
        asyncio.ensure_future(self._restart())

    async def _restart(self):
        delay = 0.1
        last = ""
        for _ in range(MAX_TRIES):
            if self.stopping:
                return
            try:
                proc, line = await self._spawn()
            except Exception as e:   # noqa: BLE001
                proc, line = None, f"error:{type(e).__name__}: {e}"
            if proc is not None and not line.startswith("error:"):
                self._proc = proc
                self.pid = proc.pid
                self.restarts += 1
                logger.warning("GCS restarted (pid %d) at %s", self.pid, line)
                self.watch()
                return
            last = line[6:] if line.startswith("error:") else line
            logger.error("restarting the GCS failed: %s", last)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        self.on_give_up(f"the GCS could not be restarted: {last}")

    async def _spawn(self):
        env = dict(os.environ)
        pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        err = os.open(os.path.join(self.session_dir, "logs", "gcs.err"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            proc = subprocess.Popen([sys.executable, "-m", "luminary._private.gcs"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, close_fds=True, env=env)
        finally:
            os.close(err)
        cfg = {"secret": self.secret, "address": self.address, "storage": self.storage,
               "lock_token": self.lock_token, "log_path": os.path.join(self.session_dir, "logs", "node.log"),
               "session_dir": self.session_dir}
        blob = msgpack.packb(cfg, use_bin_type=True)
        proc.stdin.write(struct.pack("<I", len(blob)) + blob)
        proc.stdin.close()
        line = await _read_line(proc.stdout, 30.0)
        proc.stdout.close()
        if not line:
            proc.kill()
            proc.wait()
            return proc, "error:the new GCS exited during start-up; see logs/gcs.err"
        if line.startswith("error:"):
            proc.wait()
        return proc, line

    def stop(self):
        """The node shuts down: end the GCS, restart nothing."""
        self.stopping = True
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass


def _reap(pid, proc):
    try:
        if proc is not None and proc.pid == pid:
            return f"code {proc.wait(timeout=1)}"
        _, status = os.waitpid(pid, 0)
        return f"status {status}"
    except (ChildProcessError, subprocess.TimeoutExpired, OSError) as e:
        return str(e)


async def _read_line(f, timeout):
    loop = asyncio.get_event_loop()
    fd = f.fileno()
    fut = loop.create_future()
    buf = bytearray()

    def readable():
        chunk = os.read(fd, 4096)
        buf.extend(chunk)
        if not chunk or b"\n" in buf:
            if not fut.done():
                fut.set_result(None)
    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)
    return bytes(buf).split(b"\n", 1)[0].decode(errors="replace").strip()
