"""Runtime environments: working_dir, py_modules, env_vars, pip; per job, task and actor; bad input.

Code shipped by a runtime env lives only in a temporary directory that is on no sys.path of
the test process, and the driver runs from another directory, so nothing is importable by
accident."""
import os
import sys
import zipfile

import pytest

from _backend import IS_RAY, ray

pytestmark = pytest.mark.timeout(120)
# Ray takes local paths in working_dir/py_modules only at job level (per task it wants URIs), and
# its runtime-env agent needs ray[default], which the oracle install here lacks
SHIPS_LOCAL_CODE = pytest.mark.skipif(IS_RAY, reason="per-task local working_dir/py_modules are a Luminary "
                                      "extension; Ray's runtime-env agent needs ray[default] (absent here)")


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def code_dirs(tmp_path, monkeypatch):
    wd = tmp_path / "project"
    _write(str(wd / "only_in_wd_mod.py"), "VALUE = 'from the working dir'\n")
    _write(str(wd / "data.txt"), "relative file\n")
    _write(str(wd / "big" / "blob.bin"), "x" * 1000)
    _write(str(wd / "notes.log"), "ignored by .gitignore\n")
    _write(str(wd / ".gitignore"), "*.log\n")
    pkg = tmp_path / "libs" / "shipped_pkg_lum"
    _write(str(pkg / "__init__.py"), "from .inner import answer\n")
    _write(str(pkg / "inner.py"), "def answer():\n    return 41 + 1\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return wd, pkg


@ray.remote
def probe():
    import importlib
    out = {"cwd": os.getcwd(), "A": os.environ.get("LUM_T_A"), "B": os.environ.get("LUM_T_B")}
    for mod in ("only_in_wd_mod", "shipped_pkg_lum"):
        try:
            m = importlib.import_module(mod)
            out[mod] = getattr(m, "VALUE", None) or m.answer()
        except ImportError:
            out[mod] = None
    out["data"] = open("data.txt").read().strip() if os.path.exists("data.txt") else None
    out["big"] = os.path.exists(os.path.join("big", "blob.bin"))
    out["log"] = os.path.exists("notes.log")
    return out


@SHIPS_LOCAL_CODE
def test_working_dir_ships_code_and_files_to_tasks(ray_start, code_dirs):
    wd, _ = code_dirs
    got = ray.get(probe.options(runtime_env={"working_dir": str(wd), "excludes": ["big/"]}).remote())
    assert got["only_in_wd_mod"] == "from the working dir"
    assert got["data"] == "relative file"          # the task's cwd is the working dir
    assert not got["big"]                          # excludes
    if not IS_RAY:
        assert not got["log"]                      # .gitignore honoured
    plain = ray.get(probe.remote())
    assert plain["only_in_wd_mod"] is None and plain["data"] is None


@SHIPS_LOCAL_CODE
def test_py_modules_ship_a_local_package(ray_start, code_dirs):
    _, pkg = code_dirs
    got = ray.get(probe.options(runtime_env={"py_modules": [str(pkg)]}).remote())
    assert got["shipped_pkg_lum"] == 42
    assert ray.get(probe.remote())["shipped_pkg_lum"] is None


def test_env_vars_per_task_and_actors_side_by_side(ray_start):
    a = probe.options(runtime_env={"env_vars": {"LUM_T_A": "one"}}).remote()
    b = probe.options(runtime_env={"env_vars": {"LUM_T_A": "two"}}).remote()
    assert ray.get(a)["A"] == "one" and ray.get(b)["A"] == "two"
    assert ray.get(probe.remote())["A"] is None

    @ray.remote
    class Env:
        def get(self, name):
            return os.environ.get(name), os.getpid()

    x = Env.options(runtime_env={"env_vars": {"LUM_T_A": "x"}}).remote()
    y = Env.options(runtime_env={"env_vars": {"LUM_T_A": "y"}}).remote()
    (vx, px), (vy, py) = ray.get([x.get.remote("LUM_T_A"), y.get.remote("LUM_T_A")])
    assert (vx, vy) == ("x", "y") and px != py
    assert ray.get(x.get.remote("LUM_T_A"))[0] == "x"      # both stay alive, each in its env


def test_nested_tasks_inherit_their_parents_env(ray_start):
    @ray.remote
    def parent():
        return ray.get(probe.remote())["A"]
    assert ray.get(parent.options(runtime_env={"env_vars": {"LUM_T_A": "inherited"}}).remote()) == "inherited"


@SHIPS_LOCAL_CODE
def test_job_env_from_init_merges_with_task_env(shutdown_only, code_dirs):
    wd, _ = code_dirs
    ray.init(num_cpus=1, runtime_env={"working_dir": str(wd), "env_vars": {"LUM_T_A": "job", "LUM_T_B": "job"}})
    got = ray.get(probe.remote())
    assert got["only_in_wd_mod"] == "from the working dir" and got["A"] == "job"
    # env_vars merge (the task's win); other fields are inherited unless the task gives them
    got = ray.get(probe.options(runtime_env={"env_vars": {"LUM_T_B": "task"}}).remote())
    assert (got["A"], got["B"], got["only_in_wd_mod"]) == ("job", "task", "from the working dir")


@SHIPS_LOCAL_CODE
def test_working_dir_as_zip(ray_start, code_dirs, tmp_path):
    wd, _ = code_dirs
    z = tmp_path / "project.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(wd / "only_in_wd_mod.py", "project/only_in_wd_mod.py")
        zf.write(wd / "data.txt", "project/data.txt")
    got = ray.get(probe.options(runtime_env={"working_dir": str(z)}).remote())
    assert got["only_in_wd_mod"] == "from the working dir" and got["data"] == "relative file"


@pytest.mark.skipif(IS_RAY, reason="Luminary's error texts")
def test_bad_runtime_envs_are_clear_errors_and_the_cluster_survives(ray_start, tmp_path):
    with pytest.raises(ValueError, match="working_dir .*does not exist"):
        probe.options(runtime_env={"working_dir": str(tmp_path / "missing")}).remote()
    with pytest.raises(ValueError, match="Unknown runtime_env key 'workdir'"):
        probe.options(runtime_env={"workdir": "."}).remote()
    with pytest.raises(ValueError, match="conda.*use 'pip'"):
        probe.options(runtime_env={"conda": ["numpy"]}).remote()
    with pytest.raises(TypeError, match="env_vars"):
        probe.options(runtime_env={"env_vars": {"A": 1}}).remote()
    with pytest.raises(ray.exceptions.RuntimeEnvSetupError, match="no-such-package-lum"):
        ray.get(probe.options(runtime_env={"pip": ["no-such-package-lum==9.9"]}).remote())

    @ray.remote
    class A:
        def f(self):
            return 1
    a = A.options(runtime_env={"pip": ["no-such-package-lum==9.9"]}).remote()
    with pytest.raises(ray.exceptions.RuntimeEnvSetupError, match="no-such-package-lum"):
        ray.get(a.f.remote())
    assert ray.get(probe.remote())["A"] is None     # plain tasks still run


def _make_wheel(dest, name, version, body):
    """A pure-Python wheel, built by hand (no network, no build backend)."""
    path = os.path.join(dest, f"{name}-{version}-py3-none-any.whl")
    di = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": body,
             f"{di}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{di}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{di}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{di}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for n, c in files.items():
            zf.writestr(n, c)
    return path


@pytest.mark.skipif(IS_RAY, reason="Ray's pip envs need virtualenv and network access on this machine")
def test_pip_env_from_a_local_wheel(ray_start, tmp_path):
    # a fresh package name per run, so the per-node venv cache is cold the first time
    name = f"tinypkg_lum_{os.urandom(4).hex()}"
    wheel = _make_wheel(str(tmp_path), name, "0.1", "GREETING = 'hello from the wheel'\n")

    @ray.remote
    def use_it():
        import importlib
        return importlib.import_module(name).GREETING, sys.executable

    @ray.remote
    def plain():
        import importlib
        try:
            importlib.import_module(name)
            return "importable"
        except ImportError:
            return "missing"

    env = {"pip": [wheel], "env_vars": {"LUM_T_A": "pip"}}
    greeting, python = ray.get(use_it.options(runtime_env=env).remote())
    assert greeting == "hello from the wheel"
    assert python != sys.executable and "venvs" in python      # the env's own interpreter
    assert ray.get(use_it.options(runtime_env=env).remote())[1] == python    # cached: same venv
    assert ray.get(plain.remote()) == "missing"                  # only inside the env

    @ray.remote
    class InEnv:
        def greet(self):
            import importlib
            import numpy   # noqa: F401  (the base environment's packages are inherited)
            return importlib.import_module(name).GREETING
    try:
        assert ray.get(InEnv.options(runtime_env={"pip": [wheel]}).remote().greet.remote()) == "hello from the wheel"
    finally:
        import shutil
        venv = os.path.dirname(os.path.dirname(python))     # this run's venv: not needed again
        shutil.rmtree(venv, ignore_errors=True)
        if os.path.exists(venv + ".lock"):
            os.unlink(venv + ".lock")


@SHIPS_LOCAL_CODE
@pytest.mark.timeout(180)
def test_working_dir_and_py_modules_reach_every_node(shutdown_only, code_dirs):
    """A multi-node cluster (separate node processes): the env is set up on each node from the
    GCS, and a task on the other node imports code that exists only in the driver's directories."""
    from luminary.cluster_utils import Cluster
    from luminary.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    wd, pkg = code_dirs
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        other = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address)
        env = {"working_dir": str(wd), "py_modules": [str(pkg)], "env_vars": {"LUM_T_A": "everywhere"}}
        here = probe.options(runtime_env=env).remote()
        there = probe.options(runtime_env=env, scheduling_strategy=NodeAffinitySchedulingStrategy(
            other.node_id, soft=False)).remote()
        for out in ray.get([here, there], timeout=120):
            assert out["only_in_wd_mod"] == "from the working dir"
            assert out["shipped_pkg_lum"] == 42 and out["A"] == "everywhere" and out["data"] == "relative file"
        ray.shutdown()
    finally:
        cluster.shutdown()
