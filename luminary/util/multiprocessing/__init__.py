"""``luminary.util.multiprocessing``: the standard library's ``multiprocessing.Pool`` API on
Luminary actors, as ``ray.util.multiprocessing``."""
from multiprocessing import JoinableQueue, TimeoutError  # noqa: F401

from .pool import Pool  # noqa: F401

__all__ = ["Pool", "TimeoutError", "JoinableQueue"]
