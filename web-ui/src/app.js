// hookflow's browser UI: a small single-page app over the REST API (/api/v1), routed by the URL
// hash: #/ (flows and latest activity) and #/flows/ID (one flow: its source, samples with a
// mapping preview, sample capture, catch-hook log and recent runs).
"use strict";

const esc = s => String(s ?? "").replace(/[&<>"']/g, c =>
  ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const json = v => esc(JSON.stringify(v, null, 2));
const app = document.getElementById("app");

async function api(path, options = {}) {
  const init = { ...options, headers: { "content-type": "application/json", ...(options.headers || {}) } };
  const response = await fetch(path, init);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
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
    ${flows.length ? `<table><thead><tr><th>Flow</th><th>Trigger</th><th>Catch URL</th></tr></thead><tbody>
      ${flows.map(f => `<tr>
        <td><a href="#/flows/${esc(f.id)}">${esc(f.name)}</a><br><small class="muted">${esc(f.id)}</small></td>
        <td>${esc(f.trigger.type)}</td>
        <td>${f.catch_url ? `<code>${esc(f.catch_url)}</code> ${copyButton(f.catch_url)}` : ""}</td></tr>`).join("")}
      </tbody></table>`
    : `<p class="empty">No flows yet: add a flow file (YAML) to the server's flows directory and restart.</p>`}
    <h2>Latest runs</h2>
    ${runsTable(runs)}
    <h2>Catch-hook log</h2>
    <p class="muted">The latest requests to each flow's catch URL, including refused ones and why.</p>
    <table><thead><tr><th>Flow</th><th>Received</th><th>Request</th><th>Outcome</th><th>Reason</th></tr></thead>
    <tbody id="hooks">${requests.map(hookRow).join("")}</tbody></table>`;
}

function runsTable(runs) {
  if (!runs.length) return `<p class="empty">No runs yet.</p>`;
  return `<table><thead><tr><th>Run</th><th>Flow</th><th>Status</th><th>Created</th><th>Reason</th></tr></thead><tbody>
    ${runs.map(r => `<tr><td><a href="/api/v1/runs/${esc(r.id)}"><code>${esc(r.id)}</code></a></td><td>${esc(r.flow_id)}</td>
      <td class="${esc(r.status)}">${esc(r.status)}</td><td>${esc(r.created_at)}</td><td>${esc(r.reason)}</td></tr>`).join("")}
    </tbody></table>`;
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
    <p class="muted">${esc(flow.id)} · revision ${esc(flow.revision)} · ${esc(flow.file)}</p>
    ${flow.description ? `<p>${esc(flow.description)}</p>` : ""}
    ${flow.catch_url ? `<p class="row"><strong>Catch URL</strong> <code>${esc(flow.catch_url)}</code> ${copyButton(flow.catch_url)}</p>` : ""}

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
      ${p.steps.map(s => `<div class="step ${esc(s.status)}" data-step="${esc(s.id)}">
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

// ---- routing -------------------------------------------------------------------------------

async function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const flow = hash.match(/^\/flows\/([^/]+)$/);
  try {
    if (flow) await flowPage(decodeURIComponent(flow[1]));
    else await home();
  } catch (e) {
    app.innerHTML = `<p class="failed">${esc(e.message)}</p>`;
  }
}

window.addEventListener("hashchange", route);
route();
