"""The dashboard's routes on the head's job API server (``jobs/http.py`` calls ``route``).

Pages are three static files; everything live comes over one server-sent-events stream per
open page (``/api/dash/events?view=...``): each second the head gathers what that page shows
(``views.py``) and pushes only the snapshots that changed.  Nothing is kept here but the login
sessions (and the spent login nonces until they expire) and each stream's last-pushed hashes.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
import urllib.parse

from . import check_login_token, views

STATIC = os.path.join(os.path.dirname(__file__), "static")
FILES = {"": ("index.html", "text/html; charset=utf-8"), "index.html": ("index.html", "text/html; charset=utf-8"),
         "app.js": ("app.js", "text/javascript; charset=utf-8"), "app.css": ("app.css", "text/css; charset=utf-8")}
COOKIE = "luminary_session"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 256
MAX_STREAMS = 32           # open pages, each one event stream
PERIOD_S = 1.0             # how often a page's stream is refreshed
CHART_POINTS = 720         # samples of history sent when the metrics page opens (a chart's width)
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
        self.streams = 0                          # event streams open now

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
        if what == ["events"]:
            if self.streams >= MAX_STREAMS:
                return 503, {"error": f"{MAX_STREAMS} dashboard pages are open already; close one"}
            return Stream(self, query)
        if what == ["overview"]:
            return 200, dict(await views.overview(self.nm), time=time.time())
        if what == ["tasks"]:
            return 200, await views.tasks(self.nm, query)
        if len(what) == 2 and what[0] == "tasks":
            t = await views.task(self.nm, what[1])
            return (404, {"error": f"no task {what[1]!r} (or it was dropped)"}) if t.get("missing") else (200, t)
        if what == ["actors"]:
            return 200, await views.actors(self.nm)
        if what == ["stream"]:
            return 200, await views.stream(self.nm, _float(query.get("since"), 0.0))
        if what == ["metrics"]:
            points = int(min(max(_float(query.get("points"), CHART_POINTS), 1), 100_000))
            return 200, await views.metrics_history(self.nm, _float(query.get("since"), 0.0), points)
        return 404, {"error": f"no such endpoint {'/'.join(parts)!r}"}

    # --- the live stream: one per open page ---------------------------------------------------------
    async def events(self, query, gone):
        """Server-sent events for the page ``query["view"]`` shows (with its selection): each
        named snapshot is pushed when it differs from the one pushed before, at most once a
        PERIOD_S; a ``tick`` (the head's clock) every period keeps the page's charts moving."""
        view = query.get("view", "overview")
        sent: dict[str, int] = {}
        tail, tail_key = None, None
        since = _float(query.get("since"), 0.0)
        charted = None            # the metrics page: time of the newest sample pushed
        n = 0
        while not gone.done():
            snap = {}
            try:
                snap["overview"] = await views.overview(self.nm)
                await self._view(view, query, snap, n)
                if view == "stream":
                    r = await views.stream(self.nm, since)
                    snap["stream"] = r
                    open_starts = [row[3] for row in r["rows"] if row[4] is None]
                    since = min([r["now"] - 2] + open_starts)
                if view == "metrics":
                    charted = await self._charts(query, snap, charted)
                key = _log_key(view, query, snap)
                if key != tail_key:
                    tail_key, tail = key, None
                    if key:
                        path = await views.log_path(self.nm, key)
                        tail = views.LogTail(path) if path else None
                        if tail is None:
                            snap["log"] = {"data": f"(no log {key!r} on the head's machine)\n", "reset": True}
                if tail is not None:
                    got = tail.read()
                    if got:
                        snap["log"] = got
                snap["tick"] = {"time": time.time()}
            except Exception as e:  # noqa: BLE001 - the page shows it and the stream goes on
                snap = {"problem": {"error": f"{type(e).__name__}: {e}", "time": time.time()}}
            out = []
            for name, payload in snap.items():
                data = json.dumps(payload, separators=(",", ":"), default=_jsonable)
                h = hash(data)
                if name in ("tick", "stream", "log", "problem", "points") or sent.get(name) != h:
                    sent[name] = h
                    out.append(f"event: {name}\ndata: {data}\n\n")
            yield "".join(out).encode()
            n += 1
            await asyncio.wait([gone], timeout=PERIOD_S)

    async def _charts(self, query, snap, charted):
        """The metrics page: first the history of the range it shows (``range`` seconds, 0 for
        all the ring keeps), thinned to CHART_POINTS; then only the samples newer than those."""
        if charted is None:
            rng = _float(query.get("range"), 0.0)
            r = await views.metrics_history(self.nm, time.time() - rng if rng > 0 else 0.0, CHART_POINTS)
            snap["history"] = r
        else:
            r = await views.metrics_history(self.nm, charted)
            if r["t"]:
                snap["points"] = r
        return r["t"][-1] if r["t"] else (charted or 0.0)

    async def _view(self, view, query, snap, n):
        nm = self.nm
        if view == "tasks":
            snap["tasks"] = await views.tasks(nm, query)
            if query.get("task"):
                snap["task"] = await views.task(nm, query["task"])
        elif view == "actors":
            snap["actors"] = await views.actors(nm)
            if query.get("actor"):
                snap["actor"] = await views.actor(nm, query["actor"])
        elif view == "jobs":
            snap["jobs"] = {"jobs": await nm.jobs.jobs.list()}
            if query.get("job"):
                info = await nm.jobs.jobs.get(query["job"])
                snap["job"] = info if info is not None else {"submission_id": query["job"], "missing": True}
        elif view == "objects":
            if n % 2 == 0:          # every process is asked: every other period is enough
                snap["objects"] = await views.objects(nm)
        elif view == "logs":
            if n % 3 == 0:
                snap["logfiles"] = await views.log_files(nm)
        elif view == "pgs":
            snap["pgs"] = await views.placement_groups(nm)
        elif view == "stacks":
            if n % 3 == 0:
                snap["workers"] = await views.workers(nm)
            if query.get("worker") and n % 2 == 0:
                snap["stacks"] = await views.stacks(nm, query["worker"])


class Stream:
    """A server-sent-events answer: ``jobs/http.py`` writes the head, then each chunk of
    ``chunks(gone)`` until the page goes away (``gone`` done) or the head stops."""

    headers = dict(SECURITY_HEADERS, **{"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})

    def __init__(self, dash, query):
        self.dash, self.query = dash, query

    async def chunks(self, gone):
        self.dash.streams += 1
        try:
            yield b"retry: 2000\n\n"
            async for chunk in self.dash.events(self.query, gone):
                yield chunk
        finally:
            self.dash.streams -= 1


def _log_key(view, query, snap):
    """Which log this page tails: the one picked on the logs page, a job's output, or the
    output of the worker an actor lives in (it changes when the actor restarts)."""
    if view == "logs":
        return query.get("log") or None
    if view == "jobs" and query.get("job"):
        return "job:" + query["job"]
    if view == "actors" and (snap.get("actor") or {}).get("pid"):
        return f"pid:{int(snap['actor']['pid'])}"
    return None


def _float(v, default):
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _jsonable(o):
    if isinstance(o, (bytes, bytearray)):
        return o.hex()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


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
