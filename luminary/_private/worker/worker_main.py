"""Entry point of a worker process, called in a child freshly forked by the zygote."""
from __future__ import annotations

import io
import gc
import os
import sys
import threading

from .. import ids, logfiles, procutil
from . import state
from .core import WORKER, CoreWorker
from .executor import Executor


class _LogStream(io.TextIOBase):
    """sys.stdout/sys.stderr of a worker: text goes to the log file and, line by line, to the
    drivers (through the node manager), batched per I/O-thread wake-up; each batch names the
    task or actor that printed it, the pid and the node's ip (the driver writes Ray's prefix)."""

    def __init__(self, core, raw, err, rotator=None):
        self.core = core
        self.raw = raw
        self.err = err
        self.rotator = rotator
        self.partial = ""
        self.pending = []       # [name, [lines]]: a new batch whenever the name changes
        self.lock = threading.Lock()
        self.meta = {"pid": os.getpid(), "ip": core.cfg.get("node_ip") or "127.0.0.1", "err": err}

    def writable(self):
        return True

    def write(self, s):
        self.raw.write(s)
        if self.rotator is not None:
            self.rotator.wrote(len(s))
        text = self.partial + s
        if "\n" not in text:
            self.partial = text
            return len(s)
        *lines, self.partial = text.split("\n")
        name = self._name()
        with self.lock:         # the I/O thread takes the batches away under it
            pending = self.pending
            first = not pending
            if first or pending[-1][0] != name:
                pending.append([name, lines])
            else:
                pending[-1][1].extend(lines)
        if first:
            self.core.io.post(self._flush_lines)
        return len(s)

    def _name(self):
        """Ray's prefix: the task's name; an actor's class name, or its repr when the class
        defines ``__repr__`` (so output of several actors of one class can be told apart)."""
        core = self.core
        actor = core.current_actor
        if actor is not None:
            inst = actor.instance
            if inst is not None and type(inst).__repr__ is not object.__repr__:
                try:
                    return actor.repr()
                except Exception:
                    pass
            return actor.meta.get("class_name", "Actor")
        name = core.current_task_name or "worker"
        return name[:-9] if name.endswith(".__init__") else name

    def _flush_lines(self):
        with self.lock:
            batches, self.pending = self.pending, []
        if self.core.nm.closed:
            return
        for name, lines in batches:
            self.core.nm.notify("log", dict(self.meta, lines=lines, name=name))

    def flush(self):
        self.raw.flush()

    def fileno(self):
        return self.raw.fileno()

    def isatty(self):
        return False


def main(cfg):
    ids.reseed()
    procutil.die_with_parent()
    procutil.set_name("luminary::worker (idle)")
    wid = cfg["worker_id"]
    log_path = os.path.join(cfg["session_dir"], "logs", f"worker-{wid.hex()[:12]}-{os.getpid()}.log")
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if cfg.get("renv_ctx"):
        from ..runtime_env import apply, packaging
        apply.prepare_worker(cfg)       # a pip env exec's its own python here
        packaging.set_default(cfg["renv_ctx"]["renv"])   # tasks it submits inherit its env
    raw_out = open(1, "w", buffering=1, closefd=False)
    raw_err = open(2, "w", buffering=1, closefd=False)
    max_bytes, backup_count = cfg.get("log_rotation") or (0, 0)
    rotator = logfiles.Rotator(log_path, max_bytes, backup_count, (raw_out, raw_err))
    rotator = rotator if rotator.active else None
    core = CoreWorker(WORKER, cfg)
    state.core = core
    executor = Executor(core)
    core.start("register_worker")
    sys.stdout = _LogStream(core, raw_out, False, rotator)
    sys.stderr = _LogStream(core, raw_err, True, rotator)
    gc.freeze()      # the worker's own start-up objects (and the zygote's) are not user garbage
    executor.run_forever()


def run_and_exit(cfg):
    """Run a worker to its end in this (forked or exec'd) process and exit with its status,
    never returning into the caller's code (the zygote's loop, the env launcher)."""
    code = 1
    try:
        main(cfg)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        procutil.flush_and_exit(code)
