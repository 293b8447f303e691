"""`GET /dashboard`: a self-contained page that renders `GET /admin/status`.

The page holds no data of its own: it fetches the status document (the same one
`llm-proxy status` prints) every two seconds and renders it, so the two can never
disagree. It needs no build step and loads nothing from outside the proxy. When the
proxy has an admin key, the page asks for it once and keeps it in the tab's session
storage only.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["routes"]

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>llm-proxy dashboard</title>
<style>
  :root { --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --muted: #57606a; }
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1f2328; }
  h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
  h2 { font-size: 1.05rem; margin: 1.5rem 0 .4rem; }
  .meta { color: var(--muted); }
  table { border-collapse: collapse; min-width: 60%; }
  th, td { text-align: left; padding: .25rem .8rem .25rem 0; border-bottom: 1px solid #d0d7de; }
  th { font-weight: 600; color: var(--muted); }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .closed, .yes, .healthy { color: var(--ok); }
  .half_open, .cooling { color: var(--warn); }
  .open, .no, .unhealthy, .error { color: var(--bad); font-weight: 600; }
  #error { margin: .8rem 0; }
  form { margin: 1rem 0; }
</style>
</head>
<body>
<h1>llm-proxy</h1>
<div class="meta">config version <span id="version">?</span>, status generated at
  <span id="generated">?</span> (refreshes every 2 s)</div>
<div id="error" class="error" role="alert"></div>
<form id="login" hidden>
  <label>Admin key <input id="key" type="password" autocomplete="off"></label>
  <button type="submit">Show status</button>
</form>
<h2>Model groups</h2>
<table id="groups"><thead><tr><th>group</th><th>strategy</th><th>usable</th><th>deployments</th></tr></thead>
<tbody></tbody></table>
<h2>Deployments</h2>
<table id="deployments"><thead><tr><th>deployment</th><th>breaker</th><th>failures</th><th>cooldown</th>
<th>health</th><th>usable</th><th>latency (ms)</th><th>in flight</th></tr></thead><tbody></tbody></table>
<h2>Clients</h2>
<table id="clients"><thead><tr><th>client</th><th>in flight</th><th>requests today</th>
<th>tokens today</th><th>limits</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (cls) td.className = cls;
  return td;
}
function fill(id, rows) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    tr.append(...cells);
    return tr;
  }));
}
function render(doc) {
  $("version").textContent = doc.config_version;
  $("generated").textContent = doc.generated_at;
  fill("groups", Object.entries(doc.groups || {}).map(([name, g]) => [
    cell(name), cell(g.strategy), cell(g.usable, g.usable ? "num yes" : "num no"),
    cell((g.deployments || []).join(", ")),
  ]));
  fill("deployments", Object.entries(doc.deployments || {}).map(([id, d]) => {
    const state = d.breaker.state;
    const cooling = d.cooldown ? `${d.cooldown.left_s.toFixed(0)} s (${d.cooldown.reason})` : "-";
    const row = [
      cell(id), cell(d.breaker.drained ? `${state} (drained)` : state, state), cell(d.breaker.failures, "num"), cell(cooling, d.cooldown ? "cooling" : ""),
      cell(d.healthy ? "healthy" : "unhealthy", d.healthy ? "healthy" : "unhealthy"),
      cell(d.usable ? "yes" : "no", d.usable ? "yes" : "no"), cell(d.latency_ewma_ms, "num"),
      cell(d.in_flight, "num"),
    ];
    row[0].dataset.deployment = id;
    row[1].dataset.breaker = state;
    return row;
  }));
  if (doc.open) {
    fill("clients", [[cell("none: the proxy is open (no client keys configured)")]]);
    return;
  }
  fill("clients", Object.entries(doc.clients || {}).map(([name, c]) => {
    const today = c.today || {};
    const tokens = (today.prompt_tokens || 0) + (today.completion_tokens || 0);
    const limits = Object.entries(c.limits || {}).map(([k, v]) => `${k}: ${v.summary}`).join("; ");
    return [cell(name), cell(c.in_flight, "num"), cell(today.requests || 0, "num"), cell(tokens, "num"),
            cell(limits || "none")];
  }));
}
async function refresh() {
  const headers = {};
  const key = sessionStorage.getItem("llmproxy-admin-key");
  if (key) headers["Authorization"] = `Bearer ${key}`;
  try {
    const resp = await fetch("/admin/status", {headers, cache: "no-store"});
    if (resp.status === 401 || resp.status === 403) {
      $("login").hidden = false;
      $("error").textContent = "The admin key is needed to show the proxy's status.";
      return;
    }
    const doc = await resp.json();
    if (!resp.ok) throw new Error((doc.error && doc.error.message) || resp.statusText);
    $("login").hidden = true;
    $("error").textContent = "";
    render(doc);
    document.body.dataset.generatedAt = doc.generated_at;
  } catch (err) {
    $("error").textContent = `Cannot load /admin/status: ${err.message}`;
  }
}
$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("llmproxy-admin-key", $("key").value);
  refresh();
});
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(
        text=_PAGE,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self' 'unsafe-inline'",
        },
    )


def routes() -> list[web.RouteDef]:
    return [web.get("/dashboard", dashboard)]
