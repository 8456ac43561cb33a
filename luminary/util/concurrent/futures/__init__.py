"""``luminary.util.concurrent.futures``: a ``concurrent.futures.Executor`` whose calls are tasks.

    from luminary.util.concurrent.futures import LuminaryExecutor
    with LuminaryExecutor() as ex:
        print(list(ex.map(pow, [2, 3], [5, 2])))      # [32, 9], computed in worker processes
"""
from .executor import LuminaryExecutor, LuminaryFuture

RayExecutor = LuminaryExecutor

__all__ = ["LuminaryExecutor", "LuminaryFuture", "RayExecutor"]
