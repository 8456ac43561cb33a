"""What a user finds after the cluster ended (beyond Ray): the largest objects (sampled into the
event log) and why a stuck task waits (recorded when its owner learns it), from the CLI on a
live cluster and on a SIGKILLed driver's session."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from _backend import IS_RAY, poll_for, ray

pytestmark = [pytest.mark.timeout(120), pytest.mark.skipif(IS_RAY, reason="Luminary's event log and CLI")]

BIG = 5_000_000


def _objects_sampled(history_dir, oid_hex):
    from luminary._private.gcs import history
    return any(k == "objects" and any(r["object_id"] == oid_hex for r in p.get("top") or ())
               for k, _, p in history.read(history_dir))


def _cli(capsys, *argv):
    from luminary.cli.main import main
    capsys.readouterr()
    main(list(argv))
    return capsys.readouterr().out


@ray.remote(num_gpus=1)
def hs_needs_gpu():
    return 1


@ray.remote
def hs_make_big():
    return b"r" * (BIG // 2)


def test_live_cluster_shows_objects_and_why_a_task_waits(shutdown_only, capsys):
    ray.init(num_cpus=1, num_gpus=0)
    from luminary._private.worker import state as wstate
    from luminary.util import state
    big = ray.put(b"p" * BIG)
    ret = hs_make_big.remote()
    ray.wait([ret])
    stuck = hs_needs_gpu.remote()
    tid = stuck.hex()[:24]
    # live: the state API and `luminary get` say why it waits, naming the missing resource
    row = poll_for(lambda: (state.get_task(tid) or {}).get("pending_reason"), desc="the reason to be recorded")
    assert "infeasible" in row and "GPU" in row
    out = _cli(capsys, "get", "tasks", tid, "--format", "json")
    assert "infeasible" in json.loads(out)["pending_reason"]
    # live `luminary memory` lists the put object with its size; the log samples it too
    out = _cli(capsys, "memory", "--format", "json")
    rows = {r["object_id"]: r for r in json.loads(out)}
    assert rows[big.hex()]["object_size"] >= BIG and rows[big.hex()]["is_owner"]
    history_dir = state.cluster_info()["history_dir"]
    poll_for(lambda: _objects_sampled(history_dir, ret.hex()), timeout=30, desc="an object sample")
    session = os.path.basename(wstate.core.session_dir)
    out = json.loads(_cli(capsys, "memory", "--session", session, "--format", "json"))
    got = {r["object_id"]: r for r in out["objects"]}
    assert got[big.hex()]["object_size"] >= BIG and got[big.hex()]["pid"] == os.getpid()
    assert got[big.hex()]["created_by"].startswith("put") and got[big.hex()]["where"] == "shared_memory"
    assert got[ret.hex()]["created_by"] == "task return of hs_make_big"
    assert got[big.hex()]["reference_type"] == "LOCAL_REFERENCE"
    # freed objects leave the next sample (an empty one when the store empties)
    del big, ret
    poll_for(lambda: not json.loads(_cli(capsys, "memory", "--session", session, "--format", "json"))["objects"],
             timeout=30, desc="a sample without the freed objects")


DRIVER = textwrap.dedent("""
    import time, luminary as ray
    from luminary.util import state
    from luminary._private.gcs import history
    from luminary._private.worker import state as st
    @ray.remote(resources={"hs_unobtainium": 2})
    def hs_stuck_fn():
        return 1
    @ray.remote
    def hs_waits_for(x):
        return x
    ray.init(num_cpus=1)
    big = ray.put(b"k" * 6_000_000)
    stuck = hs_stuck_fn.remote()
    waiting = hs_waits_for.remote(stuck)      # waits for its argument, which never comes
    d = state.cluster_info()["history_dir"]
    tid = stuck.hex()[:24]
    while not (state.get_task(tid) or {}).get("pending_reason") or not any(
            k == "objects" and p["top"] for k, _, p in history.read(d)):
        time.sleep(0.05)
    print(st.core.session_dir, big.hex(), tid, waiting.hex()[:24], flush=True)
    time.sleep(120)
""")


def test_sigkilled_session_shows_objects_and_stuck_reasons(shutdown_only, tmp_path, capsys):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        line = proc.stdout.readline().split()
        assert len(line) == 4, "the driver did not start"
        session, oid, tid, waiting_tid = line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    poll_for(lambda: not os.path.exists(session), timeout=20, desc="the cluster to end with its driver")
    name = os.path.basename(session)
    # the biggest object, with its size and owner
    out = json.loads(_cli(capsys, "memory", "--session", name, "--format", "json"))
    rows = {r["object_id"]: r for r in out["objects"]}
    assert rows[oid]["object_size"] >= 6_000_000 and rows[oid]["type"] == "DRIVER" and rows[oid]["pid"] == proc.pid
    table = _cli(capsys, "memory", "--session", name)
    assert oid in table and "Largest objects" in table and "put by pid" in table
    # the infeasible task's reason, naming the missing resource; the other waits for its argument
    row = json.loads(_cli(capsys, "get", "tasks", tid, "--session", name, "--format", "json"))
    assert row["state"] == "PENDING_NODE_ASSIGNMENT"
    assert "infeasible" in row["pending_reason"] and "hs_unobtainium" in row["pending_reason"]
    rows = json.loads(_cli(capsys, "list", "tasks", "--session", name, "--detail", "--format", "json"))
    reasons = {r["task_id"]: r["pending_reason"] for r in rows}
    assert "argument" in reasons[waiting_tid]
    # the report shows both
    from luminary.cli.main import main
    main(["report", name, "-o", str(tmp_path / "r.html")])
    html = (tmp_path / "r.html").read_text()
    assert "Pending (stuck) tasks" in html and "hs_unobtainium" in html and oid[:16] in html
