"""The node side: turn a wire spec into something a worker can apply (``ctx``), once per node.

    packages  <root>/runtime_resources/pkgs/<sha>/     fetched from the GCS KV, unzipped
    pip envs  <root>/runtime_resources/venvs/<hash>/   python -m venv --system-site-packages,
                                                       plus a .pth that adds the node's own
                                                       site-packages (so the env inherits Luminary
                                                       and the base packages, as Ray's do), then
                                                       pip install (with the node's pip, --python)

Both caches are content-addressed and shared by the nodes of this user on the machine; a
directory appears under its final name only when complete (unzip: rename; venv: a ``.ready``
marker written under an flock), so concurrent nodes never see half an environment.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import site
import subprocess
import sys
import time
import zipfile

from ... import exceptions as exc
from .. import procutil
from .packaging import URI_PREFIX

logger = logging.getLogger(__name__)
DEFAULT_SETUP_TIMEOUT_S = 600.0


def cache_root():
    return procutil.state_dir("runtime_resources")


class EnvAgent:
    def __init__(self, fetch):
        """``fetch(sha)`` is a coroutine returning the package's zip bytes or None."""
        self.fetch = fetch
        self.ctxs = {}        # spec key -> ctx
        self.pending = {}     # spec key -> future of ctx
        self.used = {}        # spec key -> last use (monotonic)

    async def ensure(self, spec):
        key = spec["key"]
        self.used[key] = time.monotonic()
        ctx = self.ctxs.get(key)
        if ctx is not None:
            return ctx
        fut = self.pending.get(key)
        if fut is None:
            fut = self.pending[key] = asyncio.ensure_future(self._build(spec))
            fut.add_done_callback(lambda f, k=key: self.pending.pop(k, None))
        ctx = await asyncio.shield(fut)
        self.ctxs[key] = ctx
        return ctx

    def forget(self, key):
        self.ctxs.pop(key, None)

    async def _build(self, spec):
        timeout = float((spec.get("config") or {}).get("setup_timeout_seconds", DEFAULT_SETUP_TIMEOUT_S))
        if timeout <= 0:
            timeout = None
        try:
            return await asyncio.wait_for(self._build_inner(spec), timeout)
        except asyncio.TimeoutError:
            raise exc.RuntimeEnvSetupError(f"Setting up the runtime_env took longer than setup_timeout_seconds="
                                           f"{timeout:g}. Raise it in runtime_env['config'].") from None

    async def _build_inner(self, spec):
        loop = asyncio.get_event_loop()
        root = await loop.run_in_executor(None, cache_root)
        ctx = {"key": spec["key"], "env_vars": dict(spec.get("env_vars") or {}), "cwd": None, "paths": [],
               "python": None, "renv": spec}
        if spec.get("working_dir"):
            d = await self._package(root, spec["working_dir"])
            ctx["cwd"] = _single_top_dir(d)
            ctx["paths"].append(ctx["cwd"])
        for uri in spec.get("py_modules") or ():
            ctx["paths"].append(await self._package(root, uri))
        if spec.get("pip"):
            ctx["python"] = await loop.run_in_executor(None, build_venv, root, spec["pip"])
        return ctx

    async def _package(self, root, uri):
        if not uri.startswith(URI_PREFIX):
            raise exc.RuntimeEnvSetupError(f"unknown package URI {uri!r}")
        sha = uri[len(URI_PREFIX):]
        dest = os.path.join(root, "pkgs", sha)
        if os.path.isdir(dest):
            return dest
        data = await self.fetch(sha)
        if data is None:
            raise exc.RuntimeEnvSetupError(f"The package {uri} is not in the cluster (was it uploaded to this "
                                           "cluster? packages live in the GCS of the cluster they were sent to).")
        await asyncio.get_event_loop().run_in_executor(None, _unzip, data, dest)
        return dest


def _unzip(data, dest):
    os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
    tmp = f"{dest}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                name = os.path.normpath(info.filename)
                if name.startswith("..") or os.path.isabs(name):
                    raise exc.RuntimeEnvSetupError(f"a package holds the unsafe path {info.filename!r}")
                zf.extract(info, tmp)
                mode = (info.external_attr >> 16) & 0o777
                if mode and not info.is_dir():
                    os.chmod(os.path.join(tmp, name), mode | 0o600)
        os.makedirs(tmp, exist_ok=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not os.path.isdir(dest):     # someone else finished first: theirs is identical
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _single_top_dir(d):
    """A .zip working_dir holding one top-level directory uses that directory (as Ray does)."""
    try:
        entries = [e for e in os.listdir(d) if e != "__MACOSX"]
    except OSError:
        return d
    if len(entries) == 1 and os.path.isdir(os.path.join(d, entries[0])):
        return os.path.join(d, entries[0])
    return d


def pip_hash(pip):
    return hashlib.sha256(json.dumps([sys.version, pip], sort_keys=True).encode()).hexdigest()[:24]


def build_venv(root, pip):
    """Create (once, under a lock) the virtualenv for a pip spec; return its python."""
    venvs = os.path.join(root, "venvs")
    os.makedirs(venvs, mode=0o700, exist_ok=True)
    d = os.path.join(venvs, pip_hash(pip))
    python = os.path.join(d, "bin", "python")
    ready = os.path.join(d, ".ready")
    with open(d + ".lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        if os.path.exists(ready):
            os.utime(ready)
            return python
        shutil.rmtree(d, ignore_errors=True)
        try:
            _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", d], "creating the virtualenv")
            purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     capture_output=True, text=True, check=True).stdout.strip()
            inherit = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
            pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
            with open(os.path.join(purelib, "_luminary_base.pth"), "w") as f:
                # the node's own environment comes after the env's packages: Luminary, its
                # dependencies and everything the base environment has stay importable
                f.write(f"import site; list(map(site.addsitedir, {inherit!r}))\n{pkg_parent}\n")
            _run([sys.executable, "-m", "pip", "--python", python, "install", "--disable-pip-version-check",
                  "--no-input", *pip.get("options", ()), *pip["packages"]], "pip install")
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        with open(ready, "w") as f:
            f.write(json.dumps(pip))
    return python


def _run(cmd, what):
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip().splitlines()
        tail = "\n".join(out[-25:])
        raise exc.RuntimeEnvSetupError(f"Failed to set up the runtime_env's pip environment: {what} exited with "
                                       f"{proc.returncode}. Its output ends with:\n{tail}")
