"""``luminary.runtime_env.RuntimeEnv``, as in Ray: a dict of runtime environment fields
(``working_dir``, ``py_modules``, ``pip``/``uv``, ``env_vars``, ``excludes``, ``config``), checked
when it is built.  See luminary/_private/runtime_env/ for how environments are shipped and applied."""
from __future__ import annotations


class RuntimeEnv(dict):
    def __init__(self, *, py_modules=None, working_dir=None, pip=None, conda=None, env_vars=None, **kwargs):
        super().__init__()
        for k, v in dict(py_modules=py_modules, working_dir=working_dir, pip=pip, conda=conda,
                         env_vars=env_vars, **kwargs).items():
            if v is not None:
                self[k] = v
        from ._private.runtime_env import validate
        validate(dict(self), "RuntimeEnv")

    def to_dict(self):
        return dict(self)


class RuntimeEnvConfig(dict):
    def __init__(self, setup_timeout_seconds=600, eager_install=True):
        super().__init__(setup_timeout_seconds=setup_timeout_seconds, eager_install=eager_install)
