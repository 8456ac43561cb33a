"""Small process helpers: death signals, names, and this user's private local state.

Local state lives in one per-user root: ``$XDG_RUNTIME_DIR/luminary`` when that directory is
usable, else ``/tmp/luminary-<uid>``.  Another local user may create that path first, so the
root is checked before every use (ours, not a symlink, not writable by group or others) and
files in it are created exclusively (0600) and checked before they are read.  A PID read from a
file is signalled only while it is still the process that Luminary started (same start time
and title), so a recycled PID is left alone.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import stat

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15

# names of the directories Luminary creates directly under the root (see launch.new_session_dir)
SESSION_PREFIXES = ("session_", "node_", "driver_", "cluster_")

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover
    _libc = None


class UnsafePathError(PermissionError):
    """Local state that another user could have planted or could read: refused, never used."""


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


# --- which process is this PID? ------------------------------------------------------------------

def process_identity(pid: int):
    """``(start_time, title)`` of a live, non-zombie process of this user, or None.

    The start time is field 22 of /proc/<pid>/stat (clock ticks after boot): with the PID it
    names one process for the life of the machine.  The title is its command line (what
    ``set_name`` wrote, ``luminary::node`` for a node)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return None
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()   # the name (field 2) may hold spaces and ')'
    if fields[0] in (b"Z", b"X"):
        return None
    title = cmdline.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return int(fields[19]), title


def is_same_process(pid, start_time, title=None) -> bool:
    """True while ``pid`` is still the process that had ``start_time`` (and ``title``, if given)."""
    ident = process_identity(pid)
    if ident is None or ident[0] != start_time:
        return False
    return title is None or ident[1] == title


def signal_if_same(pid, start_time, title, sig, group=False) -> bool:
    """Send ``sig`` to ``pid`` (or its process group) only if it is still the recorded process."""
    if not is_same_process(pid, start_time, title):
        return False
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except OSError:
        return False
    return True


# --- the per-user root and the checks on what is in it --------------------------------------------

# sockets live at <root>/<session dir, 41 characters>/sockets/<16 hex>: a Unix socket path has at
# most 107 bytes, so a longer runtime directory falls back to /tmp
_MAX_ROOT_LEN = 40


def _usable_runtime_dir(path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (os.path.isabs(path) and len(os.path.join(path, "luminary")) <= _MAX_ROOT_LEN
            and stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and not st.st_mode & 0o022 and os.access(path, os.W_OK | os.X_OK))


def root_path() -> str:
    """Where this user's root is (not created, not checked)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and _usable_runtime_dir(xdg):
        return os.path.join(xdg, "luminary")
    return os.path.join("/tmp", f"luminary-{os.getuid()}")


def _unsafe(path, problem, root_hint=True):
    hint = (" Or set XDG_RUNTIME_DIR to a private directory of yours." if root_hint else "")
    return UnsafePathError(
        f"Refusing to use {path}: it {problem}. Another local user could have planted it to read "
        f"your cluster secret or to make `luminary stop` act on their files. Remove it (rm -rf {path}; "
        f"as root if it is not yours) and run again.{hint}")


def check_private_dir(path, root_hint=False):
    """Raise UnsafePathError unless ``path`` is a real directory of ours that no one else can write."""
    st = os.lstat(path)
    uid = os.getuid()
    if stat.S_ISLNK(st.st_mode):
        raise _unsafe(path, "is a symbolic link", root_hint)
    if not stat.S_ISDIR(st.st_mode):
        raise _unsafe(path, "is not a directory", root_hint)
    if st.st_uid != uid:
        raise _unsafe(path, f"is owned by uid {st.st_uid}, not by you (uid {uid})", root_hint)
    if st.st_mode & 0o022:
        raise _unsafe(path, f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})", root_hint)
    return path


def private_dir(path, root_hint=False) -> str:
    """Create ``path`` (0700) if missing, then check it; returns it."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    return check_private_dir(path, root_hint)


def session_root() -> str:
    """This user's root, created 0700 if missing and checked on every call."""
    return private_dir(root_path(), root_hint=True)


def state_dir(name) -> str:
    """A checked subdirectory of the root (``nodes``, ``clusters``)."""
    return private_dir(os.path.join(session_root(), name))


def write_private_file(path, data, replace=False):
    """Create ``path`` exclusively (O_EXCL|O_NOFOLLOW, mode 0600) and write ``data`` (bytes or str).

    With ``replace``, the data goes to a fresh temporary file renamed over ``path``."""
    if isinstance(data, str):
        data = data.encode()
    target = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp" if replace else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    if replace:
        os.replace(target, path)
    return path


def read_private_file(path, what="file") -> bytes:
    """The bytes of ``path`` after checking it is a regular file of ours, mode 0600 or stricter,
    and not a symlink; UnsafePathError otherwise (FileNotFoundError when it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        if os.path.islink(path):
            raise _unsafe(path, f"({what}) is a symbolic link", False) from None
        raise e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _unsafe(path, f"({what}) is not a regular file", False)
        if st.st_uid != os.getuid():
            raise _unsafe(path, f"({what}) is owned by uid {st.st_uid}, not by you (uid {os.getuid()})", False)
        if st.st_mode & 0o077:
            raise _unsafe(path, f"({what}) is readable or writable by other users "
                                f"(mode {stat.S_IMODE(st.st_mode):04o}, expected 0600)", False)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def inside(root, path) -> bool:
    """True if ``path`` is strictly inside ``root`` once both are resolved, and is not a symlink."""
    if not isinstance(path, str) or not path or os.path.islink(path):
        return False
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real != real_root and real.startswith(real_root + os.sep)


def remove_session_dir(path, root=None) -> bool:
    """Remove a session directory directly under the (checked) root; refuse any other path."""
    root = root or session_root()
    real = os.path.realpath(path) if isinstance(path, str) and path else ""
    if (not inside(root, path) or os.path.dirname(real) != os.path.realpath(root)
            or not os.path.basename(real).startswith(SESSION_PREFIXES)):
        return False
    shutil.rmtree(real, ignore_errors=True)
    return True


# --- who owns a session directory -------------------------------------------------------------------

def write_pid_marker(path, pid=None):
    """``node.pid`` / ``owner.pid``: the PID and start time of the process a session belongs to."""
    pid = pid or os.getpid()
    ident = process_identity(pid)
    write_private_file(path, json.dumps({"pid": pid, "start_time": ident[0] if ident else None}), replace=True)


def _marker_alive(path):
    """True/False for a session's marker; None when there is no marker we can trust."""
    for marker in ("node.pid", "owner.pid"):
        try:
            raw = read_private_file(os.path.join(path, marker), marker)
        except OSError:
            continue
        try:
            rec = json.loads(raw)
            pid, start = int(rec["pid"]), rec["start_time"]
        except (ValueError, KeyError, TypeError):
            return None
        return pid_alive(pid) if start is None else is_same_process(pid, start)
    return None


def cleanup_stale_sessions():
    """Remove session directories whose process is gone (left by a SIGKILLed cluster)."""
    root = session_root()
    try:
        entries = os.listdir(root)
    except OSError:
        return
    for name in entries:
        if not name.startswith(SESSION_PREFIXES):
            continue
        path = os.path.join(root, name)
        try:
            check_private_dir(path)
        except OSError:
            continue          # not ours or not a directory: never touched
        if _marker_alive(path) is False:
            remove_session_dir(path, root)


def flush_and_exit(code):
    """End this process at once (no interpreter teardown), after its output is written."""
    import sys
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(code)
