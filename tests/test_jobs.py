"""Job submission on a CLI-started head: the CLI and the Python client, logs, stop, list, delete,
and the token that guards the job API."""
import asyncio
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from _backend import IS_RAY, poll_for

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(IS_RAY, reason="Luminary's job API and command-line tool")]

CLI = [sys.executable, "-m", "luminary.cli.main"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_head(port):
    """Stop only this test's head (`luminary stop` would stop every cluster of this user)."""
    from luminary._private import procutil
    from luminary._private.node import launch
    for path in glob.glob(os.path.join(procutil.state_dir("nodes"), "*.json")):
        rec = json.load(open(path))
        if rec.get("gcs_address") == f"tcp:127.0.0.1:{port}":
            if procutil.signal_if_same(rec["pid"], rec["start_time"], rec["title"], signal.SIGTERM):
                poll_for(lambda: not procutil.is_same_process(rec["pid"], rec["start_time"], rec["title"]),
                         timeout=15, desc="the head to stop")
            os.unlink(path)
            launch.remove_cluster_file(rec["gcs_address"])


@pytest.fixture(scope="module")
def head():
    port, api = _free_port(), _free_port()
    out = subprocess.run(CLI + ["start", "--head", "--port", str(port), "--dashboard-port", str(api),
                                "--num-cpus", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"http://127.0.0.1:{api}" in out.stdout
    try:
        yield f"http://127.0.0.1:{api}"
    finally:
        _stop_head(port)


def _job(address, *args, timeout=60):
    return subprocess.run(CLI + ["job", *args[:1], "--address", address, *args[1:]], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def project(tmp_path):
    d = tmp_path / "proj"
    d.mkdir()
    (d / "jobhelper_lum.py").write_text("FACTOR = 3\n")
    (d / "main.py").write_text(
        "import os, luminary as ray\n"
        "ray.init()\n"
        "@ray.remote\n"
        "def f(x):\n"
        "    import jobhelper_lum\n"
        "    return x * jobhelper_lum.FACTOR, os.environ.get('JOB_VAR')\n"
        "print('result', ray.get(f.remote(14)), flush=True)\n")
    (d / "forever.py").write_text(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('child', child.pid, flush=True)\n"
        "while True:\n"
        "    print('tick', flush=True)\n"
        "    time.sleep(0.1)\n")
    return d


def test_cli_submit_follows_logs_and_reports_success(head, project):
    out = _job(head, "submit", "--working-dir", str(project), "--runtime-env-json",
               '{"env_vars": {"JOB_VAR": "set"}}', "--", "python", "main.py")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "result (42, 'set')" in out.stdout            # code from the working dir, on the workers too
    assert "SUCCEEDED" in out.stdout
    sid = out.stdout.split("'")[1]
    st = _job(head, "status", sid)
    assert "SUCCEEDED" in st.stdout
    assert sid in _job(head, "list").stdout
    assert "result (42, 'set')" in _job(head, "logs", sid).stdout
    assert _job(head, "delete", sid).returncode == 0
    gone = _job(head, "status", sid)
    assert gone.returncode != 0 and "no job" in gone.stderr


def test_failing_entrypoint_is_failed_with_its_output(head, tmp_path):
    out = _job(head, "submit", "--", "python", "-c", "'import sys; print(\"about to fail\"); sys.exit(3)'")
    assert out.returncode == 1
    from luminary.job_submission import JobStatus, JobSubmissionClient
    client = JobSubmissionClient(head)
    sid = out.stdout.split("'")[1]
    info = client.get_job_info(sid)
    assert info.status == JobStatus.FAILED and "exit code 3" in info.message and "about to fail" in info.message


def test_client_submit_tail_stop_kills_the_process_group(head, project):
    import psutil
    from luminary.job_submission import JobStatus, JobSubmissionClient
    client = JobSubmissionClient(head)
    sid = client.submit_job(entrypoint="python forever.py", runtime_env={"working_dir": str(project)},
                            submission_id=f"forever-{os.getpid()}", metadata={"owner": "test"})
    assert sid == f"forever-{os.getpid()}"

    async def first_lines():
        seen = ""
        async for chunk in client.tail_job_logs(sid):
            seen += chunk
            if "tick" in seen:
                return seen
    seen = asyncio.run(asyncio.wait_for(first_lines(), 30))
    child = int(seen.split("child ")[1].split()[0])
    assert client.get_job_status(sid) == JobStatus.RUNNING
    assert client.get_job_info(sid).metadata == {"owner": "test"}
    with pytest.raises(RuntimeError, match="stop it before deleting"):
        client.delete_job(sid)
    assert client.stop_job(sid) is True
    poll_for(lambda: client.get_job_status(sid) == JobStatus.STOPPED, timeout=15, desc="the job to stop")
    poll_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
             timeout=15, desc="the job's child process to end")
    assert client.stop_job(sid) is False
    assert sid in [j.submission_id for j in client.list_jobs()]
    assert client.delete_job(sid) is True
    with pytest.raises(RuntimeError, match="submission_id 'bad id with spaces' must be"):
        client.submit_job(entrypoint="true", submission_id="bad id with spaces")


def test_requests_without_the_token_are_refused(head, tmp_path):
    marker = tmp_path / "ran"
    body = json.dumps({"entrypoint": f"touch {marker}"}).encode()
    for headers in ({}, {"Authorization": "Bearer " + "0" * 64}):
        req = urllib.request.Request(head + "/api/jobs/", data=body, method="POST", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(head + "/api/jobs/", timeout=10)
    assert e.value.code == 401
    from luminary.job_submission import JobSubmissionClient
    with pytest.raises(PermissionError):
        JobSubmissionClient(head, headers={"Authorization": "Bearer wrong"})
    assert not marker.exists()
    # the token printed on the head works from anywhere it is set
    token = subprocess.run(CLI + ["job", "token", "--address", head], capture_output=True, text=True,
                           timeout=30).stdout.strip()
    env = dict(os.environ, LUMINARY_JOB_TOKEN=token)
    out = subprocess.run(CLI + ["job", "list", "--address", head], capture_output=True, text=True, timeout=30,
                         env=env)
    assert out.returncode == 0, out.stderr


def test_bad_runtime_env_fails_the_job_with_the_reason(head):
    from luminary.job_submission import JobStatus, JobSubmissionClient
    client = JobSubmissionClient(head)
    with pytest.raises(ValueError, match="working_dir .*does not exist"):
        client.submit_job(entrypoint="true", runtime_env={"working_dir": "/no/such/dir"})
    sid = client.submit_job(entrypoint="true", runtime_env={"pip": ["no-such-package-lum==9.9"]})
    poll_for(lambda: client.get_job_status(sid).is_terminal(), timeout=60, desc="the job to end")
    info = client.get_job_info(sid)
    assert info.status == JobStatus.FAILED and "no-such-package-lum" in info.message
