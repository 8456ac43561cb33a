"""The cluster's key-value table in the GCS (Ray's ``ray.experimental.internal_kv``).  Values are
bytes; with a persistent GCS storage (``luminary start --head``) they survive a GCS restart, and a
put returns only once the value is stored."""
from __future__ import annotations


def _core():
    from .._private.worker import state
    return state.require_core()


def _b(x, what):
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    raise TypeError(f"internal_kv {what} must be bytes or str, got {type(x).__name__}")


def _internal_kv_initialized() -> bool:
    from .._private.worker import state
    return state.core is not None


def _internal_kv_put(key, value, overwrite: bool = True, namespace=None) -> bool:
    """Store ``value`` under ``key``; False when ``overwrite`` is False and the key holds another value."""
    return _core().call_sync_gcs("kv_put", {"key": _b(key, "key"), "value": _b(value, "value"),
                                            "overwrite": bool(overwrite), "ns": namespace})


def _internal_kv_get(key, namespace=None):
    return _core().call_sync_gcs("kv_get", {"key": _b(key, "key"), "ns": namespace})


def _internal_kv_exists(key, namespace=None) -> bool:
    return _internal_kv_get(key, namespace) is not None


def _internal_kv_del(key, namespace=None) -> bool:
    return _core().call_sync_gcs("kv_del", {"key": _b(key, "key"), "ns": namespace})


def _internal_kv_list(prefix, namespace=None) -> list:
    return _core().call_sync_gcs("kv_keys", {"prefix": _b(prefix, "prefix"), "ns": namespace})
