"""cloudpickle, keeping each function's source file name.

cloudpickle 3 replaces the file name of every code object it pickles by value (functions and
classes defined in ``__main__``, closures) with ``"<dynamic-code>"``, so a remote traceback
would not say which file of the user's failed.  This pickler keeps the real name; line numbers
are kept by cloudpickle already.
"""
from __future__ import annotations

import io
import types
from collections import ChainMap

import cloudpickle
from cloudpickle import cloudpickle as _cp

_DYNAMIC = "<dynamic-code>"


def _code_reduce(code):
    fn, args = _cp._code_reduce(code)
    return fn, tuple(code.co_filename if type(a) is str and a == _DYNAMIC else a for a in args)


class Pickler(cloudpickle.Pickler):
    dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)


def dumps(obj, protocol=5, buffer_callback=None):
    with io.BytesIO() as f:
        Pickler(f, protocol=protocol, buffer_callback=buffer_callback).dump(obj)
        return f.getvalue()


def dump(obj, file, protocol=5, buffer_callback=None):
    Pickler(file, protocol=protocol, buffer_callback=buffer_callback).dump(obj)
