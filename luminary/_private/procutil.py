"""Small process helpers: death signals, names, session directories."""
from __future__ import annotations

import ctypes
import os
import shutil
import signal

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover
    _libc = None


def die_with_parent(sig=signal.SIGKILL):
    """Ask the kernel to send ``sig`` to this process when its parent thread exits."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def set_name(name: str):
    """A readable process title (``ps``/``top``): ``luminary::worker``, ``luminary::gcs`` ..."""
    try:
        import setproctitle
        setproctitle.setproctitle(name)
    except ImportError:
        pass
    if _libc is not None:
        _libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def session_root() -> str:
    return os.path.join("/tmp", f"luminary-{os.getuid()}")


def cleanup_stale_sessions():
    """Remove session directories whose node process is gone (left by a SIGKILLed cluster)."""
    root = session_root()
    try:
        entries = os.listdir(root)
    except OSError:
        return
    for name in entries:
        path = os.path.join(root, name)
        pid = 0
        for marker in ("node.pid", "owner.pid"):
            try:
                with open(os.path.join(path, marker)) as f:
                    pid = int(f.read().strip() or 0)
                break
            except (OSError, ValueError):
                continue
        if not pid:
            continue
        if pid and not pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
