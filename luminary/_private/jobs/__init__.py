"""Job submission, server side: the job table and supervisor (``manager.py``) and the
authenticated HTTP API on the head (``http.py``).  The client is ``luminary.job_submission``."""
from __future__ import annotations

import hashlib
import hmac

TOKEN_LABEL = b"luminary job api v1"
DEFAULT_PORT = 8265


def job_token(secret: bytes) -> str:
    """The job API's bearer token: an HMAC of the cluster secret with a fixed label, so whoever
    holds the secret file can compute it and the token reveals nothing of the secret."""
    return hmac.new(secret, TOKEN_LABEL, hashlib.sha256).hexdigest()
