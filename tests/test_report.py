"""History that outlives the cluster (beyond Ray): the event log, ``luminary report`` on a
finished session, ``luminary.util.report`` for a block, and a log that survives a SIGKILLed
driver."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from _backend import IS_RAY, poll_for, ray

pytestmark = [pytest.mark.timeout(90), pytest.mark.skipif(IS_RAY, reason="Luminary's history and reports")]


@ray.remote
def rp_square(x):
    return x * x


@ray.remote(max_retries=0)
def rp_fail():
    raise KeyError("rp_fail-missing-key")


def _session():
    from luminary._private.worker import state
    return state.core.session_dir


def test_report_of_a_finished_session(shutdown_only, tmp_path, capsys):
    ray.init(num_cpus=2)
    session = _session()
    assert ray.get([rp_square.remote(i) for i in range(6)]) == [i * i for i in range(6)]
    with pytest.raises(Exception):
        ray.get(rp_fail.remote())
    from luminary.util import state
    poll_for(lambda: [t for t in state.list_tasks(filters=[("name", "=", "rp_fail")], detail=True)
                      if t.get("error_message")])
    ray.shutdown()
    assert not os.path.exists(session)          # the session directory is gone, its history is not
    from luminary.cli.main import main
    out = tmp_path / "report.html"
    main(["report", session, "-o", str(out)])
    html = out.read_text()
    assert html.startswith("<!doctype html>") and "</html>" in html
    assert "rp_square" in html and "rp_fail" in html
    assert "rp_fail-missing-key" in html           # the failure with its traceback
    assert "<svg" in html and "http" not in html.split("<body>")[1].split("Luminary report")[0]
    main(["report", "-o", str(tmp_path / "last.html")])   # no argument: the last session
    assert "rp_square" in (tmp_path / "last.html").read_text()


def test_report_context_manager(shutdown_only, tmp_path):
    ray.init(num_cpus=2)
    ray.get(rp_square.remote(1))                # before the block: not in the report
    from luminary.util import report
    out = tmp_path / "block.html"
    with report(str(out)):
        ray.get([rp_square.remote(i) for i in range(3)])
        big = ray.put(b"z" * 400_000)
    html = out.read_text()
    assert "rp_square" in html and "Top objects" in html and "400" in html
    assert ">3</td>" in html                    # three calls of rp_square, not four
    del big


DRIVER = textwrap.dedent("""
    import sys, luminary as ray
    from luminary.util import state
    from luminary._private.worker import state as st
    @ray.remote
    def rp_killed_driver_fn(x):
        return x
    @ray.remote(max_retries=0)
    def rp_killed_bad():
        raise ValueError("rp bad input")
    ray.init(num_cpus=1)
    ray.get([rp_killed_driver_fn.remote(i) for i in range(3)])
    ray.wait([rp_killed_bad.remote()])
    import time
    while len([t for t in state.list_tasks(filters=[("name", "=", "rp_killed_driver_fn")])
               if t["state"] == "FINISHED"]) < 3 or not state.list_tasks(filters=[("state", "=", "FAILED")]):
        time.sleep(0.05)
    print(st.core.session_dir, flush=True)
    time.sleep(120)
""")


def test_event_log_survives_a_sigkilled_driver(shutdown_only, tmp_path, capsys):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        session = proc.stdout.readline().strip()
        assert session, "the driver did not start"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    poll_for(lambda: not os.path.exists(session), timeout=20, desc="the cluster to end with its driver")
    from luminary._private import report
    from luminary._private.gcs import history
    snap = report.load_history(history.find(session))
    names = [t["name"] for t in snap.tasks if t["state"] == "FINISHED"]
    assert names.count("rp_killed_driver_fn") == 3
    # the CLI reads the ended cluster's tasks: the failed one with its error, the summary
    from luminary.cli.main import main
    capsys.readouterr()
    main(["list", "tasks", "--session", os.path.basename(session), "--filter", "state=FAILED", "--detail",
          "--format", "json"])
    failed = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in failed] == ["rp_killed_bad"] and "rp bad input" in failed[0]["error_message"]
    main(["get", "tasks", failed[0]["task_id"], "--session", os.path.basename(session), "--format", "json"])
    assert json.loads(capsys.readouterr().out)["error_type"] == "TASK_EXECUTION_EXCEPTION"
    main(["summary", "tasks", "--session", os.path.basename(session)])
    out = capsys.readouterr().out
    assert "rp_killed_driver_fn" in out and "FAILED:1" in out
