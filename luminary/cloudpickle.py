"""``ray.cloudpickle``: cloudpickle as Luminary uses it (function file names kept)."""
from cloudpickle import *  # noqa: F401,F403
from cloudpickle import CloudPickler, loads, load  # noqa: F401

from ._private.pickler import Pickler, dump, dumps  # noqa: F401
