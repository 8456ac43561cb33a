// Luminary dashboard: one poll a second of small JSON endpoints, drawn with the DOM and <canvas>.
"use strict";

const POLL_MS = 1000;
const HISTORY = 300;                       // metric samples kept by the page (5 minutes)
const state = { page: "overview", samples: [], stream: new Map(), streamSince: 0, task: null, job: null };

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

function sample(o) {
  const head = o.nodes.find((n) => n.head) || o.nodes[0] || {};
  const c = o.tasks.counts || {};
  state.samples.push({ t: o.time, running: c.RUNNING || 0,
    pending: (c.PENDING_ARGS_AVAIL || 0) + (c.PENDING_NODE_ASSIGNMENT || 0) + (c.SUBMITTED_TO_WORKER || 0),
    finished: c.FINISHED || 0, failed: c.FAILED || 0, cpu: head.cpu_percent || 0,
    mem: head.mem_total ? 100 * head.mem_used / head.mem_total : 0,
    store: head.store_capacity ? 100 * head.store_used / head.store_capacity : 0 });
  if (state.samples.length > HISTORY) state.samples.shift();
}

// --- task stream -----------------------------------------------------------------------------------
async function pollStream() {
  const since = state.streamSince;
  const r = await api("/api/dash/stream?since=" + since);
  for (const [worker, pid, node, start, end, name, failed, tid] of r.rows) {
    state.stream.set(tid, { worker, pid, node, start, end, name, failed });
  }
  // next time ask only for what may have changed: tasks still running, or ended since the last poll
  let oldestOpen = r.now;
  for (const t of state.stream.values()) if (t.end === null) oldestOpen = Math.min(oldestOpen, t.start);
  state.streamSince = Math.min(oldestOpen, r.now - 2);
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

// --- tasks, actors, jobs -------------------------------------------------------------------------------
async function pollTasks() {
  const q = new URLSearchParams({ limit: "200" });
  if ($("task-filter-state").value) q.set("state", $("task-filter-state").value);
  if ($("task-filter-name").value.trim()) q.set("name", $("task-filter-name").value.trim());
  const r = await api("/api/dash/tasks?" + q);
  $("tasks-shown").textContent = "newest " + r.rows.length + " of " + r.total;
  table($("tasks-table"), [["task", (t) => short(t.task_id)], ["function", (t) => t.name], ["state", (t) => stateCell(t.state)],
    ["attempt", (t) => t.attempt_number], ["node", (t) => short(t.node_id)], ["pid", (t) => t.worker_pid || ""],
    ["error", (t) => t.error_type || ""]], r.rows,
  (t) => ({ "data-id": t.task_id, class: t.task_id === state.task ? "selected" : null, onclick: () => openTask(t.task_id) }));
  if (state.task) await showTask();
}

async function openTask(id) { state.task = id; location.hash = "tasks/" + id; await showTask(); }

async function showTask() {
  const t = await api("/api/dash/tasks/" + encodeURIComponent(state.task));
  const dur = t.start_time_ms && t.end_time_ms ? ((t.end_time_ms - t.start_time_ms) / 1000).toFixed(3) + " s" : "";
  const rows = [["task", t.task_id], ["function", t.name], ["state", t.state], ["attempt", t.attempt_number],
    ["node", t.node_id], ["worker", t.worker_id], ["pid", t.worker_pid], ["job", t.job_id], ["actor", t.actor_id],
    ["resources", JSON.stringify(t.required_resources || {})], ["created", when(t.creation_time_ms)],
    ["started", when(t.start_time_ms)], ["ended", when(t.end_time_ms)], ["duration", dur], ["error type", t.error_type]];
  const el = $("task-detail");
  el.hidden = false;
  fill(el, h("h3", {}, "Task " + short(t.task_id)),
    h("table", { class: "kv" }, rows.filter((r) => r[1] !== null && r[1] !== undefined && r[1] !== "").map(([k, v]) =>
      h("tr", {}, h("td", { class: "label" }, k), k === "state" ? stateCell(v) : h("td", {}, String(v))))),
    t.error_message ? [h("h3", {}, "Error and traceback"), h("pre", { id: "task-error" }, t.error_message)] : null,
    h("h3", {}, "State history"),
    h("table", { class: "kv" }, (t.events || []).map((e) => h("tr", {}, stateCell(e.state), h("td", {}, when(e.created_ms))))));
}

async function pollActors() {
  const r = await api("/api/dash/actors");
  table($("actors-table"), [["actor", (a) => short(a.actor_id)], ["class", (a) => a.class_name], ["name", (a) => a.name],
    ["state", (a) => stateCell(a.state)], ["restarts", (a) => a.num_restarts], ["node", (a) => short(a.node_id)],
    ["pid", (a) => a.pid || ""], ["death cause", (a) => a.death_cause || ""]], r.rows);
}

const TERMINAL = ["SUCCEEDED", "FAILED", "STOPPED"];
async function pollJobs() {
  const r = await api("/api/jobs/");
  table($("jobs-table"), [["submission", (j) => j.submission_id], ["status", (j) => stateCell(j.status)],
    ["entrypoint", (j) => j.entrypoint], ["started", (j) => when(j.start_time)], ["ended", (j) => when(j.end_time)],
    ["", (j) => h("td", {}, TERMINAL.includes(j.status) ? "" :
      h("button", { class: "stop", "data-stop": j.submission_id, onclick: (ev) => { ev.stopPropagation(); stopJob(j.submission_id, ev.target); } }, "Stop"))]],
  r.jobs, (j) => ({ "data-id": j.submission_id, class: j.submission_id === state.job ? "selected" : null,
    onclick: () => { state.job = j.submission_id; showJob(); } }));
  if (state.job) await showJob();
}

async function stopJob(id, button) {
  button.disabled = true;
  await api("/api/jobs/" + encodeURIComponent(id) + "/stop", { method: "POST", headers: { "X-Luminary-Dashboard": "1" } });
  await pollJobs();
}

async function showJob() {
  const id = state.job;
  const [info, logs] = await Promise.all([api("/api/jobs/" + encodeURIComponent(id)), api("/api/jobs/" + encodeURIComponent(id) + "/logs")]);
  const el = $("job-detail");
  el.hidden = false;
  fill(el, h("h3", {}, "Job " + id), h("table", { class: "kv" },
    [["status", info.status], ["entrypoint", info.entrypoint], ["message", info.message]].filter((r) => r[1]).map(([k, v]) =>
      h("tr", {}, h("td", { class: "label" }, k), k === "status" ? stateCell(v) : h("td", {}, v)))),
  h("h3", {}, "Output"), h("pre", { id: "job-logs" }, logs.logs.slice(-20000) || "(no output yet)"));
}

// --- metrics charts --------------------------------------------------------------------------------
function chart(cv, series, maxY) {
  const ctx = cv.getContext("2d"), pad = 34, W = cv.width - pad - 10, H = cv.height - 30;
  ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.font = "11px system-ui, sans-serif";
  const s = state.samples;
  let top = maxY || 1;
  if (!maxY) for (const p of s) for (const [k] of series) top = Math.max(top, p[k]);
  ctx.strokeStyle = "#dde1e8"; ctx.fillStyle = "#6b7385";
  for (let i = 0; i <= 4; i++) {
    const y = 8 + H - H * i / 4;
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(pad + W, y); ctx.stroke();
    ctx.fillText(String(Math.round(top * i / 4)), 2, y + 4);
  }
  const t1 = s.length ? s[s.length - 1].t : 0;
  series.forEach(([k, color], i) => {
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    s.forEach((p, j) => {
      const x = pad + W - W * (t1 - p.t) / HISTORY, y = 8 + H - H * p[k] / top;
      if (j) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = color; ctx.fillText(k, pad + 8 + i * 80, cv.height - 6);
  });
}
function drawMetrics() {
  chart($("chart-tasks"), [["running", "#3b6fd8"], ["pending", "#e69b22"], ["failed", "#c9302c"]]);
  chart($("chart-usage"), [["cpu", "#3b6fd8"], ["mem", "#2e8b57"], ["store", "#8e44ad"]], 100);
}

// --- the loop ----------------------------------------------------------------------------------------
function route() {
  const [page, arg] = (location.hash.slice(1) || "overview").split("/");
  state.page = $("page-" + page) ? page : "overview";
  if (state.page === "tasks" && arg) state.task = arg;
  for (const el of document.querySelectorAll(".page")) el.classList.toggle("active", el.id === "page-" + state.page);
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === state.page);
}

let busy = false;
async function tick() {
  if (busy) return;
  busy = true;
  try {
    const o = await api("/api/dash/overview");
    sample(o);
    if (state.page === "overview") drawOverview(o);
    else if (state.page === "stream") await pollStream();
    else if (state.page === "tasks") await pollTasks();
    else if (state.page === "actors") await pollActors();
    else if (state.page === "jobs") await pollJobs();
    else if (state.page === "metrics") drawMetrics();
    setStatus("live · " + new Date(o.time * 1000).toLocaleTimeString());
  } catch (e) {
    if (e.message !== "401") setStatus("head not answering: " + e.message, true);
  } finally {
    busy = false;
  }
}

window.addEventListener("hashchange", () => { route(); tick(); });
$("stream-window").addEventListener("change", () => tick());
$("task-filter-state").addEventListener("change", () => tick());
$("task-filter-name").addEventListener("change", () => tick());
route();
tick();
setInterval(tick, POLL_MS);
