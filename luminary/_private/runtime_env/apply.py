"""The worker side: apply a node-prepared ctx in a worker freshly forked by the zygote.

Plain envs (env_vars, working_dir, py_modules) are applied in place right after the fork:
environment variables, cwd, and the package directories first on ``sys.path``.  A pip env needs
its own interpreter (packages the zygote already imported, e.g. numpy, could not be replaced
otherwise), so the forked child exec's the env's python, which reads the worker config from a
pipe (never a command line: it holds the cluster secret) and becomes the worker.
"""
from __future__ import annotations

import os
import sys

import msgpack


def apply_in_place(ctx):
    os.environ.update(ctx.get("env_vars") or {})
    if ctx.get("cwd"):
        os.chdir(ctx["cwd"])
    for p in reversed(ctx.get("paths") or ()):
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)
    importlib_invalidate()


def importlib_invalidate():
    import importlib
    importlib.invalidate_caches()


def prepare_worker(cfg):
    """Called first thing in a worker with ``cfg['renv_ctx']``; exec's a pip env's python (and
    does not return there), else applies the env here."""
    ctx = cfg.get("renv_ctx")
    if not ctx:
        return
    apply_in_place(ctx)
    if ctx.get("python") and not cfg.get("renv_exec"):
        _exec_python(ctx["python"], dict(cfg, renv_exec=True))


def _exec_python(python, cfg):
    blob = msgpack.packb(cfg, use_bin_type=True)
    r, w = os.pipe()
    if len(blob) > 60000:
        raise RuntimeError("worker config too large for its pipe")
    os.write(w, blob)
    os.close(w)
    os.set_inheritable(r, True)
    if cfg.get("arena_fd") is not None:
        os.set_inheritable(cfg["arena_fd"], True)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    code = (f"import sys; sys.path.append({pkg_parent!r}); "
            f"from luminary._private.runtime_env.apply import exec_main; exec_main({r})")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(python, [python, "-c", code])


def exec_main(fd):
    """Entry point of a pip env's worker after exec."""
    with os.fdopen(fd, "rb") as f:
        cfg = msgpack.unpackb(f.read(), raw=False)
    ctx = cfg.get("renv_ctx") or {}
    for p in reversed(ctx.get("paths") or ()):
        if p not in sys.path:
            sys.path.insert(0, p)
    from ..worker.worker_main import run_and_exit
    run_and_exit(cfg)
