"""The job API: a small HTTP/1.1 server on the head node manager's event loop.

Every request must carry ``Authorization: Bearer <token>`` (``jobs.job_token`` of the cluster
secret); anything else gets 401 before its body is read or anything runs.  It binds loopback
unless ``luminary start --dashboard-host`` says otherwise.

    POST   /api/jobs/                       submit {entrypoint, runtime_env, submission_id, metadata, ...}
    GET    /api/jobs/                       list
    GET    /api/jobs/<id>                   info
    GET    /api/jobs/<id>/logs              {"logs": all output so far}
    GET    /api/jobs/<id>/logs/tail?offset=N  long poll: output after byte N, or the job's end (<= 10 s)
    POST   /api/jobs/<id>/stop              {"stopped": bool}
    DELETE /api/jobs/<id>                   {"deleted": true}  (finished jobs only)
    GET    /api/packages/<sha>              {"exists": bool}   runtime_env packages (zip)
    PUT    /api/packages/<sha>              upload one (its sha256 must match)
    GET    /api/version

The web dashboard (``luminary/_private/dashboard``) shares this server: ``/login?token=...`` (a
one-time link) sets a session cookie that is accepted instead of the bearer token; ``/``,
``/static/*`` and ``/api/dash/*`` are its pages and JSON endpoints, ``/api/dash/events`` its
server-sent-events stream (one long-lived answer per open page).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import urllib.parse

from . import job_token
from .manager import TERMINAL, JobError, JobManager
from ..dashboard.server import Dashboard, Raw, Stream
from ..runtime_env.packaging import MAX_PACKAGE_BYTES

logger = logging.getLogger(__name__)
TAIL_WAIT_S = 10.0
_REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


class JobServer:
    def __init__(self, nm):
        self.nm = nm
        self.jobs = JobManager(nm)
        self.token = job_token(nm.secret).encode()
        self.dash = Dashboard(nm, nm.secret)
        self.streams = set()        # writers of the dashboard's open event streams

    def close(self):
        """The head is stopping (its listening socket is closed by the node manager)."""
        self.jobs.shutdown()
        for w in list(self.streams):     # open pages' streams end with the head
            w.close()

    async def serve(self, reader, writer):
        try:
            res = await self._handle(reader)
            if isinstance(res, Stream):
                self.streams.add(writer)
                try:
                    return await _stream(reader, writer, res)
                finally:
                    self.streams.discard(writer)
            status, body = (res, None) if not isinstance(res, tuple) else res
        except JobError as e:
            status, body = e.status, {"error": str(e)}
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError) as e:
            status, body = 400, {"error": f"bad request: {e}"}
        except Exception as e:  # noqa: BLE001
            logger.exception("job API request failed")
            status, body = 500, {"error": f"{type(e).__name__}: {e}"}
        if isinstance(status, Raw):
            raw, status = status, status.status
            data, extra = raw.body, "".join(f"{k}: {v}\r\n" for k, v in raw.headers.items())
            ctype = raw.ctype
        else:
            data, extra, ctype = json.dumps(body).encode(), "Cache-Control: no-store\r\n", "application/json"
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n{extra}"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
        try:
            writer.write(head + data)
            await writer.drain()
            writer.close()
        except (ConnectionError, OSError):
            pass

    async def _handle(self, reader):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        if len(head) > 65536:
            raise ValueError("headers too large")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        auth = headers.get("authorization", "")
        given = auth[7:].strip().encode() if auth.lower().startswith("bearer ") else b""
        url = urllib.parse.urlsplit(target)
        parts = [p for p in url.path.split("/") if p]
        query = dict(urllib.parse.parse_qsl(url.query))
        dash = self.dash
        if parts == ["login"] and method == "GET":
            return dash.login(query)
        bearer = hmac.compare_digest(given, self.token)
        if not bearer and dash.session_ok(headers):
            # the cookie is SameSite=Strict; a state-changing request must also come from our own page
            if method not in ("GET", "HEAD") and not _same_origin(headers):
                return 403, {"error": "cross-origin request refused"}
        elif not bearer:
            page = dash.unauthorized(parts)
            if page is not None:
                return page
            return 401, {"error": "missing or wrong token: send 'Authorization: Bearer <token>' (the token is "
                                  "printed by `luminary job token` on the head, or computed from the cluster's "
                                  "secret file by the luminary client)"}
        n = int(headers.get("content-length", "0") or 0)
        if n > MAX_PACKAGE_BYTES + (1 << 20):
            return 413, {"error": f"request body over {MAX_PACKAGE_BYTES >> 20} MiB"}
        raw = await asyncio.wait_for(reader.readexactly(n), 300) if n else b""
        if dash.owns(parts):
            return await dash.route(method, parts, query, headers)
        return await self._route(method, parts, query, raw)

    async def _route(self, method, parts, query, raw):
        jobs = self.jobs
        if parts == ["api", "version"]:
            return 200, {"version": "luminary-1", "ray_version": "2.x"}
        if parts[:2] == ["api", "packages"] and len(parts) == 3:
            return await self._package(method, parts[2], raw)
        if parts[:2] != ["api", "jobs"]:
            return 404, {"error": f"no such endpoint {'/'.join(parts)!r}"}
        rest = parts[2:]
        if not rest:
            if method == "POST":
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise JobError(400, "the body must be a JSON object")
                sid = await jobs.submit(body)
                return 200, {"submission_id": sid, "job_id": sid}
            if method == "GET":
                return 200, {"jobs": await jobs.list()}
            return 405, {"error": f"{method} not allowed here"}
        sid = urllib.parse.unquote(rest[0])
        if len(rest) == 1:
            if method == "GET":
                info = await jobs.get(sid)
                if info is None:
                    raise JobError(404, f"no job with submission_id {sid!r}")
                return 200, info
            if method == "DELETE":
                return 200, {"deleted": await jobs.delete(sid)}
        elif rest[1:] == ["stop"] and method == "POST":
            return 200, {"stopped": await jobs.stop(sid)}
        elif rest[1:] == ["logs"] and method == "GET":
            await self._need(sid)
            return 200, {"logs": _read_from(jobs.log_path(sid), 0)[0]}
        elif rest[1:] == ["logs", "tail"] and method == "GET":
            return 200, await self._tail(sid, int(query.get("offset", 0)))
        return 404, {"error": f"no such endpoint {method} {'/'.join(parts)!r}"}

    async def _need(self, sid):
        info = await self.jobs.get(sid)
        if info is None:
            raise JobError(404, f"no job with submission_id {sid!r}")
        return info

    async def _tail(self, sid, offset):
        """Output after ``offset`` as soon as there is some (or the job ended), waiting up to 10 s."""
        path = self.jobs.log_path(sid)
        loop = asyncio.get_event_loop()
        deadline = loop.time() + TAIL_WAIT_S
        while True:
            info = await self._need(sid)
            done = info["status"] in TERMINAL
            data, new = _read_from(path, offset)
            if data or done or loop.time() >= deadline:
                return {"data": data, "offset": new, "done": done and not data, "status": info["status"]}
            await asyncio.sleep(0.05)

    async def _package(self, method, sha, raw):
        if not sha or len(sha) > 64 or not all(c in "0123456789abcdef" for c in sha):
            raise JobError(400, f"bad package hash {sha!r}")
        key = {"key": f"pkg:{sha}".encode(), "ns": "runtime_env"}
        if method == "GET":
            return 200, {"exists": bool(await self.nm.gcs.call("kv_keys", {"prefix": key["key"], "ns": "runtime_env"}))}
        if method == "PUT":
            if hashlib.sha256(raw).hexdigest()[:len(sha)] != sha:
                raise JobError(400, "the package's content does not match its hash")
            await self.nm.gcs.call("kv_put", dict(key, value=raw, overwrite=False))
            return 200, {"stored": True}
        return 405, {"error": f"{method} not allowed here"}


async def _stream(reader, writer, stream):
    """Write a server-sent-events answer until the client goes (its side of the connection
    reads EOF) or a write fails."""
    head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in stream.headers.items()) + \
        "Connection: close\r\n\r\n"
    gone = asyncio.ensure_future(reader.read(1))
    gone.add_done_callback(lambda f: f.cancelled() or f.exception())
    chunks = stream.chunks(gone)
    try:
        writer.write(head.encode())
        async for chunk in chunks:
            if gone.done() or writer.is_closing():
                break
            if chunk:
                writer.write(chunk)
                await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        await chunks.aclose()
        gone.cancel()
        writer.close()


def _same_origin(headers):
    origin = headers.get("origin")
    if origin is None:      # browsers send Origin on every cross-origin POST; its absence is same-origin
        return headers.get("x-luminary-dashboard") == "1"
    return urllib.parse.urlsplit(origin).netloc == headers.get("host", "")


def _read_from(path, offset):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(1 << 20)
    except OSError:
        return "", offset
    return data.decode(errors="replace"), offset + len(data)
