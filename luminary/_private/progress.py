"""Progress bars drawn at the driver: for tqdm_ray bars living in tasks and actors, and for
``luminary.util.progress(refs)``.

A bar in a worker sends its state as one marked line of its output (``\\x1eLUMBAR {json}``); the
driver's log handler takes such lines out of the stream (so they never garble worker output) and
hands them to the one ``BarManager`` of the process, which redraws all bars in place on a
terminal, or prints a line now and then (and when a bar finishes) when output is not a terminal.
"""
from __future__ import annotations

import json
import sys
import threading
import time

MARK = "\x1eLUMBAR "


def encode(state: dict) -> str:
    return MARK + json.dumps(state, separators=(",", ":"))


def decode(line: str):
    i = line.find(MARK)
    if i < 0:
        return None
    try:
        return json.loads(line[i + len(MARK):])
    except ValueError:
        return None


def render(state, width=30):
    total, n = state.get("total"), state.get("n", 0)
    desc = state.get("desc") or "progress"
    who = f" ({state['who']})" if state.get("who") else ""
    if total:
        frac = min(1.0, n / total)
        filled = int(frac * width)
        bar = "#" * filled + "-" * (width - filled)
        return f"{desc}{who}: {frac * 100:3.0f}%|{bar}| {n}/{total}"
    return f"{desc}{who}: {n} it"


class BarManager:
    """The driver's bars, keyed by (process, bar id)."""

    def __init__(self, out=None, min_interval_s=0.2):
        self.out = out or sys.stderr
        self.bars: dict = {}
        self.lock = threading.Lock()
        self.drawn = 0               # lines of bars currently on the terminal
        self.partial = False         # the program wrote part of a line below the bars
        self.finished = []           # bars closed since the last redraw
        self.terminal = []           # other streams writing to the same terminal (the driver's stdout)
        self.min_interval_s = min_interval_s
        self.last_print = {}

    def _tty(self):
        try:
            return self.out.isatty()
        except Exception:
            return False

    def update(self, state):
        key = (state.get("pid"), state.get("uuid"))
        with self.lock:
            if state.get("closed"):
                self.bars.pop(key, None)
            else:
                self.bars[key] = state
            if self._tty():
                if state.get("closed"):
                    self.finished.append(state)
                if not self.partial:      # never draw over a line the program is still writing
                    self._redraw()
            else:
                self._line(key, state)

    def _redraw(self):
        out = self.out
        if self.drawn:
            out.write(f"\x1b[{self.drawn}F\x1b[J")      # back to the first bar line, clear below
        for final in self.finished:
            out.write(render(final) + "\n")            # a finished bar stays, above the live ones
        self.finished = []
        lines = [render(s) for s in sorted(self.bars.values(), key=lambda s: (s.get("pos", 0), s.get("uuid", "")))]
        for line in lines:
            out.write(line + "\n")
        self.drawn = len(lines)
        out.flush()

    def _line(self, key, state):
        now = time.monotonic()
        if state.get("closed") or now - self.last_print.get(key, 0.0) >= self.min_interval_s:
            self.last_print[key] = now
            self.out.write(render(state) + "\n")
            self.out.flush()
        if state.get("closed"):
            self.last_print.pop(key, None)

    def write_above(self, text, stream):
        """Output while bars are drawn: print it above them, then redraw them (once the line it
        writes is complete)."""
        with self.lock:
            if self._tty() and (stream is self.out or stream in self.terminal) and \
                    (self.drawn or self.partial or self.finished):
                if self.drawn and not self.partial:
                    self.out.write(f"\x1b[{self.drawn}F\x1b[J")
                    self.out.flush()
                    self.drawn = 0
                stream.write(text)
                stream.flush()
                self.partial = bool(text) and not text.endswith("\n")
                if not self.partial:
                    self._redraw()
                return
        stream.write(text)


class _AboveBars:
    """The driver's stdout/stderr on a terminal while bars may be drawn: writes go above them."""

    def __init__(self, raw, mgr):
        self._raw = raw
        self._mgr = mgr

    def write(self, s):
        self._mgr.write_above(s, self._raw)
        return len(s)

    def __getattr__(self, name):
        return getattr(self._raw, name)


_manager = None


def manager():
    global _manager
    if _manager is None:
        _manager = BarManager()
        if _manager._tty() and sys.stderr is _manager.out:
            # the program's own prints share the terminal with the bars: route them above
            out = sys.stdout
            try:
                same = out.isatty()
            except Exception:
                same = False
            if same:
                _manager.terminal.append(out)
                sys.stdout = _AboveBars(out, _manager)
            _manager.out = sys.stderr
            sys.stderr = _AboveBars(sys.stderr, _manager)
    return _manager


def split_bar_lines(lines):
    """(bar states, the other lines) of a batch of worker output lines."""
    states, rest = [], []
    for line in lines:
        if MARK in line:
            st = decode(line)
            if st is not None:
                states.append(st)
                continue
        rest.append(line)
    return states, rest
