// hookflow's browser UI: a small single-page app over the REST API (/api/v1), routed by the URL
// hash: #/ (flows, their health and latest activity), #/flows/ID (one flow: its source, samples
// with a mapping preview, sample capture, catch-hook log and recent runs), #/flows/ID/revisions
// (its revisions and the difference between two), #/runs (every run, filtered, paged, live, with
// bulk retry and replay), #/runs/ID (one run, live: payload, steps, timeline, retry, replay) and
// #/audit (the audit record).
"use strict";

const esc = s => String(s ?? "").replace(/[&<>"']/g, c =>
  ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const app = document.getElementById("app");

// The session's CSRF token (when the server asks for a login), sent with every change.
let csrf = null;

class LoginNeeded extends Error {}
class Unreachable extends Error {}

async function api(path, options = {}) {
  const headers = { "content-type": "application/json", ...(options.headers || {}) };
  if (csrf && options.method && options.method !== "GET") headers["x-csrf-token"] = csrf;
  const response = await fetch(path, { ...options, headers }).catch(() => { throw new Unreachable(); });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401 && body.code === "unauthenticated") throw new LoginNeeded();
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

function loginPage(message = "") {
  app.innerHTML = `
    <h1>Log in</h1>
    <form id="login" class="card" style="max-width:24rem">
      <label for="password">Admin password</label>
      <div class="row"><input id="password" type="password" autocomplete="current-password" required autofocus>
        <button type="submit" class="primary">Log in</button></div>
      <p id="login-error" class="failed" role="alert">${esc(message)}</p>
    </form>`;
  document.getElementById("login").addEventListener("submit", async event => {
    event.preventDefault();
    try {
      const session = await api("/api/v1/login", {
        method: "POST", body: JSON.stringify({ password: document.getElementById("password").value }),
      });
      csrf = session.csrf_token;
      signedIn(true);
      route();
    } catch (e) {
      document.getElementById("login-error").textContent = e instanceof LoginNeeded ? "Wrong password." : e.message;
    }
  });
}

// Who is signed in (with a password set, the admin), and the way out.
function signedIn(yes) {
  const who = document.getElementById("who");
  who.innerHTML = yes ? `<small class="muted">signed in as admin</small> <button type="button" id="logout">Log out</button>` : "";
  document.getElementById("logout")?.addEventListener("click", async () => {
    await api("/api/v1/logout", { method: "POST", body: "{}" });
    csrf = null;
    signedIn(false);
    stopFollowing();
    loginPage("You are logged out.");
  });
}

function copyButton(text, what = "the catch URL") {
  return `<button type="button" class="copy" data-copy="${esc(text)}" aria-label="Copy ${esc(what)}">Copy</button>`;
}

// A JSON value as a collapsible tree (objects and arrays fold), under a summary with a copy button.
function jsonBlock(label, value, { open = false, id = "", cls = "" } = {}) {
  return `<details class="json-block" ${open ? "open" : ""}><summary>${esc(label)} ${copyButton(JSON.stringify(value, null, 2), label)}</summary>
    <div class="tree ${cls}" ${id ? `id="${id}"` : ""}>${tree(value)}</div></details>`;
}

function tree(value, key) {
  const name = key === undefined ? "" : `<span class="key">${esc(key)}</span>: `;
  if (value === null || typeof value !== "object") {
    return `<div>${name}<span class="v-${value === null ? "null" : typeof value}">${esc(JSON.stringify(value) ?? "undefined")}</span></div>`;
  }
  const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
  const [open, close] = Array.isArray(value) ? ["[", "]"] : ["{", "}"];
  if (!entries.length) return `<div>${name}${open}${close}</div>`;
  const count = `${entries.length} ${Array.isArray(value) ? "item" : "field"}${entries.length === 1 ? "" : "s"}`;
  return `<details open><summary>${name}${open} <small class="muted">${count}</small></summary>
    ${entries.map(([k, v]) => tree(v, k)).join("")}</details><div>${close}</div>`;
}

document.addEventListener("click", event => {
  const goto = event.target.closest("[data-goto-line]");
  if (goto) showLine(goto.dataset.gotoLine);
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    event.preventDefault(); // a copy button in a summary copies without folding
    navigator.clipboard?.writeText(copy.dataset.copy);
    copy.textContent = "Copied";
  }
});

// ---- time --------------------------------------------------------------------------------

const FINAL = ["succeeded", "failed", "filtered"];
const at = t => Date.parse(t);

// A duration for people: 840 ms, 1.2 s, 55 s, 3 min, 2 h 5 min.
function human(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 60_000) return `${Math.floor(ms / 1000)} s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} min`;
  const h = Math.floor(ms / 3_600_000), min = Math.floor(ms % 3_600_000 / 60_000);
  return min ? `${h} h ${min} min` : `${h} h`;
}

const clock = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

// A time in the viewer's zone and how long ago it was (the exact UTC time on hover).
function when(t) {
  if (!t) return "";
  const ago = Date.now() - at(t);
  return `<time datetime="${esc(t)}" title="${esc(t)}">${esc(clock.format(new Date(t)))}</time>
    <small class="muted">${Math.abs(ago) < 1000 ? "just now" : ago > 0 ? `${human(ago)} ago` : `in ${human(-ago)}`}</small>`;
}

// A run's reason in words: a condition's place in the filter (`all[0]: `) left out, the fields
// an expression reads shown as code, "does not exist" as "is missing".
function inWords(reason) {
  return esc(reason ?? "")
    .replace(/\b(?:all|any)\[\d+\](?:\.(?:all|any)\[\d+\])*: /g, "")
    .replace(/\{\{\s*([\w.[\]-]+)\s*\}\}/g, "<code>$1</code>")
    .replace(/ does not exist/g, " is missing")
    .replace(/^filtered by step `([^`]+)`:/, "Filtered by step <strong>$1</strong>:");
}

// ---- live ----------------------------------------------------------------------------------

// The page's stream of run changes (one at a time); the header's #live says whether it is connected.
let live = null;

function follow(query, onRun, onOpen = () => {}) {
  live?.close();
  const state = document.getElementById("live");
  live = new EventSource(`/api/v1/runs/events${query}`);
  live.addEventListener("open", () => {
    state.textContent = "● live";
    state.dataset.state = "live";
    onOpen();
  });
  live.addEventListener("error", () => {
    state.textContent = "disconnected, retrying…";
    state.dataset.state = "retrying";
  });
  live.addEventListener("run", event => onRun(JSON.parse(event.data)));
}

// A page's polling (for what has no stream), stopped with the stream when the page changes.
let ticker = null;

function poll(ms, refresh) {
  clearInterval(ticker);
  ticker = setInterval(refresh, ms);
}

function stopFollowing() {
  clearInterval(ticker);
  live?.close();
  live = null;
  const state = document.getElementById("live");
  state.textContent = "";
  delete state.dataset.state;
}

// ---- drawings -------------------------------------------------------------------------------

const KIND_ICONS = { filter: "▽", map: "⇄", http: "↗", hubspot: "H", stripe: "S", slack: "#", email: "✉", switch: "⑂",
  delay: "◷", foreach: "↻", flow: "⤴", storage: "▤" };

// A flow's steps as an SVG graph: columns by depth (longest chain of `needs`), edges from needs,
// switch paths labelled; `status` (step id → status) colours the nodes of a run.
function graph(steps, status = {}) {
  const depth = {};
  const byId = Object.fromEntries(steps.map(s => [s.id, s]));
  const depthOf = (id, seen = new Set()) => {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id) || !byId[id]) return 0;
    seen.add(id);
    const needs = byId[id].needs || [];
    depth[id] = needs.length ? 1 + Math.max(...needs.map(n => depthOf(n, seen))) : 0;
    return depth[id];
  };
  steps.forEach(s => depthOf(s.id));
  const columns = [];
  for (const s of steps) (columns[depth[s.id]] ||= []).push(s);
  const W = 170, H = 58, GX = 40, GY = 18;
  const pos = {};
  columns.forEach((col, x) => col.forEach((s, y) => { pos[s.id] = { x: 10 + x * (W + GX), y: 10 + y * (H + GY) }; }));
  const width = 20 + columns.length * (W + GX);
  const height = 20 + Math.max(1, ...columns.map(c => c.length)) * (H + GY);
  const edges = steps.flatMap(s => (s.needs || []).filter(n => pos[n]).map(n => {
    const a = pos[n], b = pos[s.id];
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
    const label = s.route && s.route.switch === n ? `<text x="${mx}" y="${(y1 + y2) / 2 - 4}" class="edge-label">${esc(s.route.path)}</text>` : "";
    return `<path d="M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}" class="edge"/>${label}`;
  }));
  const nodes = steps.map(s => {
    const p = pos[s.id];
    const st = status[s.id] || (s.on_failure ? "handler" : "");
    return `<g class="node ${esc(st)}" data-node="${esc(s.id)}" tabindex="0" role="button" aria-label="Step ${esc(s.id)}"><title>${esc(s.id)} (${esc(s.kind)})${st ? `: ${esc(st)}` : ""}</title>
      <rect x="${p.x}" y="${p.y}" width="${W}" height="${H}" rx="8"/>
      <text x="${p.x + 12}" y="${p.y + 24}" class="icon">${esc(KIND_ICONS[s.kind] || "•")}</text>
      <text x="${p.x + 34}" y="${p.y + 24}" class="node-id">${esc(s.id.length > 16 ? s.id.slice(0, 15) + "…" : s.id)}</text>
      <text x="${p.x + 34}" y="${p.y + 43}" class="node-kind">${esc(s.kind)}${s.on_failure ? " · on failure" : ""}${st && st !== "handler" ? ` · ${esc(st)}` : ""}</text></g>`;
  });
  return `<svg class="graph" role="img" aria-label="The flow's steps" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}">
    ${edges.join("")}${nodes.join("")}</svg>`;
}

// A graph's nodes open their step (`open(id)`) on a click, Enter or Space.
function onNode(box, open) {
  const go = event => {
    const node = event.target.closest("g.node");
    if (!node || (event.type === "keydown" && !["Enter", " "].includes(event.key))) return;
    event.preventDefault();
    open(node.dataset.node);
  };
  box.addEventListener("click", go);
  box.addEventListener("keydown", go);
}

// Runs per hour over the last 24 hours, as a small bar chart.
function sparkline(hourly) {
  const max = Math.max(1, ...hourly);
  const bars = hourly.map((n, i) => `<rect x="${i * 4}" y="${20 - 20 * n / max}" width="3" height="${Math.max(0.5, 20 * n / max)}"/>`);
  return `<svg class="spark" viewBox="0 0 96 20" width="96" height="20" role="img" aria-label="Runs per hour, last 24 hours">${bars.join("")}</svg>`;
}

// ---- #/ ------------------------------------------------------------------------------------

// How many runs the home page lists.
const LATEST_RUNS = 20;

async function home() {
  const [{ flows, problems }, { runs }] = await Promise.all([api("/api/v1/flows"), api(`/api/v1/runs?limit=${LATEST_RUNS}`)]);
  const hooks = flows.filter(f => f.catch_url);
  const logs = await Promise.all(hooks.map(async f =>
    (await api(`/api/v1/flows/${encodeURIComponent(f.id)}/hooks`)).requests.map(r => ({ ...r, flow: f.id }))));
  const requests = logs.flat().sort((a, b) => String(b.at).localeCompare(String(a.at))).slice(0, 30);
  const byFlow = Object.fromEntries(hooks.map((f, i) => [f.id, logs[i]]));
  const refused = requests.filter(r => r.outcome === "rejected").length;
  app.innerHTML = `
    ${problems.length ? `<div class="card problems" role="alert"><strong>Some flow files were refused</strong>
      (the previous revision of each keeps running):
      <ul>${problems.map(p => `<li><code>${esc(p)}</code></li>`).join("")}</ul></div>` : ""}
    <h1>Flows</h1>
    ${flows.length ? `<table class="cards"><thead><tr><th>Flow</th><th>Trigger</th><th>Last 24 h</th><th>Catch URL</th></tr></thead><tbody>
      ${flows.map(f => {
        const a = f.activity || { last_24h: {}, hourly: [] };
        const n = k => a.last_24h[k] || 0;
        return `<tr data-flow-row="${esc(f.id)}">
        <td><a href="#/flows/${esc(f.id)}">${esc(f.name)}</a><br><small class="muted">${esc(f.id)}${f.enabled ? "" : ` · <span class="failed">paused</span>`}</small></td>
        <td>${esc(f.trigger.type)}${f.trigger.cron ? `<br><small class="muted"><code>${esc(f.trigger.cron)}</code></small>` : ""}</td>
        <td>${sparkline(a.hourly)}<br><small><span class="succeeded">${n("succeeded")} ok</span> ·
          <a class="failed" href="#/runs?flow=${encodeURIComponent(f.id)}&status=failed&since=24h">${n("failed")} failed</a> · <span class="filtered">${n("filtered")} filtered</span></small>
          ${refusals(byFlow[f.id] || [])}
          ${a.last_run ? `<br><small class="muted">last run <a href="#/runs/${esc(a.last_run.id)}">${human(Date.now() - at(a.last_run.created_at))} ago</a></small>` : ""}</td>
        <td>${f.catch_url ? `<code>${esc(f.catch_url)}</code> ${copyButton(f.catch_url)}` : ""}</td></tr>`;
      }).join("")}
      </tbody></table>`
    : `<p class="empty">No flows yet: add a flow file (YAML) to the server's flows directory and restart.</p>`}
    <h2>Latest runs</h2>
    ${runsTable(runs)}
    <details id="hook-log"><summary><h2>Catch-hook log</h2> <span class="muted">${requests.length} recent
      request${requests.length === 1 ? "" : "s"}${refused ? `, <span class="failed">${refused} refused</span>` : ""}</span></summary>
      <p class="muted">The latest requests to each flow's catch URL, including refused ones and why.</p>
      ${hookLog(requests, "Each flow's page has a curl line to try its catch URL.")}</details>`;
  // The latest runs stay the latest: new ones appear on top, finished ones change in place.
  follow("", run => {
    liveRow(run);
    for (const old of [...document.querySelectorAll("#runs tr")].slice(LATEST_RUNS)) old.remove();
  });
}

// Runs as a table (rows added live by `liveRow`), or what to say while there are none.
function runsTable(runs, empty = "No runs yet.") {
  return `<div class="scroll"><table class="runs-table cards"><thead><tr><th>Run</th><th>Flow</th><th>Status</th><th>Created</th><th>Reason</th></tr></thead>
    <tbody id="runs">${runs.map(runRow).join("")}</tbody></table></div>
    ${runs.length ? "" : `<p class="empty" id="no-runs">${empty}</p>`}`;
}

// A run from the live stream: its row is updated, or added at the top.
function liveRow(run) {
  document.getElementById("no-runs")?.remove();
  const row = document.querySelector(`tr[data-run="${CSS.escape(run.id)}"]`);
  if (row) row.outerHTML = runRow(run);
  else document.getElementById("runs").insertAdjacentHTML("afterbegin", runRow(run));
}

function runRow(r) {
  return `<tr data-run="${esc(r.id)}" data-status="${esc(r.status)}"><td><a href="#/runs/${esc(r.id)}">${r.title
      ? `<span class="run-title">${esc(r.title)}</span></a><br><small class="muted"><code>${esc(r.id)}</code></small>`
      : `<code>${esc(r.id)}</code></a>`}</td>
    <td><a href="#/flows/${esc(r.flow_id)}">${esc(r.flow_id)}</a></td>
    <td class="${esc(r.status)}">${esc(r.status)}${r.duration_ms != null ? `<br><small class="muted">${human(r.duration_ms)}</small>` : ""}</td>
    <td>${when(r.created_at)}</td><td>${inWords(r.reason)}</td></tr>`;
}

// One catch-hook request: what became of it, linking to the run it started (a duplicate's
// links to the original run).
function hookRow(r) {
  const s = r.summary || {};
  const runs = (s.events || [s]).filter(e => e.run_id).map(e =>
    `<a href="#/runs/${esc(e.run_id)}">${e.status === "duplicate" ? "original run" : "run"}</a>`);
  return `<tr data-flow="${esc(r.flow)}" data-outcome="${esc(r.outcome)}"><td>${esc(r.flow)}</td><td>${when(r.at)}</td>
    <td>${esc(r.method)} · ${esc(r.bytes)} bytes</td><td class="${esc(r.outcome)}">${esc(r.outcome)} (${esc(r.status)})</td>
    <td>${runs.join(", ")} ${esc(r.reason || s.reason)} ${esc(r.detail)}</td></tr>`;
}

function hookLog(requests, note) {
  return requests.length
    ? `<div class="scroll"><table><thead><tr><th>Flow</th><th>Received</th><th>Request</th><th>Outcome</th><th>What became of it</th></tr></thead>
        <tbody id="hooks">${requests.map(hookRow).join("")}</tbody></table></div>`
    : `<p class="empty" id="no-hooks">No requests yet. ${note}</p>`;
}

function flowHooks(flow, requests) {
  return hookLog(requests.map(r => ({ ...r, flow: flow.id })), "Send an event to the catch URL; each request shows here, refused ones with why.");
}

// A flow's catch hook refusing requests: how many of the recent ones, and the latest reason.
function refusals(requests) {
  const refused = requests.filter(r => r.outcome === "rejected");
  if (!refused.length) return "";
  const every = refused.length === requests.length;
  return `<br><small class="failed" data-health="${every ? "refusing" : "some-refused"}">⚠ ${every ? "refusing every request: " : ""}${refused.length} of the last ${requests.length} refused — ${esc(refused[0].reason)}</small>`;
}

// ---- #/flows/ID ----------------------------------------------------------------------------

async function flowPage(id) {
  const path = `/api/v1/flows/${encodeURIComponent(id)}`;
  const [flow, { requests }, { runs }] = await Promise.all([
    api(path), api(`${path}/hooks`),
    api(`/api/v1/runs?flow=${encodeURIComponent(id)}&limit=10`),
  ]);
  const lines = String(flow.source).split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  app.innerHTML = `
    <h1>${esc(flow.name)}</h1>
    <p class="muted">${esc(flow.id)} · revision ${esc(flow.revision)} · ${esc(flow.file)}
      · ${flow.enabled ? `<span class="succeeded">enabled</span>` : `<span class="failed">paused (enabled: false)</span>`}</p>
    ${flow.description ? `<p>${esc(flow.description)}</p>` : ""}
    ${flow.catch_url ? `<p class="row"><strong>Catch URL</strong> <code>${esc(flow.catch_url)}</code> ${copyButton(flow.catch_url)}</p>` : ""}
    <h2>Steps</h2>
    <div class="graph-box" id="flow-graph">${graph(flow.steps)}</div>

    <h2>Samples and preview</h2>
    <div class="card">
      <div id="samples"></div>
      ${flow.catch_url ? `<div class="row" style="margin-top:.8rem">
          <label for="capture-count">Capture the next</label>
          <input id="capture-count" type="number" min="1" max="100" value="1" style="width:5rem">
          <span>event(s) as samples</span> <button type="button" id="capture">Capture</button>
          <span id="capture-status" class="muted" role="status"></span></div>` : ""}
      <div id="preview-result"></div>
    </div>

    <h2>Run with a payload</h2>
    <div class="card">
      <label for="payload">The event's body (JSON)</label>
      <textarea id="payload" rows="5" spellcheck="false" style="width:100%;font-family:ui-monospace,monospace">{}</textarea>
      <div class="row"><button type="button" class="primary" id="start-run">Start run</button>
        <span id="run-status" role="status"></span></div>
    </div>

    <h2>Source</h2>
    <pre class="source" id="source">${lines.map((l, i) => `<span id="line-${i + 1}">${esc(l)}</span>`).join("")}</pre>

    ${flow.catch_url ? `<h2>Catch-hook log</h2><div id="flow-hooks">${flowHooks(flow, requests)}</div>` : ""}

    <p><a id="revisions" href="#/flows/${encodeURIComponent(flow.id)}/revisions">Revision history and differences →</a></p>

    <h2>Recent runs</h2>
    <p><a id="all-runs" href="#/runs?flow=${encodeURIComponent(flow.id)}">All runs of this flow →</a></p>
    ${runsTable(runs, flow.catch_url ? `No runs yet. Send an event:<br><code>curl -s '${esc(flow.catch_url)}' -H 'content-type: application/json' -d '{"hello": "world"}'</code>` : undefined)}`;
  follow(`?flow=${encodeURIComponent(flow.id)}`, liveRow);

  // The hook log follows new requests (refused ones start no run, so it polls).
  if (flow.catch_url) {
    let shown = JSON.stringify(requests);
    poll(3000, async () => {
      const latest = (await api(`${path}/hooks`)).requests;
      if (JSON.stringify(latest) === shown) return;
      shown = JSON.stringify(latest);
      document.getElementById("flow-hooks").innerHTML = flowHooks(flow, latest);
    });
  }
  // A step in the graph shows its lines in the source.
  onNode(document.getElementById("flow-graph"), id => showLine(flow.steps.find(s => s.id === id)?.line));
  await showSamples(flow, path);
  document.getElementById("capture")?.addEventListener("click", () =>
    capture(flow, path, Number(document.getElementById("capture-count").value)));
  document.getElementById("start-run").addEventListener("click", () =>
    startRun(path, document.getElementById("payload").value));
}

// Brings a line of the flow's source into view and focus, marked for a moment.
function showLine(number) {
  const line = document.getElementById(`line-${number}`);
  if (!line) return;
  line.tabIndex = -1;
  line.focus({ preventScroll: true });
  line.scrollIntoView({ block: "center" });
  line.classList.add("picked");
  setTimeout(() => line.classList.remove("picked"), 1500);
}

async function startRun(path, text) {
  const status = document.getElementById("run-status");
  let body;
  try {
    body = JSON.parse(text);
  } catch (e) {
    status.innerHTML = `<span class="failed">The payload is not JSON: ${esc(e.message)}</span>`;
    return;
  }
  try {
    const started = await api(`${path}/runs`, { method: "POST", body: JSON.stringify({ body }) });
    status.innerHTML = `Started <a href="#/runs/${esc(started.run_id)}"><code>${esc(started.run_id)}</code></a>`;
  } catch (e) {
    status.innerHTML = `<span class="failed">${esc(e.message)}</span>`;
  }
}

async function preview(path, sample) {
  const out = document.getElementById("preview-result");
  out.innerHTML = `<p class="muted">Running offline…</p>`;
  document.querySelectorAll(".source .flagged").forEach(l => l.classList.remove("flagged"));
  try {
    const p = await api(`${path}/preview`, { method: "POST", body: JSON.stringify({ sample }) });
    for (const u of [...p.unresolved, ...p.warnings]) document.getElementById(`line-${u.line}`)?.classList.add("flagged");
    out.innerHTML = `
      <p>Preview of <strong>${esc(sample)}</strong>: the run would be <span class="${esc(p.status)}">${esc(p.status)}</span>
        ${p.reason ? `— ${esc(p.reason)}` : ""} <span class="muted">(nothing was sent)</span></p>
      <div id="unresolved">${p.unresolved.length
        ? p.unresolved.map(u => `<p class="flag unresolved" data-line="${u.line}">⚠ <button type="button" class="link" data-goto-line="${u.line}">line ${u.line}</button>, <code>${esc(u.field)}</code>:
            <code>${esc(u.path)}</code> resolved to nothing${u.suggestion ? ` — did you mean <code>${esc(u.suggestion)}</code>?` : ""}</p>`).join("")
        : `<p class="succeeded">Every expression resolved.</p>`}</div>
      <div id="warnings">${p.warnings.map(w => `<p class="flag warning" data-line="${w.line}">⚠ <button type="button" class="link" data-goto-line="${w.line}">line ${w.line}</button>, <code>${esc(w.field)}</code>: ${esc(w.message)}</p>`).join("")}</div>
      ${p.steps.map(s => `<div class="step" data-status="${esc(s.status)}" data-step="${esc(s.id)}">
          <strong>${esc(s.id)}</strong> <span class="${esc(s.status)}">${esc(s.status)}</span>
          ${s.error ? `<p class="failed">${esc(s.error)}</p>` : ""}
          ${consoleLines(s.logs)}
          ${s.input !== null || s.output !== null ? stepData(s) : ""}
        </div>`).join("")}`;
  } catch (e) {
    out.innerHTML = `<p class="failed">${esc(e.message)}</p>`;
  }
}

// The flow's samples, the chosen one (by default the last: captured samples are named by time)
// filling the "run with a payload" box.
async function showSamples(flow, path, chosen) {
  const { samples } = await api(`${path}/samples`);
  const box = document.getElementById("samples");
  if (!samples.length) {
    box.innerHTML = `<p class="empty">No samples yet. Capture the next real events sent to the catch URL below, or
      add <code>samples/${esc(flow.id)}/NAME.json</code> beside the flow file.</p>`;
    return;
  }
  chosen = samples.includes(chosen) ? chosen : samples[samples.length - 1];
  box.innerHTML = `<div class="row"><label for="sample">Sample</label>
    <select id="sample">${samples.map(s => `<option ${s === chosen ? "selected" : ""}>${esc(s)}</option>`).join("")}</select>
    <button type="button" class="primary" id="preview">Preview</button></div>`;
  const select = document.getElementById("sample");
  const fill = async () => {
    const sample = await api(`${path}/samples/${encodeURIComponent(select.value)}`);
    document.getElementById("payload").value = JSON.stringify(sample.trigger.body, null, 2);
  };
  select.addEventListener("change", fill);
  document.getElementById("preview").addEventListener("click", () => preview(path, select.value));
  await fill();
}

async function capture(flow, path, count) {
  const status = document.getElementById("capture-status");
  try {
    await api(`${path}/capture`, { method: "POST", body: JSON.stringify({ count }) });
    status.textContent = `Waiting for ${count} event(s)…`;
    for (;;) {
      const c = await api(`${path}/capture`);
      if (c.done) await showSamples(flow, path, c.samples[c.samples.length - 1]);
      status.textContent = c.samples.length
        ? `Captured ${c.samples.join(", ")}${c.done ? "" : " — waiting for more…"}`
        : `Waiting for ${c.remaining} event(s)…`;
      if (c.done) break;
      await new Promise(r => setTimeout(r, 1000));
    }
  } catch (e) {
    status.textContent = e.message;
  }
}

// ---- #/flows/ID/revisions ----------------------------------------------------------------

// A flow's revisions as deployed, and the difference between any two (by default from the one
// given, or the previous, to the current).
async function revisionsPage(id, query) {
  const path = `/api/v1/flows/${encodeURIComponent(id)}`;
  const { revisions } = await api(`${path}/revisions`);
  const params = new URLSearchParams(query);
  const current = revisions.find(r => r.current)?.revision || revisions[0].revision;
  const to = params.get("to") || current;
  const from = params.get("from") || revisions.find(r => r.revision !== to)?.revision || to;
  const [a, b] = await Promise.all([from, to].map(r => api(`${path}?revision=${encodeURIComponent(r)}`)));
  const choose = (name, chosen) => `<select id="diff-${name}" name="${name}">${revisions.map(r =>
    `<option value="${esc(r.revision)}" ${r.revision === chosen ? "selected" : ""}>${esc(r.revision)}${r.current ? " (current)" : ""}</option>`).join("")}</select>`;
  app.innerHTML = `
    <h1>Revisions of ${esc(a.name)}</h1>
    <p><a href="#/flows/${esc(id)}">← the flow</a></p>
    <div class="scroll"><table><thead><tr><th>Revision</th><th>Deployed</th></tr></thead><tbody>
      ${revisions.map(r => `<tr data-revision="${esc(r.revision)}"><td><code>${esc(r.revision)}</code>${r.current ? ` <span class="succeeded">current</span>` : ""}</td>
        <td>${when(r.deployed_at)}</td></tr>`).join("")}</tbody></table></div>
    <h2>Difference</h2>
    <form class="row" id="diff-form"><label for="diff-from">From</label>${choose("from", from)}
      <label for="diff-to">to</label>${choose("to", to)}<button type="submit">Compare</button></form>
    <pre class="diff" id="diff">${diff(a.source.split("\n"), b.source.split("\n"))}</pre>`;
  document.getElementById("diff-form").addEventListener("submit", event => {
    event.preventDefault();
    location.hash = `#/flows/${encodeURIComponent(id)}/revisions?${new URLSearchParams(new FormData(event.target))}`;
  });
}

// A line diff (longest common subsequence): removed lines marked -, added +.
function diff(a, b) {
  const n = a.length, m = b.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) { out.push(`<span>  ${esc(a[i])}</span>`); i++; j++; }
    else if (i < n && (j === m || lcs[i + 1][j] >= lcs[i][j + 1])) out.push(`<span class="removed">- ${esc(a[i++])}</span>`);
    else out.push(`<span class="added">+ ${esc(b[j++])}</span>`);
  }
  return a.join("\n") === b.join("\n") ? `<span class="muted">The two revisions are the same.</span>` : out.join("");
}

// ---- #/runs ----------------------------------------------------------------------------------

async function runsPage(query) {
  const params = new URLSearchParams(query);
  const { flows } = await api("/api/v1/flows");
  const filter = new URLSearchParams();
  for (const k of ["flow", "status", "since", "until", "q"]) if (params.get(k)) filter.set(k, params.get(k));
  filter.set("limit", "50");
  const page = await api(`/api/v1/runs?${filter}`);
  const option = (value, label, selected) =>
    `<option value="${esc(value)}" ${selected ? "selected" : ""}>${esc(label)}</option>`;
  const presets = ["1h", "24h", "7d"];
  const since = params.get("since") || "";
  const ranged = since && !presets.includes(since);
  app.innerHTML = `
    <h1>Runs</h1>
    <form id="run-filters" class="row" aria-label="Filter runs">
      <label for="f-flow">Flow</label>
      <select id="f-flow" name="flow">${option("", "all flows", !params.get("flow"))}
        ${flows.map(f => option(f.id, f.name, params.get("flow") === f.id)).join("")}</select>
      <label for="f-status">Status</label>
      <select id="f-status" name="status">${option("", "any", !params.get("status"))}
        ${["queued", "running", "succeeded", "failed", "filtered"].map(st => option(st, st, params.get("status") === st)).join("")}</select>
      <label for="f-since">Since</label>
      <select id="f-since" name="since">${option("", "ever", !since)}
        ${presets.map(d => option(d, `last ${d}`, since === d)).join("")}${ranged ? option(since, "from the date given", true) : ""}</select>
      <label for="f-from">or from</label>
      <input id="f-from" name="from" type="datetime-local" value="${ranged ? localInput(since) : ""}">
      <label for="f-until">until</label>
      <input id="f-until" name="until" type="datetime-local" value="${localInput(params.get("until"))}">
      <label for="f-q">Payload contains</label>
      <input id="f-q" name="q" type="search" placeholder="an email, an id…" value="${esc(params.get("q") || "")}">
      <button type="submit">Show</button>
    </form>
    ${params.get("flow") && !params.get("q")
      ? `<div class="row" id="bulk"><button type="button" data-bulk="retry">Retry the failed runs…</button>
          <button type="button" data-bulk="replay">Replay these runs…</button><span id="bulk-status" role="status"></span></div>`
      : `<p class="muted">Choose a flow (and no payload search) to retry or replay its runs in bulk.</p>`}
    ${runsTable(page.runs, "No runs match.")}
    <p><button type="button" id="more" ${page.next_cursor ? "" : "hidden"}>Load more</button></p>`;
  let cursor = page.next_cursor;
  document.getElementById("run-filters").addEventListener("submit", event => {
    event.preventDefault();
    const chosen = new URLSearchParams();
    for (const [k, v] of new FormData(event.target)) {
      // Dates typed in the viewer's zone travel as UTC; a start date wins over the preset.
      if (v) chosen.set(k === "from" ? "since" : k, k === "from" || k === "until" ? new Date(v).toISOString() : v);
    }
    location.hash = `#/runs?${chosen}`;
  });
  for (const button of document.querySelectorAll("[data-bulk]")) {
    button.addEventListener("click", () => bulk(button.dataset.bulk, params));
  }
  document.getElementById("more").addEventListener("click", async () => {
    filter.set("cursor", cursor);
    const next = await api(`/api/v1/runs?${filter}`);
    document.getElementById("runs").insertAdjacentHTML("beforeend", next.runs.map(runRow).join(""));
    cursor = next.next_cursor;
    document.getElementById("more").hidden = !cursor;
  });
  // New and finished runs appear without a reload, if the filter would list them.
  const until = params.get("until");
  follow(params.get("flow") ? `?flow=${encodeURIComponent(params.get("flow"))}` : "", run => {
    if (params.get("status") && run.status !== params.get("status")) return;
    if (params.get("q")) return; // live rows carry no payload to search
    if (until && at(run.created_at) >= at(until)) return;
    if (ranged && at(run.created_at) < at(since)) return;
    liveRow(run);
  });
}

// A bulk retry or replay of the runs the filter selects: counted first (a dry run), then confirmed.
async function bulk(action, params) {
  const status = document.getElementById("bulk-status");
  const selection = {};
  for (const k of ["flow", "status", "since", "until"]) if (params.get(k)) selection[k] = params.get(k);
  const request = extra => api(`/api/v1/runs/${action}`, { method: "POST", body: JSON.stringify({ ...selection, ...extra }) });
  try {
    const { matched } = await request({ dry_run: true });
    const runs = `${matched} ${action === "retry" ? "failed " : ""}run${matched === 1 ? "" : "s"}`;
    if (!matched) {
      status.textContent = `No ${action === "retry" ? "failed " : ""}runs to ${action}.`;
      return;
    }
    const report = done => {
      status.textContent = `${action === "retry" ? "Retried" : "Replayed"} ${done.started.length} of ${done.matched}`
        + (done.failed.length ? `; ${done.failed.length} could not be: ${done.failed.map(f => f.reason).join("; ")}` : ".");
    };
    if (action === "retry") {
      if (!confirm(`Retry ${runs} of ${selection.flow} from their failed steps?`)) return;
      report(await request({}));
      return;
    }
    const current = await api(`/api/v1/flows/${encodeURIComponent(selection.flow)}`).catch(() => null);
    revisionDialog({
      id: "bulk-replay-dialog",
      heading: `Replay ${runs} of ${selection.flow}?`,
      intro: "Each starts a new run of its event from the first step.",
      current,
      original: "the revision each run ran",
      callers: revision => revision === "current" ? callers(current) : null,
      replay: revision => request({ revision }).then(report)
        .catch(e => { status.innerHTML = `<span class="failed">${esc(e.message)}</span>`; }),
    });
  } catch (e) {
    status.innerHTML = `<span class="failed">${esc(e.message)}</span>`;
  }
}

// A time for a datetime-local input, in the viewer's zone ("" for none or a duration such as 24h).
function localInput(t) {
  const ms = Date.parse(t);
  if (Number.isNaN(ms)) return "";
  return new Date(ms - new Date(ms).getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
}

// ---- #/runs/ID -------------------------------------------------------------------------------

// The run page follows the run: it renders again whenever the run is created, finishes or
// is retried, and on every (re)connection of the stream, in case it missed a change.
async function runPage(id) {
  const hash = location.hash;
  let shown = "";
  const refresh = async () => {
    const run = await api(`/api/v1/runs/${encodeURIComponent(id)}`);
    const text = JSON.stringify(run);
    if (text !== shown && location.hash === hash) {
      shown = text;
      renderRun(run);
    }
    return run;
  };
  const { flow_id } = await refresh();
  follow(`?flow=${encodeURIComponent(flow_id)}`, run => run.id === id && refresh(), refresh);
}

function renderRun(run) {
  const id = run.id;
  app.innerHTML = `
    <h1 id="run-title">${run.title ? esc(run.title) : `Run <code>${esc(run.id)}</code>`}</h1>
    ${run.title ? `<p class="muted">run <code>${esc(run.id)}</code></p>` : ""}
    <p class="row"><span class="${esc(run.status)}" id="run-state"><strong>${esc(run.status)}</strong></span>
      <span class="muted">flow <a href="#/flows/${esc(run.flow_id)}">${esc(run.flow_id)}</a> · revision
      <a id="run-revision" href="#/flows/${encodeURIComponent(run.flow_id)}/revisions?from=${encodeURIComponent(run.revision)}">${esc(run.revision)}</a>
      · created ${when(run.created_at)}${run.started_by ? ` by <span id="run-started-by">${esc(run.started_by)}${run.retried ? ", retried" : ""}</span>` : ""}${run.duration_ms != null ? ` · took <span id="run-took">${human(run.duration_ms)}</span>` : ""}</span></p>
    ${run.reason ? `<p class="${esc(run.status)}" id="run-reason">${inWords(run.reason)}</p>` : ""}
    ${run.replay_of ? `<p>Replay of <a href="#/runs/${esc(run.replay_of)}"><code>${esc(run.replay_of)}</code></a></p>` : ""}
    <div class="row">
      ${run.status === "failed" ? `<button type="button" class="primary" id="retry">Retry from failed step</button>` : ""}
      ${FINAL.includes(run.status) ? `<button type="button" id="replay">Replay</button>` : ""}
      <span id="action-status" role="status"></span>
    </div>
    <h2>Graph</h2>
    <div class="graph-box" id="run-graph"></div>
    <h2>Timeline</h2>
    ${timeline(run)}
    <h2>Trigger payload</h2>
    ${jsonBlock("body", run.event?.trigger?.body, { open: true, id: "payload" })}
    ${jsonBlock("headers and query", { headers: run.event?.trigger?.headers, query: run.event?.trigger?.query })}
    <h2>Steps</h2>
    ${run.steps.map(s => `<div class="step" data-status="${esc(s.status)}" data-step="${esc(s.id)}">
      <strong>${esc(s.id)}</strong> <span class="muted">${esc(s.kind || "")}</span> <span class="${esc(s.status)}">${esc(s.status)}</span>
      ${s.path ? `<span class="muted">took path <code>${esc(s.path)}</code></span>` : ""}
      ${s.waiting_until ? `<p class="waiting">Waiting for a callback until ${when(s.waiting_until)}: POST to <code class="resume-url">${esc(s.resume_url)}</code></p>` : ""}
      ${s.error ? `<p class="failed step-error">${esc(s.error.message)}</p>` : ""}
      ${consoleLines(s.attempts.at(-1)?.logs)}
      ${s.input !== undefined ? stepData(s) : ""}
      ${s.attempts.length ? `<div class="scroll"><table class="attempts"><thead><tr><th>Attempt</th><th>Started</th><th>Took</th><th>Error</th><th>Next try</th><th>Node</th></tr></thead><tbody>
        ${s.attempts.map((a, n) => `<tr data-attempt="${esc(a.number)}"><td>${esc(a.number)}<br><small class="muted">${startedBy(s.attempts, n)}</small></td><td>${when(a.started_at)}</td><td>${human(a.duration_ms)}</td>
          <td>${esc(a.error)}</td><td>${when(a.retry_at)}</td><td>${esc(a.node)}</td></tr>`).join("")}</tbody></table></div>` : ""}
    </div>`).join("")}`;
  // The graph of the revision the run ran, coloured by its step statuses.
  api(`/api/v1/flows/${encodeURIComponent(run.flow_id)}?revision=${encodeURIComponent(run.revision)}`).then(flow => {
    const statuses = Object.fromEntries(run.steps.map(s => [s.id, s.status]));
    document.getElementById("run-graph").innerHTML = graph(flow.steps, statuses);
  }).catch(() => {});
  // A step in the graph opens its record below.
  onNode(document.getElementById("run-graph"), stepId => {
    const step = app.querySelector(`[data-step="${CSS.escape(stepId)}"]`);
    if (!step) return;
    step.querySelectorAll(".json-block").forEach(d => { d.open = true; });
    step.tabIndex = -1;
    step.focus();
  });
  const status = document.getElementById("action-status");
  document.getElementById("retry")?.addEventListener("click", async () => {
    if (!confirm("Retry this run from its failed step? Steps that succeeded keep their outputs; the failed step renders its request again and sends it under a new idempotency key.")) return;
    try {
      await api(`/api/v1/runs/${encodeURIComponent(id)}/retry`, { method: "POST", body: "{}" });
      status.textContent = "Retrying…";
    } catch (e) {
      status.innerHTML = `<span class="failed">${esc(e.message)}</span>`;
    }
  });
  document.getElementById("replay")?.addEventListener("click", () =>
    replayDialog(run).catch(e => { status.innerHTML = `<span class="failed">${esc(e.message)}</span>`; }));
}

// Replay asks first: on which revision (the run's own or the flow as deployed now), and which
// steps will call out again on that revision.
async function replayDialog(run) {
  const flowPath = `/api/v1/flows/${encodeURIComponent(run.flow_id)}`;
  const [original, current] = await Promise.all([
    api(`${flowPath}?revision=${encodeURIComponent(run.revision)}`), api(flowPath).catch(() => null)]);
  revisionDialog({
    id: "replay-dialog",
    heading: "Replay this run?",
    intro: "A new run of the same event starts from the first step.",
    current,
    original: `the revision this run ran (${esc(run.revision)})`,
    callers: revision => callers(revision === "current" ? current : original),
    replay: async revision => {
      try {
        const replay = await api(`/api/v1/runs/${encodeURIComponent(run.id)}/replay`, { method: "POST", body: JSON.stringify({ revision }) });
        location.hash = `#/runs/${replay.run_id}`;
      } catch (e) {
        document.getElementById("action-status").innerHTML = `<span class="failed">${esc(e.message)}</span>`;
      }
    },
  });
}

// The steps of a flow (as the API describes it) that call out, as "id (kind)".
function callers(flow) {
  return flow.steps.filter(s => EFFECTS.includes(s.kind)).map(s => `${s.id} (${s.kind})`);
}

// A replay's dialog: the revision to run (the flow as deployed now, if it still is, or the
// original) and the steps that will call out again on it; `replay` gets the chosen revision.
// `callers` answers those steps for a revision, or null when they cannot be listed.
function revisionDialog({ id, heading, intro, current, original, callers, replay }) {
  document.getElementById(id)?.remove();
  document.body.insertAdjacentHTML("beforeend", `<dialog id="${id}" aria-labelledby="${id}-heading">
    <form method="dialog">
      <h2 id="${id}-heading">${esc(heading)}</h2>
      <p>${esc(intro)}</p>
      <fieldset><legend>Run it on</legend>
        ${current ? `<label><input type="radio" name="revision" value="current" checked> the flow as deployed now (revision ${esc(current.revision)})</label><br>` : ""}
        <label><input type="radio" name="revision" value="original" ${current ? "" : "checked"}> ${original}</label>
      </fieldset>
      <p class="callers"></p>
      <div class="row"><button value="replay" class="primary">Replay</button><button value="cancel">Cancel</button></div>
    </form></dialog>`);
  const dialog = document.getElementById(id);
  const chosen = () => dialog.querySelector("input[name=revision]:checked").value;
  const explain = () => {
    const steps = callers(chosen());
    dialog.querySelector(".callers").innerHTML = steps === null
      ? "<strong class=\"failed\">The steps with effects of each run's revision call out again.</strong>"
      : steps.length
        ? `<strong class="failed">These steps will call out again:</strong> ${steps.map(esc).join(", ")}.`
        : "No step calls out: nothing is sent again.";
  };
  dialog.addEventListener("change", explain);
  explain();
  dialog.addEventListener("close", () => dialog.returnValue === "replay" && replay(chosen()));
  dialog.showModal();
}

// The lines a step attempt wrote (a code step's console.log), if any.
function consoleLines(logs) {
  if (!logs || !logs.length) return "";
  return `<details class="json-block" open><summary>console <small class="muted">${logs.length} line(s)</small></summary>
    <pre class="step-logs">${esc(logs.join("\n"))}</pre></details>`;
}

// What started an attempt: the first try, an automatic retry (the attempt before scheduled one),
// or a person retrying the run after the step failed for good (and who, when recorded).
function startedBy(attempts, n) {
  if (n === 0) return "first try";
  if (attempts[n - 1].retry_at) return "automatic retry";
  return attempts[n].retried_by ? `manual retry by ${esc(attempts[n].retried_by)}` : "manual retry";
}

// Step kinds that call out: their input is the request sent, their output the answer.
const EFFECTS = ["http", "hubspot", "stripe", "slack", "email"];

// A step's input and output side by side; a failed step's input is open, to see what it got.
function stepData(s) {
  const calls = EFFECTS.includes(s.kind);
  return `<div class="steps-grid">
    ${jsonBlock(calls ? "request sent" : "input", s.input, { open: s.status === "failed", cls: "input" })}
    ${jsonBlock(calls ? "response" : "output", s.output, { open: s.output != null, cls: "output" })}</div>`;
}

// The whole run on one time axis: the time it was queued before its first attempt, then each
// step's attempts and the waits between them (the backoff before a retry).
function timeline(run) {
  const start = at(run.created_at);
  const spans = run.steps.map(s => s.attempts.map(a => ({ ...a, from: at(a.started_at), to: at(a.started_at) + a.duration_ms })));
  const all = spans.flat();
  const end = run.finished_at ? at(run.finished_at) : Math.max(Date.now(), ...all.map(a => a.to));
  const span = Math.max(1, end - start);
  const pct = t => (100 * (t - start) / span).toFixed(2);
  const bar = (from, to, kind, label) =>
    `<span class="seg ${kind}" style="left:${pct(from)}%;width:${pct(start + to - from)}%" title="${esc(label)}"></span>`;
  const row = (label, bars, said, attrs = "") =>
    `<div class="bar-row" ${attrs}><span class="bar-label">${esc(label)}</span><span class="track">${bars}</span><span class="muted said">${said}</span></div>`;
  const firstTry = all.length ? Math.min(...all.map(a => a.from)) : end;
  const queued = row("queued", bar(start, firstTry, "queued", `queued ${human(firstTry - start)}`), human(firstTry - start), `data-part="queued"`);
  const steps = run.steps.map((s, i) => {
    const attempts = spans[i];
    if (!attempts.length) return row(s.id, "", esc(s.status), `data-step-bar="${esc(s.id)}"`);
    let waited = 0;
    const bars = attempts.map((a, n) => {
      const last = n === attempts.length - 1;
      const tried = bar(a.from, a.to, last ? s.status : "failed", `attempt ${a.number}: ${human(a.duration_ms)}${a.error ? ` — ${a.error}` : ""}`);
      if (n === 0) return tried;
      const before = attempts[n - 1];
      waited += a.from - before.to;
      const wait = before.retry_at ? "backoff" : "waited for a manual retry";
      return bar(before.to, a.from, "wait", `${wait} ${human(a.from - before.to)} before attempt ${a.number}`) + tried;
    }).join("");
    const took = attempts.reduce((sum, a) => sum + a.duration_ms, 0);
    const said = `${human(took)}${attempts.length > 1 ? ` · ${attempts.length} attempts, ${human(waited)} waiting` : ""}`;
    return row(s.id, bars, esc(said), `data-step-bar="${esc(s.id)}"`);
  });
  return `<div class="timeline" aria-label="When the run was queued, each attempt and the waits between them">${queued}${steps.join("")}
    <p class="muted legend"><span class="swatch queued"></span> queued <span class="swatch wait"></span> waiting to retry
      · ${human(span)} in all${run.finished_at ? "" : " so far"}</p></div>`;
}

// ---- #/audit ---------------------------------------------------------------------------------

// The audit record: who did what, from where, newest first; filtered by action, paged with
// "Older entries".
async function auditPage(query) {
  const params = new URLSearchParams(query);
  const action = params.get("action") || "";
  const api_query = new URLSearchParams({ limit: "50" });
  if (action) api_query.set("action", action);
  if (params.get("before")) api_query.set("before", params.get("before"));
  const { entries, next_cursor, actions } = await api(`/api/v1/audit?${api_query}`);
  const detail = e => Object.entries(e)
    .filter(([k, v]) => v !== null && !["id", "at", "action", "actor", "address"].includes(k))
    .map(([k, v]) => k === "run_id" || k === "new_run_id"
      ? `${esc(k)} <a href="#/runs/${esc(v)}"><code>${esc(v)}</code></a>`
      : `${esc(k)} <code>${esc(typeof v === "string" ? v : JSON.stringify(v))}</code>`)
    .join(" · ");
  const older = next_cursor
    ? `<p><a id="audit-older" href="#/audit?${new URLSearchParams({ ...(action ? { action } : {}), before: next_cursor })}">Older entries →</a></p>`
    : "";
  app.innerHTML = `<h1>Audit record</h1>
    <p class="muted">Who did what on this server, from which address, newest first.</p>
    <form id="audit-filter" class="row"><label>Action <select name="action">
      <option value="">every action</option>
      ${actions.map(a => `<option value="${esc(a)}" ${a === action ? "selected" : ""}>${esc(a)}</option>`).join("")}
    </select></label></form>
    ${entries.length ? `<div class="scroll"><table class="cards" id="audit"><thead><tr><th>When</th><th>Action</th><th>Who</th><th>From</th><th>What</th></tr></thead><tbody>
      ${entries.map(e => `<tr data-action="${esc(e.action)}"><td>${when(e.at)}</td><td><code>${esc(e.action)}</code></td>
        <td>${esc(e.actor)}</td><td>${esc(e.address ?? "")}</td><td>${detail(e)}</td></tr>`).join("")}
    </tbody></table></div>${older}` : `<p class="empty">Nothing recorded${action ? ` for <code>${esc(action)}</code>` : ""} yet.</p>`}`;
  document.querySelector("#audit-filter select").addEventListener("change", ev => {
    location.hash = ev.target.value ? `#/audit?action=${encodeURIComponent(ev.target.value)}` : "#/audit";
  });
}

// ---- routing -------------------------------------------------------------------------------

async function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const flow = hash.match(/^\/flows\/([^/?]+)$/);
  const revisions = hash.match(/^\/flows\/([^/?]+)\/revisions(?:\?(.*))?$/);
  const run = hash.match(/^\/runs\/([^/?]+)$/);
  const runs = hash.match(/^\/runs(?:\?(.*))?$/);
  const audit = hash.match(/^\/audit(?:\?(.*))?$/);
  stopFollowing();
  try {
    if (flow) await flowPage(decodeURIComponent(flow[1]));
    else if (revisions) await revisionsPage(decodeURIComponent(revisions[1]), revisions[2] || "");
    else if (run) await runPage(decodeURIComponent(run[1]));
    else if (runs) await runsPage(runs[1] || "");
    else if (audit) await auditPage(audit[1] || "");
    else await home();
  } catch (e) {
    if (e instanceof LoginNeeded) {
      signedIn(false);
      loginPage();
    }
    else if (e instanceof Unreachable) unreachable(route);
    else app.innerHTML = `<h1>Something went wrong</h1><p class="failed">${esc(e.message)}</p>`;
  }
  // Each page has its own title, and focus moves to its heading (for screen readers and keyboards).
  const heading = app.querySelector("h1");
  document.title = heading ? `${heading.textContent.trim()} · hookflow` : "hookflow";
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

// The server did not answer: say so and try again every few seconds.
function unreachable(retry) {
  const hash = location.hash;
  app.innerHTML = `<h1>The server is unreachable</h1>
    <p class="empty" role="status">hookflow did not answer. Retrying every 5 seconds…</p>`;
  setTimeout(() => { if (location.hash === hash) retry(); }, 5000);
}

async function start() {
  try {
    const session = await api("/api/v1/session");
    csrf = session.csrf_token;
    signedIn(session.login && session.authenticated);
    route();
  } catch (e) {
    unreachable(start);
  }
}

document.getElementById("skip").addEventListener("click", event => {
  event.preventDefault();
  (app.querySelector("h1") || app).focus();
});
window.addEventListener("hashchange", route);
start();
