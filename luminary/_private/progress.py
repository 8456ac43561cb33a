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
                self._redraw(final=state if state.get("closed") else None)
            else:
                self._line(key, state)

    def _redraw(self, final=None):
        out = self.out
        if self.drawn:
            out.write(f"\x1b[{self.drawn}F\x1b[J")      # back to the first bar line, clear below
        if final is not None:
            out.write(render(final) + "\n")            # a finished bar stays, above the live ones
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
        """Worker output while bars are drawn: print it above them, then redraw them."""
        with self.lock:
            if self.drawn and self._tty() and stream is self.out:
                self.out.write(f"\x1b[{self.drawn}F\x1b[J")
                self.drawn = 0
                stream.write(text)
                self._redraw()
                return
        stream.write(text)


_manager = None


def manager():
    global _manager
    if _manager is None:
        _manager = BarManager()
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
