"""The web dashboard: static pages and JSON endpoints served by the head's job API server
(``jobs/http.py`` routes to ``server.py``).  Nothing runs outside the head node manager.

Login: a one-time link ``http://HOST:PORT/login?token=NONCE.EXPIRY.MAC`` where MAC is an HMAC of
the cluster secret, so whoever holds the secret (``luminary start --head``, ``luminary
dashboard``) mints one without asking the head; the head checks the MAC and the expiry, spends
the nonce and answers with an HttpOnly, SameSite=Strict session cookie.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import time

LOGIN_LABEL = b"luminary dashboard login v1"
LOGIN_TTL_S = 24 * 3600


def _mac(secret: bytes, nonce: str, expiry: int) -> str:
    return hmac.new(secret, LOGIN_LABEL + b"|" + nonce.encode() + b"|" + str(expiry).encode(),
                    hashlib.sha256).hexdigest()


def login_token(secret: bytes, ttl_s: float = LOGIN_TTL_S, now: float | None = None) -> str:
    nonce = os.urandom(12).hex()
    expiry = int((time.time() if now is None else now) + ttl_s)
    return f"{nonce}.{expiry}.{_mac(secret, nonce, expiry)}"


def check_login_token(secret: bytes, token: str, now: float | None = None):
    """(nonce, expiry) of a well-formed, unexpired token with a good MAC, else None."""
    parts = (token or "").split(".")
    if len(parts) != 3 or len(parts[0]) != 24 or not parts[1].isdigit():
        return None
    nonce, expiry = parts[0], int(parts[1])
    if not hmac.compare_digest(parts[2].encode(), _mac(secret, nonce, expiry).encode()):
        return None
    if expiry < (time.time() if now is None else now):
        return None
    return nonce, expiry


def login_url(job_api: str, secret: bytes) -> str:
    """The link to print: ``job_api`` is HOST:PORT of the head's job API / dashboard."""
    host, port = job_api.rsplit(":", 1)
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}/login?token={login_token(secret)}"
