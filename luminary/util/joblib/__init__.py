"""``luminary.util.joblib``: run ``joblib.Parallel`` calls as Luminary tasks.

    from luminary.util.joblib import register_ray
    register_ray()
    with joblib.parallel_backend("ray"):          # or "luminary"
        results = Parallel(n_jobs=-1)(delayed(f)(i) for i in range(100))
"""
from __future__ import annotations

__all__ = ["register_ray", "register_luminary"]


def register_ray():
    """Register the Luminary backend with joblib as ``"ray"`` (Ray's name) and ``"luminary"``."""
    try:
        from joblib.parallel import register_parallel_backend
    except ImportError as e:
        raise ImportError("luminary.util.joblib needs joblib: pip install joblib") from e
    from .backend import LuminaryBackend
    register_parallel_backend("ray", LuminaryBackend)
    register_parallel_backend("luminary", LuminaryBackend)


register_luminary = register_ray
