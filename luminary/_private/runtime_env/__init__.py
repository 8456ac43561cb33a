"""Runtime environments: what a task, actor or job needs beyond the cluster's Python.

    submitter (driver, worker, job client)        node manager (each node)           worker
    validate ─▶ package dirs/zips (packaging) ─▶ GCS KV "runtime_env" pkg:<sha>
    resolve ─▶ wire spec {key, env_vars, working_dir, py_modules, pip}
       lease request carries the spec ───────────▶ EnvAgent.ensure(spec) (agent.py):
                                                   fetch + unzip into the node cache,
                                                   build the pip venv once per spec hash
                                                   ─▶ ctx {env_vars, cwd, paths, python}
                                                   pool of workers keyed by spec key ──fork──▶ apply(ctx)
                                                                                              (apply.py)

The wire spec is plain msgpack/JSON (strings, lists, dicts), so it also travels in an actor's
spec through the GCS and in a job's environment variable.  Its ``key`` (a hash of everything
but the user's original dict) names the worker pool.
"""
from __future__ import annotations

import hashlib
import json
import os

from ... import exceptions as exc

SUPPORTED = ("working_dir", "py_modules", "pip", "uv", "env_vars", "excludes", "config")
UNSUPPORTED = {
    "conda": "Luminary has no conda support: use 'pip' (a list of requirements or a requirements file), "
             "which builds a virtualenv per spec on each node",
    "container": "Luminary does not run workers in containers: start the nodes inside your image instead",
    "image_uri": "Luminary does not run workers in containers: start the nodes inside your image instead",
    "java_jars": "Luminary runs Python only",
    "nsight": "profilers are not supported",
    "mpi": "MPI runtime environments are not supported",
}
PKG_NS = "runtime_env"


def validate(env, where="runtime_env"):
    """Check a user runtime_env (dict or RuntimeEnv); return a plain dict (None for empty)."""
    if env is None:
        return None
    if not isinstance(env, dict):
        raise TypeError(f"{where} must be a dict (or luminary.runtime_env.RuntimeEnv), got {type(env).__name__}.")
    env = {k: v for k, v in dict(env).items() if v is not None}
    for k in env:
        if k in UNSUPPORTED:
            raise ValueError(f"{where} key {k!r} is not supported: {UNSUPPORTED[k]}.")
        if k not in SUPPORTED:
            raise ValueError(f"Unknown {where} key {k!r}. Supported keys: {', '.join(SUPPORTED)}.")
    ev = env.get("env_vars")
    if ev is not None:
        if not isinstance(ev, dict) or not all(isinstance(a, str) and isinstance(b, str) for a, b in ev.items()):
            raise TypeError(f"{where}['env_vars'] must be a dict of str to str, got {ev!r}.")
    wd = env.get("working_dir")
    if wd is not None and not isinstance(wd, (str, os.PathLike)):
        raise TypeError(f"{where}['working_dir'] must be a path to a local directory or .zip file, got {wd!r}.")
    pm = env.get("py_modules")
    if pm is not None and (not isinstance(pm, (list, tuple)) or
                           not all(isinstance(m, (str, os.PathLike)) or hasattr(m, "__file__") for m in pm)):
        raise TypeError(f"{where}['py_modules'] must be a list of local directories, .whl/.zip files or "
                        f"imported modules, got {pm!r}.")
    ex = env.get("excludes")
    if ex is not None and (not isinstance(ex, (list, tuple)) or not all(isinstance(p, str) for p in ex)):
        raise TypeError(f"{where}['excludes'] must be a list of gitignore-style patterns, got {ex!r}.")
    if "pip" in env and "uv" in env:
        raise ValueError(f"{where} may give 'pip' or 'uv', not both.")
    for key in ("pip", "uv"):
        if key in env:
            env[key] = _pip_spec(env[key], f"{where}[{key!r}]")
    cfg = env.get("config")
    if cfg is not None:
        if not isinstance(cfg, dict) or set(cfg) - {"setup_timeout_seconds", "eager_install"}:
            raise ValueError(f"{where}['config'] accepts only setup_timeout_seconds and eager_install, got {cfg!r}.")
        t = cfg.get("setup_timeout_seconds", 600)
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not (t == -1 or 0 < t < 1e7):
            raise ValueError(f"{where}['config']['setup_timeout_seconds'] must be a positive number or -1, got {t!r}.")
    return env or None


def _pip_spec(spec, where):
    """A list, a requirements file path, or Ray's dict form -> {"packages": [...], "options": [...]}."""
    options = []
    if isinstance(spec, dict):
        extra = set(spec) - {"packages", "pip_check", "pip_version", "pip_install_options", "options"}
        if extra:
            raise ValueError(f"{where} has unknown field(s) {sorted(extra)}; use packages, pip_check, "
                             "pip_version, pip_install_options.")
        options = list(spec.get("pip_install_options") or spec.get("options") or [])
        spec = spec.get("packages")
    if isinstance(spec, str):
        path = os.path.abspath(os.path.expanduser(spec))
        if not os.path.isfile(path):
            raise ValueError(f"{where} names the requirements file {spec!r}, which does not exist.")
        with open(path) as f:
            spec = [ln.strip() for ln in f if ln.strip() and not ln.strip().startswith("#")]
    if not isinstance(spec, (list, tuple)) or not all(isinstance(p, str) and p.strip() for p in spec):
        raise TypeError(f"{where} must be a list of requirement strings, a requirements file, or "
                        f"{{'packages': [...]}}, got {spec!r}.")
    if not all(isinstance(o, str) for o in options):
        raise TypeError(f"{where}['pip_install_options'] must be a list of strings.")
    return {"packages": [p.strip() for p in spec], "options": options}


def merge(parent, child):
    """Ray's merge of a job's (or parent's) runtime env with a task's or actor's: the child's fields
    replace the parent's, except env_vars, which are merged (the child's values win)."""
    if not parent:
        return child
    if not child:
        return parent
    out = dict(parent)
    out.update(child)
    if parent.get("env_vars") and child.get("env_vars"):
        out["env_vars"] = dict(parent["env_vars"], **child["env_vars"])
    return out


def wire_key(spec):
    body = {k: v for k, v in spec.items() if k not in ("key", "user", "config")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def merge_wire(parent, child):
    """Merge two resolved (wire) specs the same way; the result gets its own key."""
    if not parent:
        return child
    if not child:
        return parent
    out = merge({k: v for k, v in parent.items() if k != "key"}, {k: v for k, v in child.items() if k != "key"})
    out["user"] = merge(parent.get("user"), child.get("user"))
    out["key"] = wire_key(out)
    return out


def setup_error(message):
    return exc.RuntimeEnvSetupError(message)
