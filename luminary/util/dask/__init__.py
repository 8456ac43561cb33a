"""``luminary.util.dask``: run Dask graphs as Luminary tasks ("Dask on Ray").

    import dask
    from luminary.util.dask import ray_dask_get, enable_dask_on_ray
    dask.compute(x, scheduler=ray_dask_get)      # one computation
    enable_dask_on_ray()                          # every computation (or: with enable_dask_on_ray():)
"""
from __future__ import annotations

try:
    import dask  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("luminary.util.dask needs dask: pip install dask") from e

from .scheduler import (disable_dask_on_ray, enable_dask_on_ray, luminary_dask_get, ray_dask_get,
                        ray_dask_get_sync)

__all__ = ["ray_dask_get", "ray_dask_get_sync", "luminary_dask_get", "enable_dask_on_ray",
           "disable_dask_on_ray"]
