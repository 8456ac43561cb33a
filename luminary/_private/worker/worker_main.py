"""Entry point of a worker process, called in a child freshly forked by the zygote."""
from __future__ import annotations

import io
import os
import sys

from .. import ids, procutil
from . import state
from .core import WORKER, CoreWorker
from .executor import Executor


class _LogStream(io.TextIOBase):
    """sys.stdout/sys.stderr of a worker: lines go to the log file and, prefixed with the task
    name and pid, to the drivers (through the node manager), batched per I/O-thread wake-up."""

    def __init__(self, core, raw, err):
        self.core = core
        self.raw = raw
        self.err = err
        self.partial = ""
        self.pending = []

    def writable(self):
        return True

    def write(self, s):
        self.raw.write(s)
        text = self.partial + s
        if "\n" not in text:
            self.partial = text
            return len(s)
        *lines, self.partial = text.split("\n")
        prefix = f"({self._name()} pid={os.getpid()}) "
        first = not self.pending
        self.pending.extend(prefix + line + "\n" for line in lines)
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
        lines, self.pending = self.pending, []
        if lines and not self.core.nm.closed:
            self.core.nm.notify("log", {"lines": lines, "err": self.err})

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
    core = CoreWorker(WORKER, cfg)
    state.core = core
    executor = Executor(core)
    core.start("register_worker")
    sys.stdout = _LogStream(core, raw_out, False)
    sys.stderr = _LogStream(core, raw_err, True)
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
