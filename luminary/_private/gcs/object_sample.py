"""The largest live objects, sampled into the event log so that ``luminary memory --session``
and ``luminary report`` show them after the cluster ended (beyond Ray).

    GCS (every OBJECT_SAMPLE_S, only when a node store's figures changed)
      ├─ store_top {n} ──▶ each node manager: its n largest objects (size, where, owner)
      ├─ list_objects {oids} ──▶ only the owners of the n largest: why each is referenced
      └─ ["objects", ts, {"top": [row...], "stores": {node: figures}}] ──▶ History

Asking the stores first keeps the cost bounded: no process lists every reference it holds,
only the owners of the N largest objects answer, about those objects only.  Objects kept
inline in their owner's memory (below the inline threshold) are not in any store and so not
sampled: they are small by definition.

Pure: the GCS shell (gcs/events.py) does the asking; this module decides when a sample is due
and builds the rows (Ray's ``list_objects`` field names plus ``where``, ``copies``,
``task_id`` and ``created_by``).
"""
from __future__ import annotations

from .. import ids

TOP_N = 20               # objects kept per sample
OBJECT_SAMPLE_S = 5.0    # at most one sample this often (each asks every node and a few owners)


def store_signature(node_stats):
    """What changes when objects come, go, spill or restore: per node (used, objects, spilled,
    fallback).  Equal signatures: no new sample is needed."""
    sig = []
    for n in node_stats:
        st = n.get("store") or {}
        sig.append((n["node_id"], st.get("used"), st.get("objects"), st.get("spilled_bytes"),
                    st.get("fallback_bytes")))
    return tuple(sorted(sig, key=lambda x: x[0]))


def stores_empty(node_stats):
    return all(not (n.get("store") or {}).get("objects") for n in node_stats)


class SampleClock:
    """When to sample: at most every ``every`` seconds, only when the stores' signature changed
    since the last sample, and once more (an empty sample, no asking) when the stores emptied."""

    def __init__(self, every=OBJECT_SAMPLE_S):
        self.every = every
        self.last_ts = None
        self.last_sig = None
        self.last_empty = True     # the last written sample had no objects (or none was written)
        self.running = False

    def due(self, node_stats, now):
        """None, "empty" (write an empty sample without asking) or "ask"."""
        if self.running or (self.last_ts is not None and now - self.last_ts < self.every):
            return None
        sig = store_signature(node_stats)
        if sig == self.last_sig:
            return None
        if stores_empty(node_stats):
            if self.last_empty:
                self.last_sig = sig
                return None
            return "empty"
        return "ask"

    def done(self, node_stats, now, empty):
        self.last_ts, self.last_sig, self.last_empty = now, store_signature(node_stats), empty


def merge_tops(tops, n=TOP_N):
    """{node_hex: [[oid, size, where, owner, primary], ...]} -> the ``n`` largest objects, one
    entry per object (its primary copy's node; copies counted), largest first:
    [{"oid", "size", "where", "owner", "node_id", "copies"}]."""
    by = {}
    for node, rows in tops.items():
        for oid, size, where, owner, primary in rows or ():
            o = by.get(oid)
            if o is None:
                by[oid] = {"oid": oid, "size": size, "where": where, "owner": owner, "node_id": node, "copies": 1}
                continue
            o["copies"] += 1
            if primary:
                o["node_id"], o["where"] = node, where
    return sorted(by.values(), key=lambda o: -o["size"])[:n]


def build_rows(top, answers, procs):
    """Rows in Ray's object-state shape for the merged ``top`` objects.  ``answers``: {owner id:
    the owner's list_objects answer about them}; ``procs``: the GCS's process table (owner id ->
    {pid, kind, addr, alive})."""
    mine = {}
    for wid, ans in answers.items():
        for o in ans.get("objects") or ():
            mine[(wid, o["oid"])] = o
    rows = []
    for t in top:
        owner = t["owner"]
        p = procs.get(owner) or {}
        o = mine.get((owner, t["oid"]))
        if o is not None:
            ref = o["ref"]
        elif p and not p.get("alive", True):
            ref = "OWNER_DIED"
        else:
            ref = "UNKNOWN (the owner did not answer)"
        oid = t["oid"]
        is_put = bool(ids.index_of(oid) & ids.PUT_BIT)
        rows.append({"object_id": oid.hex(), "object_size": t["size"], "reference_type": ref,
                     "type": "DRIVER" if p.get("kind") == "DRIVER" else "WORKER", "pid": p.get("pid"),
                     "node_id": t["node_id"], "worker_id": owner.hex() if isinstance(owner, bytes) else owner,
                     "is_owner": True, "owner_address": p.get("addr"), "stored_in": "object_store",
                     "where": t["where"], "copies": t["copies"],
                     "task_id": None if is_put else oid[:12].hex(),
                     "created_by": "put" if is_put else "task return",
                     "local_refs": o["local"] if o else None, "submitted_task_refs": o["submitted"] if o else None,
                     "borrowers": o["borrowers"] if o else None})
    return rows


def stores(node_stats):
    """{node_hex: {used, capacity, objects, spilled_bytes, fallback_bytes}} for the sample."""
    out = {}
    for n in node_stats:
        st = n.get("store") or {}
        out[n["node_id"]] = {k: st.get(k) for k in ("used", "capacity", "objects", "spilled_bytes", "fallback_bytes")}
    return out
