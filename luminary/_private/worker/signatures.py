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


_checkers: dict = {}


def _compile(data):
    """A fast ``fits(args, kwargs) -> bool`` for signature ``data`` (a call that fits costs a few
    comparisons; only a call that does not goes through inspect for the exact message)."""
    PO, PK, VP, KO, VK = (int(k) for k in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD, _P.VAR_POSITIONAL,
                                          _P.KEYWORD_ONLY, _P.VAR_KEYWORD))
    positional = [(n, k, d) for n, k, d in data if k in (PO, PK)]
    n_pos = len(positional)
    index = {n: i for i, (n, k, d) in enumerate(positional) if k == PK}
    posonly = {n for n, k, d in positional if k == PO}
    kwonly = {n for n, k, d in data if k == KO}
    required_pos = [(i, n) for i, (n, k, d) in enumerate(positional) if not d]
    required_kw = [n for n, k, d in data if k == KO and not d]
    varargs = any(k == VP for _, k, _ in data)
    varkw = any(k == VK for _, k, _ in data)
    last_required = max((i for i, _ in required_pos), default=-1)

    def fits(args, kwargs):
        n = len(args)
        if n > n_pos and not varargs:
            return False
        if not kwargs:
            return n > last_required and not required_kw
        for k in kwargs:
            i = index.get(k)
            if i is not None:
                if i < n:
                    return False                  # given positionally too
            elif k not in kwonly and (not varkw or k in posonly):
                return False
        for i, name in required_pos:
            if i >= n and name not in kwargs:
                return False
        for name in required_kw:
            if name not in kwargs:
                return False
        return True
    return fits


def check_call(data, args, kwargs, what):
    """Raise TypeError (naming ``what``) when ``args``/``kwargs`` do not fit signature ``data``."""
    if data is None:
        return
    if not data:
        if args or kwargs:
            raise TypeError(f"{what}() takes no arguments, but got {len(args)} positional and "
                            f"{len(kwargs)} keyword argument(s).")
        return
    entry = _checkers.get(id(data))
    if entry is None or entry[0] is not data:
        entry = (data, _compile(data))
        if len(_checkers) > 4096:
            _checkers.clear()
        _checkers[id(data)] = entry
    if entry[1](args, kwargs):
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
