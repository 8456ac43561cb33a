"""The public functions of ``luminary`` (re-exported by ``luminary/__init__.py``)."""
from __future__ import annotations

import atexit
import gc
import logging
import os
import time

from .. import ids, logdedup
from . import state
from .core import DRIVER, CoreWorker
from .object_ref import ObjectRef, ObjectRefGenerator

logger = logging.getLogger(__name__)

# keywords ray.init accepts; those Luminary does not act on are accepted and documented in the README
_INIT_KEYWORDS = {
    "address", "num_cpus", "num_gpus", "resources", "labels", "object_store_memory", "local_mode",
    "ignore_reinit_error", "include_dashboard", "dashboard_host", "dashboard_port", "job_config",
    "configure_logging", "logging_level", "logging_format", "logging_config", "log_to_driver",
    "namespace", "runtime_env", "storage", "enable_resource_isolation", "system_reserved_cpu",
    "system_reserved_memory", "_cgroup_path", "_system_config", "_temp_dir", "_node_ip_address",
    "_plasma_directory", "_object_spilling_directory", "_redis_password", "_enable_object_reconstruction",
    "_metrics_export_port", "_memory", "_node_name", "_driver_object_store_memory", "_tracing_startup_hook",
    "_skip_env_hook", "_worker_type",
}


class _Session:
    """What init() started: the node process and its session directory."""

    def __init__(self):
        self.proc = None
        self.session_dir = None
        self.info = None
        self.namespace = None
        self.owns_cluster = False


_session = None


class RayContext(dict):
    """Returned by init(); usable as a context manager that shuts the cluster down."""

    def __init__(self, info, login_url=None):
        super().__init__(info)
        self.address_info = info
        # as Ray: HOST:PORT of the dashboard ('' when none); Luminary's pages also need a login
        self.dashboard_url = info.get("webui_url")
        self.dashboard_login_url = login_url

    def __enter__(self):
        return self

    def __exit__(self, *a):
        shutdown()

    def disconnect(self):
        shutdown()


def init(address=None, *, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None,
         ignore_reinit_error=False, namespace=None, log_to_driver=True, **kwargs):
    """Start a local cluster (or, with ``address``, connect to a running one) and connect to it."""
    global _session
    unknown = set(kwargs) - _INIT_KEYWORDS
    if unknown:
        # Ray raises RuntimeError here (not TypeError); programs may catch it
        raise RuntimeError(f"Unknown keyword argument(s): {', '.join(sorted(unknown))}. "
                           "See luminary.init's documentation (README) for the accepted keywords.")
    if state.core is not None:
        if ignore_reinit_error:
            info, login = (_session.info or {}).get("context", ({}, None)) if _session else ({}, None)
            return RayContext(info, login)
        raise RuntimeError("Maybe you called luminary.init twice by accident? This error can be suppressed "
                           "by passing in 'ignore_reinit_error=True' or by calling 'luminary.shutdown()' "
                           "prior to 'luminary.init()'.")
    from .options import check_node_resources
    log_settings = logdedup.settings_from_env(os.environ)    # worker output on this driver (bad values raise)
    check_node_resources(num_cpus, num_gpus, resources, kwargs.get("_memory"), object_store_memory)
    if kwargs.get("local_mode"):
        logger.warning("local_mode is deprecated in Ray and not supported by Luminary; starting a normal local cluster.")
    if address in ("local", None) or address == "":
        env_addr = None if address == "local" else os.environ.get("LUMINARY_ADDRESS") or os.environ.get("RAY_ADDRESS")
        if env_addr and env_addr != "local":
            address = env_addr
    if address not in (None, "local", ""):
        from .connect import connect_existing
        sess, cfg = connect_existing(address)
    else:
        sess, cfg = _start_local(num_cpus, num_gpus, resources, object_store_memory, kwargs)
    sess.namespace = namespace or f"anon-{os.urandom(4).hex()}"
    _session = sess
    cfg["log_to_driver"] = log_to_driver
    system = kwargs.get("_system_config") or {}
    if not isinstance(system, dict):
        raise TypeError("_system_config must be a dict")
    mode = system.get("infeasible_tasks", "wait")
    if mode not in ("wait", "fail"):
        raise ValueError("_system_config['infeasible_tasks'] must be 'wait' (the default, as in Ray: wait for a "
                         "node with the resources to join) or 'fail' (raise TaskUnschedulableError at get)")
    cfg["infeasible_tasks"] = mode
    cfg["log_settings"] = log_settings
    core = CoreWorker(DRIVER, cfg)
    try:
        core.start("register_driver")
        core.job_id = core.call_sync_gcs("next_job_id", None, timeout=10)
    except Exception as e:
        core.stop()
        _stop_session(sess)
        _session = None
        raise RuntimeError(f"Could not connect to the cluster: {e}") from e
    core.namespace = sess.namespace
    state.core = core
    if kwargs.get("configure_logging", True):
        _configure_logging(kwargs.get("logging_level", logging.INFO), kwargs.get("logging_format"))
    try:
        _set_job_runtime_env(core, kwargs)
    except BaseException:
        shutdown()
        raise
    atexit.register(_shutdown_at_exit)
    _freeze_heap()
    webui = (sess.info or {}).get("job_api") if sess.owns_cluster else None
    login = None
    if webui:
        from ..dashboard import login_url
        login = login_url(webui, cfg["secret"])
        logger.info("Started a local Luminary instance. View the dashboard at http://%s (log in with the "
                    "one-time link %s)", webui, login)
    ctx = RayContext({"node_id": core.node_id.hex(), "session_dir": sess.session_dir,
                      "address": cfg.get("gcs_address"), "node_ip_address": cfg.get("node_ip"),
                      "gcs_address": cfg.get("gcs_address"),
                      "webui_url": webui or (None if (sess.info or {}).get("dashboard_asked") else "")}, login)
    sess.info = dict(sess.info or {}, context=(dict(ctx), login))
    return ctx


def _freeze_heap():
    """What the driver holds at init() (modules, classes, the runtime) is moved out of the
    cyclic collector's way (gc.freeze, after one collection so no garbage is kept): full
    collections then walk only what the program made since, which on a busy driver is where a
    third to a half of a call's cost went.  Refcounting frees everything as before; only an object
    that already existed at init() and later ends up in an unreachable cycle stays.
    LUMINARY_GC_FREEZE=0 turns it off; shutdown() undoes it."""
    if os.environ.get("LUMINARY_GC_FREEZE", "1") != "0":
        gc.collect()
        gc.freeze()


_NODE_SYSTEM_KEYS = ("memory_usage_threshold", "memory_monitor_refresh_ms", "actor_graceful_shutdown_timeout_ms")


def _node_system_config(system):
    """The `_system_config` keys the node manager acts on, checked (as Ray names them)."""
    out = {}
    for k in _NODE_SYSTEM_KEYS:
        if isinstance(system, dict) and k in system:
            v = system[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0 or \
                    (k == "memory_usage_threshold" and v > 1):
                raise ValueError(f"_system_config[{k!r}] must be a number "
                                 f"{'between 0 and 1' if k == 'memory_usage_threshold' else '>= 0'}, got {v!r}")
            out[k] = v
    return out


_log_handler = None


def _configure_logging(level, fmt):
    """Luminary's own messages (retries, lost connections, lineage rebuilds) reach stderr, as
    Ray's do; ``init(configure_logging=False)`` leaves logging to the application."""
    global _log_handler
    lum = logging.getLogger("luminary")
    if _log_handler is None:
        _log_handler = logging.StreamHandler()
        lum.addHandler(_log_handler)
    _log_handler.setFormatter(logging.Formatter(fmt or "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"))
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    lum.setLevel(level if isinstance(level, int) else logging.INFO)


def _set_job_runtime_env(core, kwargs):
    """The job's default runtime env: a submitted job's (from its supervisor), then init's
    runtime_env (or job_config's) merged over it; uploaded now, as Ray does."""
    import json
    from ..runtime_env import merge_wire, packaging
    base = None
    if os.environ.get("LUMINARY_JOB_RUNTIME_ENV"):
        base = json.loads(os.environ["LUMINARY_JOB_RUNTIME_ENV"])
    env = kwargs.get("runtime_env")
    jc = kwargs.get("job_config")
    if env is None and jc is not None and getattr(jc, "runtime_env", None):
        env = jc.runtime_env
    spec = packaging.resolve(env, packaging.GcsUploader(core)) if env is not None else None
    packaging.set_default(merge_wire(base, spec))


DEFAULT_DASHBOARD_PORT = 8265
_DASHBOARD_PORT_RETRIES = 50        # as Ray: from 8265 on when no port is given


def _dashboard_address(kwargs):
    """(host, port) the local cluster's dashboard listens on; None with ``include_dashboard=False``,
    False when its port is taken (Ray's context then says None rather than '').
    As in Ray: on by default, loopback, port 8265 (or the next free one of 50); an explicit port
    that is taken is an error with ``include_dashboard=True``, else logged and no dashboard."""
    include = kwargs.get("include_dashboard")
    if include is not None and not isinstance(include, bool):
        raise TypeError(f"include_dashboard must be True, False or None, got {include!r}")
    if include is False:
        return None
    host = kwargs.get("dashboard_host") or "127.0.0.1"
    if not isinstance(host, str):
        raise TypeError(f"dashboard_host must be a string such as '127.0.0.1' or '0.0.0.0', got {host!r}")
    port = kwargs.get("dashboard_port")
    if port is None:
        return host, DEFAULT_DASHBOARD_PORT
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"dashboard_port must be a port number in [0, 65535] (0: any free port), got {port!r}")
    if port:
        import socket
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host, port))
            except OSError as e:
                msg = (f"Failed to bind to {host}:{port} because it's already occupied ({e}). Use "
                       "init(dashboard_port=...) to select a different port, or leave it out to take the first "
                       "free one from 8265.")
                if include:         # asked for explicitly: an error; by default the cluster starts without
                    raise ValueError(msg) from None
                logger.error("%s", msg)
                return False
    return host, port


def _start_local(num_cpus, num_gpus, resources, object_store_memory, kwargs):
    from ..node import launch
    dash = _dashboard_address(kwargs)
    session_dir = launch.new_session_dir(kwargs.get("_temp_dir"))
    secret = os.urandom(32)
    node_ip = kwargs.get("_node_ip_address") or "127.0.0.1"
    proc, info = launch.start_node(secret=secret, session_dir=session_dir, head=True, node_ip=node_ip,
                                   job_api=dash or None, job_port_retries=_DASHBOARD_PORT_RETRIES
                                   if kwargs.get("dashboard_port") is None else 0,
                                   num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                   object_store_memory=object_store_memory, memory=kwargs.get("_memory"),
                                   system=_node_system_config(kwargs.get("_system_config")),
                                   watch_stdin=True, exit_with_driver=True)
    sess = _Session()
    sess.proc = proc
    sess.session_dir = session_dir
    sess.info = dict(info, dashboard_asked=dash is not None)
    sess.owns_cluster = True
    wcfg = {"secret": secret, "session_dir": session_dir, "nm_address": info["nm_address"],
            "gcs_address": info["gcs_address"], "node_ip": node_ip, "worker_id": ids.random_id()}
    return sess, wcfg


EXIT_DRAIN_S = 10.0
EXIT_GRACE_S = 1.0      # how long tasks already running at exit may still take


def _shutdown_at_exit():
    """The driver script ended.  As on Ray, tasks it submitted last still run (``f.remote()`` as a
    script's last line runs and its output appears) while long-running ones end with the driver:
    wait until every submitted call has been dispatched to a worker (at most
    ``$LUMINARY_EXIT_DRAIN_S`` seconds, default 10), then up to EXIT_GRACE_S for them to
    finish, then flush their output and end the cluster."""
    core = state.core
    try:
        if core is not None and not core.shutting_down:
            try:
                limit = float(os.environ.get("LUMINARY_EXIT_DRAIN_S", EXIT_DRAIN_S))
            except ValueError:
                limit = EXIT_DRAIN_S
            if limit > 0 and not core.nm.closed:
                deadline = time.monotonic() + limit
                warned = False
                while core.submitter.undispatched() and time.monotonic() < deadline:
                    if not warned and time.monotonic() > deadline - limit + 1.0:
                        warned = True
                        logger.warning("waiting up to %g s for the tasks this script submitted to start "
                                       "(set LUMINARY_EXIT_DRAIN_S=0 to exit at once)", limit)
                    time.sleep(0.01)
                core.submitter.wait_idle(max(0.0, min(EXIT_GRACE_S, deadline - time.monotonic())))
                try:
                    core.call_sync("nm", "flush_logs", {"timeout": 1.0}, timeout=3)
                except Exception:
                    pass
    except KeyboardInterrupt:
        pass
    finally:
        shutdown()


def shutdown(_exiting_interpreter=False):
    """Disconnect this driver; a cluster started by init() ends with all its processes and files."""
    global _session
    core = state.core
    sess = _session
    if core is None and sess is None:
        return
    if core is not None:
        if sess is not None and sess.owns_cluster:
            try:    # output the workers printed before now reaches this driver first
                core.call_sync("nm", "flush_logs", {"timeout": 0.5}, timeout=2)
            except Exception:
                pass
            gcs = getattr(core, "gcs", None)
            if gcs is not None:
                gcs.closed = True       # the cluster is ending: its GCS going away is no outage
            try:
                core.call_sync("nm", "shutdown", None, timeout=5)
            except Exception:
                pass
        if core.log_output is not None:     # repeats deduplication still holds back
            core.log_output.flush()
        core.stop()
    state.core = None
    _session = None
    if gc.get_freeze_count():
        gc.unfreeze()
    from ..runtime_env import packaging
    packaging.reset()
    if sess is not None:
        _stop_session(sess)


def _stop_session(sess):
    proc = sess.proc
    if proc is not None:
        from ..node.launch import stop_node
        stop_node(proc)
    if sess.session_dir:
        import shutil
        shutil.rmtree(sess.session_dir, ignore_errors=True)


def is_initialized() -> bool:
    return state.core is not None


def _core():
    if state.core is None:
        init()
    return state.core


def get(object_refs, *, timeout=None):
    """Values of one ObjectRef or a list of them; blocks until ready or ``timeout`` seconds pass."""
    core = _core()
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"timeout must be None or a non-negative number of seconds, got {timeout!r}")
    if isinstance(object_refs, ObjectRef):
        return core.get_objects([object_refs], timeout)[0]
    if isinstance(object_refs, ObjectRefGenerator):
        raise TypeError("get() cannot take an ObjectRefGenerator: iterate it and get() each ObjectRef it yields.")
    if isinstance(object_refs, list):
        return core.get_objects(object_refs, timeout)
    raise ValueError(f"'object_refs' must either be an ObjectRef or a list of ObjectRefs, got "
                     f"{type(object_refs).__name__}. Pass what .remote() or put() returned.")


def put(value, *, _owner=None):
    """Store ``value`` in the object store and return its ObjectRef (owned by this process)."""
    return _core().put_object(value)


def wait(object_refs, *, num_returns=1, timeout=None, fetch_local=True):
    """Return (ready, not_ready): the first ``num_returns`` refs ready, in input order.
    An ObjectRefGenerator counts as ready when its next item (or its end or error) is there."""
    core = _core()
    if isinstance(object_refs, ObjectRef) or not isinstance(object_refs, (list, tuple)):
        raise TypeError(f"wait() expects a list of ObjectRefs, got {type(object_refs).__name__}.")
    items = object_refs
    has_gens = any(type(r) is ObjectRefGenerator for r in items)
    if has_gens:   # wait on each generator's next item instead
        object_refs = [ObjectRef(r._tid + r._next.to_bytes(4, "big"), r._owner, _register=False)
                       if type(r) is ObjectRefGenerator else r for r in items]
    if set(map(type, object_refs)) - {ObjectRef}:
        bad = next(r for r in object_refs if not isinstance(r, ObjectRef))
        raise TypeError(f"wait() expects a list of ObjectRefs or ObjectRefGenerators, but it contains "
                        f"{type(bad).__name__}.")
    if not object_refs:
        return [], []
    if len(set(map(_ref_id, object_refs))) != len(object_refs):
        raise ValueError("Wait requires a list of unique object refs.")
    if not isinstance(num_returns, int) or num_returns <= 0:
        raise ValueError(f"Invalid number of objects to return {num_returns!r}: it must be a positive int.")
    if num_returns > len(object_refs):
        raise ValueError("num_returns cannot be greater than the number of objects provided to wait(): "
                         f"{num_returns} > {len(object_refs)}.")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be None or non-negative")
    ready, not_ready = core.wait_objects(list(object_refs), num_returns, timeout, fetch_local)
    if not has_gens:
        return ready, not_ready
    ready_ids = {id(p) for p in ready}
    out_ready, out_rest = [], []
    for item, probe in zip(items, object_refs):
        (out_ready if id(probe) in ready_ids else out_rest).append(item)
    return out_ready, out_rest


_ref_id = __import__("operator").attrgetter("id")


def cancel(object_ref, *, force=False, recursive=True):
    """Cancel the task that makes ``object_ref``: queued tasks never run; running ones are
    interrupted (TaskCancelledError) or, with ``force``, their worker is killed."""
    if isinstance(object_ref, ObjectRefGenerator):
        object_ref = ObjectRef(object_ref._tid + b"\x00\x00\x00\x01", object_ref._owner, _register=False)
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"cancel() expects an ObjectRef, got {type(object_ref).__name__}.")
    core = _core()
    if force and object_ref.owner == core.address:
        from .core import SyncCall
        res = SyncCall()   # the owner's state belongs to the I/O thread: ask it there
        core.io.post(lambda: res(True, core.submitter.is_actor_call(object_ref.id)))
        if res.wait(30):
            raise ValueError("force=True is not supported for actor calls: use luminary.kill() on the actor.")
    if object_ref.owner != core.address:
        return  # only the submitter can cancel; refs from elsewhere (or put objects) are a no-op as in Ray
    core.io.post(core.submitter.cancel, object_ref.id, force, recursive)


def get_gpu_ids():
    core = _core()
    return list(core.gpu_ids)


def cluster_resources() -> dict:
    core = _core()
    return core.call_sync_gcs("cluster_resources")["total"]


def available_resources() -> dict:
    core = _core()
    avail = core.call_sync_gcs("cluster_resources")["available"]
    return {k: v for k, v in avail.items() if v > 0}


def nodes() -> list:
    core = _core()
    out = []
    for n in core.call_sync_gcs("get_nodes"):
        d = dict(n)
        d.pop("Available", None)
        d.pop("pending", None)
        d["alive"] = d["Alive"]
        d["NodeManagerHostname"] = d["NodeName"]
        out.append(d)
    return out
