"""Local threat model: another user of this machine, or a careless input.

* The per-user state root ($XDG_RUNTIME_DIR/luminary, else /tmp/luminary-<uid>) is refused when
  someone else could have planted it (not ours, a symlink, writable by others): nothing is
  written into it and no secret is read from it.
* A planted secret (symlink, loose mode) is refused; a missing --secret-file is an error.
* ``luminary stop`` signals a PID only while it is still the node it started (start time and
  title) and deletes nothing outside the root.
* Resource amounts are finite and non-negative at every edge (NaN would make a node's free CPU
  NaN and every later task wait forever).

Every test that runs ``luminary`` points XDG_RUNTIME_DIR at its own temporary directory, so it
never touches the real per-user root (nor the nodes of other clusters on this machine).
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

from _backend import IS_RAY, poll_for, ray

NAN, INF = float("nan"), float("inf")
CLI = [sys.executable, "-m", "luminary.cli.main"]
luminary_only = pytest.mark.skipif(IS_RAY, reason="Luminary's local state, CLI and process records")
IS_ROOT = os.getuid() == 0
OTHER_UID = 65534   # nobody


def _procutil():
    from luminary._private import procutil
    return procutil


@pytest.fixture
def xdg(monkeypatch):
    """A private XDG_RUNTIME_DIR for this test (in this process and for the CLI it runs); short,
    as a real one is, so that socket paths under it fit."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="lsx-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    monkeypatch.delenv("LUMINARY_SECRET_FILE", raising=False)
    yield path
    shutil.rmtree(path)


def _cli(*args, timeout=60):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))


def _tree(path):
    """Every name under ``path`` with its mode, without following links."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out.add((os.path.relpath(full, path), os.lstat(full).st_mode))
    return out


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sleeper():
    """An unrelated process of this user that nothing may signal."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


# --- the per-user root -------------------------------------------------------------------------

@luminary_only
@pytest.mark.timeout(30)
def test_root_prefers_private_xdg_runtime_dir(xdg, tmp_path, monkeypatch):
    procutil = _procutil()
    root = procutil.session_root()
    assert root == str(xdg / "luminary")
    assert os.stat(root).st_mode & 0o777 == 0o700
    # an XDG_RUNTIME_DIR that others can write is not usable: the /tmp fallback is used instead
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(loose))
    assert procutil.root_path() == f"/tmp/luminary-{os.getuid()}"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert procutil.root_path() == f"/tmp/luminary-{os.getuid()}"
    # one so long that socket paths under it would not fit
    deep = tmp_path / ("d" * 60)
    deep.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    assert procutil.root_path() == f"/tmp/luminary-{os.getuid()}"


def _assert_victim_refuses(root, problem):
    """Neither init() nor `luminary start` uses ``root``; nothing is written into it."""
    procutil = _procutil()
    before = _tree(root) if os.path.isdir(root) else None
    with pytest.raises(PermissionError, match=problem) as info:
        procutil.session_root()
    assert str(root) in str(info.value) and "Remove it" in str(info.value)
    with pytest.raises(PermissionError, match=problem):
        ray.init(num_cpus=1)
    port = _free_port()
    out = _cli("start", "--head", "--port", port)
    assert out.returncode != 0 and str(root) in out.stderr and "Remove it" in out.stderr, out.stderr
    out = _cli("start", "--address", f"127.0.0.1:{port}")
    assert out.returncode != 0 and str(root) in out.stderr, out.stderr
    out = _cli("stop")
    assert out.returncode != 0 and str(root) in out.stderr, out.stderr
    if before is not None:
        assert _tree(root) == before


@luminary_only
@pytest.mark.timeout(60)
@pytest.mark.skipif(not IS_ROOT, reason="making a directory owned by another uid needs root (os.chown)")
def test_root_planted_by_another_user_is_refused(xdg):
    root = xdg / "luminary"
    root.mkdir()
    (root / "clusters").mkdir()
    (root / "nodes").mkdir()
    planted = root / ".secret"
    planted.write_bytes(b"x" * 32)
    for p in (root / "clusters", root / "nodes", planted, root):
        os.chown(p, OTHER_UID, OTHER_UID)
        p.chmod(0o666 if p == planted else 0o777)
    _assert_victim_refuses(root, f"owned by uid {OTHER_UID}")


@luminary_only
@pytest.mark.timeout(60)
def test_world_writable_root_is_refused(xdg):
    root = xdg / "luminary"
    root.mkdir()
    root.chmod(0o777)
    _assert_victim_refuses(root, "writable by other users")


@luminary_only
@pytest.mark.timeout(60)
def test_symlinked_root_is_refused(xdg, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (xdg / "luminary").symlink_to(elsewhere)
    _assert_victim_refuses(xdg / "luminary", "symbolic link")
    assert os.listdir(elsewhere) == []


# --- secrets -------------------------------------------------------------------------------------

@luminary_only
@pytest.mark.timeout(60)
def test_planted_secret_symlink_or_loose_mode_is_refused(xdg, tmp_path):
    from luminary._private.node import launch
    procutil = _procutil()
    port = _free_port()
    address = f"tcp:127.0.0.1:{port}"
    secret_path = launch.cluster_file(address)[:-5] + ".secret"
    chosen = tmp_path / "attackers.secret"
    chosen.write_bytes(b"a" * 32)
    chosen.chmod(0o600)
    os.symlink(chosen, secret_path)
    with pytest.raises(PermissionError, match="symbolic link"):
        launch.read_secret(address)
    out = _cli("start", "--address", f"127.0.0.1:{port}")
    assert out.returncode != 0 and "symbolic link" in out.stderr and secret_path in out.stderr, out.stderr
    # writing the cluster's files replaces a planted link; it never writes through it
    launch.write_cluster_file(address, b"s" * 32)
    assert chosen.read_bytes() == b"a" * 32 and not os.path.islink(secret_path)
    assert launch.read_secret(address) == b"s" * 32
    os.chmod(secret_path, 0o666)
    with pytest.raises(PermissionError, match="0666"):
        launch.read_secret(address)
    # the address file is checked as well before `init(address="auto")` trusts it
    os.chmod(launch.cluster_file(address), 0o644)
    from luminary._private.worker.connect import resolve_address
    with pytest.raises(PermissionError, match="0644"):
        resolve_address("auto")
    launch.remove_cluster_file(address)
    assert [n for n in os.listdir(procutil.session_root()) if n.startswith("node_")] == []


@luminary_only
@pytest.mark.timeout(60)
def test_missing_secret_file_is_an_error_naming_it(xdg, tmp_path, monkeypatch):
    from luminary._private.node import launch
    missing = tmp_path / "no-such.secret"
    # a secret for that address exists locally: it must not be used instead of the named file
    launch.write_cluster_file("tcp:127.0.0.1:1", b"s" * 32)
    out = _cli("start", "--address", "127.0.0.1:1", "--secret-file", missing)
    assert out.returncode != 0 and str(missing) in out.stderr and "does not exist" in out.stderr, out.stderr
    monkeypatch.setenv("LUMINARY_SECRET_FILE", str(missing))
    with pytest.raises(FileNotFoundError, match="no-such.secret"):
        launch.read_secret("tcp:127.0.0.1:1")
    with pytest.raises(FileNotFoundError, match="LUMINARY_SECRET_FILE"):
        ray.init(address="127.0.0.1:1")
    loose = tmp_path / "loose.secret"
    loose.write_bytes(b"x" * 32)
    loose.chmod(0o666)
    with pytest.raises(PermissionError, match="chmod 600"):
        launch.read_secret("tcp:127.0.0.1:1", str(loose))
    launch.remove_cluster_file("tcp:127.0.0.1:1")
    assert [n for n in os.listdir(xdg / "luminary") if n.startswith("node_")] == []


# --- stopping only what is ours ---------------------------------------------------------------------

def _plant_record(pid, **fields):
    procutil = _procutil()
    path = os.path.join(procutil.state_dir("nodes"), f"{pid}.json")
    rec = dict({"pid": pid, "node_id": "00" * 28, "gcs_address": "tcp:127.0.0.1:1", "head": False}, **fields)
    procutil.write_private_file(path, json.dumps(rec), replace=True)
    return path


@luminary_only
@pytest.mark.timeout(60)
def test_stop_leaves_unrelated_process_and_outside_paths_alone(xdg, tmp_path, sleeper):
    procutil = _procutil()
    start, title = poll_for(lambda: procutil.process_identity(sleeper.pid), desc="sleep's /proc entry")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data").write_text("keep me")
    root = procutil.session_root()
    # planted: the right start time but not a Luminary node, and a session dir outside the root
    record = _plant_record(sleeper.pid, start_time=start, title="luminary::node", session_dir=str(precious))
    out = _cli("stop")
    assert out.returncode == 0, out.stderr
    assert "Stopped 0" in out.stdout and sleeper.poll() is None
    assert (precious / "data").read_text() == "keep me" and "Did not remove" in out.stderr
    assert not os.path.exists(record)
    # the same with a path that only resolves outside the root
    _plant_record(sleeper.pid, start_time=start, title="luminary::node",
                  session_dir=os.path.join(root, "nodes", "..", "..", "..", "precious"))
    assert _cli("stop").returncode == 0 and sleeper.poll() is None and (precious / "data").exists()
    # a record that is a symlink, or that others could have written, is not even read
    loose = _plant_record(sleeper.pid, start_time=start, title=title, session_dir=str(precious))
    os.chmod(loose, 0o644)
    out = _cli("stop")
    assert "Ignoring the node record" in out.stderr and sleeper.poll() is None and os.path.exists(loose)
    os.unlink(loose)


@luminary_only
@pytest.mark.timeout(60)
def test_recycled_pid_is_left_alone_and_its_record_removed(xdg, sleeper):
    procutil = _procutil()
    start, title = poll_for(lambda: procutil.process_identity(sleeper.pid), desc="sleep's /proc entry")
    # what a node record looks like after its node died and the PID went to an unrelated process
    root = procutil.session_root()
    stale_dir = os.path.join(root, "node_2000-01-01_00-00-00_1_abcdef")
    os.mkdir(stale_dir, 0o700)
    record = _plant_record(sleeper.pid, start_time=start - 1, title=title, session_dir=stale_dir)
    out = _cli("stop")
    assert out.returncode == 0, out.stderr
    assert "Stopped 0" in out.stdout and "Left PID" in out.stderr
    assert sleeper.poll() is None
    assert not os.path.exists(record) and not os.path.exists(stale_dir)   # our own stale state is cleaned


@luminary_only
@pytest.mark.timeout(30)
def test_stale_session_cleanup_checks_start_time_and_stays_inside_root(xdg, tmp_path, sleeper):
    procutil = _procutil()
    start, _ = poll_for(lambda: procutil.process_identity(sleeper.pid), desc="sleep's /proc entry")
    root = procutil.session_root()
    live = os.path.join(root, "session_live")
    recycled = os.path.join(root, "session_recycled")
    for path, st in ((live, start), (recycled, start + 1)):
        os.mkdir(path, 0o700)
        procutil.write_private_file(os.path.join(path, "node.pid"), json.dumps({"pid": sleeper.pid, "start_time": st}))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "node.pid").write_text(json.dumps({"pid": 999999999, "start_time": 1}))
    os.chmod(outside / "node.pid", 0o600)
    os.symlink(outside, os.path.join(root, "session_link"))
    procutil.cleanup_stale_sessions()
    assert os.path.isdir(live) and not os.path.exists(recycled)
    assert (outside / "node.pid").exists() and sleeper.poll() is None
    assert not procutil.remove_session_dir(str(outside), root)
    assert not procutil.remove_session_dir(os.path.join(root, "nodes"), root)


@luminary_only
@pytest.mark.timeout(120)
def test_stop_stops_our_node_and_failed_joins_leave_nothing(xdg, tmp_path):
    procutil = _procutil()
    port = _free_port()
    root = procutil.session_root()
    nodes_dir = procutil.state_dir("nodes")
    busy = socket.socket()
    head_pid = None
    try:
        out = _cli("start", "--head", "--port", port, "--num-cpus", "1")
        assert out.returncode == 0, out.stderr
        [record] = os.listdir(nodes_dir)
        rec = json.loads(procutil.read_private_file(os.path.join(nodes_dir, record)))
        head_pid = rec["pid"]
        assert rec["title"] == "luminary::node" and procutil.is_same_process(head_pid, rec["start_time"], rec["title"])
        assert os.stat(rec["session_dir"]).st_mode & 0o777 == 0o700
        secret = os.path.join(root, "clusters", f"127.0.0.1_{port}.secret")
        assert os.stat(secret).st_mode & 0o777 == 0o600
        node_dirs = {n for n in os.listdir(root) if n.startswith("node_")}
        # a join that cannot reach a cluster, and one whose node cannot start (its port is taken)
        out = _cli("start", "--address", f"127.0.0.1:{_free_port()}", "--secret-file", secret)
        assert out.returncode != 0 and "Could not reach" in out.stderr, out.stderr
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        out = _cli("start", "--address", f"127.0.0.1:{port}", "--node-manager-port", busy.getsockname()[1])
        assert out.returncode != 0 and "--node-manager-port" in out.stderr, out.stderr
        assert {n for n in os.listdir(root) if n.startswith("node_")} == node_dirs
        assert os.listdir(nodes_dir) == [record]
    finally:
        busy.close()
        out = _cli("stop")
    assert "Stopped 1" in out.stdout, out.stdout + out.stderr
    if head_pid:
        poll_for(lambda: not procutil.pid_alive(head_pid), timeout=15, desc="the head node to exit")
    assert [n for n in os.listdir(root) if n.startswith("node_")] == []
    assert os.listdir(nodes_dir) == [] and os.listdir(os.path.join(root, "clusters")) == []


# --- resource amounts: finite and non-negative everywhere -------------------------------------------

BAD_AMOUNTS = [
    pytest.param({"num_cpus": NAN}, id="num_cpus-nan"),
    pytest.param({"num_cpus": INF}, id="num_cpus-inf"),
    pytest.param({"num_cpus": -1}, id="num_cpus-negative"),
    pytest.param({"num_gpus": NAN}, id="num_gpus-nan"),
    pytest.param({"resources": {"gadget": NAN}}, id="resources-nan"),
    pytest.param({"resources": {"gadget": INF}}, id="resources-inf"),
    pytest.param({"resources": {"gadget": -2}}, id="resources-negative"),
    pytest.param({"object_store_memory": NAN}, id="object_store_memory-nan"),
]


def _named(kwargs):
    """What the error must name: the option and the value."""
    key, value = next(iter(kwargs.items()))
    if key == "resources":
        key, value = next(iter(value.items()))
    return key, repr(value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kwargs", BAD_AMOUNTS)
def test_init_rejects_non_finite_or_negative_amounts(kwargs, shutdown_only):
    with pytest.raises(ValueError) as info:
        ray.init(**kwargs)
    if not IS_RAY:
        for part in _named(kwargs):
            assert part in str(info.value)


def _skip_inf_on_ray(kwargs):
    if IS_RAY and any(v == INF for v in list(kwargs.values()) + list(kwargs.get("resources", {}).values())
                      if isinstance(v, float)):
        pytest.skip("Ray raises OverflowError (not ValueError) for infinite amounts; Luminary's ValueError is stricter")


TASK_AMOUNTS = [p for p in BAD_AMOUNTS if "object_store_memory" not in p.id] + [
    pytest.param({"memory": INF}, id="memory-inf")]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kwargs", TASK_AMOUNTS)
def test_remote_and_options_reject_non_finite_or_negative_amounts(kwargs):
    _skip_inf_on_ray(kwargs)

    def f():
        return 1

    class A:
        pass

    makers = [lambda: ray.remote(**kwargs)(f), lambda: ray.remote(**kwargs)(A),
              lambda: ray.remote(f).options(**kwargs), lambda: ray.remote(A).options(**kwargs)]
    if not IS_RAY:   # Ray's .options() result has no .options()
        makers.append(lambda: ray.remote(num_cpus=1)(f).options(num_cpus=1).options(**kwargs))
    for make in makers:
        with pytest.raises(ValueError) as info:
            make()
        if not IS_RAY:
            for part in _named(kwargs):
                assert part in str(info.value)


@pytest.mark.timeout(30)
@pytest.mark.skipif(IS_RAY, reason="Ray accepts NaN bundle amounts in placement_group(); Luminary refuses them")
@pytest.mark.parametrize("bundle", [{"CPU": NAN}, {"CPU": INF}, {"CPU": 1, "gadget": -1}, {"GPU": NAN, "CPU": 1}])
def test_placement_group_rejects_non_finite_or_negative_bundles(bundle):
    from luminary.util.placement_group import placement_group
    with pytest.raises(ValueError, match="bundle 1"):
        placement_group([{"CPU": 1}, bundle])


@luminary_only
@pytest.mark.timeout(30)
@pytest.mark.parametrize("args, named", [
    (["--num-cpus", "nan"], "--num-cpus"), (["--num-cpus", "inf"], "--num-cpus"),
    (["--num-gpus", "-1"], "--num-gpus"), (["--resources", '{"gadget": NaN}'], "--resources['gadget']"),
    (["--resources", '{"gadget": Infinity}'], "--resources['gadget']")])
def test_cli_rejects_non_finite_or_negative_amounts(args, named, xdg):
    from luminary.cli.main import main
    with pytest.raises(SystemExit) as info:
        main(["start", "--head", "--port", "1", *args])
    assert named in str(info.value.code) and "finite, non-negative" in str(info.value.code)
    assert not (xdg / "luminary").exists()      # refused before anything was written


@luminary_only
@pytest.mark.timeout(30)
def test_cluster_utils_rejects_nan(xdg):
    from luminary.cluster_utils import Cluster
    cluster = Cluster(shutdown_at_exit=False)
    try:
        with pytest.raises(ValueError, match="num_cpus"):
            cluster.add_node(num_cpus=NAN)
        assert cluster.head_node is None
    finally:
        cluster.shutdown()
