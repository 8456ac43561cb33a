"""Never hang silently (issue 11): every wait in the runtime has a bound or a diagnostic.

Fault injection: a stopped (SIGSTOP) GCS or node manager, a peer that accepts a connection and
never answers, a generator whose producer is stuck.  Each wait either fails in time with an error
naming who did not answer, or warns (LUMINARY_WAIT_WARN_S) while it goes on waiting.  The table of
every wait is in docs/architecture.md ("Waits")."""
import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from _backend import IS_RAY, ray

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(IS_RAY, reason="Luminary's own processes and wait diagnostics")]


def _gcs_pid(nm_pid):
    kids = open(f"/proc/{nm_pid}/task/{nm_pid}/children").read().split()
    return next(int(k) for k in kids if open(f"/proc/{k}/comm").read().startswith("luminary::gcs"))


def test_a_stopped_gcs_is_named_when_a_request_times_out(ray_start_fresh):
    from luminary.util import state
    gcs = _gcs_pid(ray.nodes()[0]["pid"])
    os.kill(gcs, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(ray.exceptions.GetTimeoutError, match=r"the GCS at \S+ \(request 'state_query'\) "
                                                                   r"did not answer within 1 s.*SIGSTOP"):
            state.list_actors(timeout=1)
        assert time.monotonic() - t0 < 10
    finally:
        os.kill(gcs, signal.SIGCONT)
    assert state.list_actors(timeout=30) == []          # answered once it runs again


@pytest.fixture
def silent_peer(tmp_path):
    """A Unix socket whose server completes the handshake, then never answers (or, with
    ``handshake=False``, accepts and never says a word)."""
    from luminary._private.rpc import protocol
    from luminary._private.rpc.loop import IOThread
    io = IOThread("silent-peer")
    secret = os.urandom(32)
    servers = []

    def start(handshake=True):
        path = str(tmp_path / f"peer{len(servers)}.sock")
        if handshake:
            never = lambda conn, p: asyncio.get_event_loop().create_future()   # noqa: E731
            server, _ = io.run_coro(protocol.serve(f"unix:{path}", secret, {"get_nodes": never}), timeout=10)
        else:
            server = socket.socket(socket.AF_UNIX)
            server.bind(path)
            server.listen()
        servers.append(server)
        return f"unix:{path}"
    try:
        yield start, secret
    finally:
        for s in servers:
            s.close() if isinstance(s, socket.socket) else io.post(s.close)
        io.stop()


def test_a_gcs_that_accepts_but_never_answers_fails_cli_requests_in_time(silent_peer):
    from luminary._private.worker.connect import query_gcs
    start, secret = silent_peer
    address = start()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"accepted the connection but did not answer 'get_nodes' within 1 s"):
        query_gcs(address, secret, "get_nodes", timeout=1)
    assert time.monotonic() - t0 < 10


def test_a_peer_that_never_completes_the_handshake_is_refused_in_time(silent_peer):
    from luminary._private.worker.connect import query_gcs
    start, secret = silent_peer
    address = start(handshake=False)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="Could not reach a Luminary cluster"):
        query_gcs(address, secret, "get_nodes", timeout=1)
    assert time.monotonic() - t0 < 15


_STOPPED_PEERS = textwrap.dedent("""
    import os, sys
    import numpy as np
    import luminary as ray
    ray.init(num_cpus=1)
    print("nm", ray.nodes()[0]["pid"], flush=True)
    sys.stdin.readline()                     # the test stopped the node manager
    ref = ray.put(np.zeros(2_000_000))       # a store object: the node manager must answer
    print("put done", flush=True)

    @ray.remote
    def produce(marker):
        yield 1
        while not os.path.exists(marker):
            pass
        yield 2

    gen = produce.remote(sys.argv[1])
    assert ray.get(next(gen)) == 1
    print("second item", ray.get(next(gen)), flush=True)
    ray.shutdown()
""")


def _read_until(proc, needle, seen, deadline):
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"no {needle!r} in stderr:\n{''.join(seen)[-3000:]}")


def test_a_stopped_node_manager_and_a_stuck_generator_are_reported_while_waited_on(tmp_path):
    script = tmp_path / "stopped.py"
    script.write_text(_STOPPED_PEERS)
    marker = str(tmp_path / "release")
    env = dict(os.environ, LUMINARY_WAIT_WARN_S="0.5")
    proc = subprocess.Popen([sys.executable, str(script), marker], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    nm = None
    seen = []
    try:
        deadline = time.monotonic() + 90
        nm = int(proc.stdout.readline().split()[1])
        os.kill(nm, signal.SIGSTOP)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = _read_until(proc, "still waiting", seen, deadline)
        assert f"the local node manager (pid {nm}, request 'store_create')" in line
        os.kill(nm, signal.SIGCONT)
        nm = None
        assert proc.stdout.readline().strip() == "put done"
        line = _read_until(proc, "generator next() has waited", seen, deadline)
        detail = _read_until(proc, "produce (task", seen, deadline)
        assert "is running on worker" in detail
        open(marker, "w").close()
        assert proc.stdout.readline().strip() == "second item 2"
        assert proc.wait(timeout=60) == 0
    finally:
        if nm is not None:
            os.kill(nm, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        proc.stdin.close()
