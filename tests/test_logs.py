"""Worker output on the driver (prefix, Ray's deduplication) and per-worker log files (rotation).

The script tests run on Luminary and, with LUMINARY_TEST_BACKEND=ray, on Ray (the reference).
"""

import os
import pty
import re
import select
import subprocess
import sys
import textwrap
import time

import pytest

from _backend import BACKEND, IS_RAY

pytestmark = pytest.mark.timeout(120)
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Three actors (three processes) print one line three times each and a numbered line, then
# a line of their own.  The script waits for a line on stdin before it shuts down: the test
# sends it once the output it waits for has arrived (Ray drops worker output that its log
# monitor has not read yet when the driver shuts down).
CHATTY = textwrap.dedent(f"""
    import sys
    import {BACKEND} as ray
    ray.init(num_cpus=3)

    @ray.remote(num_cpus=1)
    class Chatty:
        def talk(self, i):
            for k in range(3):
                print("same line everywhere")
                print(f"step {{3 * i + k}} done")
            print("finished " + "abc"[i], flush=True)
            return i

    actors = [Chatty.remote() for _ in range(3)]
    ray.get([a.talk.remote(i) for i, a in enumerate(actors)])
    sys.stdin.readline()
    ray.shutdown()
""")


def _run(tmp_path, source, extra_env=None, ready=None, timeout=100, tty=False):
    """Run ``source``; once ``ready(text so far)`` holds, send the line it waits for; return its
    stdout without colours."""
    script = tmp_path / "script.py"
    script.write_text(source)
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("RAY_DEDUP") or k in ("RAY_ADDRESS", "RAY_COLOR_PREFIX"):
            del env[k]
    env.update(extra_env or {})
    if tty:
        master, slave = pty.openpty()
    else:
        master, slave = os.pipe()
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=slave,
                            stderr=subprocess.PIPE, env=env)
    os.close(slave)
    data, released = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not released and (ready is None or ready(ANSI.sub("", data.decode(errors="replace")))):
                proc.stdin.write(b"go\n")
                proc.stdin.close()
                released = True
            r, _, _ = select.select([master], [], [], 0.2)
            if not r:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:     # a terminal whose other end closed
                chunk = b""
            if not chunk:
                break
            data += chunk
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    assert released, "the output waited for never came:\n" + data.decode(errors="replace")[-3000:]
    assert proc.returncode == 0, err[-3000:]
    text = data.decode(errors="replace").replace("\r\n", "\n")
    return text if tty else ANSI.sub("", text)


def _all_finished(text):
    return all(f") finished {c}" in text for c in "abc")


def _occurrences(text, message):
    """How many times ``message`` was printed: plain lines count 1, a repeat note N."""
    n = 0
    for line in text.splitlines():
        m = re.match(r"\((\S+) pid=\d+\) (.*)$", line)
        if not m:
            continue
        body = m.group(2)
        rep = re.search(r" \[repeated (\d+)x across cluster\]", body)
        core = body[:rep.start()] if rep else body
        if re.sub(r"\d+", "N", core) == re.sub(r"\d+", "N", message):
            n += int(rep.group(1)) if rep else 1
    return n


def test_repeated_lines_across_workers_are_collapsed(tmp_path):
    text = _run(tmp_path, CHATTY, ready=_all_finished)
    lines = [ln for ln in text.splitlines() if "same line everywhere" in ln]
    # printed at once the first time, with Ray's prefix
    assert re.fullmatch(r"\(Chatty pid=\d+\) same line everywhere", lines[0]), text
    # the repeats from other workers are collapsed into counted lines
    assert any("[repeated" in ln and "x across cluster]" in ln for ln in lines), text
    assert len(lines) < 9, text
    # nothing is lost: printed lines plus the counts are every line printed
    assert _occurrences(text, "same line everywhere") == 9, text
    # numbers do not make lines different
    assert _occurrences(text, "step 0 done") == 9, text
    assert len([ln for ln in text.splitlines() if " done" in ln]) < 9, text


def _nine_same(text):
    return len([ln for ln in text.splitlines() if ln.endswith(") same line everywhere")]) == 9


def test_dedup_switched_off_with_rays_variable(tmp_path):
    text = _run(tmp_path, CHATTY, {"RAY_DEDUP_LOGS": "0"}, ready=_all_finished)
    assert "repeated" not in text, text
    same = [ln for ln in text.splitlines() if ln.endswith(") same line everywhere")]
    assert len(same) == 9, text
    assert len({re.match(r"\(Chatty pid=(\d+)\)", ln).group(1) for ln in same}) == 3, text
    steps = sorted(int(m.group(1)) for m in re.finditer(r"\) step (\d+) done", text))
    assert steps == list(range(9)), text


def test_dedup_skip_and_allow_regex(tmp_path):
    text = _run(tmp_path, CHATTY, {"RAY_DEDUP_LOGS_SKIP_REGEX": "step", "RAY_DEDUP_LOGS_ALLOW_REGEX": "same line"},
                ready=_all_finished)
    assert " done" not in text, text
    assert _nine_same(text), text


def test_prefix_is_coloured_on_a_terminal(tmp_path):
    source = textwrap.dedent(f"""
        import sys
        import {BACKEND} as ray
        ray.init(num_cpus=1)

        @ray.remote
        def hello():
            print("hello on a terminal")

        ray.get(hello.remote())
        sys.stdin.readline()
        ray.shutdown()
    """)
    text = _run(tmp_path, source, tty=True, ready=lambda t: "hello on a terminal" in t)
    assert re.search(r"\x1b\[36m\(hello pid=\d+\)\x1b\[0m hello on a terminal", text), repr(text)


def test_bad_dedup_setting_is_named(tmp_path):
    if IS_RAY:
        pytest.skip("Ray reads its variables at import and fails with a bare ValueError")
    script = tmp_path / "bad.py"
    script.write_text("import luminary as ray\nray.init(num_cpus=1)\n")
    env = dict(os.environ, RAY_DEDUP_LOGS_AGG_WINDOW_S="soon")
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0
    assert "RAY_DEDUP_LOGS_AGG_WINDOW_S" in out.stderr and "number of seconds" in out.stderr, out.stderr[-2000:]


# --------------------------------------------------------------------------
# per-worker log files: rotation with a size cap
# --------------------------------------------------------------------------

def test_worker_log_rotates_and_get_log_reads_across(shutdown_only, monkeypatch):
    import threading

    from _backend import poll_for, ray
    state = __import__(f"{BACKEND}.util.state", fromlist=["get_log"])
    cap, backups = 6000, 2
    monkeypatch.setenv("RAY_ROTATION_MAX_BYTES", str(cap))
    monkeypatch.setenv("RAY_ROTATION_BACKUP_COUNT", str(backups))
    ray.init(num_cpus=1)

    @ray.remote
    class Talker:
        def talk(self, start, n):
            for i in range(start, start + n):
                print(f"line {i:05d} " + "x" * 90, flush=True)
            return os.getpid()

    a = Talker.remote()
    aid = a._actor_id.hex()
    pid = ray.get(a.talk.remote(0, 300))          # about 30 kB: several rotations

    def numbers(lines):
        return [int(m.group(1)) for m in (re.match(r"line (\d{5}) x+$", ln.strip()) for ln in lines) if m]

    def last_seen():
        got = numbers(state.get_log(actor_id=aid, tail=-1))
        return got if got and got[-1] == 299 else None

    got = poll_for(last_seen, timeout=30, desc="the actor's output in its log")
    # the oldest lines are gone (the cap), the rest reads in order across the rotated files
    per_file = cap // 100
    assert got == list(range(got[0], 300)), got
    assert per_file < len(got) <= (backups + 1) * (per_file * 5 // 4 + 2), len(got)
    names = [n for files in state.list_logs().values() for n in files if f"-{pid}." in n]
    assert any(n.endswith(".1") for n in names) and not any(n.endswith(f".{backups + 1}") for n in names), names

    # follow keeps going across rotations (each chunk is about one file: the follower reads it
    # before the next chunk can rotate it away)
    seen = []

    def follow():
        for line in state.get_log(actor_id=aid, tail=0, follow=True):
            seen.extend(numbers([line]))
            if seen and seen[-1] == 599:
                break

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    # the follower opens the file at its start: output before that is not asked for
    poll_for(lambda: ray.get(a.talk.remote(299, 1)) and seen, timeout=30, interval=0.3, desc="the follower reading")
    for start in range(300, 600, 50):
        ray.get(a.talk.remote(start, 50))
        poll_for(lambda: seen and seen[-1] == start + 49, timeout=30, desc=f"line {start + 49} followed")
    assert [n for n in seen if n >= 300] == list(range(300, 600))
    t.join(10)
    assert not t.is_alive()
