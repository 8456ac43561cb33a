"""The driver's printer of worker output: prefix, deduplication (``logdedup``), progress bars.

``handle`` and the expiry timer run on the driver's I/O thread; ``flush`` runs on the main thread
when the driver shuts down.  A lock keeps the deduplication state consistent between them.
"""
from __future__ import annotations

import sys
import threading
import time

from .. import logdedup, progress


class DriverLogOutput:
    def __init__(self, loop, local_ip, settings: logdedup.Settings):
        self.loop = loop
        self.local_ip = local_ip
        self.settings = settings
        self.lock = threading.Lock()
        self.dedup = {}
        if settings.enabled:
            for err in (False, True):
                self.dedup[err] = logdedup.LogDeduplicator(settings.window_s, settings.allow_re, settings.skip_re)
        self.timer = None

    def handle(self, p):
        """A ``log`` batch from a worker (I/O thread)."""
        err = bool(p.get("err"))
        lines = p["lines"]
        if any(progress.MARK in line for line in lines):    # tqdm_ray bars from tasks
            bars, lines = progress.split_bar_lines(lines)
            for st in bars:
                progress.manager().update(st)
            if not lines:
                return
        batch = {k: v for k, v in p.items() if k != "err"}
        batch["lines"] = lines
        dd = self.dedup.get(err)
        with self.lock:
            groups = dd.add(batch, time.monotonic()) if dd is not None else [({k: v for k, v in batch.items()
                                                                            if k != "lines"}, lines)]
        self._write(groups, err)
        if dd is not None:
            self._arm()

    def _arm(self):
        if self.timer is not None:
            return
        with self.lock:
            due = [t for t in (d.next_expiry() for d in self.dedup.values()) if t is not None]
        if due:
            self.timer = self.loop.call_later(max(0.0, min(due) - time.monotonic()) + 0.01, self._expire)

    def _expire(self):
        self.timer = None
        now = time.monotonic()
        for err, dd in self.dedup.items():
            with self.lock:
                groups = dd.expire(now)
            self._write(groups, err)
        self._arm()

    def flush(self):
        """Print what deduplication still holds (the driver is shutting down)."""
        for err, dd in self.dedup.items():
            with self.lock:
                groups = dd.flush()
            self._write(groups, err)
        timer, self.timer = self.timer, None
        if timer is not None:
            try:
                self.loop.call_soon_threadsafe(timer.cancel)
            except RuntimeError:
                pass

    def _write(self, groups, err):
        if not groups:
            return
        out = sys.stderr if err else sys.stdout
        s = self.settings
        try:
            color = s.color if s.color is not None else out.isatty()
        except Exception:
            color = False
        text = "".join(logdedup.format_line(src, line, self.local_ip, s.prefix, color)
                       for src, lines in groups for line in lines)
        try:
            if progress._manager is not None and progress._manager.bars:
                progress._manager.write_above(text, out)
            else:
                out.write(text)
            out.flush()
        except Exception:
            pass
