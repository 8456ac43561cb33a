"""Worker output on the driver: Ray's ``(name pid=P, ip=I)`` prefix and its log deduplication.

    worker ──log {lines, err, name, pid, ip}──▶ node manager ──▶ driver I/O thread
                                                                   │ LogDeduplicator.add (pure)
                                                                   ▼
                                                       stdout / stderr, one per stream

``LogDeduplicator`` is a pure state object (no clock, no I/O: callers pass ``now``), one per
stream, with Ray's rules:

- A line's *pattern* is the line with every word holding a digit or a hex number removed, so
  ``step 3 done`` and ``step 7 done`` are one pattern.  A line whose pattern is empty is never
  held back.
- The first line of a pattern is printed at once.  More lines of it from the same process
  (ip, pid) are printed too; once a second process has printed it, every further line of it is
  counted, not printed.
- A pattern expires ``window_s`` after it was first seen (or last summarised): if more than one
  line was counted, the last of them is printed with `` [repeated Nx across cluster]`` and the
  pattern is kept (count reset); if one was counted it is printed as is and the pattern
  forgotten; if none, the pattern is forgotten.  Ray checks this only when output arrives; the
  driver here also sets a timer (``next_expiry``) so a summary never waits for unrelated output.
- ``flush`` (driver shutdown) prints what is still counted.
- Lines matching ``allow_re`` are always printed; lines matching ``skip_re`` never.

Settings are Ray's environment variables, parsed once by ``settings_from_env``:
``RAY_DEDUP_LOGS`` (1; 0 turns deduplication off), ``RAY_DEDUP_LOGS_AGG_WINDOW_S`` (5),
``RAY_DEDUP_LOGS_ALLOW_REGEX``, ``RAY_DEDUP_LOGS_SKIP_REGEX``, ``RAY_DISABLE_WORKER_LOG_PREFIX``
(0) and ``RAY_COLOR_PREFIX`` (unset: colour on a terminal only; 1 always; 0 never).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_NUMBERY = re.compile(r"\d|0x[0-9a-fA-F]+")
CYAN, GREEN, RESET = "\x1b[36m", "\x1b[32m", "\x1b[0m"
FIRST_REPEAT_HINT = (" (Luminary deduplicates worker output as Ray does. Set RAY_DEDUP_LOGS=0 to turn it off, "
                     "or tune it with RAY_DEDUP_LOGS_AGG_WINDOW_S, RAY_DEDUP_LOGS_ALLOW_REGEX and "
                     "RAY_DEDUP_LOGS_SKIP_REGEX.)")


def pattern(line: str) -> str:
    """The deduplication key of a line: its words that hold no number."""
    return " ".join(w for w in line.split() if not _NUMBERY.search(w))


@dataclass
class Settings:
    enabled: bool = True
    window_s: float = 5.0
    allow_re: str | None = None
    skip_re: str | None = None
    prefix: bool = True
    color: bool | None = None        # None: only when the stream is a terminal


def _flag(env, name, default):
    v = env.get(name)
    if v is None or v == "":
        return default
    low = v.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"${name}={v!r} is not a boolean: set it to 1 or 0")


def settings_from_env(env) -> Settings:
    """Ray's log-output variables from ``env`` (a mapping), checked; a bad value raises
    ValueError naming the variable."""
    s = Settings(enabled=_flag(env, "RAY_DEDUP_LOGS", True), prefix=not _flag(env, "RAY_DISABLE_WORKER_LOG_PREFIX", False))
    w = env.get("RAY_DEDUP_LOGS_AGG_WINDOW_S")
    if w not in (None, ""):
        try:
            s.window_s = float(w)
        except ValueError:
            s.window_s = -1.0
        if not s.window_s >= 0:
            raise ValueError(f"$RAY_DEDUP_LOGS_AGG_WINDOW_S={w!r} is not a number of seconds >= 0")
    for var, attr in (("RAY_DEDUP_LOGS_ALLOW_REGEX", "allow_re"), ("RAY_DEDUP_LOGS_SKIP_REGEX", "skip_re")):
        v = env.get(var)
        if v:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"${var}={v!r} is not a valid regular expression: {e}") from None
            setattr(s, attr, v)
    c = env.get("RAY_COLOR_PREFIX")
    if c in ("0", "1"):
        s.color = c == "1"
    return s


@dataclass
class _Pattern:
    since: float                 # first seen, or last summarised
    count: int                   # lines counted (not printed) since
    line: str                    # the latest line of this pattern
    source: dict                 # the latest line's batch fields (name, pid, ip)
    sources: set = field(default_factory=set)


class LogDeduplicator:
    """One stream's deduplication state; see the module docstring for the rules.  ``add`` and
    ``expire`` return the batches to print: ``(source, lines)`` pairs, where ``source`` is the
    batch's fields other than ``lines`` and a line may end with the repeat note."""

    def __init__(self, window_s=5.0, allow_re=None, skip_re=None):
        self.window_s = window_s
        self.allow_re = re.compile(allow_re) if allow_re else None
        self.skip_re = re.compile(skip_re) if skip_re else None
        self.recent: dict[str, _Pattern] = {}    # insertion order = expiry order
        self.hinted = False

    def add(self, batch: dict, now: float) -> list:
        source = {k: v for k, v in batch.items() if k != "lines"}
        key_src = (source.get("ip"), source.get("pid"))
        out = []
        for line in batch["lines"]:
            if self.allow_re is not None and self.allow_re.search(line):
                out.append(line)
                continue
            if self.skip_re is not None and self.skip_re.search(line):
                continue
            key = pattern(line)
            if not key:
                out.append(line)
                continue
            p = self.recent.get(key)
            if p is None:
                self.recent[key] = _Pattern(now, 0, line, source, {key_src})
                out.append(line)
                continue
            p.sources.add(key_src)
            if len(p.sources) > 1:
                p.count += 1
                p.line, p.source = line, source
            else:
                out.append(line)
        result = [(source, out)] if out else []
        return result + self.expire(now)

    def expire(self, now: float) -> list:
        """The summaries of the patterns whose window has ended by ``now``."""
        out = []
        while self.recent:
            key, p = next(iter(self.recent.items()))
            if now - p.since < self.window_s:
                break
            del self.recent[key]
            if p.count > 1:
                out.append((p.source, [self._repeated(p)]))
                p.since, p.count = now, 0
                self.recent[key] = p
            elif p.count == 1:
                out.append((p.source, [p.line]))
        return out

    def next_expiry(self):
        """When the next counted pattern's window ends, or None when nothing is counted."""
        times = [p.since for p in self.recent.values() if p.count]
        return min(times) + self.window_s if times else None

    def flush(self) -> list:
        out = []
        for p in self.recent.values():
            if p.count > 1:
                out.append((p.source, [self._repeated(p)]))
            elif p.count == 1:
                out.append((p.source, [p.line]))
        self.recent.clear()
        return out

    def _repeated(self, p):
        note = f" [repeated {p.count}x across cluster]"
        if not self.hinted:
            self.hinted = True
            note += FIRST_REPEAT_HINT
        return (p.line, note)


def format_line(source: dict, line, local_ip=None, prefix=True, color=False) -> str:
    """One output line as the driver prints it: ``(name pid=P, ip=I) text`` (the ip only when the
    worker is on another machine than the driver), a repeat note after the text."""
    note = ""
    if type(line) is tuple:
        line, note = line
        if color:
            note = GREEN + note + RESET
    if not prefix or "pid" not in source:
        return line + note + "\n"
    name = source.get("name")
    ip = source.get("ip")
    head = f"({name + ' ' if name else ''}pid={source['pid']}{'' if not ip or ip == local_ip else ', ip=' + ip})"
    if color:
        head = CYAN + head + RESET
    return f"{head} {line}{note}\n"
