"""Ray's public ID classes (``ray.TaskID``, ``ray.ActorID``, ...): thin wrappers of bytes."""
from __future__ import annotations


class BaseID:
    __slots__ = ("_b",)
    SIZE = 16

    def __init__(self, id_bytes: bytes):
        if not isinstance(id_bytes, (bytes, bytearray)):
            raise TypeError(f"{type(self).__name__} needs bytes, got {type(id_bytes).__name__}")
        self._b = bytes(id_bytes)

    @classmethod
    def from_hex(cls, hex_id: str):
        return cls(bytes.fromhex(hex_id))

    @classmethod
    def from_binary(cls, id_bytes: bytes):
        return cls(id_bytes)

    @classmethod
    def nil(cls):
        return cls(b"\xff" * cls.SIZE)

    @classmethod
    def size(cls):
        return cls.SIZE

    def is_nil(self):
        return self._b == b"\xff" * len(self._b)

    def binary(self):
        return self._b

    def hex(self):
        return self._b.hex()

    def __eq__(self, other):
        return type(other) is type(self) and other._b == self._b

    def __hash__(self):
        return hash((type(self).__name__, self._b))

    def __repr__(self):
        return f"{type(self).__name__}({self.hex()})"

    def __reduce__(self):
        return (type(self), (self._b,))


class UniqueID(BaseID):
    pass


class TaskID(BaseID):
    SIZE = 12


class ActorID(BaseID):
    pass


class ActorClassID(BaseID):
    pass


class NodeID(BaseID):
    pass


class WorkerID(BaseID):
    pass


class JobID(BaseID):
    SIZE = 4


class FunctionID(BaseID):
    pass


class PlacementGroupID(BaseID):
    pass


class ClusterID(BaseID):
    pass
