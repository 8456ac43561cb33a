"""The GCS's observability tables: task events, processes, metrics, history, Prometheus.

    owners, workers ── task_events (≤ every 100 ms) ──▶ TaskTable (bounded) ─┐
                                                      processes, metrics  ─┼─▶ state_query
                                                      History (event log) ◀┘    /metrics (HTTP)
                                   each second: a sample ──▶ MetricsRing (metrics_history.py, bounded)

Everything here is off the per-task path: processes batch their events, and the GCS only
appends them to its tables and to the event log.  ``state_query`` answers the state API and the
CLI; for objects and per-node figures it asks the core workers and node managers.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

from .. import stuck
from ..rpc import protocol
from . import object_sample
from .history import History
from .metrics_history import MetricsRing, sample_of
from .task_table import DEFAULT_CAP, TaskTable, apply_filters, hexid, job_hex

logger = logging.getLogger(__name__)
SAMPLE_S = 1.0           # actor/node life cycle and resource samples go to the event log this often
FANOUT_TIMEOUT_S = 5.0


class Metrics:
    """User and built-in metrics, aggregated over the cluster."""

    def __init__(self):
        self.defs = {}        # name -> [kind, description, boundaries]
        self.values = {}      # (name, tags tuple) -> float | [buckets..., sum, count]

    def apply(self, items):
        for it in items:
            if it[0] == "def":
                self.defs[it[1]] = [it[2], it[3], list(it[4])]
                continue
            name, tags, v = it
            kind = self.defs.get(name, ["counter"])[0]
            key = (name, tuple(tuple(t) for t in tags))
            if kind == "gauge":
                self.values[key] = v
            elif kind == "histogram":
                h = self.values.get(key)
                if h is None:
                    self.values[key] = list(v)
                else:
                    for i, x in enumerate(v):
                        h[i] += x
            else:
                self.values[key] = self.values.get(key, 0.0) + v


class Observer:
    def __init__(self, gcs, session_dir=None):
        self.gcs = gcs
        cap = int(os.environ.get("LUMINARY_TASK_EVENTS_MAX", DEFAULT_CAP))
        self.tasks = TaskTable(cap)
        self.procs: dict[bytes, dict] = {}
        self.metrics = Metrics()
        self.history = History.open(session_dir) if session_dir else None
        self.ring = MetricsRing()           # the dashboard's charts (metrics_history.py)
        self._last_node_stats = (0.0, [])   # (monotonic time, rows): the ring reuses the sample's
        self.metrics_url = None
        self._seen_actors = {}
        self._seen_nodes = {}
        self.object_clock = object_sample.SampleClock()
        self.handlers = {"task_events": self.task_events, "state_query": self.state_query}

    async def start(self):
        host = os.environ.get("LUMINARY_METRICS_HOST", "127.0.0.1")
        port = int(os.environ.get("LUMINARY_METRICS_PORT", "0") or 0)
        try:
            self.http = await asyncio.start_server(self._http, host, port)
            sock = self.http.sockets[0].getsockname()
            self.metrics_url = f"http://{sock[0]}:{sock[1]}/metrics"
        except OSError as e:
            logger.warning("metrics endpoint could not listen on %s:%s: %s", host, port, e)
        if self.history is not None:
            self.history.write("session", time.time(), {"metrics_url": self.metrics_url})
        asyncio.get_event_loop().create_task(self._sample_loop())

    # --- incoming batches --------------------------------------------------------------------------
    def task_events(self, conn, p):
        proc = p["proc"]
        wid = proc.get("wid")
        if not isinstance(wid, bytes):
            return
        known = self.procs.get(wid)
        if known is None:
            known = self.procs[wid] = {"alive": True, "end": None}
            conn.close_callbacks.append(lambda c, wid=wid: self._proc_gone(wid))
            if self.history is not None:
                self.history.write("proc", time.time(), proc)
        known.update(proc)
        blob = p.get("blob")
        if blob:
            # kept as the bytes it came in: decoded only when someone asks (TaskTable.sync)
            self.tasks.add(known, blob, p.get("n", 0))
        self.tasks.dropped_at_source += p.get("dropped", 0)
        if p.get("metrics"):
            self.metrics.apply(p["metrics"])
        if self.history is not None and (blob or p.get("metrics")):
            self.history.write("evb", time.time(), {"proc": proc, "blob": blob, "metrics": p.get("metrics")})

    def _proc_gone(self, wid):
        p = self.procs.get(wid)
        if p is not None and p["alive"]:
            p["alive"], p["end"] = False, time.time()
            if self.history is not None:
                self.history.write("proc_end", p["end"], {"wid": wid})

    # --- state queries -----------------------------------------------------------------------------
    async def state_query(self, conn, p):
        what = p["what"]
        filters = [tuple(f) for f in p.get("filters") or ()]
        limit = p.get("limit")
        detail = p.get("detail", False)
        if what == "tasks" and p.get("recent"):
            return {"rows": self._reasons(self.tasks.recent(detail, filters, limit or 100), detail),
                    "total": self.tasks.size()}
        if what == "task":          # one task by id, without a scan (the dashboard's detail pane)
            try:
                r = self.tasks.get(bytes.fromhex(p.get("id", "")))
            except ValueError:
                r = None
            return {"rows": self._reasons([r.row(True)], True) if r is not None else []}
        if what == "task_counts":
            return {"counts": self.tasks.counts(), "total": self.tasks.size(),
                    "dropped": self.tasks.dropped + self.tasks.dropped_at_source}
        if what == "stream":
            return {"rows": self.tasks.stream(p.get("since", 0.0), limit or 5000), "now": time.time()}
        if what == "task_summary":
            return dict(self.tasks.summary(), dropped=self.tasks.dropped + self.tasks.dropped_at_source)
        if what == "tasks":
            rows = self._reasons(self.tasks.select(filters, limit, detail), detail)
            return {"rows": rows, "total": self.tasks.size(),
                    "dropped": self.tasks.dropped + self.tasks.dropped_at_source}
        if what == "actors":
            return {"rows": apply_filters(self.actor_rows(), filters, limit)}
        if what == "workers":
            return {"rows": apply_filters(self.worker_rows(), filters, limit)}
        if what == "jobs":
            return {"rows": apply_filters(self.job_rows(), filters, limit)}
        if what == "objects":
            return {"rows": await self.object_rows()}
        if what == "top_objects":   # the largest objects, as the event log samples them
            return {"rows": await self.largest_objects(min(limit or object_sample.TOP_N, 1000))}
        if what == "nodes":
            return {"rows": await self.node_stats()}
        if what == "info":
            return {"metrics_url": self.metrics_url, "history_dir": self.history.dir if self.history else None,
                    "task_cap": self.tasks.cap}
        if what == "metrics":
            return {"text": await self.prometheus_text()}
        if what == "metrics_history":
            return self.ring.query(p.get("since") or 0.0, p.get("limit") or None)
        raise ValueError(f"unknown state query {what!r}")

    def _reasons(self, rows, detail):
        """Detailed rows of pending tasks get why they wait (stuck.fill_reasons)."""
        return stuck.fill_reasons(rows, list(self.gcs.nodes.values())) if detail else rows

    def worker_rows(self):
        out = []
        for wid, p in self.procs.items():
            out.append({"worker_id": wid.hex(), "is_alive": p["alive"], "worker_type": p.get("kind"),
                        "node_id": hexid(p.get("node")), "pid": p.get("pid"), "ip": _ip(p.get("addr")),
                        "job_id": job_hex(p.get("job")), "exit_type": None if p["alive"] else "SYSTEM_ERROR",
                        "worker_launch_time_ms": int(p.get("start", 0) * 1000),
                        "end_time_ms": int(p["end"] * 1000) if p["end"] else None})
        return out

    def job_rows(self):
        out = []
        for wid, p in self.procs.items():
            if p.get("kind") != "DRIVER":
                continue
            out.append({"job_id": job_hex(p.get("job")), "submission_id": None, "type": "DRIVER",
                        "status": "RUNNING" if p["alive"] else "SUCCEEDED", "entrypoint": "",
                        "start_time": int(p.get("start", 0) * 1000),
                        "end_time": int(p["end"] * 1000) if p["end"] else None,
                        "driver_info": {"id": wid.hex(), "pid": p.get("pid"), "node_ip_address": _ip(p.get("addr"))}})
        return out

    async def _ask_all(self, targets, method, payloads=None):
        """Ask each (key, address) ``method`` (with ``payloads[key]``); {key: answer} of those
        that answered in time."""
        secret = self.gcs.secret

        async def one(key, addr):
            conn = await protocol.connect(addr, secret, {}, name="state", timeout=FANOUT_TIMEOUT_S)
            try:
                return await asyncio.wait_for(conn.call(method, (payloads or {}).get(key)), FANOUT_TIMEOUT_S)
            finally:
                conn.close()
        keys = [k for k, _ in targets]
        res = await asyncio.gather(*(one(k, a) for k, a in targets), return_exceptions=True)
        return {k: r for k, r in zip(keys, res) if not isinstance(r, BaseException)}

    async def object_rows(self):
        targets = [(wid, p["addr"]) for wid, p in self.procs.items() if p["alive"] and p.get("addr")]
        answers = await self._ask_all(targets, "list_objects")
        return list(answers.values())

    async def node_stats(self):
        """{node_id: store_stats and usage} of each alive node (asked on its GCS connection)."""
        gcs = self.gcs
        out = []

        async def one(nid, conn):
            try:
                st = await asyncio.wait_for(conn.call("store_stats"), FANOUT_TIMEOUT_S)
                info = await asyncio.wait_for(conn.call("node_info"), FANOUT_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - a node that does not answer is left out
                return None
            return {"node_id": nid.hex(), "store": st, "session_dir": info.get("session_dir")}
        tasks = [one(nid, c) for nid, c in gcs.node_conns.items()
                 if not c.closed and gcs.nodes.get(nid, {}).get("Alive")]
        for r in await asyncio.gather(*tasks):
            if r is not None:
                out.append(r)
        self._last_node_stats = (time.monotonic(), out)
        return out

    # --- history samples -----------------------------------------------------------------------------
    def actor_rows(self):
        """Every actor, in Ray's ActorState shape."""
        out = []
        for a in list(self.gcs.actors.actors.values()):
            spec = a.spec if isinstance(a.spec, dict) else {}
            out.append({"actor_id": a.actor_id.hex(), "class_name": a.class_name, "state": _actor_state(a.state),
                        "job_id": job_hex(spec.get("job")) if spec.get("job") is not None else None,
                        "name": a.name or "", "node_id": hexid(getattr(a, "node_id", None)),
                        "pid": getattr(a, "pid", None), "ray_namespace": a.namespace,
                        "is_detached": bool(a.detached), "num_restarts": getattr(a, "num_restarts", 0),
                        "max_restarts": a.max_restarts, "required_resources": dict(a.resources or {}),
                        "death_cause": (getattr(a, "cause_text", "") or None) if a.state == "DEAD" else None,
                        "repr_name": "", "placement_group_id": None,
                        "pending_since_ms": int(getattr(a, "pending_since", 0) * 1000)})
        return out

    async def _sample_loop(self):
        while True:
            await asyncio.sleep(SAMPLE_S)
            samples = [self._sample] if self.history is not None else []
            for sample in samples + [self._sample_ring]:     # each on its own: one failing skips no other
                try:
                    await sample()
                except Exception:  # noqa: BLE001 - history must never take the GCS down
                    logger.exception("%s failed", sample.__name__)

    async def _sample_ring(self):
        """One sample into the dashboard's ring, reusing the node figures ``_sample`` just asked
        for (a node's CPU figure is measured since the previous ask: asking twice in a row
        would read a near-zero interval)."""
        at, nodes = self._last_node_stats
        if time.monotonic() - at > SAMPLE_S / 2:
            nodes = await self.node_stats()
        actors = (_actor_state(a.state) for a in list(self.gcs.actors.actors.values()))
        self.ring.add(time.time(), sample_of(self.tasks.counts(), actors, nodes, self.metrics))

    async def _sample(self):
        now = time.time()
        h = self.history
        for a in self.actor_rows():
            key = (a["state"], a.get("num_restarts"), a.get("pid"))
            if self._seen_actors.get(a["actor_id"]) != key:
                self._seen_actors[a["actor_id"]] = key
                h.write("actor", now, a)
        for nid, n in self.gcs.nodes.items():
            if self._seen_nodes.get(nid) != n["Alive"]:
                self._seen_nodes[nid] = n["Alive"]
                h.write("node", now, {"node_id": nid.hex(), "alive": n["Alive"], "ip": n["NodeManagerAddress"],
                                      "resources": n["Resources"], "death_reason": n.get("death_reason")})
        if self.procs:
            nodes = await self.node_stats()
            avail = {nid.hex(): n.get("Available") for nid, n in self.gcs.nodes.items() if n.get("Alive")}
            h.write("sample", now, {"nodes": nodes, "tasks": self.tasks.counts(), "avail": avail})
            due = self.object_clock.due(nodes, now)
            if due == "empty":
                h.write("objects", now, {"top": [], "stores": object_sample.stores(nodes)})
                self.object_clock.done(nodes, now, True)
            elif due == "ask":         # in its own task: the samples of the next seconds do not wait for it
                self.object_clock.running = True
                asyncio.get_event_loop().create_task(self._sample_objects(nodes, now))

    async def _sample_objects(self, nodes, now):
        """The largest live objects into the event log (object_sample.py)."""
        rows = []
        try:
            rows = await self.largest_objects()
            self.history.write("objects", time.time(), {"top": rows, "stores": object_sample.stores(nodes)})
        except Exception:  # noqa: BLE001 - history must never take the GCS down
            logger.exception("object sample failed")
        finally:
            self.object_clock.done(nodes, now, not rows)
            self.object_clock.running = False

    async def largest_objects(self, n=object_sample.TOP_N):
        """Rows of the ``n`` largest objects in the node stores, with why their owners still
        reference them: each node names its largest, and only their owners are asked."""
        gcs = self.gcs

        async def top(nid, conn):
            try:
                return nid.hex(), await asyncio.wait_for(conn.call("store_top", {"n": n}), FANOUT_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - a node that does not answer is left out
                return nid.hex(), None
        tops = await asyncio.gather(*(top(nid, c) for nid, c in list(gcs.node_conns.items())
                                      if not c.closed and gcs.nodes.get(nid, {}).get("Alive")))
        merged = object_sample.merge_tops(dict(tops), n)
        asks = {}
        for t in merged:
            asks.setdefault(t["owner"], []).append(t["oid"])
        targets = [(wid, self.procs[wid]["addr"]) for wid in asks
                   if wid in self.procs and self.procs[wid]["alive"] and self.procs[wid].get("addr")]
        answers = await self._ask_all(targets, "list_objects", {wid: {"oids": asks[wid]} for wid, _ in targets})
        return object_sample.build_rows(merged, answers, self.procs)

    # --- Prometheus ----------------------------------------------------------------------------------
    async def prometheus_text(self):
        from .prometheus import render
        return render(self.metrics, self.tasks.counts(), self.actor_rows(), await self.node_stats(),
                      self.gcs.nodes, self.tasks.dropped + self.tasks.dropped_at_source)

    def _authorized(self, head):
        """The endpoint answers scrapers holding the cluster's bearer token (the job API's: an
        HMAC of the secret; ``luminary job token`` prints it), as every other port does."""
        import hmac
        from ..jobs import job_token
        want = b"bearer " + job_token(self.gcs.secret).encode()
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"authorization":
                return hmac.compare_digest(value.strip().lower(), want)
        return False

    async def _http(self, reader, writer):
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
            if not self._authorized(head):
                body, status = b"unauthorized: send 'Authorization: Bearer <luminary job token>'\n", \
                    b"401 Unauthorized"
            elif path.split(b"?")[0] in (b"/metrics", b"/"):
                body = (await self.prometheus_text()).encode()
                status = b"200 OK"
            else:
                body, status = b"not found\n", b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except Exception:  # noqa: BLE001 - a bad client only loses its own answer
            pass
        finally:
            writer.close()


def _actor_state(s):
    return "PENDING_CREATION" if s == "PENDING" else s


def _ip(addr):
    if isinstance(addr, str) and addr.startswith("tcp:"):
        return addr[4:].rsplit(":", 1)[0]
    return "127.0.0.1"
