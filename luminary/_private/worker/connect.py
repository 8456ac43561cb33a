"""Connecting a driver to a cluster that is already running (``init(address=...)``)."""
from __future__ import annotations


def connect_existing(address):
    raise ConnectionError(
        f"Could not connect to a Luminary cluster at {address!r}: joining running clusters "
        "(luminary start) is not available in this version. Call luminary.init() without an "
        "address to start a local cluster.")
