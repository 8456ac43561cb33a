"""The head's metric history: a bounded in-memory ring the dashboard's charts are drawn from.

    Observer._sample_loop (each SAMPLE_S) ── sample_of(...) ──▶ MetricsRing.add(t, {key: value})
                                                                   │  fine: one a second, last hour
                                                                   │  coarse: one per 10 s, to 24 h
    state_query {"what": "metrics_history"} ◀── MetricsRing.query(since, points) ◀┘

Pure (no sockets, no clocks: the caller passes the time).  A sample is a dict of series key ->
number; the ring gives each key a column the first time it sees it and keeps a sample as its
time and one ``array('f')`` of the columns' values (NaN where a series had no value), so a sample
of 40 series costs about 250 bytes.  Samples older than FINE_S move to the coarse tier, thinned
to one per COARSE_STEP_S; coarse samples older than MAX_AGE_S go.  Two bounds hold whatever the
cluster does: at most MAX_SERIES columns (later new series are counted in ``series_dropped``,
not kept), and at most MAX_BYTES of samples (the oldest coarse samples go first, then the
oldest fine ones), so the ring stays under about 4 MiB.

Series keys (what the page groups into one chart per family, the text before the first ``|``):
``tasks|STATE``, ``actors|STATE``, ``cpu|NODE``, ``mem|NODE``, ``store|NODE``,
``spilled|NODE`` (NODE: the node id's hex), ``metric|NAME|k=v,...`` (a user Counter's or Gauge's
value, a Histogram's count of observations).
"""
from __future__ import annotations

import collections
import math
from array import array

from .task_table import STATES as TASK_STATES

FINE_S = 3600.0             # one sample a second is kept this long ...
COARSE_STEP_S = 10.0        # ... then one per 10 s ...
MAX_AGE_S = 24 * 3600.0     # ... up to a day
MAX_SERIES = 256            # columns; a sample is then at most ~1.1 KB
MAX_BYTES = 4 << 20         # samples' memory (estimated as below); the oldest go first beyond it
SAMPLE_OVERHEAD = 56 + 80 + 24 + 8   # a (t, values) tuple, the array's header, the float, a deque slot


class MetricsRing:
    def __init__(self, fine_s=FINE_S, step_s=COARSE_STEP_S, max_age_s=MAX_AGE_S,
                 max_series=MAX_SERIES, max_bytes=MAX_BYTES):
        self.fine_s, self.step_s, self.max_age_s = fine_s, step_s, max_age_s
        self.max_series, self.max_bytes = max_series, max_bytes
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        self.fine = collections.deque()      # (t, array('f')), one a second, newest last
        self.coarse = collections.deque()    # older ones, thinned
        self.nbytes = 0
        self.series_dropped = 0

    # --- writing -------------------------------------------------------------------------------------
    def add(self, t: float, values: dict):
        """Append one sample at time ``t`` (not before the newest one: ignored then)."""
        if self.fine and t <= self.fine[-1][0]:
            return
        index = self.index
        for key in values:
            if key not in index:
                if len(self.keys) >= self.max_series:
                    self.series_dropped += 1
                    continue
                index[key] = len(self.keys)
                self.keys.append(key)
        row = array("f", [math.nan]) * len(self.keys)
        for key, v in values.items():
            i = index.get(key)
            if i is not None:
                row[i] = v
        self.fine.append((t, row))
        self.nbytes += _size(row)
        self._age(t)

    def _age(self, now):
        fine, coarse = self.fine, self.coarse
        while fine and fine[0][0] < now - self.fine_s:
            t, row = fine.popleft()
            if coarse and t < coarse[-1][0] + self.step_s:
                self.nbytes -= _size(row)            # thinned away
            else:
                coarse.append((t, row))
        while coarse and coarse[0][0] < now - self.max_age_s:
            self.nbytes -= _size(coarse.popleft()[1])
        while self.nbytes > self.max_bytes and (coarse or len(fine) > 1):
            self.nbytes -= _size((coarse or fine).popleft()[1])

    # --- reading -------------------------------------------------------------------------------------
    def __len__(self):
        return len(self.fine) + len(self.coarse)

    def samples(self, since=0.0):
        """(t, row) of every sample after ``since``, oldest first (walked from the newest end, so
        asking for the last few costs only those)."""
        out = []
        for tier in (self.fine, self.coarse):
            for s in reversed(tier):
                if s[0] <= since:
                    out.reverse()
                    return out
                out.append(s)
        out.reverse()
        return out

    def query(self, since=0.0, points=None, prefix=None):
        """The samples after ``since`` as columns: {"t": [...], "series": {key: [value|None]},
        ...}; with ``points``, at most that many, one per equal time slice (its newest sample:
        counters stay exact, a gauge's spike between two kept samples may be skipped)."""
        rows = self.samples(since)
        if points and len(rows) > points:
            t0, t1 = rows[0][0], rows[-1][0]
            width = (t1 - t0) / points or 1.0
            kept, last = [], None
            for s in rows:
                b = min(points - 1, int((s[0] - t0) / width))
                if b == last:
                    kept[-1] = s
                else:
                    kept.append(s)
                    last = b
            rows = kept
        nan, width = [math.nan], len(self.keys)
        mat = [r.tolist() + nan * (width - len(r)) for _, r in rows]   # older rows have fewer columns
        series = {}
        for i, col in enumerate(zip(*mat)):
            k = self.keys[i]
            if prefix is not None and not k.startswith(prefix):
                continue
            vals = [int(v) if v.is_integer() else _num(v) for v in col]
            if any(v is not None for v in vals):
                series[k] = vals
        return {"t": [round(t, 3) for t, _ in rows], "series": series, "step_s": self.step_s,
                "fine_s": self.fine_s, "kept": len(self), "bytes": self.nbytes,
                "series_dropped": self.series_dropped}

    def validate(self):
        """The invariants (tests call this after each step)."""
        ts = [t for t, _ in self.coarse] + [t for t, _ in self.fine]
        assert ts == sorted(ts) and len(set(ts)) == len(ts)
        assert all(b - a >= self.step_s for a, b in zip(ts, ts[1:len(self.coarse)]))
        assert self.nbytes == sum(_size(r) for _, r in list(self.coarse) + list(self.fine))
        assert self.nbytes <= self.max_bytes or len(self) == 1
        assert len(self.keys) <= self.max_series


def _size(row):
    return SAMPLE_OVERHEAD + 4 * len(row)


def _num(v):
    """A float32 read back as a short decimal (4.2, not 4.199999809265137); None for NaN (no
    value in that sample) and infinities (JSON has none)."""
    if not math.isfinite(v):
        return None
    return int(v) if v.is_integer() else float(f"{v:.7g}")


def sample_of(task_counts, actor_states, nodes, metrics):
    """One sample's {key: value} from the GCS's tables: ``task_counts`` {state: n},
    ``actor_states`` an iterable of states, ``nodes`` the rows of ``Observer.node_stats``,
    ``metrics`` the ``events.Metrics`` aggregate."""
    out = {"tasks|" + s: 0 for s in TASK_STATES}      # a chart starts at 0, not at the first task
    out.update(("tasks|" + s, n) for s, n in task_counts.items() if s != "NIL")   # NIL: not reported yet
    for s in actor_states:
        k = "actors|" + s
        out[k] = out.get(k, 0) + 1
    for n in nodes:
        nid, st = n["node_id"], n.get("store") or {}
        for key, field in (("cpu", "cpu_percent"), ("mem", "mem_used"), ("store", "used"),
                           ("spilled", "spilled_bytes")):
            if st.get(field) is not None:
                out[f"{key}|{nid}"] = st[field]
    for (name, tags), v in metrics.values.items():
        key = "metric|" + name + "|" + ",".join(f"{k}={val}" for k, val in tags)
        out[key] = v[-1] if isinstance(v, list) else v
    return out
