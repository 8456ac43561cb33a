"""Values to bytes and back: pickle protocol 5 with out-of-band buffers.

Small values (<= INLINE_MAX_BYTES in all) travel inline as ``bytes`` (no buffers) or
``[pickle, [buffer, ...]]``.  Larger ones are written into the node's shared-memory store with
this layout, every buffer 64-byte aligned so numpy views are aligned:

    0         8                 h                      b0         b1
    │ u64: h  │ msgpack header  │ pickle stream ...    │ buffer 0 │ buffer 1 │ ...
              [pickle_off, pickle_len, [[b0, len0], [b1, len1], ...]]

Reading maps the object read-only and hands the buffers to pickle, so numpy arrays come back as
read-only views of shared memory (no copy).  ObjectRefs met while pickling are collected (the
owner keeps them alive while the outer object lives); ObjectRefs met while unpickling are
collected so the reader can register as a borrower before user code sees them.
"""
from __future__ import annotations

import gc
import pickle
import struct
import threading

import msgpack

from . import pickler
from .config import BUFFER_ALIGN, INLINE_MAX_BYTES

_local = threading.local()
_SIMPLE = (int, float, str, bytes, bool, type(None))


class SerializedObject:
    __slots__ = ("data", "buffers", "contained", "size")

    def __init__(self, data, buffers, contained):
        self.data = data
        self.buffers = buffers
        self.contained = contained
        self.size = len(data) + sum(b.nbytes for b in buffers) if buffers else len(data)

    @property
    def inline(self) -> bool:
        return self.size <= INLINE_MAX_BYTES

    def to_inline(self):
        if not self.buffers:
            return self.data
        return [self.data, [b.tobytes() for b in self.buffers]]

    def layout(self):
        """Return (header_bytes, pickle_offset, [buffer offsets], total_size)."""
        offs = []
        # header size depends on offsets; compute with a generous first guess then fix up
        guess = 64 + 24 * len(self.buffers)
        while True:
            pos = 8 + guess
            p_off = pos
            pos += len(self.data)
            offs = []
            for b in self.buffers:
                pos = (pos + BUFFER_ALIGN - 1) // BUFFER_ALIGN * BUFFER_ALIGN
                offs.append(pos)
                pos += b.nbytes
            header = msgpack.packb([p_off, len(self.data), [[o, b.nbytes] for o, b in zip(offs, self.buffers)]])
            if len(header) <= guess:
                return header, p_off, offs, pos
            guess = len(header) + 16

    def write_into(self, mv: memoryview, layout=None):
        header, p_off, offs, total = layout or self.layout()
        mv[0:8] = struct.pack("<Q", len(header))
        mv[8:8 + len(header)] = header
        mv[p_off:p_off + len(self.data)] = self.data
        for o, b in zip(offs, self.buffers):
            n = b.nbytes
            if n:
                mv[o:o + n] = b.cast("B") if b.ndim != 1 or b.format != "B" else b


def _dumps(value, buffers):
    if type(value) in _SIMPLE:
        return pickle.dumps(value, 5)
    try:
        return pickle.dumps(value, 5, buffer_callback=buffers.append) if _plain(value) else \
            pickler.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception:
        buffers.clear()
        return pickler.dumps(value, protocol=5, buffer_callback=buffers.append)


def _plain(value):
    """Containers of simple values pickle faster with the C pickler and need no cloudpickle."""
    t = type(value)
    if t in (list, tuple):
        return len(value) < 64 and all(type(v) in _SIMPLE for v in value)
    if t is dict:
        return len(value) < 64 and all(type(k) in _SIMPLE and type(v) in _SIMPLE for k, v in value.items())
    return False


def serialize(value) -> SerializedObject:
    """Pickle ``value``; raises TypeError naming the value when it cannot be pickled."""
    if type(value) in _SIMPLE:          # the common small return value: no refs, no buffers
        return SerializedObject(pickle.dumps(value, 5), (), ())
    contained = []
    prev = getattr(_local, "refs", None)
    _local.refs = contained
    buffers = []
    try:
        data = _dumps(value, buffers)
    except Exception as e:
        raise TypeError(
            f"Could not serialize {_describe(value)}: {type(e).__name__}: {e}. "
            "Values passed to or returned from remote functions must be picklable "
            "(cloudpickle); create unpicklable things such as locks, sockets or open files "
            "inside the task instead of passing them.") from e
    finally:
        _local.refs = prev
    return SerializedObject(data, [memoryview(b.raw()) if isinstance(b, pickle.PickleBuffer) else b for b in buffers], contained)


def serialize_args(args, kwargs) -> SerializedObject:
    """Arguments of a call: the C pickler when they are plain values, else cloudpickle."""
    if _plain(args) and (not kwargs or _plain(kwargs)):
        return SerializedObject(pickle.dumps((args, kwargs), 5), [], [])
    return serialize((args, kwargs))


def _describe(value):
    try:
        r = repr(value)
    except Exception:
        r = object.__repr__(value)
    if len(r) > 80:
        r = r[:77] + "..."
    return f"{type(value).__name__} value {r}"


def note_ref(ref):
    """Called by ObjectRef.__reduce__: records refs nested in the value being pickled."""
    refs = getattr(_local, "refs", None)
    if refs is not None:
        refs.append(ref)


_count_batch = None     # set by object_ref: posts one increment per collected ref, as one batch


class collect_deserialized_refs:
    """Collects the ObjectRefs unpickled inside it (so the reader can register as a borrower
    before user code sees them).  Those refs are counted in one batch when it closes (even when
    unpickling failed half way): the list holds them until then, so none can be dropped first."""

    def __enter__(self):
        self.prev = getattr(_local, "deser", None)
        self.refs = []
        _local.deser = self.refs
        return self.refs

    def __exit__(self, *exc):
        _local.deser = self.prev
        if self.refs and _count_batch is not None:
            _count_batch(self.refs)


def loads_inline(payload):
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return pickle.loads(payload)
    data, bufs = payload
    return pickle.loads(data, buffers=[bytearray(b) for b in bufs])


def loads_store(mv: memoryview):
    (hlen,) = struct.unpack_from("<Q", mv, 0)
    p_off, p_len, bufs = msgpack.unpackb(mv[8:8 + hlen])
    # A stored object (> INLINE_MAX_BYTES) may unpickle into tens of thousands of objects (a
    # list of 10,000 ObjectRefs): without a pause the collector runs over the whole heap
    # several times while they are created (2x the time of the load itself).  The pause is
    # global, so it is lifted only if this call set it.
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        return pickle.loads(mv[p_off:p_off + p_len], buffers=[mv[o:o + n] for o, n in bufs])
    finally:
        if paused:
            gc.enable()


def dumps_function(fn) -> bytes:
    return pickler.dumps(fn, protocol=5)


def dumps_error(err) -> bytes:
    """Pickle an exception, falling back to a text copy when it cannot be pickled or would not
    unpickle (an exception class whose __init__ takes other arguments than its args)."""
    try:
        blob = pickler.dumps(err, protocol=5)
        pickle.loads(blob)
        return blob
    except Exception:
        from ..exceptions import RayTaskError
        if isinstance(err, RayTaskError):
            text = RayTaskError(err.function_name, err.traceback_str, None, None, err.pid, err.ip)
            return pickler.dumps(text, protocol=5)
        from ..exceptions import RaySystemError
        return pickler.dumps(RaySystemError(f"{type(err).__name__}: {err}"), protocol=5)
