"""``luminary.actor``: the actor classes and ``exit_actor``, as in ``ray.actor``."""
from ._private.worker.actor import ActorClass, ActorHandle, ActorMethod, exit_actor

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "exit_actor"]
