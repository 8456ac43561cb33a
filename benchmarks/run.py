#!/usr/bin/env python
"""Run the Luminary benchmarks side by side with Ray and print one table.

    python benchmarks/run.py                 # 3 repeats, default sizes
    python benchmarks/run.py --quick         # smoke run: smaller sizes, 1 repeat
    python benchmarks/run.py --only "single client tasks sync,1:1 actor calls sync"
    python benchmarks/run.py --write-docs    # also rewrite docs/benchmarks.md

Each backend runs ``benchmarks/workloads.py`` in its own subprocess: Luminary
with this interpreter (sys.executable), Ray with --ray-python (default: $RAY_PYTHON,
else /work/rayenv/bin/python when it exists; without one the Ray column is
"n/a").  With --repeat N the two backends' whole workload scripts run N times,
alternating which backend goes first, and every cell is the median of the runs
that produced a number.  See benchmarks/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import workloads as W  # noqa: E402  (standard library only at import time)

BACKENDS = ("luminary", "ray")
TITLES = {"luminary": "Luminary", "ray": "Ray"}
MAX_LAUNCHES = 8  # per backend run: first start + restarts after row timeouts/crashes


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def default_ray_python():
    env = os.environ.get("RAY_PYTHON")
    if env:
        return env
    if os.path.exists("/work/rayenv/bin/python"):
        return "/work/rayenv/bin/python"
    return None


def probe_ray(python):
    """(version, python_version) of Ray under ``python``, or raise."""
    out = subprocess.run(
        [python, "-c", "import platform, ray; print(ray.__version__); "
                       "print(platform.python_version())"],
        capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise RuntimeError((out.stderr or out.stdout).strip().splitlines()[-1:] or "failed")
    lines = out.stdout.strip().splitlines()
    return lines[-2], lines[-1]


def machine_info():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        cpu = platform.processor() or cpu
    ram_gib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram_gib = int(line.split()[1]) * 1024 / 2**30
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram_gib,
            "os": "%s %s" % (platform.system(), platform.release())}


def git_rev():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "no commit"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + (" (+ uncommitted changes)" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None


def tagged_processes(tag, sid=None, since=0.0):
    """Processes of one workload-script launch: those whose environment
    carries ``tag`` or that are in session ``sid`` (the launch's own session,
    created after ``since``), their descendants, and any process naming one of
    their --session-dir directories on its command line."""
    try:
        import psutil
    except ImportError:
        return []
    import re

    found = {}
    for p in psutil.process_iter():
        try:
            mine = W.has_tag(p, tag)
            if not mine and sid is not None and W._sid(p.pid) == sid:
                mine = p.create_time() >= since - 1.0
            if mine:
                found[p.pid] = p
                for c in p.children(recursive=True):
                    found[c.pid] = c
        except (psutil.Error, OSError):
            pass
    sess = set()
    for p in list(found.values()):
        try:
            for m in re.finditer(r"--session[-_]dir=(\S+)", " ".join(p.cmdline())):
                sess.add(m.group(1).rstrip("/"))
        except (psutil.Error, OSError):
            pass
    if sess:
        for p in psutil.process_iter():
            if p.pid in found:
                continue
            try:
                cl = " ".join(p.cmdline())
            except (psutil.Error, OSError):
                continue
            if any(s + "/" in cl or s + " " in cl or cl.endswith(s) for s in sess):
                found[p.pid] = p
    found.pop(os.getpid(), None)
    return list(found.values())


def cleanup(tag, sid, since, grace=8.0):
    """Wait up to ``grace`` s for the launch's processes to exit, then SIGKILL
    the ones left (by pid).  Returns how many had to be killed."""
    try:
        import psutil
    except ImportError:
        return 0
    t_end = time.monotonic() + grace
    while True:
        procs = [p for p in tagged_processes(tag, sid, since) if _alive(p)]
        if not procs:
            return 0
        if time.monotonic() > t_end:
            for p in procs:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=5)
            return len(procs)
        time.sleep(0.25)


def _alive(p):
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def fmt_value(v, unit):
    if v is None:
        return ""
    if unit == "s":
        return "%.2f s" % v
    if unit == "MB":
        return "%.0f MB" % v
    if unit == "processes":
        return "%.0f" % v
    if v >= 100:
        s = "{:,.0f}".format(v)
    elif v >= 10:
        s = "%.1f" % v
    else:
        s = "%.2f" % v
    return s


# --------------------------------------------------------------------------
# One backend run (one repeat of one backend), with restarts
# --------------------------------------------------------------------------

class BackendRun:
    def __init__(self, backend, python, args, selected, rep, out_dir):
        self.backend = backend
        self.python = python
        self.args = args
        self.selected = selected  # list of workloads
        self.rep = rep
        self.out_dir = out_dir
        self.results = {}  # row name -> entry
        self.meta = None
        self.problems = []  # text lines for the report
        self.wall = 0.0

    def _cmd(self, json_path, only):
        a = self.args
        cmd = [self.python, "-u", os.path.join(HERE, "workloads.py"),
               "--backend", self.backend, "--json", json_path,
               "--num-cpus", str(a.num_cpus), "--only", ",".join(only),
               "--timeout-scale", str(a.row_timeout_scale)]
        if a.quick:
            cmd.append("--quick")
        if a.duration:
            cmd += ["--duration", str(a.duration)]
        if self.backend == "ray" and a.ray_init_kwargs:
            cmd += ["--init-kwargs", a.ray_init_kwargs]
        if self.backend == "luminary" and a.luminary_init_kwargs:
            cmd += ["--init-kwargs", a.luminary_init_kwargs]
        return cmd

    def _env(self, tag):
        env = os.environ.copy()
        env[W.TAG_VAR] = tag
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.backend == "luminary":
            # Use the working tree's package whether or not it is installed.
            env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"]
                                        if env.get("PYTHONPATH") else "")
        else:
            # No network here; keep Ray from trying to report usage stats.
            env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        return env

    def _mark(self, names, error, message):
        for n in names:
            if n not in self.results:
                self.results[n] = {"error": error, "message": message}

    def run(self):
        t_start = time.monotonic()
        deadline = t_start + self.args.timeout
        remaining = list(self.selected)
        launch = 0
        while remaining:
            rows_left = [r.name for w in remaining for r in w.rows]
            if launch >= MAX_LAUNCHES:
                self._mark(rows_left, "NotRun", "too many restarts")
                break
            left = deadline - time.monotonic()
            if left < 5:
                self._mark(rows_left, "Timeout", "backend run passed --timeout %.0f s"
                           % self.args.timeout)
                break
            launch += 1
            stem = "%s-rep%d-launch%d" % (self.backend, self.rep, launch)
            json_path = os.path.join(self.out_dir, stem + ".json")
            log_path = os.path.join(self.out_dir, stem + ".log")
            tag = uuid.uuid4().hex
            cmd = self._cmd(json_path, [w.name for w in remaining])
            tail = collections.deque(maxlen=60)
            with open(log_path, "w") as logf:
                logf.write("$ %s\n" % shlex.join(cmd))
                logf.flush()
                since = time.time()
                proc = subprocess.Popen(cmd, cwd=ROOT, env=self._env(tag),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                reader = threading.Thread(target=self._pump, args=(proc, logf, tail),
                                          daemon=True)
                reader.start()
                timed_out = False
                try:
                    rc = proc.wait(timeout=left)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except OSError:
                        pass
                    rc = proc.wait()
                reader.join(timeout=5)
            killed = cleanup(tag, proc.pid, since)
            if killed:
                self.problems.append("%s: killed %d leftover process(es) after launch %d"
                                     % (self.backend, killed, launch))
            doc = None
            try:
                with open(json_path) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                pass
            before = len(self.results)
            if doc:
                if self.meta is None or doc["meta"].get("version"):
                    self.meta = doc["meta"]
                for name, ent in doc.get("rows", {}).items():
                    self.results[name] = ent
                if doc.get("shutdown_error"):
                    self.problems.append("%s: shutdown: %s" % (
                        self.backend, doc["shutdown_error"]["message"]))
            current = doc.get("current") if doc else None
            cur_rows = []
            for w in remaining:
                if w.name == current:
                    cur_rows = [r.name for r in w.rows]
            remaining = [w for w in remaining
                         if not all(r.name in self.results for r in w.rows)]
            rows_left = [r.name for w in remaining for r in w.rows]
            if timed_out:
                self._show_tail(tail, "timed out (--timeout %.0f s)" % self.args.timeout)
                self._mark(cur_rows, "Timeout", "backend run passed --timeout")
                self._mark(rows_left, "Timeout", "not reached before --timeout")
                break
            if doc is None:
                self._show_tail(tail, "exited %s without a result file" % rc)
                self._mark(rows_left, "NoResult", "workload script exited %s" % rc)
                break
            if doc.get("fatal"):
                f = doc["fatal"]
                self._show_tail(tail, "failed to start: %s: %s" % (f["error"], f["message"]))
                self._mark(rows_left, f["error"], f["message"])
                break
            if rc == W.EXIT_ROW_TIMEOUT:
                self.problems.append("%s: a row ran past its limit (launch %d); restarted"
                                     " for the remaining rows" % (self.backend, launch))
                continue
            if rc != 0:
                self._show_tail(tail, "exited with code %s" % rc)
                if current == "<init>":
                    self._mark(rows_left, "Crashed", "died during init (rc=%s)" % rc)
                    break
                self._mark(cur_rows, "Crashed", "process died in this row (rc=%s)" % rc)
                remaining = [w for w in remaining
                             if not all(r.name in self.results for r in w.rows)]
                if len(self.results) == before and remaining:
                    # No progress at all: do not loop on the same row.
                    self._mark([r.name for r in remaining[0].rows], "Crashed",
                               "no progress (rc=%s)" % rc)
                    remaining = remaining[1:]
                continue
            if remaining:
                self._mark(rows_left, "Missing", "script finished without this row")
                break
        self.wall = time.monotonic() - t_start
        return self.results

    def _pump(self, proc, logf, tail):
        prefix = "  [%s] " % self.backend
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            logf.write(line)
            tail.append(line.rstrip("\n"))
            if line.startswith("[bench] ") and not self.args.quiet:
                print(prefix + line[8:].rstrip("\n"), flush=True)
        logf.flush()

    def _show_tail(self, tail, what):
        msg = "%s run %d %s" % (TITLES[self.backend], self.rep, what)
        self.problems.append(msg)
        print("!! " + msg + "; last output lines:", flush=True)
        for line in list(tail)[-25:]:
            print("   | " + line[:300], flush=True)


# --------------------------------------------------------------------------
# Aggregation and table
# --------------------------------------------------------------------------

def summarize(entries):
    """entries: list of per-repeat entries -> (median or None, n_ok, n, error)."""
    vals = [e["value"] for e in entries if "value" in e]
    errs = [e for e in entries if "error" in e]
    med = statistics.median(vals) if vals else None
    err = None
    if errs:
        counts = collections.Counter(e["error"] for e in errs)
        err = counts.most_common(1)[0][0]
    return med, len(vals), len(entries), err


def build_table(rows, per_backend, available):
    """Returns (header, lines) with cells as strings."""
    header = ["row", "unit", "Luminary", "Ray",
              "speed-up (x, >1 = Luminary better)"]
    lines = []
    for row in rows:
        cells = {}
        meds = {}
        for b in BACKENDS:
            if not available.get(b):
                cells[b] = "n/a"
                meds[b] = None
                continue
            ents = per_backend[b].get(row.name, [])
            med, ok, n, err = summarize(ents)
            meds[b] = med
            if med is None:
                cells[b] = "error: %s" % (err or "NoResult")
            else:
                cells[b] = fmt_value(med, row.unit) + ("" if ok == n else " (%d/%d ok)" % (ok, n))
        lum, ray = meds["luminary"], meds["ray"]
        speed = ""
        if lum is not None and ray is not None and lum > 0 and ray > 0:
            ratio = lum / ray if row.better == "higher" else ray / lum
            speed = "%.2fx" % ratio
        unit = row.unit + (" (lower is better)" if row.better == "lower" else "")
        lines.append([row.name, unit, cells["luminary"], cells["ray"], speed])
    return header, lines


def render_markdown(header, lines):
    widths = [max(len(header[i]), *(len(l[i]) for l in lines)) if lines else len(header[i])
              for i in range(len(header))]
    right = {2, 3, 4}

    def fmt(cells):
        out = []
        for i, c in enumerate(cells):
            out.append(c.rjust(widths[i]) if i in right else c.ljust(widths[i]))
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(header), sep] + [fmt(l) for l in lines])


def error_notes(rows, per_backend, available):
    """One line per distinct (backend, error, message), naming the rows."""
    notes = []
    for b in BACKENDS:
        if not available.get(b):
            continue
        groups = collections.OrderedDict()
        for row in rows:
            for e in per_backend[b].get(row.name, []):
                if "error" in e:
                    key = (e["error"], (e.get("message") or "")[:200])
                    names = groups.setdefault(key, [])
                    if row.name not in names:
                        names.append(row.name)
        for (err, msg), names in groups.items():
            shown = ", ".join(names[:4]) + (", +%d more" % (len(names) - 4)
                                             if len(names) > 4 else "")
            notes.append("%s: %s: %s [%s]" % (TITLES[b], err, msg, shown))
    return notes


# --------------------------------------------------------------------------
# docs/benchmarks.md
# --------------------------------------------------------------------------

# benchmarks/multinode.py owns the part of docs/benchmarks.md between these
# markers; write_docs() below keeps it when it rewrites the page.
MULTINODE_BEGIN = "<!-- multinode:begin (written by benchmarks/multinode.py --write-docs) -->"
MULTINODE_END = "<!-- multinode:end -->"


def kept_multinode_section(path):
    """The marked multi-node section of the existing page, or ''."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    i = text.find(MULTINODE_BEGIN.split(" (")[0])
    j = text.find(MULTINODE_END, i)
    if i < 0 or j < 0:
        return ""
    return text[i:j + len(MULTINODE_END)]


def write_docs(path, table_md, info):
    kept = kept_multinode_section(path)
    m = info["machine"]
    lines = []
    lines.append("# Benchmarks: Luminary vs Ray")
    lines.append("")
    lines.append("Generated by `benchmarks/run.py --write-docs`; rerun it to refresh this "
                 "page. What each row measures, and how, is in "
                 "[benchmarks/README.md](../benchmarks/README.md).")
    lines.append("")
    lines.append("- Date: %s" % info["date"])
    lines.append("- Machine: %s, %s cores, %.1f GiB RAM, %s"
                 % (m["cpu"], m["cores"], m["ram_gib"] or 0, m["os"]))
    lines.append("- Luminary: %s, Python %s (`%s`), working tree at %s"
                 % (info["luminary_version"] or "not importable",
                    info["luminary_python_version"], info["luminary_python"],
                    info["git"]))
    if info["ray_available"]:
        lines.append("- Ray: %s, Python %s (`%s`)"
                     % (info["ray_version"], info["ray_python_version"], info["ray_python"]))
    else:
        lines.append("- Ray: not run (%s)" % info["ray_reason"])
    lines.append("- Command: `%s`" % info["command"])
    lines.append("- Both systems: one local cluster per workload-script run, "
                 "`init(num_cpus=%d)`%s; timed loops of %.1f s after a %.1f s warm-up."
                 % (info["num_cpus"], " with --quick sizes" if info["quick"] else "",
                    info["duration"], info["warmup"]))
    extra = []
    if info.get("ray_init_kwargs"):
        extra.append("Ray's init() got extra arguments `%s` for every row (the idle "
                     "memory row included)." % info["ray_init_kwargs"])
    if info.get("luminary_init_kwargs"):
        extra.append("Luminary's init() got extra arguments `%s`."
                     % info["luminary_init_kwargs"])
    lines.append("- Ray configuration: defaults%s. `RAY_USAGE_STATS_ENABLED=0` is set "
                 "(the machine has no network)." % ("" if not extra else "; " + " ".join(extra)))
    lines.append("- Load average before the run: %s" % (
        "/".join("%.2f" % x for x in info["load_before"]) if info["load_before"] else "n/a"))
    lines.append("")
    lines.append("Every cell is the **median of %d runs** of the backend's whole workload "
                 "script (backends alternating, each run a fresh process and a fresh "
                 "cluster). \"(k/N ok)\" means only k of the N runs produced a number; "
                 "\"error: X\" means none did (X is the exception type). The speed-up "
                 "column is how many times better Luminary is: Luminary/Ray for rates, "
                 "Ray/Luminary for the rows where lower is better (seconds, MB, "
                 "processes). The idle memory row is the sum of PSS over the driver and "
                 "all cluster processes; the RSS sum and the process count are listed "
                 "below it." % info["repeat"])
    lines.append("")
    lines.append(table_md)
    lines.append("")
    if info["notes"]:
        lines.append("Errors seen (first of each kind):")
        lines.append("")
        for n in info["notes"][:80]:
            lines.append("- " + n.replace("|", "\\|"))
        lines.append("")
    lines.append("Raw per-run results: `%s` (not committed)." % os.path.relpath(
        info["out_dir"], ROOT))
    lines.append("")
    if kept:
        lines.append(kept)
        lines.append("")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Run the Luminary benchmarks next to Ray and print one table.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--repeat", type=int, default=None,
                   help="runs per backend; cells are medians (default 3, 1 with --quick)")
    p.add_argument("--only", default="",
                   help="comma-separated row names (see --list)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 0.5 s loops, 256 MiB put, 20 actors, 1,000 pool items")
    p.add_argument("--write-docs", action="store_true",
                   help="rewrite docs/benchmarks.md with the table")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds allowed for one backend run, all its rows (default 600)")
    p.add_argument("--row-timeout-scale", type=float, default=1.0,
                   help="multiply each row's own time limit (60-300 s) by this")
    p.add_argument("--ray-python", default=default_ray_python(),
                   help="interpreter with Ray installed (default $RAY_PYTHON, else "
                        "/work/rayenv/bin/python if present)")
    p.add_argument("--no-ray", action="store_true", help="run Luminary only")
    p.add_argument("--no-luminary", action="store_true", help="run Ray only")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2,
                   help="num_cpus given to init() on both systems (default: all cores)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per timed loop (default 1.5, 0.5 with --quick)")
    p.add_argument("--ray-init-kwargs", default="",
                   help='extra JSON kwargs for ray.init(), e.g. \'{"include_dashboard": '
                        'false}\' (recorded in the docs)')
    p.add_argument("--luminary-init-kwargs", default="",
                   help="extra JSON kwargs for luminary.init()")
    p.add_argument("--out-dir", default=None,
                   help="where raw results and logs go (default bench-results/<time>)")
    p.add_argument("--docs-path", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    p.add_argument("--quiet", action="store_true", help="do not echo per-row progress")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        for r in W.all_rows():
            print("%-48s %-10s %s is better" % (r.name, r.unit, r.better))
        return 0
    try:
        selected = W.find_workloads(args.only.split(",")) if args.only else list(W.WORKLOADS)
    except KeyError as e:
        print("unknown row name(s): %s; --list shows the rows" % e, file=sys.stderr)
        return 2
    rows = [r for w in selected for r in w.rows]

    available = {"luminary": not args.no_luminary, "ray": False}
    ray_version = ray_pyver = None
    ray_reason = ""
    if args.no_ray:
        ray_reason = "--no-ray"
    elif not args.ray_python:
        ray_reason = "no Ray interpreter (set RAY_PYTHON or --ray-python)"
    else:
        try:
            ray_version, ray_pyver = probe_ray(args.ray_python)
            available["ray"] = True
        except Exception as e:  # noqa: BLE001
            ray_reason = "cannot import ray with %s: %s" % (args.ray_python, e)
    if ray_reason:
        print("Ray column: n/a (%s)" % ray_reason, flush=True)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = args.out_dir or os.path.join(ROOT, "bench-results", stamp)
    os.makedirs(out_dir, exist_ok=True)
    load_before = loadavg()
    t0 = time.monotonic()
    print("benchmarks: %d row(s), %d repeat(s)%s; raw results in %s"
          % (len(rows), args.repeat, ", quick sizes" if args.quick else "",
             os.path.relpath(out_dir)), flush=True)
    if load_before and load_before[0] > 0.5 * (os.cpu_count() or 1):
        print("note: load average is %.2f before starting; other work on this machine "
              "will skew the numbers" % load_before[0], flush=True)

    per_backend = {b: {r.name: [] for r in rows} for b in BACKENDS}
    metas = {}
    problems = []
    pythons = {"luminary": sys.executable, "ray": args.ray_python}
    for rep in range(1, args.repeat + 1):
        order = list(BACKENDS) if rep % 2 == 1 else list(reversed(BACKENDS))
        for b in order:
            if not available[b]:
                continue
            print("[run %d/%d] %s (%s)" % (rep, args.repeat, TITLES[b], pythons[b]),
                  flush=True)
            br = BackendRun(b, pythons[b], args, selected, rep, out_dir)
            res = br.run()
            if br.meta:
                metas.setdefault(b, br.meta)
                if br.meta.get("version"):
                    metas[b] = br.meta
            problems += br.problems
            n_ok = sum(1 for e in res.values() if "value" in e)
            print("[run %d/%d] %s: %d/%d rows ok in %.0f s"
                  % (rep, args.repeat, TITLES[b], n_ok, len(rows), br.wall), flush=True)
            for r in rows:
                per_backend[b][r.name].append(res.get(r.name, {"error": "NoResult",
                                                                "message": ""}))

    header, lines = build_table(rows, per_backend, available)
    table_md = render_markdown(header, lines)
    notes = error_notes(rows, per_backend, available)
    print()
    print("Medians of %d run(s); speed-up = Luminary/Ray for rates, Ray/Luminary for "
          "rows where lower is better." % args.repeat)
    print(table_md)
    if notes:
        print("\nErrors (first of each kind):")
        for n in notes[:60]:
            print("  " + n)
    if problems:
        print("\nRun problems:")
        for p in problems:
            print("  " + p)
    print("\ntotal %.0f s; raw results in %s" % (time.monotonic() - t0, out_dir))

    lum_meta = metas.get("luminary") or {}
    info = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine_info(),
        "luminary_version": lum_meta.get("version"),
        "luminary_python": sys.executable,
        "luminary_python_version": platform.python_version(),
        "git": git_rev(),
        "ray_available": available["ray"],
        "ray_version": ray_version,
        "ray_python": args.ray_python,
        "ray_python_version": ray_pyver,
        "ray_reason": ray_reason,
        "command": "python benchmarks/run.py" + (
            " " + shlex.join(sys.argv[1:] if argv is None else argv)
            if (sys.argv[1:] if argv is None else argv) else ""),
        "num_cpus": args.num_cpus,
        "quick": args.quick,
        "duration": args.duration or (0.5 if args.quick else 1.5),
        "warmup": 0.2 if args.quick else 0.5,
        "repeat": args.repeat,
        "ray_init_kwargs": args.ray_init_kwargs,
        "luminary_init_kwargs": args.luminary_init_kwargs,
        "load_before": load_before,
        "notes": notes,
        "out_dir": out_dir,
    }
    summary = {"info": info, "metas": metas, "problems": problems,
               "table": {"header": header, "lines": lines},
               "runs": per_backend}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    if args.write_docs:
        write_docs(args.docs_path, table_md, info)
        print("wrote %s" % os.path.relpath(args.docs_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
