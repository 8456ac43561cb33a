"""Calls checked like Python calls: ``.remote()`` with arguments that do not fit the function's
or method's signature raises TypeError at the call (as Ray does), not later in a worker.

Method signatures travel inside actor handles (to other processes and through the GCS), so
they are kept as plain data: [[name, kind, has_default], ...] without ``self``.
"""
from __future__ import annotations

import inspect

FUNCTION_SIZE_WARN_BYTES = 10 ** 7
FUNCTION_SIZE_ERROR_BYTES = 10 ** 8
_P = inspect.Parameter
_NO_DEFAULT = _P.empty
_DEFAULT = object()


def signature_of(fn, skip_first=False):
    """The signature of ``fn`` as plain data, or None when it cannot be read (builtins)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if skip_first and params and params[0].kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD):
        params = params[1:]
    return [[p.name, int(p.kind), p.default is not _NO_DEFAULT] for p in params]


_cache: dict = {}


def _rebuild(data):
    key = repr(data)
    sig = _cache.get(key)
    if sig is None:
        sig = inspect.Signature([_P(name, inspect._ParameterKind(kind),
                                    default=_DEFAULT if has_default else _NO_DEFAULT)
                                 for name, kind, has_default in data])
        if len(_cache) < 4096:
            _cache[key] = sig
    return sig


def check_call(data, args, kwargs, what):
    """Raise TypeError (naming ``what``) when ``args``/``kwargs`` do not fit signature ``data``."""
    if data is None:
        return
    if not data:
        if args or kwargs:
            raise TypeError(f"{what}() takes no arguments, but got {len(args)} positional and "
                            f"{len(kwargs)} keyword argument(s).")
        return
    try:
        _rebuild(data).bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{e} (calling {what}.remote(); the arguments must fit its signature)") from None


def check_size(blob, name, kind):
    """A pickled function or class too large to ship is an error, as in Ray."""
    n = len(blob)
    if n >= FUNCTION_SIZE_ERROR_BYTES:
        raise ValueError(
            f"The {kind} {name} is too large ({n // (1024 * 1024)} MiB > FUNCTION_SIZE_ERROR_THRESHOLD="
            f"{FUNCTION_SIZE_ERROR_BYTES // (1024 * 1024)} MiB). Check that its definition is not implicitly "
            "capturing a large array or other object in scope. Tip: use put() to put large objects in "
            "the object store and pass the ObjectRef.")
    if n > FUNCTION_SIZE_WARN_BYTES:
        import warnings
        warnings.warn(f"The {kind} {name} is very large ({n // (1024 * 1024)} MiB). Check that its definition "
                      "is not implicitly capturing a large array or other object in scope. Tip: use put() "
                      "to put large objects in the object store.", stacklevel=3)
