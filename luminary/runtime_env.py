"""``luminary.runtime_env.RuntimeEnv``, as in Ray.  Accepted and validated as a dict; Luminary
does not build environments yet: workers run with the driver's interpreter, environment and
``sys.path`` (so code importable by the driver is importable by tasks)."""
from __future__ import annotations


class RuntimeEnv(dict):
    def __init__(self, *, py_modules=None, working_dir=None, pip=None, conda=None, env_vars=None, **kwargs):
        super().__init__()
        for k, v in dict(py_modules=py_modules, working_dir=working_dir, pip=pip, conda=conda,
                         env_vars=env_vars, **kwargs).items():
            if v is not None:
                self[k] = v
