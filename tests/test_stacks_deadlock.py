"""Never hang silently (issue 11): live stacks of every process without root (`luminary stack`),
`luminary status` listing what is stuck and why, and deadlock detection between actors."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from _backend import IS_RAY, poll_for

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(IS_RAY, reason="Luminary's live stacks, status and deadlock detection")]

CLI = [sys.executable, "-m", "luminary.cli.main"]

if not IS_RAY:
    import luminary as ray
    from luminary.exceptions import DeadlockError
    from luminary.util import diagnostics


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    from test_jobs import _stop_head        # stops only this head, never every cluster of the user
    port = _free_port()
    out = subprocess.run(CLI + ["start", "--head", "--port", str(port), "--num-cpus", "4", "--include-dashboard",
                                "false", "--resources", '{"gadget": 1}'], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop_head(port)


@pytest.fixture(scope="module")
def driver(head):
    ray.init(address=head)
    try:
        yield head
    finally:
        ray.shutdown()


def _cli(*args, timeout=60):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout)


def _spin_until(marker):
    while not os.path.exists(marker):
        time.sleep(0.01)
    return "released"


def _running(name):
    from luminary.util import state
    return any(t.name.endswith(name) and t.state == "RUNNING" for t in state.list_tasks(limit=1000))


def test_cli_stack_shows_the_busy_function_the_task_name_and_the_driver(driver, tmp_path):
    marker = str(tmp_path / "release")

    @ray.remote
    def spin_in_known_function(marker):
        return _spin_until(marker)
    ref = spin_in_known_function.remote(marker)
    try:
        poll_for(lambda: _running("spin_in_known_function"), timeout=30, desc="the task to run")
        out = _cli("stack", "--address", driver)
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert "in _spin_until" in text                     # the frame the worker is busy in
        # labelled with the task and for how long
        assert re.search(r"running \S*spin_in_known_function for \d+\.\d s", text), text
        # this driver's main thread, blocked in subprocess.run inside this very test
        assert f"--- driver pid {os.getpid()}" in text
        assert "test_cli_stack_shows_the_busy_function_the_task_name_and_the_driver" in text
    finally:
        open(marker, "w").close()
    assert ray.get(ref, timeout=30) == "released"


def test_stack_also_shows_the_gcs_and_each_node_managers_own_threads_and_tasks(driver):
    text = diagnostics.stack(timeout=5)
    gcs = re.search(r"^=== GCS pid (\d+)$", text, re.M)
    assert gcs, text
    nm_pid = ray.nodes()[0]["pid"]
    assert f"--- node manager pid {nm_pid}\n" in text
    section = text.split(f"--- node manager pid {nm_pid}\n", 1)[1].split("\n---", 1)[0]
    assert "Thread MainThread (event loop) (main)" in section
    assert "_heartbeat_loop" in section                  # a labelled asyncio task of the node manager
    gcs_section = text[gcs.end():].split("\n===", 1)[0]
    assert "_health_loop" in gcs_section
    report = diagnostics.stacks(timeout=5)
    assert report["gcs"]["role"] == "GCS" and report["nodes"][0]["manager"]["pid"] == nm_pid


def test_a_stopped_process_is_reported_as_not_answering_within_the_timeout(driver):
    @ray.remote
    class Sleeper:
        def pid(self):
            return os.getpid()
    a = Sleeper.remote()
    pid = ray.get(a.pid.remote(), timeout=30)
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        text = diagnostics.stack(timeout=0.5)
        assert time.monotonic() - t0 < 10
        line = next(ln for ln in text.splitlines() if f"pid {pid} " in ln)
        assert "NOT ANSWERING" in line and "did not answer within 0.5 s" in line
        assert f"--- driver pid {os.getpid()}" in text      # everyone else still answered
    finally:
        os.kill(pid, signal.SIGCONT)
        ray.kill(a)
    with pytest.raises(ValueError, match="timeout"):
        diagnostics.stack(timeout=0)


def test_status_lists_tasks_pending_for_resources_with_the_reason(driver, tmp_path):
    marker = str(tmp_path / "release")

    @ray.remote(resources={"gadget": 1})
    def holds_the_gadget(marker):
        return _spin_until(marker)

    @ray.remote(resources={"gadget": 1})
    def wants_the_gadget():
        return "got it"

    @ray.remote(resources={"gadget": 5})
    def wants_five_gadgets():
        return "never"
    holder = holds_the_gadget.remote(marker)
    waiting, impossible = wants_the_gadget.remote(), wants_five_gadgets.remote()
    try:
        def listed():
            out = _cli("status", "--address", driver, "--pending-after", "0.5")
            assert out.returncode == 0, out.stderr
            text = out.stdout
            ok = ("wants_the_gadget" in text and "wants_five_gadgets" in text and "holds_the_gadget" in text)
            return text if ok else None
        text = poll_for(listed, timeout=60, desc="luminary status to list the pending tasks")
        lines = {name: next(ln for ln in text.splitlines() if f"{name} (" in ln)
                 for name in ("wants_the_gadget", "wants_five_gadgets", "holds_the_gadget")}
        assert "waiting for resources {CPU: 1, gadget: 1}" in lines["wants_the_gadget"]
        assert "gadget: 0}" in lines["wants_the_gadget"]     # what is free now
        assert "infeasible" in lines["wants_five_gadgets"] and "no node has {gadget: 5}" in lines["wants_five_gadgets"]
        assert "running on node" in lines["holds_the_gadget"] and "pid" in lines["holds_the_gadget"]
        # a threshold nothing has reached lists nothing
        assert "nothing pending for more than 3600 s" in _cli("status", "--address", driver,
                                                              "--pending-after", "3600").stdout
        bad = _cli("status", "--address", driver, "--pending-after", "-1")
        assert bad.returncode != 0 and "--pending-after" in bad.stderr
    finally:
        open(marker, "w").close()
        ray.cancel(impossible)
    assert ray.get([holder, waiting], timeout=30) == ["released", "got it"]


def test_two_sync_actors_waiting_on_each_other_raise_deadlock_error(driver):
    @ray.remote
    class Ping:
        def set(self, other):
            self.other = other

        def ping(self):
            return ray.get(self.other.pong.remote())

        def back(self):
            return "back"

    @ray.remote
    class Pong:
        def set(self, other):
            self.other = other

        def pong(self):
            return ray.get(self.other.back.remote())
    a, b = Ping.remote(), Pong.remote()
    ray.get([a.set.remote(b), b.set.remote(a)], timeout=30)
    t0 = time.monotonic()
    with pytest.raises(DeadlockError) as info:
        ray.get(a.ping.remote(), timeout=60)
    assert time.monotonic() - t0 < 15
    msg = str(info.value)
    assert "Ping" in msg and "Pong" in msg and ".ping" in msg and ".pong" in msg
    assert {(c["class_name"], c["method"]) for c in info.value.cycle} == {("Ping", "ping"), ("Pong", "pong")}
    # the cycle is broken: both actors serve calls again
    assert ray.get(a.back.remote(), timeout=30) == "back"
    ray.kill(a)
    ray.kill(b)


def test_an_async_actor_calling_back_into_its_caller_does_not_raise(driver):
    @ray.remote
    class AsyncCaller:
        def set(self, other):
            self.other = other

        async def ping(self):
            return await self.other.call_back.remote()

        async def back(self):
            import asyncio
            await asyncio.sleep(1.5)    # long enough for the sync callee to report its wait
            return "served while ping waited"

    @ray.remote
    class SyncCallee:
        def set(self, other):
            self.other = other

        def call_back(self):
            return ray.get(self.other.back.remote())
    a, b = AsyncCaller.remote(), SyncCallee.remote()
    ray.get([a.set.remote(b), b.set.remote(a)], timeout=30)
    assert ray.get(a.ping.remote(), timeout=60) == "served while ping waited"
    ray.kill(a)
    ray.kill(b)


def _all_running(name, n):
    from luminary.util import state
    return sum(1 for t in state.list_tasks(limit=1000) if t.name.endswith(name) and t.state == "RUNNING") >= n


def test_threaded_actors_with_every_thread_blocked_on_each_other_raise_deadlock_error(driver, tmp_path):
    marker = str(tmp_path / "all-running")

    @ray.remote(max_concurrency=2)
    class Pool:
        def set(self, other):
            self.other = other

        def outer_call(self, marker):
            _spin_until(marker)                       # until every thread of both actors runs one
            return ray.get(self.other.inner.remote())

        def inner(self):
            return "inner"
    a, b = Pool.remote(), Pool.remote()
    ray.get([a.set.remote(b), b.set.remote(a)], timeout=30)
    refs = [x.outer_call.remote(marker) for x in (a, b, a, b)]
    poll_for(lambda: _all_running("outer_call", 4), timeout=30, desc="four outer calls running")
    open(marker, "w").close()
    errors = []           # every waiter is told; one raising may let another finish first
    for r in refs:
        try:
            assert ray.get(r, timeout=60) == "inner"
        except DeadlockError as e:
            errors.append(e)
    assert errors, "no outer call was told of the deadlock"
    assert {(c["class_name"], c["method"]) for c in errors[0].cycle} == {("Pool", "outer_call")}
    assert "max_concurrency" in str(errors[0])
    assert ray.get([a.inner.remote(), b.inner.remote()], timeout=30) == ["inner", "inner"]
    ray.kill(a)
    ray.kill(b)


def test_a_task_and_the_actor_waiting_on_its_result_raise_deadlock_error(driver, tmp_path):
    marker = str(tmp_path / "holder-waits")

    @ray.remote
    class Holder:
        def wait_on(self, refs):                      # in a list: the ref is passed, not its value
            return ray.get(refs[0])

        def ping(self):
            return "pong"

    @ray.remote
    def calls_back(holder, marker):
        _spin_until(marker)
        return ray.get(holder.ping.remote())
    h = Holder.remote()
    t = calls_back.remote(h, marker)
    w = h.wait_on.remote([t])
    poll_for(lambda: _running("wait_on") and _running("calls_back"), timeout=30, desc="both running")
    open(marker, "w").close()
    # both waiters are told; the first to raise breaks the cycle, so the other may finish instead
    errors = []
    for ref in (t, w):
        try:
            assert ray.get(ref, timeout=60) == "pong"
        except DeadlockError as e:
            errors.append(e)
    assert errors, "neither side was told of the deadlock"
    text = str(errors[0])
    assert "task calls_back(" in text and "Holder(" in text and ".wait_on" in text
    assert {c["method"].rsplit(".", 1)[-1] for c in errors[0].cycle} == {"calls_back", "wait_on"}
    assert ray.get(h.ping.remote(), timeout=30) == "pong"
    ray.kill(h)
