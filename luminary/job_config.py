"""``luminary.job_config.JobConfig``, as in Ray.  Luminary reads ``ray_namespace``; the other
fields are accepted and kept (runtime environments are not applied yet: workers use the
driver's environment and code path)."""
from __future__ import annotations


class JobConfig:
    def __init__(self, jvm_options=None, code_search_path=None, runtime_env=None, client_job=False,
                 metadata=None, ray_namespace=None, default_actor_lifetime="non_detached", _py_driver_sys_path=None):
        self.jvm_options = jvm_options or []
        self.code_search_path = code_search_path or []
        self.runtime_env = runtime_env or {}
        self.metadata = metadata or {}
        self.ray_namespace = ray_namespace
        self.default_actor_lifetime = default_actor_lifetime

    def set_runtime_env(self, runtime_env, validate=False):
        self.runtime_env = runtime_env or {}

    def set_ray_namespace(self, ray_namespace):
        self.ray_namespace = ray_namespace
