// Luminary dashboard: one server-sent-events stream per open page (/api/dash/events?view=...)
// pushes what the page shows when it changes; drawn with the DOM and <canvas>.  No polling.
"use strict";

const state = { page: "overview", arg: "", metrics: { t: [], series: {} }, stream: new Map(), overview: null, es: null,
  actors: [], logKey: "" };

// --- small helpers ------------------------------------------------------------------------------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = dv;
    else el.setAttribute(k, v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) el.append(kid instanceof Node ? kid : String(kid));
  return el;
}
const $ = (id) => document.getElementById(id);
function fill(el, ...kids) { el.replaceChildren(...kids.flat()); }
function mib(b) { return b === null || b === undefined ? "?" : (b / 1048576).toFixed(b < 10485760 ? 1 : 0) + " MiB"; }
function gib(b) { return b === null || b === undefined ? "?" : (b / 1073741824).toFixed(1) + " GiB"; }
function when(ms) { return ms ? new Date(ms).toLocaleTimeString() : ""; }
function short(id) { return id ? String(id).slice(0, 12) : ""; }
function stateCell(s) { return h("td", { class: "state-" + s }, s || ""); }

async function api(path, opts) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin", cache: "no-store" }, opts || {}));
  if (r.status === 401) { setStatus("logged out: open a fresh link from `luminary dashboard`", true); throw new Error("401"); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
function setStatus(text, down) { const s = $("status"); s.textContent = text; s.classList.toggle("down", !!down); }

function colorOf(name) {                  // a stable colour per function name
  let x = 0;
  for (let i = 0; i < name.length; i++) x = (x * 31 + name.charCodeAt(i)) >>> 0;
  return "hsl(" + (x % 360) + ", 62%, " + (45 + (x >> 9) % 15) + "%)";
}

function bar(label, used, total, text) {
  const frac = total > 0 ? Math.min(1, used / total) : 0;
  const inner = h("div", { class: frac > 0.9 ? "full" : frac > 0.7 ? "warn" : "" });
  inner.style.width = (100 * frac).toFixed(1) + "%";
  return [h("div", { class: "label" }, label), h("div", { class: "bar", data: { frac: frac.toFixed(3) } }, inner, h("span", {}, text))];
}

function table(el, cols, rows, rowAttrs) {
  const head = h("tr", {}, cols.map((c) => h("th", {}, c[0])));
  const body = rows.map((r) => h("tr", rowAttrs ? rowAttrs(r) : {}, cols.map((c) => {
    const v = c[1](r);
    return v instanceof Node && v.tagName === "TD" ? v : h("td", {}, v);
  })));
  fill(el, head, body);
}

// --- overview ------------------------------------------------------------------------------------
function drawOverview(o) {
  fill($("nodes"), o.nodes.map((n) => {
    const cpus = n.resources.CPU || 0, free = n.available.CPU === undefined ? cpus : n.available.CPU;
    return h("div", { class: "card node", data: { nodeId: n.node_id } },
      h("div", { class: "title" }, (n.head ? "head " : "node ") + short(n.node_id) + " · " + n.ip + " ",
        h("span", { class: n.alive ? "state-ALIVE" : "dead" }, n.alive ? "alive" : "dead")),
      bar("CPU slots in use", cpus - free, cpus, (cpus - free) + " / " + cpus),
      bar("CPU load", n.cpu_percent || 0, 100, (n.cpu_percent || 0).toFixed(0) + " %"),
      bar("Memory", n.mem_used || 0, n.mem_total || 0, gib(n.mem_used) + " / " + gib(n.mem_total)),
      bar("Object store", n.store_used || 0, n.store_capacity || 0,
        mib(n.store_used) + " / " + mib(n.store_capacity) + " (" + (n.objects || 0) + " objects)"));
  }));
  const counts = o.tasks.counts || {};
  $("task-total").textContent = o.tasks.total + " kept" + (o.tasks.dropped ? ", " + o.tasks.dropped + " dropped" : "");
  $("task-total").dataset.total = o.tasks.total;
  const order = ["PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER", "RUNNING", "FINISHED", "FAILED"];
  fill($("task-states"), order.filter((s) => counts[s]).map((s) =>
    h("tr", { data: { state: s } }, h("td", { class: "state-" + s }, s), h("td", { class: "n" }, counts[s]))));
  fill($("actor-states"), Object.entries(o.actors).map(([s, n]) =>
    h("tr", {}, h("td", { class: "state-" + s }, s), h("td", { class: "n" }, n))));
  const jobs = o.jobs.map((j) => ({ id: j.submission_id, kind: "submitted", status: j.status, what: j.entrypoint, start: j.start_time }))
    .concat(o.drivers.map((d) => ({ id: d.job_id, kind: "driver", status: d.status, what: "pid " + (d.driver_info || {}).pid, start: d.start_time })));
  table($("overview-jobs"), [["job", (j) => j.id], ["kind", (j) => j.kind], ["status", (j) => stateCell(j.status)],
    ["entrypoint / driver", (j) => j.what], ["started", (j) => when(j.start)]], jobs.slice(-12));
}

// --- task stream -----------------------------------------------------------------------------------
function onStream(r) {
  for (const [worker, pid, node, start, end, name, failed, tid] of r.rows) {
    state.stream.set(tid, { worker, pid, node, start, end, name, failed });
  }
  state.streamNow = r.now;
  drawStream(r.now);
}

function drawStream(now) {
  for (const [tid, t] of state.stream) if (t.end !== null && t.end < now - 300) state.stream.delete(tid);
  let t1 = now, win = Number($("stream-window").value);
  if (!win) {                              // "fit": from the first task kept to the last end (or now, while any runs)
    const all = [...state.stream.values()];
    t1 = all.some((t) => t.end === null) || !all.length ? now : Math.max(...all.map((t) => t.end));
    win = Math.max(1, 1.05 * (t1 - Math.min(t1, ...all.map((t) => t.start))));
    t1 += win * 0.03;                      // room for a failed task's cross at the end
  }
  const t0 = t1 - win;
  const tasks = [...state.stream.values()].filter((t) => (t.end === null ? now : t.end) >= t0);
  const workers = [...new Set(tasks.map((t) => t.worker))].sort();
  const cv = $("stream-canvas"), rowH = 22, left = 110, top = 8, bottom = 22;
  cv.height = Math.max(120, top + bottom + rowH * workers.length);
  const ctx = cv.getContext("2d"), W = cv.width - left - 10;
  ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.font = "11px system-ui, sans-serif";
  const x = (t) => left + W * (Math.min(Math.max(t, t0), t1) - t0) / win;
  for (let i = 0; i <= 6; i++) {           // time axis: seconds before its right end
    const s = win * i / 6, ago = win - s;
    ctx.fillStyle = "#e3e7ee"; ctx.fillRect(x(t0 + s), top, 1, cv.height - top - bottom);
    ctx.fillStyle = "#6b7385";
    ctx.fillText("-" + (win < 10 ? ago.toFixed(1) : Math.round(ago)) + " s", x(t0 + s) - 12, cv.height - 6);
  }
  const names = new Map();
  workers.forEach((w, i) => {
    const y = top + i * rowH;
    ctx.fillStyle = "#1d2330";
    const sample = tasks.find((t) => t.worker === w);
    ctx.fillText("pid " + (sample.pid || "?") + " " + short(sample.node).slice(0, 6), 4, y + 15);
  });
  for (const t of tasks) {
    const y = top + workers.indexOf(t.worker) * rowH + 3, x1 = x(t.start), x2 = Math.max(x1 + 2, x(t.end === null ? now : t.end));
    ctx.fillStyle = colorOf(t.name);
    ctx.globalAlpha = t.end === null ? 0.55 : 1;
    ctx.fillRect(x1, y, x2 - x1, rowH - 6);
    ctx.globalAlpha = 1;
    if (t.failed) {
      ctx.strokeStyle = "#c9302c"; ctx.lineWidth = 2;
      ctx.strokeRect(x1, y, x2 - x1, rowH - 6);
      ctx.beginPath(); ctx.moveTo(x1, y); ctx.lineTo(x1 + rowH - 6, y + rowH - 6);
      ctx.moveTo(x1 + rowH - 6, y); ctx.lineTo(x1, y + rowH - 6); ctx.stroke();
    }
    const n = names.get(t.name) || { n: 0, failed: 0 };
    n.n++; n.failed += t.failed ? 1 : 0; names.set(t.name, n);
  }
  const failed = tasks.filter((t) => t.failed).length;
  const count = $("stream-count");
  count.textContent = tasks.length + " tasks on " + workers.length + " workers" + (failed ? ", " + failed + " failed" : "");
  count.dataset.count = tasks.length;
  count.dataset.failed = failed;
  fill($("stream-legend"), [...names].sort().map(([name, n]) => {
    const sw = h("i"); sw.style.background = colorOf(name);
    return h("span", {}, sw, name + " × " + n.n + (n.failed ? " (" + n.failed + " failed)" : ""));
  }));
}

// --- tasks ------------------------------------------------------------------------------------------
function kv(rows) {
  return h("table", { class: "kv" }, rows.filter((r) => r[1] !== null && r[1] !== undefined && r[1] !== "").map(([k, v]) =>
    h("tr", {}, h("td", { class: "label" }, k), k === "state" || k === "status" ? stateCell(v) : h("td", {}, String(v)))));
}
function bytes(b) { return b === null || b === undefined ? "" : b < 1024 ? b + " B" : b < 1048576 ? (b / 1024).toFixed(1) + " KiB" : mib(b); }

function onTasks(r) {
  $("tasks-shown").textContent = "newest " + r.rows.length + " of " + r.total;
  table($("tasks-table"), [["task", (t) => short(t.task_id)], ["function", (t) => t.name], ["state", (t) => stateCell(t.state)],
    ["attempt", (t) => t.attempt_number], ["node", (t) => short(t.node_id)], ["pid", (t) => t.worker_pid || ""],
    ["error", (t) => t.error_type || ""]], r.rows,
  (t) => ({ "data-id": t.task_id, class: t.task_id === state.arg ? "selected" : null, onclick: () => go("tasks", t.task_id) }));
}

function onTask(t) {
  const el = $("task-detail");
  el.hidden = false;
  if (t.missing) { fill(el, h("h3", {}, "Task " + short(t.task_id)), h("p", {}, "Not (or no longer) kept by the head.")); return; }
  const dur = (a, b) => a && b ? ((b - a) / 1000).toFixed(3) + " s" : "";
  const args = t.args_bytes === null || t.args_bytes === undefined ? "" :
    bytes(t.args_bytes) + (t.args_object_refs ? " + " + t.args_object_refs + " ObjectRef argument(s)" : "");
  fill(el, h("h3", {}, "Task " + short(t.task_id)),
    kv([["task", t.task_id], ["function", t.name], ["state", t.state], ["attempt", t.attempt_number],
      ["arguments", args], ["node", t.node_id], ["worker", t.worker_id], ["pid", t.worker_pid], ["job", t.job_id],
      ["actor", t.actor_id], ["parent task", t.parent_task_id], ["resources", JSON.stringify(t.required_resources || {})],
      ["created", when(t.creation_time_ms)], ["started", when(t.start_time_ms)], ["ended", when(t.end_time_ms)],
      ["waited", dur(t.creation_time_ms, t.start_time_ms)], ["ran", dur(t.start_time_ms, t.end_time_ms)],
      ["error type", t.error_type]]),
    t.error_message ? [h("h3", {}, "Error and traceback"), h("pre", { id: "task-error" }, t.error_message)] : null,
    h("h3", {}, "State history"),
    h("table", { class: "kv" }, (t.events || []).map((e) => h("tr", {}, stateCell(e.state), h("td", {}, when(e.created_ms))))));
}

// --- actors ------------------------------------------------------------------------------------------
function onActors(r) {
  table($("actors-table"), [["actor", (a) => short(a.actor_id)], ["class", (a) => a.class_name], ["name", (a) => a.name],
    ["state", (a) => stateCell(a.state)], ["restarts", (a) => a.num_restarts], ["node", (a) => short(a.node_id)],
    ["pid", (a) => a.pid || ""], ["death cause", (a) => a.death_cause || ""]], r.rows,
  (a) => ({ "data-id": a.actor_id, class: a.actor_id === state.arg ? "selected" : null, onclick: () => go("actors", a.actor_id) }));
}

function onActor(a) {
  const el = $("actor-detail");
  el.hidden = false;
  if (a.missing) { fill(el, h("h3", {}, "Actor " + short(a.actor_id)), h("p", {}, "No such actor.")); return; }
  const calls = a.pending_calls || [];
  const keep = $("actor-log") ? $("actor-log").textContent : "";
  fill(el, h("h3", {}, "Actor " + a.class_name + " " + short(a.actor_id)),
    kv([["actor", a.actor_id], ["class", a.class_name], ["name", a.name], ["state", a.state], ["namespace", a.ray_namespace],
      ["restarts", a.num_restarts + " of " + (a.max_restarts < 0 ? "∞" : a.max_restarts)], ["node", a.node_id], ["pid", a.pid],
      ["job", a.job_id], ["resources", JSON.stringify(a.required_resources || {})], ["death cause", a.death_cause],
      ["calls finished", a.calls_done]]),
    h("h3", {}, "Pending calls ", h("span", { id: "actor-pending", class: "muted", data: { n: a.pending_total } }, "(" + a.pending_total + ")")),
    calls.length ? h("table", { class: "grid", id: "actor-calls" }, h("tr", {}, h("th", {}, "call"), h("th", {}, "method"), h("th", {}, "state"), h("th", {}, "since")),
      calls.map((c) => h("tr", {}, h("td", {}, c.task_id), h("td", {}, c.name), stateCell(c.state), h("td", {}, when(c.creation_time_ms)))))
      : h("p", { class: "muted" }, "none"),
    h("h3", {}, "Output of its worker"), h("pre", { id: "actor-log", class: "log" }, keep));
}

// --- jobs ---------------------------------------------------------------------------------------------
const TERMINAL = ["SUCCEEDED", "FAILED", "STOPPED"];
function onJobs(r) {
  table($("jobs-table"), [["submission", (j) => j.submission_id], ["status", (j) => stateCell(j.status)],
    ["entrypoint", (j) => j.entrypoint], ["started", (j) => when(j.start_time)], ["ended", (j) => when(j.end_time)],
    ["", (j) => h("td", {}, TERMINAL.includes(j.status) ? "" :
      h("button", { class: "stop", "data-stop": j.submission_id, onclick: (ev) => { ev.stopPropagation(); stopJob(j.submission_id, ev.target); } }, "Stop"))]],
  r.jobs, (j) => ({ "data-id": j.submission_id, class: j.submission_id === state.arg ? "selected" : null,
    onclick: () => go("jobs", j.submission_id) }));
}

async function stopJob(id, button) {
  button.disabled = true;
  try {
    await api("/api/jobs/" + encodeURIComponent(id) + "/stop", { method: "POST", headers: { "X-Luminary-Dashboard": "1" } });
  } catch (e) {
    setStatus("could not stop " + id + ": " + e.message, true);
    button.disabled = false;
  }
}

function onJob(info) {
  const el = $("job-detail");
  el.hidden = false;
  const keep = $("job-logs") ? $("job-logs").textContent : "";
  fill(el, h("h3", {}, "Job " + info.submission_id),
    info.missing ? h("p", {}, "No such job.") : kv([["status", info.status], ["entrypoint", info.entrypoint], ["message", info.message]]),
    h("h3", {}, "Output"), h("pre", { id: "job-logs", class: "log" }, keep));
}

// --- logs (any page's log pane) ------------------------------------------------------------------------
const LOG_KEEP = 200000;                   // characters a log pane keeps
function logPane() { return $({ logs: "log-text", jobs: "job-logs", actors: "actor-log" }[state.page] || "none"); }
function onLog(l) {
  const el = logPane();
  if (!el) return;
  const stick = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
  let text = (l.reset ? "" : el.textContent) + l.data;
  if (text.length > LOG_KEEP) text = text.slice(text.length - LOG_KEEP);
  el.textContent = text;
  if (stick) el.scrollTop = el.scrollHeight;
}

function onLogFiles(r) {
  table($("logs-table"), [["node", (f) => f.node_id ? short(f.node_id).slice(0, 6) : ""], ["log", (f) => f.name],
    ["size", (f) => bytes(f.size)]], r.rows,
  (f) => ({ "data-id": f.key, class: f.key === state.arg ? "selected" : null, onclick: () => go("logs", f.key) }));
}

// --- objects, placement groups, stacks ----------------------------------------------------------------
function onObjects(r) {
  table($("objects-nodes"), [["node", (n) => n.node_id || "?"], ["held in", (n) => n.in], ["objects", (n) => n.objects],
    ["size", (n) => bytes(n.bytes)]], r.per_node, (n) => ({ "data-node": n.node_id || "" }));
  $("objects-shown").textContent = r.rows.length < r.total_rows ? "(largest " + r.rows.length + " of " + r.total_rows + ")" : "(" + r.total_rows + ")";
  table($("objects-table"), [["object", (o) => short(o.object_id)], ["size", (o) => bytes(o.object_size)],
    ["owner?", (o) => o.is_owner ? "owner" : "borrower"], ["pid", (o) => o.pid], ["type", (o) => o.type],
    ["reference", (o) => o.reference_type], ["stored in", (o) => o.stored_in || ""], ["node", (o) => short(o.node_id)]], r.rows,
  (o) => ({ "data-id": o.object_id }));
}

function onPgs(r) {
  table($("pgs-table"), [["placement group", (p) => short(p.placement_group_id)], ["name", (p) => p.name],
    ["state", (p) => stateCell(p.state)], ["strategy", (p) => p.strategy],
    ["bundles", (p) => h("td", { class: "bundles" }, p.bundles.map((b) =>
      h("div", {}, "#" + b.index + " " + JSON.stringify(b.resources) + (b.node_id ? " on " + short(b.node_id) : " (not placed)"))))]],
  r.rows, (p) => ({ "data-id": p.placement_group_id }));
}

function onWorkers(r) {
  table($("workers-table"), [["pid", (w) => w.pid], ["kind", (w) => w.actor ? "actor " + w.actor : (w.worker_type || "").toLowerCase()],
    ["node", (w) => short(w.node_id).slice(0, 6)]], r.rows,
  (w) => ({ "data-id": w.worker_id, "data-pid": w.pid, class: w.worker_id === state.arg ? "selected" : null, onclick: () => go("stacks", w.worker_id) }));
}

function onStacks(s) {
  $("stack-detail").hidden = false;
  $("stack-title").textContent = "Worker " + short(s.worker_id) + " at " + new Date(s.time * 1000).toLocaleTimeString();
  $("stack-text").textContent = s.text;
}

// --- metrics charts: from the head's ring of samples (gcs/metrics_history.py) ------------------------
// The stream of the metrics page sends the range's history first ("history"), then each new
// sample ("points"); series keys are "family|what" (e.g. "tasks|FINISHED", "cpu|NODE",
// "metric|NAME|tags").  One chart per family, drawn on a canvas.
const MAX_CHART_POINTS = 5000;             // samples the page keeps (older ones dropped)
const FAMILIES = [                         // [id, title, which keys, value format]
  ["tasks-active", "Tasks waiting and running", (k) => k.startsWith("tasks|") && !/\|(FINISHED|FAILED)$/.test(k), String],
  ["tasks-ended", "Tasks finished and failed (in the head's task table)", (k) => /^tasks\|(FINISHED|FAILED)$/.test(k), String],
  ["actors", "Actors by state", (k) => k.startsWith("actors|"), String],
  ["cpu", "Node CPU (%)", (k) => k.startsWith("cpu|"), (v) => v.toFixed(0) + " %"],
  ["mem", "Node memory used", (k) => k.startsWith("mem|"), gib],
  ["store", "Object store used", (k) => k.startsWith("store|"), mib],
  ["spilled", "Object store spilled to disk", (k) => k.startsWith("spilled|"), mib],
];

function onHistory(r) {
  state.metrics = { t: r.t.slice(), series: Object.assign({}, r.series) };
  if (state.page === "metrics") drawCharts();
}

function onPoints(r) {
  const m = state.metrics, n0 = m.t.length, n = r.t.length;
  m.t.push(...r.t);
  for (const k of Object.keys(r.series)) if (!m.series[k]) m.series[k] = new Array(n0).fill(null);
  for (const [k, vals] of Object.entries(m.series)) vals.push(...(r.series[k] || new Array(n).fill(null)));
  const range = Number($("metrics-range").value), last = m.t[m.t.length - 1];
  let cut = Math.max(0, m.t.length - MAX_CHART_POINTS);
  while (range && cut < m.t.length && m.t[cut] < last - range) cut++;
  if (cut) {
    m.t.splice(0, cut);
    for (const vals of Object.values(m.series)) vals.splice(0, cut);
  }
  if (state.page === "metrics") drawCharts();
}

function familiesOf(keys) {
  const out = FAMILIES.map(([id, title, test, fmt]) => ({ id, title, fmt, keys: keys.filter(test) }));
  const user = new Map();
  for (const k of keys) {
    if (!k.startsWith("metric|")) continue;
    const name = k.split("|")[1];
    if (!user.has(name)) user.set(name, []);
    user.get(name).push(k);
  }
  for (const [name, ks] of [...user].sort()) out.push({ id: "metric:" + name, title: name + " (user metric)", fmt: String, keys: ks });
  return out.filter((f) => f.keys.length);
}

function seriesLabel(key) {
  const parts = key.split("|");
  if (parts[0] === "metric") return parts.slice(2).join("|") || "value";
  if (["cpu", "mem", "store", "spilled"].includes(parts[0])) {
    const node = ((state.overview || {}).nodes || []).find((n) => n.node_id === parts[1]);
    return (node && node.head ? "head " : "node ") + short(parts[1]).slice(0, 6);
  }
  return parts[1];
}

function drawCharts() {
  const m = state.metrics, box = $("charts");
  const fams = familiesOf(Object.keys(m.series).sort());
  $("metrics-kept").textContent = m.t.length ? m.t.length + " samples since " + new Date(m.t[0] * 1000).toLocaleString() : "no samples yet";
  const seen = new Set();
  for (const f of fams) {
    seen.add(f.id);
    let el = box.querySelector("[data-family='" + CSS.escape(f.id) + "']");
    if (!el) {
      el = h("div", { class: "chart-box", data: { family: f.id } }, h("h3", {}, f.title),
        h("canvas", { class: "chart", width: 1000, height: 170 }), h("div", { class: "legend" }));
      box.append(el);
    }
    drawChart(el, f, m);
  }
  for (const el of [...box.children]) if (!seen.has(el.dataset.family)) el.remove();
}

function niceTop(v) {                     // the axis' top: 1, 2, 2.5 or 5 times a power of ten, in 4 steps
  const step = v / 4, p = Math.pow(10, Math.floor(Math.log10(step)));
  for (const k of [1, 2, 2.5, 5, 10]) if (k * p >= step) return 4 * k * p;
  return v;
}

function drawChart(el, f, m) {
  const cv = el.querySelector("canvas"), ctx = cv.getContext("2d");
  const left = 64, right = 10, top = 8, bottom = 22, W = cv.width - left - right, H = cv.height - top - bottom;
  ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.font = "11px system-ui, sans-serif";
  const t = m.t, t1 = t.length ? t[t.length - 1] : 0, t0 = t.length ? t[0] : 0, span = Math.max(1, t1 - t0);
  let maxY = f.id === "cpu" ? 100 : f.fmt === mib || f.fmt === gib ? 1048576 : 1;
  for (const k of f.keys) for (const v of m.series[k]) if (v !== null && v > maxY) maxY = v;
  const unit = f.fmt === gib ? 1073741824 : f.fmt === mib ? 1048576 : 1;
  maxY = niceTop(maxY / unit) * unit;
  const x = (tt) => left + W * (tt - t0) / span, y = (v) => top + H - H * v / maxY;
  ctx.fillStyle = "#6b7385"; ctx.strokeStyle = "#e3e7ee"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const yy = top + H - H * i / 4;
    ctx.beginPath(); ctx.moveTo(left, yy); ctx.lineTo(left + W, yy); ctx.stroke();
    ctx.fillText(f.fmt(maxY * i / 4), 2, yy + 4);
  }
  let prev = "";
  for (let i = 0; i <= 5 && t.length; i++) {
    const tt = t0 + span * i / 5, label = new Date(tt * 1000).toLocaleTimeString();
    if (label !== prev) ctx.fillText(label, Math.min(Math.max(left - 20, x(tt) - 24), cv.width - 60), cv.height - 6);
    prev = label;
  }
  const legend = [];
  let drawn = 0;
  for (const k of f.keys) {
    const vals = m.series[k], color = colorOf(k);
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    let pen = false, first = null, firstT = null, last = null;
    vals.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      if (first === null) { first = v; firstT = t[i]; }
      last = v; drawn++;
      if (pen) ctx.lineTo(x(t[i]), y(v)); else { ctx.moveTo(x(t[i]), y(v)); pen = true; }
    });
    ctx.stroke();
    const sw = h("i"); sw.style.background = color;
    legend.push(h("span", { data: { key: k, first: first, last: last, tFirst: firstT } }, sw,
      seriesLabel(k) + " " + (last === null ? "" : f.fmt(last))));
  }
  el.dataset.points = drawn;
  fill(el.querySelector(".legend"), legend);
}

// --- the stream and the router -----------------------------------------------------------------------------
const HANDLERS = {
  overview: (o) => { state.overview = o; if (state.page === "overview") drawOverview(o); },
  tick: (t) => {
    setStatus("live · " + new Date(t.time * 1000).toLocaleTimeString());
  },
  problem: (p) => setStatus("the head could not answer: " + p.error, true),
  stream: onStream, tasks: onTasks, task: onTask, actors: onActors, actor: onActor, jobs: onJobs, job: onJob,
  history: onHistory, points: onPoints, log: onLog, logfiles: onLogFiles, objects: onObjects, pgs: onPgs, workers: onWorkers, stacks: onStacks,
};

function connect() {
  if (state.es) state.es.close();
  const q = new URLSearchParams({ view: state.page });
  const arg = state.arg;
  if (state.page === "tasks") {
    if ($("task-filter-state").value) q.set("state", $("task-filter-state").value);
    if ($("task-filter-name").value.trim()) q.set("name", $("task-filter-name").value.trim());
    if (arg) q.set("task", arg);
  } else if (state.page === "actors" && arg) q.set("actor", arg);
  else if (state.page === "jobs" && arg) q.set("job", arg);
  else if (state.page === "logs" && arg) q.set("log", arg);
  else if (state.page === "stacks" && arg) q.set("worker", arg);
  else if (state.page === "metrics") q.set("range", $("metrics-range").value);
  else if (state.page === "stream") {
    let since = 0;
    for (const t of state.stream.values()) since = Math.max(since, t.end === null ? 0 : t.end - 2);
    for (const t of state.stream.values()) if (t.end === null) since = Math.min(since, t.start);
    q.set("since", String(since));
  }
  const es = new EventSource("/api/dash/events?" + q);
  for (const [name, fn] of Object.entries(HANDLERS)) {
    es.addEventListener(name, (ev) => { if (state.es === es) fn(JSON.parse(ev.data)); });
  }
  es.onerror = () => {
    if (state.es !== es) return;
    if (es.readyState === EventSource.CLOSED) setStatus("logged out or head gone: open a fresh link from `luminary dashboard`", true);
    else setStatus("reconnecting…", true);
  };
  state.es = es;
}

function go(page, arg) { location.hash = page + (arg ? "/" + arg : ""); }

function route() {
  const hash = location.hash.slice(1) || "overview";
  const cut = hash.indexOf("/");
  const page = cut < 0 ? hash : hash.slice(0, cut), arg = cut < 0 ? "" : decodeURIComponent(hash.slice(cut + 1));
  state.page = $("page-" + page) ? page : "overview";
  state.arg = arg;
  for (const el of document.querySelectorAll(".page")) el.classList.toggle("active", el.id === "page-" + state.page);
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === state.page);
  for (const [page, pane] of [["tasks", "task-detail"], ["actors", "actor-detail"], ["jobs", "job-detail"],
    ["logs", "log-detail"], ["stacks", "stack-detail"]]) {
    if (page === state.page) {
      $(pane).hidden = !arg;
      if (!arg) continue;
      for (const tr of document.querySelectorAll("#page-" + page + " tr[data-id]")) tr.classList.toggle("selected", tr.dataset.id === arg);
      if (page === "logs") { $("log-title").textContent = arg.replace(/^node:[0-9a-f]{6}[0-9a-f]*:/, ""); $("log-text").textContent = ""; }
      if (page === "stacks") { $("stack-title").textContent = "Worker " + short(arg); $("stack-text").textContent = "asking…"; }
      if (page === "jobs" && $("job-logs")) $("job-logs").textContent = "";
      if (page === "actors" && $("actor-log")) $("actor-log").textContent = "";
    }
  }
  if (state.page === "metrics") drawCharts();
  if (state.page === "overview" && state.overview) drawOverview(state.overview);
  if (state.page === "stream" && state.streamNow) drawStream(state.streamNow);
  connect();
}

window.addEventListener("hashchange", route);
$("stream-window").addEventListener("change", () => state.streamNow && drawStream(state.streamNow));
$("task-filter-state").addEventListener("change", connect);
$("metrics-range").addEventListener("change", connect);
$("task-filter-name").addEventListener("change", connect);
route();
