// hookflow's browser UI: a small single-page app over the REST API (/api/v1), routed by the URL
// hash: #/ (flows and latest activity), #/flows/ID (one flow: its source, samples with a mapping
// preview, sample capture, catch-hook log and recent runs), #/runs (every run, filtered, paged and
// live) and #/runs/ID (one run: payload, steps, timeline, retry and replay).
"use strict";

const esc = s => String(s ?? "").replace(/[&<>"']/g, c =>
  ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const json = v => esc(JSON.stringify(v, null, 2));
const app = document.getElementById("app");

// The session's CSRF token (when the server asks for a login), sent with every change.
let csrf = null;
const logout = document.getElementById("logout");

// Shows the log-out button while a login session is open.
function setSession(token) {
  csrf = token;
  logout.hidden = !token;
}

logout.addEventListener("click", async () => {
  await api("/api/v1/logout", { method: "POST" }).catch(() => {});
  setSession(null);
  loginPage();
});

class LoginNeeded extends Error {}

async function api(path, options = {}) {
  const headers = { "content-type": "application/json", ...(options.headers || {}) };
  if (csrf && options.method && options.method !== "GET") headers["x-csrf-token"] = csrf;
  const response = await fetch(path, { ...options, headers });
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
      setSession(session.csrf_token);
      route();
    } catch (e) {
      document.getElementById("login-error").textContent = e instanceof LoginNeeded ? "Wrong password." : e.message;
    }
  });
}

function copyButton(text) {
  return `<button type="button" class="copy" data-copy="${esc(text)}" aria-label="Copy the catch URL">Copy</button>`;
}

document.addEventListener("click", event => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    navigator.clipboard?.writeText(copy.dataset.copy);
    copy.textContent = "Copied";
  }
});

// ---- drawings -------------------------------------------------------------------------------

const KIND_ICONS = { filter: "▽", map: "⇄", http: "↗", hubspot: "H", stripe: "S", slack: "#", email: "✉", switch: "⑂",
  delay: "◷", foreach: "↻", flow: "⤴" };

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
    return `<g class="node ${esc(st)}" data-node="${esc(s.id)}"><title>${esc(s.id)} (${esc(s.kind)})${st ? `: ${esc(st)}` : ""}</title>
      <rect x="${p.x}" y="${p.y}" width="${W}" height="${H}" rx="8"/>
      <text x="${p.x + 12}" y="${p.y + 24}" class="icon">${esc(KIND_ICONS[s.kind] || "•")}</text>
      <text x="${p.x + 34}" y="${p.y + 24}" class="node-id">${esc(s.id.length > 16 ? s.id.slice(0, 15) + "…" : s.id)}</text>
      <text x="${p.x + 34}" y="${p.y + 43}" class="node-kind">${esc(s.kind)}${s.on_failure ? " · on failure" : ""}${st && st !== "handler" ? ` · ${esc(st)}` : ""}</text></g>`;
  });
  return `<svg class="graph" role="img" aria-label="The flow's steps" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}">
    ${edges.join("")}${nodes.join("")}</svg>`;
}

// Runs per hour over the last 24 hours, as a small bar chart.
function sparkline(hourly) {
  const max = Math.max(1, ...hourly);
  const bars = hourly.map((n, i) => `<rect x="${i * 4}" y="${20 - 20 * n / max}" width="3" height="${Math.max(0.5, 20 * n / max)}"/>`);
  return `<svg class="spark" viewBox="0 0 96 20" width="96" height="20" role="img" aria-label="Runs per hour, last 24 hours">${bars.join("")}</svg>`;
}

// ---- #/ ------------------------------------------------------------------------------------

async function home() {
  const [{ flows, problems }, { runs }] = await Promise.all([api("/api/v1/flows"), api("/api/v1/runs?limit=20")]);
  const hooks = flows.filter(f => f.catch_url);
  const logs = await Promise.all(hooks.map(async f =>
    (await api(`/api/v1/flows/${encodeURIComponent(f.id)}/hooks`)).requests.map(r => ({ ...r, flow: f.id }))));
  const requests = logs.flat().sort((a, b) => String(b.at).localeCompare(String(a.at))).slice(0, 30);
  app.innerHTML = `
    ${problems.length ? `<div class="card problems" role="alert"><strong>Some flow files were refused</strong>
      (the previous revision of each keeps running):
      <ul>${problems.map(p => `<li><code>${esc(p)}</code></li>`).join("")}</ul></div>` : ""}
    <h1>Flows</h1>
    ${flows.length ? `<table><thead><tr><th>Flow</th><th>Trigger</th><th>Last 24 h</th><th>Catch URL</th></tr></thead><tbody>
      ${flows.map(f => {
        const a = f.activity || { last_24h: {}, hourly: [] };
        const n = k => a.last_24h[k] || 0;
        return `<tr data-flow-row="${esc(f.id)}">
        <td><a href="#/flows/${esc(f.id)}">${esc(f.name)}</a><br><small class="muted">${esc(f.id)}${f.enabled ? "" : ` · <span class="failed">paused</span>`}</small></td>
        <td>${esc(f.trigger.type)}${f.trigger.cron ? `<br><small class="muted"><code>${esc(f.trigger.cron)}</code></small>` : ""}</td>
        <td>${sparkline(a.hourly)}<br><small><span class="succeeded">${n("succeeded")} ok</span> ·
          <span class="failed">${n("failed")} failed</span> · <span class="filtered">${n("filtered")} filtered</span></small>
          ${a.last_run ? `<br><small class="muted">last <a href="#/runs/${esc(a.last_run.id)}">${esc(a.last_run.created_at)}</a></small>` : ""}</td>
        <td>${f.catch_url ? `<code>${esc(f.catch_url)}</code> ${copyButton(f.catch_url)}` : ""}</td></tr>`;
      }).join("")}
      </tbody></table>`
    : `<p class="empty">No flows yet: add a flow file (YAML) to the server's flows directory and restart.</p>`}
    <h2>Latest runs</h2>
    ${runsTable(runs)}
    <h2>Catch-hook log</h2>
    <p class="muted">The latest requests to each flow's catch URL, including refused ones and why.</p>
    <table><thead><tr><th>Flow</th><th>Received</th><th>Request</th><th>Outcome</th><th>Reason</th></tr></thead>
    <tbody id="hooks">${requests.map(hookRow).join("")}</tbody></table>
    ${requests.length ? "" : `<p class="empty">No requests yet. Each flow's page has a curl line to try its catch URL.</p>`}`;
}

function runsTable(runs) {
  if (!runs.length) return `<p class="empty">No runs yet.</p>`;
  return `<table><thead><tr><th>Run</th><th>Flow</th><th>Status</th><th>Created</th><th>Reason</th></tr></thead><tbody>
    ${runs.map(runRow).join("")}
    </tbody></table>`;
}

function runRow(r) {
  return `<tr data-run="${esc(r.id)}" data-status="${esc(r.status)}"><td><a href="#/runs/${esc(r.id)}"><code>${esc(r.id)}</code></a></td>
    <td><a href="#/flows/${esc(r.flow_id)}">${esc(r.flow_id)}</a></td>
    <td class="${esc(r.status)}">${esc(r.status)}</td><td>${esc(r.created_at)}</td><td>${esc(r.reason)}</td></tr>`;
}

function hookRow(r) {
  return `<tr data-flow="${esc(r.flow)}" data-outcome="${esc(r.outcome)}"><td>${esc(r.flow)}</td><td>${esc(r.at)}</td>
    <td>${esc(r.method)} · ${esc(r.bytes)} bytes</td><td class="${esc(r.outcome)}">${esc(r.outcome)} (${esc(r.status)})</td>
    <td>${esc(r.reason)} ${esc(r.detail)}</td></tr>`;
}

// ---- #/flows/ID ----------------------------------------------------------------------------

async function flowPage(id) {
  const path = `/api/v1/flows/${encodeURIComponent(id)}`;
  const [flow, { samples }, { requests }, { runs }] = await Promise.all([
    api(path), api(`${path}/samples`), api(`${path}/hooks`),
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
    <div class="graph-box">${graph(flow.steps)}</div>

    <h2>Samples and preview</h2>
    <div class="card">
      ${samples.length
        ? `<div class="row"><label for="sample">Sample</label>
             <select id="sample">${samples.map(s => `<option>${esc(s)}</option>`).join("")}</select>
             <button type="button" class="primary" id="preview">Preview</button></div>`
        : `<p class="empty">No samples yet. Capture the next real events sent to the catch URL below, or
             add <code>samples/${esc(flow.id)}/NAME.json</code> beside the flow file.</p>`}
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

    ${flow.catch_url ? `<h2>Catch-hook log</h2>
      <table><thead><tr><th>Flow</th><th>Received</th><th>Request</th><th>Outcome</th><th>Reason</th></tr></thead>
      <tbody id="hooks">${requests.map(r => hookRow({ ...r, flow: flow.id })).join("")}</tbody></table>` : ""}

    <h2>Recent runs</h2>
    ${runs.length ? runsTable(runs)
      : flow.catch_url ? `<p class="empty">No runs yet. Send an event:<br><code>curl -s '${esc(flow.catch_url)}' -H 'content-type: application/json' -d '{"hello": "world"}'</code></p>`
      : `<p class="empty">No runs yet.</p>`}`;

  document.getElementById("preview")?.addEventListener("click", () =>
    preview(path, document.getElementById("sample").value));
  document.getElementById("capture")?.addEventListener("click", () =>
    capture(path, Number(document.getElementById("capture-count").value)));
  document.getElementById("start-run").addEventListener("click", () =>
    startRun(path, document.getElementById("payload").value));
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
    status.innerHTML = `Started <a href="/api/v1/runs/${esc(started.run_id)}"><code>${esc(started.run_id)}</code></a>`;
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
    for (const u of p.unresolved) document.getElementById(`line-${u.line}`)?.classList.add("flagged");
    out.innerHTML = `
      <p>Preview of <strong>${esc(sample)}</strong>: the run would be <span class="${esc(p.status)}">${esc(p.status)}</span>
        ${p.reason ? `— ${esc(p.reason)}` : ""} <span class="muted">(nothing was sent)</span></p>
      <div id="unresolved">${p.unresolved.length
        ? p.unresolved.map(u => `<p class="flag unresolved" data-line="${u.line}">⚠ line ${u.line}, <code>${esc(u.field)}</code>:
            <code>${esc(u.path)}</code> resolved to nothing${u.suggestion ? ` — did you mean <code>${esc(u.suggestion)}</code>?` : ""}</p>`).join("")
        : `<p class="succeeded">Every expression resolved.</p>`}</div>
      ${p.steps.map(s => `<div class="step" data-status="${esc(s.status)}" data-step="${esc(s.id)}">
          <strong>${esc(s.id)}</strong> <span class="${esc(s.status)}">${esc(s.status)}</span>
          ${s.error ? `<p class="failed">${esc(s.error)}</p>` : ""}
          ${s.input !== null || s.output !== null ? `<div class="steps-grid">
            <div><small class="muted">input</small><pre>${json(s.input)}</pre></div>
            <div><small class="muted">output</small><pre>${json(s.output)}</pre></div></div>` : ""}
        </div>`).join("")}`;
  } catch (e) {
    out.innerHTML = `<p class="failed">${esc(e.message)}</p>`;
  }
}

async function capture(path, count) {
  const status = document.getElementById("capture-status");
  try {
    await api(`${path}/capture`, { method: "POST", body: JSON.stringify({ count }) });
    status.textContent = `Waiting for ${count} event(s)…`;
    for (;;) {
      const c = await api(`${path}/capture`);
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

// ---- #/runs ----------------------------------------------------------------------------------

let liveRuns = null;

async function runsPage(query) {
  const params = new URLSearchParams(query);
  const { flows } = await api("/api/v1/flows");
  const filter = new URLSearchParams();
  for (const k of ["flow", "status", "since", "q"]) if (params.get(k)) filter.set(k, params.get(k));
  filter.set("limit", "50");
  const page = await api(`/api/v1/runs?${filter}`);
  const option = (value, label, selected) =>
    `<option value="${esc(value)}" ${selected ? "selected" : ""}>${esc(label)}</option>`;
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
      <select id="f-since" name="since">${option("", "ever", !params.get("since"))}
        ${["1h", "24h", "7d"].map(d => option(d, `last ${d}`, params.get("since") === d)).join("")}</select>
      <label for="f-q">Payload contains</label>
      <input id="f-q" name="q" type="search" placeholder="an email, an id…" value="${esc(params.get("q") || "")}">
      <button type="submit">Show</button>
    </form>
    <table><thead><tr><th>Run</th><th>Flow</th><th>Status</th><th>Created</th><th>Reason</th></tr></thead>
    <tbody id="runs">${page.runs.map(runRow).join("")}</tbody></table>
    ${page.runs.length ? "" : `<p class="empty" id="no-runs">No runs match.</p>`}
    <p><button type="button" id="more" ${page.next_cursor ? "" : "hidden"}>Load more</button></p>`;
  let cursor = page.next_cursor;
  document.getElementById("run-filters").addEventListener("submit", event => {
    event.preventDefault();
    const chosen = new URLSearchParams();
    for (const [k, v] of new FormData(event.target)) if (v) chosen.set(k, v);
    location.hash = `#/runs?${chosen}`;
  });
  document.getElementById("more").addEventListener("click", async () => {
    filter.set("cursor", cursor);
    const next = await api(`/api/v1/runs?${filter}`);
    document.getElementById("runs").insertAdjacentHTML("beforeend", next.runs.map(runRow).join(""));
    cursor = next.next_cursor;
    document.getElementById("more").hidden = !cursor;
  });
  // New and finished runs appear without a reload.
  const live = new EventSource(`/api/v1/runs/events${params.get("flow") ? `?flow=${encodeURIComponent(params.get("flow"))}` : ""}`);
  liveRuns = live;
  live.addEventListener("run", event => {
    const run = JSON.parse(event.data);
    if (params.get("status") && run.status !== params.get("status")) return;
    if (params.get("q")) return; // live rows carry no payload to search
    document.getElementById("no-runs")?.remove();
    const row = document.querySelector(`tr[data-run="${CSS.escape(run.id)}"]`);
    if (row) row.outerHTML = runRow(run);
    else document.getElementById("runs").insertAdjacentHTML("afterbegin", runRow(run));
  });
}

// ---- #/runs/ID -------------------------------------------------------------------------------

async function runPage(id) {
  const run = await api(`/api/v1/runs/${encodeURIComponent(id)}`);
  const total = Math.max(1, ...run.steps.map(s => s.duration_ms || 0));
  app.innerHTML = `
    <h1>Run <code>${esc(run.id)}</code></h1>
    <p class="row"><span class="${esc(run.status)}" id="run-state"><strong>${esc(run.status)}</strong></span>
      <span class="muted">flow <a href="#/flows/${esc(run.flow_id)}">${esc(run.flow_id)}</a> · revision ${esc(run.revision)}
      · created ${esc(run.created_at)}${run.duration_ms != null ? ` · ${esc(run.duration_ms)} ms` : ""}</span></p>
    ${run.reason ? `<p class="${esc(run.status)}" id="run-reason">${esc(run.reason)}</p>` : ""}
    ${run.replay_of ? `<p>Replay of <a href="#/runs/${esc(run.replay_of)}"><code>${esc(run.replay_of)}</code></a></p>` : ""}
    <div class="row">
      ${run.status === "failed" ? `<button type="button" class="primary" id="retry">Retry from failed step</button>` : ""}
      <button type="button" id="replay">Replay</button>
      <span id="action-status" role="status"></span>
    </div>
    <h2>Graph</h2>
    <div class="graph-box" id="run-graph"></div>
    <h2>Timeline</h2>
    <div class="timeline" aria-label="Step durations">${run.steps.map(s => `
      <div class="bar-row"><span class="bar-label">${esc(s.id)}</span>
        <span class="bar ${esc(s.status)}" style="width:${Math.max(2, 100 * (s.duration_ms || 0) / total)}%"></span>
        <span class="muted">${s.duration_ms != null ? `${esc(s.duration_ms)} ms` : esc(s.status)}</span></div>`).join("")}
    </div>
    <h2>Trigger payload</h2>
    <details open><summary>body</summary><pre id="payload">${json(run.event?.trigger?.body)}</pre></details>
    <details><summary>headers and query</summary><pre>${json({ headers: run.event?.trigger?.headers, query: run.event?.trigger?.query })}</pre></details>
    <h2>Steps</h2>
    ${run.steps.map(s => `<div class="step" data-status="${esc(s.status)}" data-step="${esc(s.id)}">
      <strong>${esc(s.id)}</strong> <span class="muted">${esc(s.kind || "")}</span> <span class="${esc(s.status)}">${esc(s.status)}</span>
      ${s.path ? `<span class="muted">took path <code>${esc(s.path)}</code></span>` : ""}
      ${s.error ? `<p class="failed step-error">${esc(s.error.message)}</p>` : ""}
      ${s.input !== undefined ? `<div class="steps-grid">
        <details><summary>input</summary><pre>${json(s.input)}</pre></details>
        <details ${s.output != null ? "open" : ""}><summary>output</summary><pre class="output">${json(s.output)}</pre></details></div>` : ""}
      ${s.attempts.length ? `<table class="attempts"><thead><tr><th>Attempt</th><th>Started</th><th>Took</th><th>Error</th><th>Next try</th><th>Node</th></tr></thead><tbody>
        ${s.attempts.map(a => `<tr><td>${esc(a.number)}</td><td>${esc(a.started_at)}</td><td>${esc(a.duration_ms)} ms</td>
          <td>${esc(a.error)}</td><td>${esc(a.retry_at)}</td><td>${esc(a.node)}</td></tr>`).join("")}</tbody></table>` : ""}
    </div>`).join("")}`;
  // The graph of the revision the run ran, coloured by its step statuses.
  api(`/api/v1/flows/${encodeURIComponent(run.flow_id)}?revision=${encodeURIComponent(run.revision)}`).then(flow => {
    const statuses = Object.fromEntries(run.steps.map(s => [s.id, s.status]));
    document.getElementById("run-graph").innerHTML = graph(flow.steps, statuses);
  }).catch(() => {});
  const status = document.getElementById("action-status");
  document.getElementById("retry")?.addEventListener("click", async () => {
    if (!confirm("Retry this run from its failed step? Steps that succeeded keep their outputs; the failed step renders its request again and sends it under a new idempotency key.")) return;
    try {
      await api(`/api/v1/runs/${encodeURIComponent(id)}/retry`, { method: "POST", body: "{}" });
      status.textContent = "Retrying…";
      await waitForFinal(id);
      await runPage(id);
    } catch (e) {
      status.innerHTML = `<span class="failed">${esc(e.message)}</span>`;
    }
  });
  document.getElementById("replay").addEventListener("click", async () => {
    if (!confirm("Start a new run of this event on the flow as it is now?")) return;
    try {
      const replay = await api(`/api/v1/runs/${encodeURIComponent(id)}/replay`, { method: "POST", body: JSON.stringify({ revision: "current" }) });
      location.hash = `#/runs/${replay.run_id}`;
    } catch (e) {
      status.innerHTML = `<span class="failed">${esc(e.message)}</span>`;
    }
  });
}

async function waitForFinal(id) {
  for (;;) {
    const run = await api(`/api/v1/runs/${encodeURIComponent(id)}`);
    if (["succeeded", "failed", "filtered"].includes(run.status)) return run;
    await new Promise(r => setTimeout(r, 500));
  }
}

// ---- routing -------------------------------------------------------------------------------

async function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const flow = hash.match(/^\/flows\/([^/?]+)$/);
  const run = hash.match(/^\/runs\/([^/?]+)$/);
  const runs = hash.match(/^\/runs(?:\?(.*))?$/);
  liveRuns?.close();
  liveRuns = null;
  try {
    if (flow) await flowPage(decodeURIComponent(flow[1]));
    else if (run) await runPage(decodeURIComponent(run[1]));
    else if (runs) await runsPage(runs[1] || "");
    else await home();
  } catch (e) {
    if (e instanceof LoginNeeded) {
      setSession(null);
      loginPage();
    }
    else app.innerHTML = `<p class="failed">${esc(e.message)}</p>`;
  }
}

window.addEventListener("hashchange", route);
api("/api/v1/session").then(session => {
  setSession(session.csrf_token);
  route();
});
