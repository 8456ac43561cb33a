"""Packaging on the submitting side: local directories, .zip and .whl files become content-hashed
zip packages uploaded once into the cluster (the GCS KV, namespace ``runtime_env``, key
``pkg:<sha>``), and a user runtime_env becomes a wire spec that names them.

A directory is zipped deterministically (sorted names, fixed timestamps), so the same content
gives the same hash on every machine and is uploaded and unpacked once.  ``excludes`` and the
``.gitignore`` files found in the directory are honoured (gitignore-style patterns).
"""
from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import threading
import zipfile

from . import setup_error, validate, wire_key  # noqa: F401  (setup_error re-exported)

MAX_PACKAGE_BYTES = 256 << 20
URI_PREFIX = "luminary_pkg://"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {".git", "__pycache__"}


class _Patterns:
    """gitignore-style patterns relative to one directory (``base``, relative to the package root)."""

    def __init__(self, base, lines):
        self.base = base
        self.rules = []
        for ln in lines:
            ln = ln.strip()
            if not ln or ln.startswith("#") or ln.startswith("!"):
                continue
            dir_only = ln.endswith("/")
            ln = ln.rstrip("/")
            anchored = "/" in ln
            self.rules.append((ln.lstrip("/"), dir_only, anchored))

    def match(self, rel, is_dir):
        if self.base:
            if not rel.startswith(self.base + "/"):
                return False
            rel = rel[len(self.base) + 1:]
        name = rel.rsplit("/", 1)[-1]
        for pat, dir_only, anchored in self.rules:
            if dir_only and not is_dir:
                continue
            if fnmatch.fnmatchcase(rel if anchored else name, pat):
                return True
            if anchored and pat.startswith("**/") and fnmatch.fnmatchcase(rel, pat[3:]):
                return True
        return False


def _read_gitignore(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []


def zip_dir(root, excludes=(), prefix="", what="working_dir"):
    """Deterministic zip bytes of ``root`` (entries under ``prefix``), honouring excludes and .gitignore."""
    root = os.path.abspath(root)
    rules = [_Patterns("", excludes or ())]
    files = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        if ".gitignore" in filenames:
            rules.append(_Patterns(rel_dir, _read_gitignore(os.path.join(dirpath, ".gitignore"))))

        def rel(n):
            return f"{rel_dir}/{n}" if rel_dir else n
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS
                             and not any(r.match(rel(d), True) for r in rules))
        for n in sorted(filenames):
            if any(r.match(rel(n), False) for r in rules):
                continue
            p = os.path.join(dirpath, n)
            if not os.path.isfile(p):
                continue
            total += os.path.getsize(p)
            if total > MAX_PACKAGE_BYTES:
                raise ValueError(f"The {what} {root} holds more than {MAX_PACKAGE_BYTES >> 20} MiB of files. "
                                 "Leave large data out with 'excludes' (gitignore-style patterns) or a .gitignore, "
                                 "and read it from shared storage instead.")
            files.append((rel(n), p))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, p in sorted(files):
            info = zipfile.ZipInfo(prefix + name, _ZIP_TIME)
            info.external_attr = (os.stat(p).st_mode & 0o777 | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(p, "rb") as f:
                zf.writestr(info, f.read())
    return buf.getvalue()


def _read_file(path, what):
    size = os.path.getsize(path)
    if size > MAX_PACKAGE_BYTES:
        raise ValueError(f"The {what} {path} is {size >> 20} MiB, over the {MAX_PACKAGE_BYTES >> 20} MiB limit.")
    with open(path, "rb") as f:
        data = f.read()
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ValueError(f"The {what} {path} is not a zip file.")
    return data


class GcsUploader:
    """Uploads packages through a core worker's GCS connection (drivers and workers)."""

    def __init__(self, core):
        self.core = core

    def has(self, sha):
        keys = self.core.call_sync_gcs("kv_keys", {"prefix": f"pkg:{sha}".encode(), "ns": "runtime_env"}, timeout=60)
        return bool(keys)

    def put(self, sha, data):
        self.core.call_sync_gcs("kv_put", {"key": f"pkg:{sha}".encode(), "value": data, "ns": "runtime_env",
                                           "overwrite": False}, timeout=300)


_uploaded = set()
_lock = threading.Lock()


def _upload(uploader, data):
    sha = hashlib.sha256(data).hexdigest()[:40]
    with _lock:
        if sha not in _uploaded:
            if not uploader.has(sha):
                uploader.put(sha, data)
            _uploaded.add(sha)
    return URI_PREFIX + sha


def _check_uri(v, what):
    if v.startswith(URI_PREFIX):
        sha = v[len(URI_PREFIX):]
        if not sha or not all(c in "0123456789abcdef" for c in sha):
            raise ValueError(f"The {what} {v!r} is not a valid package URI.")
        return v
    raise ValueError(f"The {what} {v!r} is a remote URI; Luminary ships local code only: give a local "
                     "directory or .zip file (it is uploaded into the cluster for you).")


def package_working_dir(path, excludes, uploader):
    path = os.fspath(path)
    if "://" in path:
        return _check_uri(path, "working_dir")
    p = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(p):
        return _upload(uploader, zip_dir(p, excludes))
    if os.path.isfile(p) and p.endswith(".zip"):
        return _upload(uploader, _read_file(p, "working_dir"))
    raise ValueError(f"The working_dir {path!r} does not exist or is not a directory or .zip file "
                     f"(relative paths are taken from {os.getcwd()}).")


def package_module(m, excludes, uploader):
    if hasattr(m, "__file__") and not isinstance(m, (str, os.PathLike)):
        f = m.__file__
        if f is None:
            raise ValueError(f"The module {m.__name__!r} in py_modules has no file to ship (a namespace package?).")
        m = os.path.dirname(f) if os.path.basename(f) == "__init__.py" else f
    path = os.fspath(m)
    if "://" in path:
        return _check_uri(path, "py_modules entry")
    p = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(p):
        return _upload(uploader, zip_dir(p, excludes, prefix=os.path.basename(p.rstrip("/")) + "/",
                                         what="py_modules directory"))
    if os.path.isfile(p) and (p.endswith(".whl") or p.endswith(".zip")):
        return _upload(uploader, _read_file(p, "py_modules file"))
    if os.path.isfile(p) and p.endswith(".py"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf, open(p, "rb") as f:
            zf.writestr(zipfile.ZipInfo(os.path.basename(p), _ZIP_TIME), f.read())
        return _upload(uploader, buf.getvalue())
    raise ValueError(f"The py_modules entry {path!r} does not exist or is not a directory, .py, .whl or .zip file.")


def _absolute_requirement(req):
    """A requirement naming a local file or directory (a wheel, a project) is made absolute, since
    it is installed from another working directory."""
    head = req.split()[0] if req.split() else req
    if not head.startswith("-") and os.path.exists(head) and ("/" in head or head.endswith((".whl", ".tar.gz", ".zip"))):
        return req.replace(head, os.path.abspath(head), 1)
    return req


def user_form(env):
    """The validated dict in JSON-able form (module objects become paths)."""
    out = dict(env)
    if "py_modules" in out:
        out["py_modules"] = [getattr(m, "__file__", None) or os.fspath(m) if not isinstance(m, str) else m
                             for m in out["py_modules"]]
    if "working_dir" in out:
        out["working_dir"] = os.fspath(out["working_dir"])
    return out


def resolve(env, uploader):
    """User runtime_env (validated here) -> wire spec, uploading local packages once."""
    env = validate(env)
    if not env:
        return None
    spec = {}
    if env.get("env_vars"):
        spec["env_vars"] = dict(env["env_vars"])
    excludes = env.get("excludes") or ()
    if env.get("working_dir") is not None:
        spec["working_dir"] = package_working_dir(env["working_dir"], excludes, uploader)
    if env.get("py_modules"):
        spec["py_modules"] = [package_module(m, excludes, uploader) for m in env["py_modules"]]
    pip = env.get("pip") or env.get("uv")
    if pip:
        spec["pip"] = {"packages": [_absolute_requirement(r) for r in pip["packages"]], "options": pip["options"]}
    if env.get("config"):
        spec["config"] = dict(env["config"])
    spec["user"] = user_form(env)
    spec["key"] = wire_key(spec)
    return spec


_resolved = {}


def resolve_cached(env, uploader):
    """resolve(), remembered per process by the env's JSON form (a directory is packaged once)."""
    try:
        k = json.dumps(user_form(env) if isinstance(env, dict) else env, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return resolve(env, uploader)
    spec = _resolved.get(k)
    if spec is None:
        spec = _resolved[k] = resolve(env, uploader)
    return spec


# --- the process's default env and per-call specs ------------------------------------------------
_default = [None]          # this process's job env (driver: init's; worker: the env it runs in)
_merged = {}


def set_default(spec):
    _default[0] = spec


def reset():
    """A new cluster (shutdown, then init): nothing is uploaded there yet."""
    _default[0] = None
    _uploaded.clear()
    _resolved.clear()
    _merged.clear()


def get_default():
    return _default[0]


def for_call(core, user_env):
    """The wire spec a task or actor submitted from this process runs with (None: plain workers)."""
    base = _default[0]
    if user_env is None:
        return base
    child = resolve_cached(user_env, GcsUploader(core))
    if base is None or child is None:
        return child or base
    k = (base["key"], child["key"])
    spec = _merged.get(k)
    if spec is None:
        from . import merge_wire
        spec = _merged[k] = merge_wire(base, child)
    return spec
