"""The module path Ray's executor lives at in later Ray versions."""
from .executor import LuminaryExecutor as RayExecutor  # noqa: F401

__all__ = ["RayExecutor"]
