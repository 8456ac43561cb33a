"""``get_runtime_context()``: ids of the current job, task, node and worker."""
from __future__ import annotations

from ._private.worker import state


class _HexID:
    def __init__(self, b: bytes):
        self._b = b

    def hex(self):
        return self._b.hex()

    def binary(self):
        return self._b

    def __str__(self):
        return self._b.hex()

    def __repr__(self):
        return f"ID({self._b.hex()})"

    def __eq__(self, other):
        return isinstance(other, _HexID) and other._b == self._b

    def __hash__(self):
        return hash(self._b)


class RuntimeContext:
    def __init__(self, core):
        self._core = core

    def get_job_id(self) -> str:
        return self._core.job_id.to_bytes(4, "little").hex()

    @property
    def job_id(self):
        return _HexID(self._core.job_id.to_bytes(4, "little"))

    def get_task_id(self):
        tid = self._core.current_task_id
        return tid.hex() if tid is not None else None

    @property
    def task_id(self):
        tid = self._core.current_task_id
        return _HexID(tid) if tid is not None else None

    def get_node_id(self) -> str:
        return self._core.node_id.hex()

    @property
    def node_id(self):
        return _HexID(self._core.node_id)

    def get_worker_id(self) -> str:
        return self._core.worker_id.hex()

    @property
    def worker_id(self):
        return _HexID(self._core.worker_id)

    def get_actor_id(self):
        a = self._core.current_actor
        return a.actor_id.hex() if a is not None else None

    @property
    def actor_id(self):
        a = self._core.current_actor
        return _HexID(a.actor_id) if a is not None else None

    def get_actor_name(self):
        a = self._core.current_actor
        return getattr(a, "name", None) if a is not None else None

    @property
    def namespace(self):
        return getattr(self._core, "namespace", None)

    @property
    def was_current_actor_reconstructed(self):
        a = self._core.current_actor
        return bool(a is not None and getattr(a, "restarted", False))

    @property
    def current_actor(self):
        a = self._core.current_actor
        if a is None:
            raise RuntimeError("current_actor is only available inside an actor.")
        return a.handle()

    def is_canceled(self) -> bool:
        """Whether the task or actor call running in this thread was asked to cancel (sync and
        threaded actors check it to stop cooperatively).  Not available in async actors."""
        ex = getattr(self._core, "executor", None)
        actor = self._core.current_actor
        if actor is not None and actor.is_async:
            raise RuntimeError("This method is not supported in an async actor: in async actors a "
                               "cancelled call gets asyncio.CancelledError instead.")
        t = getattr(ex.tls, "task", None) if ex is not None else None
        if t is None:
            raise RuntimeError("is_canceled() can only be called inside a task or an actor method.")
        return bool(t.cancel_requested)

    def get_placement_group_id(self):
        pg = getattr(self._core, "current_pg", None)
        return pg[0].hex() if pg else None

    def get_assigned_resources(self):
        return dict(getattr(self._core, "assigned_resources", {}) or {})

    def get_accelerator_ids(self):
        return {"GPU": [str(g) for g in self._core.gpu_ids]}

    def get_runtime_env_string(self):
        import json
        return json.dumps(self.runtime_env)

    @property
    def runtime_env(self):
        """The runtime env this process runs with (a worker's) or gives its tasks (a driver's job env)."""
        from ._private.runtime_env import packaging
        from .runtime_env import RuntimeEnv
        spec = packaging.get_default()
        return RuntimeEnv(**((spec or {}).get("user") or {}))

    @property
    def gcs_address(self):
        return self._core.cfg.get("gcs_address")

    def get(self):
        return {"job_id": self.job_id, "node_id": self.node_id, "task_id": self.task_id,
                "actor_id": self.actor_id, "namespace": self.namespace}


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(state.require_core())
