"""Identifiers.

TaskID   12 bytes: 8 random bytes fixed per process + a 4-byte counter (cheap and unique).
ObjectID 16 bytes: the TaskID that made it + a 4-byte index (1..n for returns, 0x80000000|n for puts).
Node, worker and actor IDs are 16 random bytes; job IDs 4 bytes assigned by the GCS.
"""
from __future__ import annotations

import itertools
import os
import struct
import threading

_prefix = os.urandom(8)
_counter = itertools.count(1)
_lock = threading.Lock()


def reseed():
    """Called in a forked child so it never repeats its parent's ids."""
    global _prefix, _counter
    _prefix = os.urandom(8)
    _counter = itertools.count(1)


def new_task_id() -> bytes:
    return _prefix + struct.pack(">I", next(_counter) & 0xFFFFFFFF)


def object_id(task_id: bytes, index: int) -> bytes:
    return task_id + struct.pack(">I", index)


PUT_BIT = 0x80000000     # in index_of(oid): a put object (no call makes it)


def put_object_id() -> bytes:
    return new_task_id() + b"\x80\x00\x00\x00"


def task_of(oid: bytes) -> bytes:
    return oid[:12]


def index_of(oid: bytes) -> int:
    return struct.unpack(">I", oid[12:16])[0]


def random_id() -> bytes:
    return os.urandom(16)


NIL_ID = b"\x00" * 16
