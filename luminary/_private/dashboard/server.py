"""The dashboard's routes on the head's job API server (``jobs/http.py`` calls ``route``).

Pages are three static files; everything live comes from small JSON endpoints over the GCS's
state queries, polled by the page about once a second.  Nothing is kept here but the login
sessions (and the spent login nonces until they expire).
"""
from __future__ import annotations

import os
import secrets
import time
import urllib.parse

from . import check_login_token

STATIC = os.path.join(os.path.dirname(__file__), "static")
FILES = {"": ("index.html", "text/html; charset=utf-8"), "index.html": ("index.html", "text/html; charset=utf-8"),
         "app.js": ("app.js", "text/javascript; charset=utf-8"), "app.css": ("app.css", "text/css; charset=utf-8")}
COOKIE = "luminary_session"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 256
SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                    "Referrer-Policy": "no-referrer",
                    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"}


class Raw:
    """A non-JSON answer: bytes with a content type and extra headers."""

    def __init__(self, status, body: bytes, ctype="text/plain; charset=utf-8", headers=None):
        self.status, self.body, self.ctype = status, body, ctype
        self.headers = dict(SECURITY_HEADERS, **(headers or {}))


def _page(status, title, text):
    body = (f"<!doctype html><meta charset=utf-8><title>{title}</title>"
            f"<body><h1>{title}</h1><p>{text}</p>").encode()
    return Raw(status, body, "text/html; charset=utf-8")


UNAUTHORIZED = ("Open the login link printed by <code>luminary start --head</code>, or run "
                "<code>luminary dashboard</code> on the head for a fresh one.")


class Dashboard:
    def __init__(self, nm, secret: bytes):
        self.nm = nm
        self.secret = secret
        self.sessions: dict[str, float] = {}      # session id -> expiry
        self.spent: dict[str, float] = {}         # login nonce -> its expiry

    # --- authentication ----------------------------------------------------------------------------
    def session_ok(self, headers) -> bool:
        sid = _cookie(headers.get("cookie", ""), COOKIE)
        if not sid:
            return False
        exp = self.sessions.get(sid)
        if exp is None:
            return False
        if exp < time.time():
            del self.sessions[sid]
            return False
        return True

    def login(self, query):
        now = time.time()
        for k in [k for k, e in self.spent.items() if e < now]:
            del self.spent[k]
        ok = check_login_token(self.secret, query.get("token", ""), now)
        if ok is None or ok[0] in self.spent:
            return _page(401, "Login link not valid", "It was used already, expired or mistyped. " + UNAUTHORIZED)
        self.spent[ok[0]] = ok[1]
        for k in [k for k, e in self.sessions.items() if e < now]:
            del self.sessions[k]
        while len(self.sessions) >= MAX_SESSIONS:
            del self.sessions[next(iter(self.sessions))]
        sid = secrets.token_hex(32)
        self.sessions[sid] = now + SESSION_TTL_S
        cookie = f"{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_TTL_S}"
        return Raw(303, b"", headers={"Location": "/", "Set-Cookie": cookie})

    @staticmethod
    def unauthorized(parts):
        if parts and parts[0] == "api":
            return None      # the job API's JSON 401
        return _page(401, "Not logged in", UNAUTHORIZED)

    # --- routes ------------------------------------------------------------------------------------
    def owns(self, parts):
        return not parts or parts[0] in ("index.html", "static", "logout") or parts[:2] == ["api", "dash"]

    async def route(self, method, parts, query, headers):
        if not parts or parts[0] == "index.html":
            return _static("")
        if parts[0] == "static" and len(parts) == 2:
            return _static(parts[1])
        if parts == ["logout"] and method == "POST":
            self.sessions.pop(_cookie(headers.get("cookie", ""), COOKIE), None)
            return 200, {"logged_out": True}
        if method != "GET":
            return 405, {"error": f"{method} not allowed here"}
        what = parts[2:]
        if what == ["overview"]:
            return 200, await self.overview()
        if what == ["tasks"]:
            return 200, await self.tasks(query)
        if len(what) == 2 and what[0] == "tasks":
            rows = (await self._q({"what": "task", "id": what[1][:256]}))["rows"]
            return (200, rows[0]) if rows else (404, {"error": f"no task {what[1]!r} (or it was dropped)"})
        if what == ["actors"]:
            return 200, {"rows": (await self._q({"what": "actors"}))["rows"]}
        if what == ["stream"]:
            since = float(query.get("since", 0) or 0)
            return 200, await self._q({"what": "stream", "since": max(0.0, since), "limit": 5000})
        return 404, {"error": f"no such endpoint {'/'.join(parts)!r}"}

    async def _q(self, payload):
        return await self.nm.gcs.call("state_query", payload)

    async def overview(self):
        gcs = self.nm.gcs
        nodes, stats, counts = await gcs.call("get_nodes"), await self._q({"what": "nodes"}), \
            await self._q({"what": "task_counts"})
        by_id = {s["node_id"]: s.get("store") or {} for s in stats["rows"]}
        out_nodes = []
        for n in nodes:
            nid = n["NodeID"].hex() if isinstance(n["NodeID"], bytes) else n["NodeID"]
            st = by_id.get(nid, {})
            out_nodes.append({"node_id": nid, "ip": n["NodeManagerAddress"], "head": bool(n.get("IsHead")),
                              "alive": bool(n["Alive"]), "resources": dict(n["Resources"]),
                              "available": dict(n.get("Available") or {}),
                              "cpu_percent": st.get("cpu_percent"), "mem_used": st.get("mem_used"),
                              "mem_total": st.get("mem_total"), "store_used": st.get("used"),
                              "store_capacity": st.get("capacity"), "objects": st.get("objects")})
        actors = {}
        for a in (await self._q({"what": "actors"}))["rows"]:
            actors[a["state"]] = actors.get(a["state"], 0) + 1
        jobs = await self.nm.jobs.jobs.list() if getattr(self.nm, "jobs", None) else []
        drivers = (await self._q({"what": "jobs"}))["rows"]
        return {"time": time.time(), "nodes": out_nodes, "tasks": counts, "actors": actors,
                "jobs": jobs, "drivers": drivers}

    async def tasks(self, query):
        filters = []
        for key in ("state", "name", "job_id"):
            if query.get(key):
                filters.append([key, "=", query[key]])
        limit = max(1, min(int(query.get("limit", 200) or 200), 1000))
        res = await self._q({"what": "tasks", "filters": filters, "limit": limit, "recent": True})
        return {"rows": res["rows"], "total": res["total"]}


def _static(name):
    f = FILES.get(name)
    if f is None:
        return 404, {"error": f"no such file {name!r}"}
    with open(os.path.join(STATIC, f[0]), "rb") as fh:
        return Raw(200, fh.read(), f[1])


def _cookie(header, name):
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return urllib.parse.unquote(v)
    return None
