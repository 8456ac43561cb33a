"""Shared fixtures for the integration tests.

Backend: ``LUMINARY_TEST_BACKEND=luminary`` (default) or ``ray`` (the oracle).

Fixtures
--------
ray_start        a 2-CPU cluster shared by all tests of a module that use it;
                 started lazily, shut down at the end of the module (or when a
                 test in the module needs a fresh cluster).
ray_start_fresh  a cluster for one test; its ``ray.init`` kwargs come from
                 ``request.param``, e.g.
                 ``@pytest.mark.parametrize("ray_start_fresh", [{"num_cpus": 1}], indirect=True)``
shutdown_only    for tests that call ``ray.init`` themselves: makes sure no
                 cluster is running before, and shuts down after the test.

Leak check (luminary backend only): after every cluster shutdown done by these
fixtures, and at the end of each module, poll (10 s deadline) until no child
process of the test process is left (zombies included, and every process that
was a descendant just before shutdown must be gone) and /dev/shm holds no entry
whose name contains "luminary".
"""

import os
import sys
import time

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

# debug mode: owner state asserts it is only touched from the I/O thread that owns it
os.environ.setdefault("LUMINARY_CHECK_THREADS", "1")

import psutil  # noqa: E402
import pytest  # noqa: E402

from _backend import BACKEND, IS_RAY, ray  # noqa: E402

# Unit tests of luminary internals (tests/test_unit_*.py) have no Ray oracle.
collect_ignore_glob = ["test_unit_*.py"] if IS_RAY else []

MODULE_CLUSTER_KWARGS = {"num_cpus": 2}
LEAK_DEADLINE_S = 10.0
LEAK_POLL_S = 0.05

# Who started the cluster that is currently running: "module" (ray_start),
# "fresh" (ray_start_fresh / shutdown_only) or None.
_cluster_owner = {"owner": None}


def pytest_report_header(config):
    return f"luminary test backend: {BACKEND} ({getattr(ray, '__file__', '?')})"


# --------------------------------------------------------------------------
# leak check
# --------------------------------------------------------------------------

def _descendants():
    """(pid, create_time) of every live descendant of this process."""
    out = set()
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return out
    for child in children:
        try:
            out.add((child.pid, child.create_time()))
        except psutil.Error:
            pass
    return out


def _describe(pid):
    try:
        p = psutil.Process(pid)
        try:
            cmd = " ".join(p.cmdline())[:200]
        except psutil.Error:
            cmd = "?"
        return f"pid={pid} ppid={p.ppid()} status={p.status()} name={p.name()!r} cmd={cmd!r}"
    except psutil.Error:
        return f"pid={pid} (gone)"


def _leftovers(before):
    procs = []
    seen = set()
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:  # zombies are listed here too and count as leaks
        seen.add(child.pid)
        procs.append(_describe(child.pid))
    for pid, ctime in before:  # former descendants that got re-parented
        if pid in seen:
            continue
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - ctime) < 1e-3:
                procs.append(_describe(pid) + " [re-parented]")
        except psutil.Error:
            pass
    try:
        shm = sorted(n for n in os.listdir("/dev/shm") if "luminary" in n)
    except FileNotFoundError:
        shm = []
    return procs, shm


def check_no_leaks(where, before=frozenset()):
    """Fail if processes or /dev/shm entries survive a cluster shutdown."""
    if IS_RAY:
        return
    deadline = time.monotonic() + LEAK_DEADLINE_S
    while True:
        procs, shm = _leftovers(before)
        if not procs and not shm:
            return
        if time.monotonic() >= deadline:
            lines = [f"leak check failed {where} (after {LEAK_DEADLINE_S}s):"]
            lines += [f"  process left: {p}" for p in procs]
            lines += [f"  /dev/shm entry left: {s}" for s in shm]
            pytest.fail("\n".join(lines), pytrace=False)
        time.sleep(LEAK_POLL_S)


def _shutdown_and_check(where):
    before = _descendants()
    if ray.is_initialized():
        ray.shutdown()
    _cluster_owner["owner"] = None
    check_no_leaks(where, before)


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _module_cluster_guard(request):
    """Shuts down whatever cluster is left at module end, then leak-checks."""
    yield
    _shutdown_and_check(f"at end of module {request.module.__name__}")


@pytest.fixture
def ray_start(_module_cluster_guard):
    """Module-shared cluster: ray.init(num_cpus=2), reused by the module."""
    if not (ray.is_initialized() and _cluster_owner["owner"] == "module"):
        if ray.is_initialized():
            _shutdown_and_check("before starting the module cluster")
        ray.init(**MODULE_CLUSTER_KWARGS)
        _cluster_owner["owner"] = "module"
    yield ray


@pytest.fixture
def ray_start_fresh(request, _module_cluster_guard):
    """Fresh cluster for one test, init kwargs from request.param (a dict)."""
    kwargs = dict(getattr(request, "param", None) or MODULE_CLUSTER_KWARGS)
    if ray.is_initialized():
        _shutdown_and_check("before starting a fresh cluster")
    ray.init(**kwargs)
    _cluster_owner["owner"] = "fresh"
    try:
        yield ray
    finally:
        _shutdown_and_check(f"after fresh cluster {kwargs!r} of {request.node.name}")


@pytest.fixture
def shutdown_only(request, _module_cluster_guard):
    """For tests that call ray.init themselves; shuts down afterwards."""
    if ray.is_initialized():
        _shutdown_and_check("before a test that starts its own cluster")
    _cluster_owner["owner"] = "fresh"
    try:
        yield ray
    finally:
        _shutdown_and_check(f"after {request.node.name}")
