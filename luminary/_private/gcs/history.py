"""The event log: a cluster's history, kept after the cluster ends (beyond Ray).

The GCS appends one msgpack record ``[kind, ts, payload]`` per batch of task events and metric
deltas, per process start and end, per actor or node state change and per resource sample
(every second) to ``<root>/history/<session>/events.msgpack``.  It lives under the user's root,
not in the session directory that is removed when the cluster ends, so ``luminary report``
can read it for a running cluster, a finished one, or one whose driver was SIGKILLed (each
record is written straight to the file, not buffered).  The file is rotated at ``MAX_BYTES``
(one older file, ``events.1.msgpack``, is kept) and only the ``KEEP`` most recent sessions'
histories are kept.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import msgpack

MAX_BYTES = int(os.environ.get("LUMINARY_HISTORY_MAX_BYTES", 64 << 20))
KEEP = 10
FILE = "events.msgpack"


def history_root():
    from .. import procutil
    return procutil.state_dir("history")


class History:
    def __init__(self, path):
        self.dir = path
        self.path = os.path.join(path, FILE)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        self.size = os.fstat(self.fd).st_size
        self.packer = msgpack.Packer(use_bin_type=True)

    @classmethod
    def open(cls, session_dir):
        """The history of the cluster whose session directory is ``session_dir`` (None if the
        root cannot be used: history is best effort and never stops a cluster)."""
        try:
            root = history_root()
            name = os.path.basename(os.path.normpath(session_dir))
            path = os.path.join(root, name)
            os.makedirs(path, mode=0o700, exist_ok=True)
            with open(os.path.join(path, "session.json"), "w") as f:
                json.dump({"session_dir": session_dir, "started": time.time(), "pid": os.getpid()}, f)
            _prune(root, keep=KEEP, current=name)
            return cls(path)
        except (OSError, ValueError):
            return None

    def write(self, kind, ts, payload):
        try:
            data = self.packer.pack([kind, ts, payload])
            if self.size + len(data) > MAX_BYTES:
                self._rotate()
            os.write(self.fd, data)
            self.size += len(data)
        except (OSError, TypeError, ValueError):
            pass

    def _rotate(self):
        os.close(self.fd)
        os.replace(self.path, os.path.join(self.dir, "events.1.msgpack"))
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        self.size = 0


def _prune(root, keep, current):
    dirs = []
    for name in os.listdir(root):
        p = os.path.join(root, name)
        if name != current and os.path.isdir(p) and not os.path.islink(p):
            dirs.append((os.path.getmtime(p), p))
    dirs.sort()
    for _, p in dirs[:max(0, len(dirs) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)


def find(session=None):
    """The history directory of ``session`` (a history directory, a session directory or its
    name), or of the most recent session when None."""
    root = history_root()
    if session:
        session = os.path.normpath(session)
        if os.path.exists(os.path.join(session, FILE)):
            return session
        p = os.path.join(root, os.path.basename(session))
        if os.path.exists(os.path.join(p, FILE)):
            return p
        raise FileNotFoundError(f"No event log for {session!r} (looked in {session} and {p}).")
    dirs = [os.path.join(root, n) for n in os.listdir(root)]
    dirs = [d for d in dirs if os.path.exists(os.path.join(d, FILE))]
    if not dirs:
        raise FileNotFoundError(f"No cluster history under {root}: start a cluster first.")
    return max(dirs, key=lambda d: os.path.getmtime(os.path.join(d, FILE)))


def read(path):
    """Every record of a history directory, oldest first: [(kind, ts, payload)]."""
    out = []
    for name in ("events.1.msgpack", FILE):
        p = os.path.join(path, name)
        if not os.path.exists(p):
            continue
        with open(p, "rb") as f:
            unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False)
            try:
                for rec in unpacker:
                    out.append(tuple(rec))
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                pass   # a record cut short by a kill: the rest is still good
    return out
