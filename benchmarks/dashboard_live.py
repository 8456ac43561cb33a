"""Dashboard cost (live pages): usage: dashboard_live.py init N | start N | memory.
init() and `luminary start --head` time with/without, head RSS with 100k tasks."""
import glob, json, os, statistics, subprocess, sys, threading, time, urllib.request
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_jobs import CLI, _free_port, _stop_head

def init_time(kw):
    code = ("import time,luminary as ray;t=time.perf_counter();ray.init(num_cpus=1,%s);"
            "print(time.perf_counter()-t);ray.shutdown()" % kw)
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()[-1])

def start_time(dash):
    port, api = _free_port(), _free_port()
    t = time.perf_counter()
    out = subprocess.run(CLI + ["start", "--head", "--port", str(port), "--dashboard-port", str(api), "--num-cpus", "2",
                                "--include-dashboard", "true" if dash else "false"], capture_output=True, text=True)
    dt = time.perf_counter() - t
    assert out.returncode == 0, out.stderr
    _stop_head(port)
    return dt

what = sys.argv[1]
if what == "init":
    a, b = [], []
    for _ in range(int(sys.argv[2])):
        a.append(init_time("include_dashboard=False")); b.append(init_time("dashboard_port=0"))
    print("init() median without %.3f s, with %.3f s (n=%d)" % (statistics.median(a), statistics.median(b), len(a)))
if what == "start":
    a, b = [], []
    for _ in range(int(sys.argv[2])):
        a.append(start_time(False)); b.append(start_time(True))
    print("start --head median without %.3f s, with %.3f s (n=%d)" % (statistics.median(a), statistics.median(b), len(a)))
if what == "memory":
    port, api = _free_port(), _free_port()
    out = subprocess.run(CLI + ["start", "--head", "--port", str(port), "--dashboard-port", str(api), "--num-cpus", "2"],
                         capture_output=True, text=True, check=True)
    from luminary._private import procutil
    rec = [json.load(open(p)) for p in glob.glob(os.path.join(procutil.state_dir("nodes"), "*.json"))]
    pid = [r["pid"] for r in rec if r["gcs_address"].endswith(":%d" % port)][0]
    def one(p):
        return int([l for l in open(f"/proc/{p}/status") if l.startswith("VmRSS")][0].split()[1]) / 1024
    def rss():     # the node manager and its direct children (the GCS and the zygote)
        kids = []
        for t in os.listdir(f"/proc/{pid}/task"):
            kids += open(f"/proc/{pid}/task/{t}/children").read().split()
        return one(pid) + sum(one(k) for k in kids)
    try:
        print("head RSS idle %.1f MiB" % rss())
        code = ("import luminary as ray\nray.init(address='127.0.0.1:%d')\n@ray.remote\ndef f(i): return i\n"
                "for k in range(10): ray.get([f.remote(i) for i in range(10000)])\n"
                "from luminary.util.state import summarize_tasks\nimport time\n"
                "while summarize_tasks()['cluster']['total_tasks'] < 100000: time.sleep(0.2)\nprint('ok')" % port)
        t = time.time(); subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=900)
        print("100k tasks in %.0f s" % (time.time() - t))
        from luminary.job_submission import _find_token
        tok = _find_token(f"http://127.0.0.1:{api}")
        before = rss(); print("head RSS with 100k tasks, dashboard never opened %.1f MiB" % before)
        peak = [before]
        def stream(view):
            req = urllib.request.Request(f"http://127.0.0.1:{api}/api/dash/events?view={view}", headers={"Authorization": "Bearer " + tok})
            with urllib.request.urlopen(req, timeout=60) as r:
                end = time.time() + 8
                while time.time() < end:
                    r.read1(65536)
        ths = [threading.Thread(target=stream, args=(v,)) for v in ("overview", "tasks", "stream", "metrics")]
        for th in ths: th.start()
        while any(th.is_alive() for th in ths):
            peak.append(rss()); time.sleep(0.25)
        for th in ths: th.join()
        print("head RSS peak with 4 dashboard pages open %.1f MiB (+%.1f MiB); after they closed %.1f MiB" % (max(peak), max(peak) - before, rss()))
    finally:
        _stop_head(port)
