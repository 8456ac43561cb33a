"""The web dashboard on a CLI-started head, driven in a real headless Chromium (Playwright pointed
at the system browser; no browser download).  Screenshots of the main pages are written to
$LUMINARY_DASHBOARD_SCREENSHOTS (default: a pytest temp dir) as test artifacts."""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from _backend import IS_RAY, poll_for
from test_jobs import CLI, _free_port, _stop_head

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(IS_RAY, reason="Luminary's dashboard and command-line tool")]


def _browser():
    for name in (os.environ.get("LUMINARY_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def head():
    port, api = _free_port(), _free_port()
    out = subprocess.run(CLI + ["start", "--head", "--port", str(port), "--dashboard-port", str(api),
                                "--num-cpus", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    link = [ln.strip() for ln in out.stdout.splitlines() if "/login?token=" in ln]
    assert link and link[0].startswith(f"http://127.0.0.1:{api}/login?token="), out.stdout
    try:
        yield {"url": f"http://127.0.0.1:{api}", "link": link[0], "gcs": f"127.0.0.1:{port}"}
    finally:
        _stop_head(port)


def _fresh_link(head):
    out = subprocess.run(CLI + ["dashboard", "--address", head["gcs"]], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = os.environ.get("LUMINARY_DASHBOARD_SCREENSHOTS") or str(tmp_path_factory.mktemp("dashboard-screenshots"))
    os.makedirs(d, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def browser():
    path = _browser()
    if path is None:
        pytest.skip("no Chromium on this machine (.ci/run installs the 'chromium' package when it can)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def page(browser, head):
    """One logged-in tab for the module; console errors and page errors fail the test that saw them."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    pg.errors = []
    pg.requests = []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.on("console", lambda m: m.type == "error" and pg.errors.append(m.text))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.goto(head["link"])
    yield pg
    ctx.close()


@pytest.fixture(autouse=True)
def no_console_errors(request):
    yield
    if "page" in request.fixturenames:
        errors = request.getfixturevalue("page").errors
        assert not errors, f"browser console errors: {errors}"


def _get(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_unauthenticated_requests_get_401(head):
    for path in ("/", "/index.html", "/static/app.js", "/api/dash/overview", "/api/dash/tasks", "/api/jobs/",
                 "/api/dash/events", "/api/dash/events?view=logs&log=job:x"):
        assert _get(head["url"] + path)[0] == 401, path
    assert _get(head["url"] + "/api/dash/overview", {"Cookie": "luminary_session=" + "0" * 64})[0] == 401
    assert _get(head["url"] + "/login?token=abc.1.def")[0] == 401
    # the job API's bearer token opens the dashboard's endpoints too
    from luminary.job_submission import _find_token
    status, _ = _get(head["url"] + "/api/dash/overview", {"Authorization": "Bearer " + _find_token(head["url"])})
    assert status == 200


def test_login_link_is_one_time_and_sets_a_strict_httponly_cookie(browser, head):
    link = _fresh_link(head)
    ctx = browser.new_context()
    try:
        pg = ctx.new_page()
        pg.goto(link)
        assert pg.url == head["url"] + "/"
        cookie, = [c for c in ctx.cookies() if c["name"] == "luminary_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert _get(link)[0] == 401                         # spent
    finally:
        ctx.close()


def test_overview_shows_the_nodes(page, head, shots):
    page.wait_for_selector(".card.node[data-node-id]")
    text = page.inner_text("#nodes")
    assert "head" in text and "alive" in text and "Object store" in text and "Memory" in text
    page.wait_for_selector("#status:has-text('live')")
    page.screenshot(path=os.path.join(shots, "overview.png"), full_page=True)


WORKLOAD = """
import time, luminary as ray
from luminary.util.state import list_tasks
ray.init(address="{gcs}")
@ray.remote
def crunch(i):
    time.sleep(0.05)
    return i
@ray.remote
def load_table(i):
    time.sleep(0.1)
    return i
@ray.remote
def explode():
    raise ValueError("the dashboard test's failure")
refs = [crunch.remote(i) for i in range(30)] + [load_table.remote(i) for i in range(10)]
ray.get(refs)
try:
    ray.get(explode.remote())
except Exception:
    pass
# workers still leased when a driver exits are killed, losing their last <= 100 ms of task events:
# stay until the head has every worker's report (a readiness poll, not a timed sleep)
deadline = time.monotonic() + 60
while True:
    rows = list_tasks(filters=[("job_id", "=", ray.get_runtime_context().get_job_id())], detail=True, limit=1000)
    if len([t for t in rows if t.start_time_ms]) >= 41 and any(t.error_message for t in rows):
        break
    assert time.monotonic() < deadline, rows
    time.sleep(0.05)
print("done", flush=True)
"""


_WORKLOAD_RAN = []


def test_workload_updates_counts_and_task_stream_live(page, head, shots, tmp_path):
    page.goto(head["url"] + "/#overview")
    page.wait_for_selector("#task-total[data-total]")
    before = int(page.get_attribute("#task-total", "data-total"))
    page.evaluate("window.__notReloaded = true")
    del page.requests[:]
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD.format(gcs=head["gcs"]))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "done" in out.stdout, out.stderr
    _WORKLOAD_RAN.append(True)
    page.wait_for_function(f"() => Number(document.getElementById('task-total').dataset.total) >= {before + 41}",
                           timeout=20_000)
    page.wait_for_selector("#task-states tr[data-state='FAILED']")
    page.screenshot(path=os.path.join(shots, "overview-busy.png"), full_page=True)
    page.click("#nav a[data-page='stream']")
    page.wait_for_function("() => Number(document.getElementById('stream-count').dataset.count) >= 41 && "
                           "Number(document.getElementById('stream-count').dataset.failed) >= 1", timeout=20_000)
    legend = page.inner_text("#stream-legend")
    assert "crunch × 30" in legend and "load_table × 10" in legend and "explode × 1 (1 failed)" in legend
    assert page.evaluate("window.__notReloaded") is True
    # live by the event stream: no polling requests, one stream per page shown
    dash = [u for u in page.requests if "/api/dash/" in u]
    assert dash and all("/api/dash/events?" in u for u in dash), dash
    assert not any(u.endswith((".html", ".js", ".css")) or u.endswith("/") for u in page.requests), page.requests
    page.screenshot(path=os.path.join(shots, "task-stream.png"), full_page=True)
    page.click("#nav a[data-page='metrics']")
    page.wait_for_selector("#page-metrics.active")
    page.screenshot(path=os.path.join(shots, "metrics.png"), full_page=True)


def test_failed_task_shows_its_traceback(page, head, shots, tmp_path):
    if not _WORKLOAD_RAN:
        script = tmp_path / "workload.py"      # this test alone: make the failed task it reads
        script.write_text(WORKLOAD.format(gcs=head["gcs"]))
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "done" in out.stdout, out.stderr
    page.click("#nav a[data-page='tasks']")
    page.select_option("#task-filter-state", "FAILED")
    sel = "#tasks-table tr[data-id]:has-text('explode')"
    page.wait_for_selector(sel, timeout=60_000)
    page.locator(sel).first.click()       # re-found at click time: the table redraws every second
    page.wait_for_selector("#task-error")
    err = page.inner_text("#task-error")
    assert "ValueError: the dashboard test's failure" in err, err
    assert 'raise ValueError("the dashboard test' in err and "in explode" in err, err      # the traceback
    detail = page.inner_text("#task-detail")
    assert "explode" in detail and "arguments" in detail and "ran" in detail and "pid" in detail, detail
    page.screenshot(path=os.path.join(shots, "task-detail.png"), full_page=True)


def test_stop_a_job_from_its_page(page, head, shots, tmp_path):
    from luminary.job_submission import JobStatus, JobSubmissionClient
    (tmp_path / "loop.py").write_text("import time\nprint('looping', flush=True)\nwhile True:\n    time.sleep(0.1)\n")
    client = JobSubmissionClient(head["url"])
    sid = client.submit_job(entrypoint="python loop.py", runtime_env={"working_dir": str(tmp_path)})
    page.click("#nav a[data-page='jobs']")
    page.click(f"#jobs-table tr[data-id='{sid}']")
    page.wait_for_selector("#job-logs:has-text('looping')", timeout=30_000)
    page.screenshot(path=os.path.join(shots, "jobs.png"), full_page=True)
    page.click(f"button[data-stop='{sid}']")
    page.wait_for_selector(f"#jobs-table tr[data-id='{sid}'] td.state-STOPPED", timeout=30_000)
    assert client.get_job_status(sid) == JobStatus.STOPPED
    page.click("#nav a[data-page='actors']")
    page.wait_for_selector("#page-actors.active #actors-table tr")


def test_cross_origin_post_with_the_cookie_is_refused(page, head):
    sid_cookie = [c for c in page.context.cookies() if c["name"] == "luminary_session"][0]["value"]
    req = urllib.request.Request(head["url"] + "/api/jobs/nope/stop", method="POST", data=b"",
                                 headers={"Cookie": "luminary_session=" + sid_cookie, "Origin": "http://evil.example"})
    try:
        urllib.request.urlopen(req, timeout=10)
        status = 200
    except urllib.error.HTTPError as e:
        status = e.code
    assert status == 403


def test_login_tokens_expire_and_cannot_be_forged():
    from luminary._private.dashboard import check_login_token, login_token
    secret, now = b"s" * 32, 1_000_000.0
    tok = login_token(secret, ttl_s=60, now=now)
    assert check_login_token(secret, tok, now + 59) is not None
    assert check_login_token(secret, tok, now + 61) is None                  # expired
    assert check_login_token(b"t" * 32, tok, now) is None                    # another cluster's secret
    nonce, expiry, mac = tok.split(".")
    assert check_login_token(secret, f"{nonce}.{int(expiry) + 3600}.{mac}", now) is None   # extended by hand
    assert check_login_token(secret, "", now) is None


LIVE_DRIVER = """
import sys, time, luminary as ray
from luminary.util.placement_group import placement_group
ray.init(address="{gcs}", log_to_driver=False)
big = ray.put(b"x" * (3 << 20))
pg = placement_group([{{"CPU": 0.25}}, {{"CPU": 0.25}}], name="dash-pg")
ray.get(pg.ready(), timeout=60)

@ray.remote(num_cpus=0)
class Ticker:
    def spin(self):
        i = 0
        while True:
            print("tick", i, flush=True)
            i += 1
            time.sleep(0.2)

    def later(self):
        return 1

t = Ticker.remote()
t.spin.remote()
later = [t.later.remote() for _ in range(2)]
from luminary.util.state import list_actors
deadline = time.monotonic() + 60
while not [a for a in list_actors() if a.state == "ALIVE" and a.pid]:
    assert time.monotonic() < deadline
    time.sleep(0.05)
a, = list_actors()
print("ready", a.actor_id, a.pid, flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def live(head, tmp_path_factory):
    """A driver that holds a 3 MiB object, a placement group and an actor busy in an endless
    call (printing a line every 0.2 s) with two calls queued behind it; it ends when its stdin closes."""
    script = tmp_path_factory.mktemp("live") / "live.py"
    script.write_text(LIVE_DRIVER.format(gcs=head["gcs"]))
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, LUMINARY_EXIT_DRAIN_S="0"))
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready"), line
        _, actor_id, pid = line.split()
        yield {"actor_id": actor_id, "pid": int(pid)}
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_actor_detail_shows_pending_calls_and_its_log(page, live, shots):
    page.click("#nav a[data-page='actors']")
    page.click(f"#actors-table tr[data-id='{live['actor_id']}']")
    page.wait_for_selector("#actor-pending[data-n='3']", timeout=20_000)     # the running call and two queued
    assert page.locator("#actor-calls tr:has-text('later')").count() == 2
    assert page.locator("#actor-calls tr:has-text('spin') td.state-RUNNING").count() == 1
    page.wait_for_selector("#actor-log:has-text('tick')", timeout=20_000)
    assert str(live["pid"]) in page.inner_text("#actor-detail")
    page.screenshot(path=os.path.join(shots, "actor-detail.png"), full_page=True)


def test_logs_page_tails_a_worker_log_live(page, live, shots):
    page.click("#nav a[data-page='logs']")
    row = f"#logs-table tr[data-id$='-{live['pid']}.log']"
    page.wait_for_selector(row, timeout=20_000)
    page.locator(row).first.click()
    page.wait_for_selector("#log-text:has-text('tick')", timeout=20_000)
    first = page.evaluate("document.getElementById('log-text').textContent.split('tick').length")
    page.wait_for_function(f"() => document.getElementById('log-text').textContent.split('tick').length > {first + 2}",
                           timeout=20_000)       # new lines arrive while we watch
    page.screenshot(path=os.path.join(shots, "logs.png"), full_page=True)


def test_objects_page_shows_memory_per_node(page, live, shots):
    page.click("#nav a[data-page='objects']")
    page.wait_for_selector("#objects-table tr[data-id]:has-text('3.0 MiB')", timeout=20_000)
    nodes = page.inner_text("#objects-nodes")
    assert "object store" in nodes and "3.0 MiB" in nodes, nodes
    page.screenshot(path=os.path.join(shots, "objects.png"), full_page=True)


def test_placement_groups_page_shows_bundles_and_nodes(page, live, shots):
    page.click("#nav a[data-page='pgs']")
    sel = "#pgs-table tr[data-id]:has-text('dash-pg')"
    page.wait_for_selector(sel, timeout=20_000)
    text = page.inner_text(sel)
    assert "CREATED" in text and '#0 {"CPU":0.25} on' in text and "#1" in text, text
    page.screenshot(path=os.path.join(shots, "placement-groups.png"), full_page=True)


def test_stacks_page_shows_a_workers_live_stack(page, live, shots):
    page.click("#nav a[data-page='stacks']")
    row = f"#workers-table tr[data-pid='{live['pid']}']"
    page.wait_for_selector(row, timeout=20_000)
    page.locator(row).first.click()
    page.wait_for_selector("#stack-text:has-text('in spin')", timeout=20_000)
    assert "Ticker" in page.inner_text("#stack-text")
    page.screenshot(path=os.path.join(shots, "stacks.png"), full_page=True)


# --- metric charts over the head's history ------------------------------------------------------------
CHART_DRIVER = """
import sys, time, luminary as ray
from luminary.util.metrics import Counter
ray.init(address="{gcs}", log_to_driver=False)

@ray.remote
def charted(i):
    Counter("dash_chart_calls", description="calls of charted", tag_keys=("kind",)).inc(1, tags={{"kind": "test"}})
    time.sleep(0.02)
    return i

assert ray.get([charted.remote(i) for i in range(20)]) == list(range(20))
print("ran", flush=True)
sys.stdin.read()       # workers stay until the head has every report (the test polls for it)
"""


def _ring(head, since=0.0, points=1):
    from luminary.job_submission import _find_token
    status, body = _get(f"{head['url']}/api/dash/metrics?since={since}&points={points}",
                        {"Authorization": "Bearer " + _find_token(head["url"])})
    assert status == 200, body
    return json.loads(body)


def _last(ring, key):
    vals = [v for v in ring["series"].get(key, []) if v is not None]
    return vals[-1] if vals else None


def test_metrics_page_opened_after_a_workload_charts_it(browser, head, shots, tmp_path):
    poll_for(lambda: _ring(head)["t"], timeout=20, interval=0.1, desc="the head's first sample (one a second)")
    finished_before = _last(_ring(head), "tasks|FINISHED")
    started = time.time()
    script = tmp_path / "charted.py"
    script.write_text(CHART_DRIVER.format(gcs=head["gcs"]))
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("ran")

        def recorded():
            ring = _ring(head)
            return (_last(ring, "metric|dash_chart_calls|kind=test") or 0) >= 20 and \
                _last(ring, "tasks|FINISHED") >= finished_before + 20
        poll_for(recorded, timeout=30, interval=0.1, desc="the counter and the finished tasks in the head's ring")
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()
    # only now is the page opened: its charts come from the head's history
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        pg = ctx.new_page()
        errors = []
        pg.on("console", lambda m: m.type == "error" and errors.append(m.text))
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(_fresh_link(head))
        pg.goto(head["url"] + "/#metrics")
        fin = "[data-family='tasks-ended'] .legend span[data-key='tasks|FINISHED']"
        pg.wait_for_selector(fin, timeout=20_000)
        first, last, t_first = (float(pg.get_attribute(fin, a)) for a in ("data-first", "data-last", "data-t-first"))
        assert t_first < started and first <= finished_before and last >= finished_before + 20
        user = "[data-family='metric:dash_chart_calls'] .legend span[data-key='metric|dash_chart_calls|kind=test']"
        pg.wait_for_selector(user, timeout=20_000)
        assert float(pg.get_attribute(user, "data-last")) >= 20
        assert "dash_chart_calls" in pg.inner_text("[data-family='metric:dash_chart_calls'] h3")
        for fam in ("tasks-active", "cpu", "mem", "store", "spilled"):      # a chart per family
            assert int(pg.get_attribute(f"[data-family='{fam}']", "data-points")) > 0, fam
        inked = pg.evaluate("""() => { const cv = document.querySelector("[data-family='tasks-ended'] canvas");
            const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }""")
        assert inked > 1000          # axes and the line were drawn
        # live: new samples are appended without reloading
        pts = int(pg.get_attribute("[data-family='tasks-ended']", "data-points"))
        pg.wait_for_function(f"() => Number(document.querySelector(\"[data-family='tasks-ended']\").dataset.points) > {pts}",
                             timeout=20_000)
        pg.select_option("#metrics-range", "300")
        pg.wait_for_selector(fin)
        pg.screenshot(path=os.path.join(shots, "metrics-after-workload.png"), full_page=True)
        assert not errors, errors
    finally:
        ctx.close()


def test_metrics_ring_thins_after_an_hour_and_stays_bounded():
    from luminary._private.gcs.metrics_history import MetricsRing
    ring, t0 = MetricsRing(), 1_000_000.0
    for i in range(26 * 3600):        # 26 hours of one sample a second, time simulated
        ring.add(t0 + i, {"tasks|FINISHED": i, "cpu|n1": 50.0})
        if i in (1800, 2 * 3600):
            ring.validate()
    ring.validate()
    now = t0 + 26 * 3600 - 1
    ts = [t for t, _ in ring.samples()]
    fine = [t for t in ts if t >= now - 3600]
    assert fine == [now - 3600 + k for k in range(3601)]                  # the last hour: every second
    old = [t for t in ts if t < now - 3600]
    assert old[0] >= now - 24 * 3600 and old[0] < now - 24 * 3600 + 10     # a day kept, no more
    assert all(b - a == 10 for a, b in zip(old, old[1:]))                  # one per 10 s beyond the hour
    assert len(ring) == 3601 + len(old) and ring.nbytes < 5 << 20
    q = ring.query(0, 600)                                                 # a chart's worth, evenly spread
    assert len(q["t"]) <= 600 and q["t"][-1] == now and q["series"]["tasks|FINISHED"][-1] == 26 * 3600 - 1
    assert ring.query(now - 2)["t"] == [now - 1, now]                      # what a live page appends

    small = MetricsRing(max_series=8, max_bytes=20_000)                    # both bounds hold
    for i in range(1000):
        small.add(float(i), {f"metric|m{i % 20}|": i})
    small.validate()
    assert len(small.keys) == 8 and small.series_dropped > 0 and small.nbytes <= 20_000
    assert [t for t, _ in small.samples()][-1] == 999.0                    # the oldest went, not the newest
    small.add(5.0, {"metric|m0|": 1})                                      # out of order: ignored
    small.validate()
