"""``luminary.util``: ActorPool, queue, multiprocessing and cluster utilities, as in ``ray.util``."""
from __future__ import annotations

from .._private.worker.actor import list_named_actors  # noqa: F401
from .actor_pool import ActorPool  # noqa: F401

__all__ = ["ActorPool", "list_named_actors"]
