"""Per-worker log files: rotation with a size cap (Ray's variables), and reading across rotations.

A worker's stdout and stderr (file descriptors 1 and 2, so output of native code too) go to
``session/logs/worker-<id>-<pid>.log``.  ``Rotator`` caps it as Python's RotatingFileHandler and
Ray do: past ``max_bytes`` the file is renamed ``.1`` (``.1`` to ``.2``, ... the oldest beyond
``backup_count`` removed) and a new file takes descriptors 1 and 2.  The size is checked when
the worker writes through ``sys.stdout``/``sys.stderr`` (with an ``fstat`` every
``max_bytes / 8`` bytes, which counts what native code wrote directly), so a file overshoots the
cap by at most an eighth plus one write.  ``max_bytes`` or ``backup_count`` 0 turns rotation off,
as in RotatingFileHandler.

Settings: ``RAY_ROTATION_MAX_BYTES`` (512 MiB, as Ray) and ``RAY_ROTATION_BACKUP_COUNT`` (5),
read once by ``rotation_from_env`` where a node starts, and handed to its workers.
"""
from __future__ import annotations

import os
import threading
import time

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_BACKUP_COUNT = 5


def rotation_from_env(env) -> list:
    """[max_bytes, backup_count] from Ray's variables in ``env``; a bad value raises ValueError."""
    out = []
    for name, default in (("RAY_ROTATION_MAX_BYTES", DEFAULT_MAX_BYTES), ("RAY_ROTATION_BACKUP_COUNT", DEFAULT_BACKUP_COUNT)):
        v = env.get(name)
        if v in (None, ""):
            out.append(default)
            continue
        try:
            n = int(v)
        except ValueError:
            n = -1
        if n < 0:
            raise ValueError(f"${name}={v!r} is not a whole number >= 0 (0 turns log rotation off)")
        out.append(n)
    return out


def backups(path, count=None):
    """The rotated files of ``path`` that exist, newest first (``path.1``, ``path.2``, ...)."""
    out, i = [], 1
    while count is None or i <= count:
        p = f"{path}.{i}"
        if not os.path.exists(p):
            break
        out.append(p)
        i += 1
    return out


class Rotator:
    """Caps the log file behind descriptors 1 and 2 of this process (see the module docstring).
    ``wrote`` is called after each write through sys.stdout/sys.stderr, from any thread."""

    def __init__(self, path, max_bytes, backup_count, streams=()):
        self.path = path
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.streams = streams            # buffered writers on fds 1 and 2, flushed before a rotation
        self.check_every = max(1, min(max_bytes // 8, 1 << 20))
        self.unchecked = 0
        self.lock = threading.Lock()
        self.rotations = 0

    @property
    def active(self):
        return self.max_bytes > 0 and self.backup_count > 0

    def wrote(self, n):
        self.unchecked += n
        if self.unchecked >= self.check_every:
            self.unchecked = 0
            self.check()

    def check(self):
        with self.lock:
            for s in self.streams:
                try:
                    s.flush()
                except Exception:
                    pass
            try:
                if os.fstat(1).st_size < self.max_bytes:
                    return
            except OSError:
                return
            self._rotate()

    def _rotate(self):
        try:
            for i in range(self.backup_count - 1, 0, -1):
                src = f"{self.path}.{i}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError:
            return          # a full or vanished log directory must not break the worker
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self.rotations += 1


def read_tail(path, tail, f=None):
    """The last ``tail`` lines (all when ``tail`` is None or negative) of a log and its rotated
    files, oldest first; the log itself is read through ``f`` when given (then left at its end,
    for ``follow``)."""
    want = None if tail is None or tail < 0 else tail
    chunks = []
    have = 0
    for i, p in enumerate([path] + backups(path)):
        try:
            if i == 0 and f is not None:
                lines = f.readlines()
            else:
                with open(p, "r", errors="replace") as g:
                    lines = g.readlines()
        except OSError:
            continue
        chunks.append(lines)
        have += len(lines)
        if want is not None and have >= want:
            break
    lines = [ln for chunk in reversed(chunks) for ln in chunk]
    if want is None:
        return lines
    return lines[-want:] if want else []


def _newer_backups(path, ino):
    """The lines of the rotated files newer than the one with inode ``ino`` (several rotations
    may happen between two reads), oldest first; all of them when that file is already gone."""
    files = backups(path)
    for i, p in enumerate(files):
        try:
            if os.stat(p).st_ino == ino:
                files = files[:i]
                break
        except OSError:
            pass
    for p in reversed(files):
        try:
            with open(p, "r", errors="replace") as g:
                yield from g.readlines()
        except OSError:
            pass


def follow(path, f, poll_s=0.2, stop=None):
    """Yield the lines written to ``path`` after the position of its open file ``f``, across
    rotations (when the file is renamed: the rest of the old one, the rotated files newer than
    it, then the new one from its start); closes ``f`` at the end; ends when ``stop()`` is true (never when it is None)."""
    try:
        while stop is None or not stop():
            line = f.readline()
            if line:
                yield line
                continue
            try:
                rotated = os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                rotated = False
            if rotated:
                yield from f.readlines()
                ino = os.fstat(f.fileno()).st_ino
                f.close()
                yield from _newer_backups(path, ino)
                f = open(path, "r", errors="replace")
                continue
            time.sleep(poll_s)
    finally:
        f.close()
