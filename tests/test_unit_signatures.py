"""The fast signature check agrees with Python's own binding on random calls."""
import inspect
import random

import pytest

from luminary._private.worker import signatures as S

pytestmark = pytest.mark.timeout(60)


def _functions():
    def a(x): pass
    def b(x, y=1): pass
    def c(x, *args, z, **kw): pass
    def d(x, /, y, *, z=2): pass
    def e(*args, **kwargs): pass
    def f(): pass
    def g(x, y, *args): pass
    def h(a, b=1, *, c, d=4, **kw): pass
    return [a, b, c, d, e, f, g, h]


def test_fast_check_never_accepts_what_python_refuses_and_agrees_overall():
    rng = random.Random(0)
    names = ["x", "y", "z", "a", "b", "c", "d", "q"]
    for fn in _functions():
        data = S.signature_of(fn)
        fits = S._compile(data) if data else None
        for _ in range(2000):
            args = tuple(range(rng.randint(0, 4)))
            kwargs = {k: 1 for k in rng.sample(names, rng.randint(0, 3))}
            try:
                inspect.signature(fn).bind(*args, **kwargs)
                python_ok = True
            except TypeError:
                python_ok = False
            if fits is not None and fits(args, kwargs):
                assert python_ok, (fn.__name__, args, kwargs)
            try:
                S.check_call(data, args, kwargs, fn.__name__)
                ours_ok = True
            except TypeError:
                ours_ok = False
            assert ours_ok == python_ok, (fn.__name__, args, kwargs)
