// The wsproxy status page: polls /status.json and draws it.
// Every value from the server is written as text (textContent), never as
// markup: paths and close reasons come from clients and backends.
"use strict";

const REFRESH_MS = 2000;
const COLORS = { client: "#0969da", upstream: "#cf222e", proxy: "#8250df" };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(headers, rows, numeric) {
  const head = el("tr", {}, ...headers.map((h) => el("th", {}, h)));
  const body = rows.map((row) =>
    el("tr", row.attrs || {}, ...row.cells.map((cell, i) =>
      el("td", numeric && numeric.includes(i) ? { class: "num" } : {}, cell))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

function bytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1048576).toFixed(1) + " MiB";
}

function age(seconds) {
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.floor(seconds % 60) + " s";
  return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
}

function replace(id, ...nodes) {
  document.getElementById(id).replaceChildren(...nodes);
}

function drawBinding(admin) {
  const note = document.getElementById("binding");
  if (admin.loopback_only) {
    note.className = "note";
    note.textContent = "The admin listener is bound to " + admin.host +
      " (loopback only, the default): this page, /metrics and /status.json are reachable from this " +
      "host only. From elsewhere, use an SSH tunnel (ssh -L PORT:" + admin.host + ":PORT host).";
  } else {
    note.className = "note exposed";
    note.textContent = "The admin listener is bound to " + admin.host +
      ": anyone who can reach this port sees this page, /metrics and /status.json. " +
      "Keep it behind a firewall or a NetworkPolicy.";
  }
}

function drawSessions(sessions, openByRoute, open, perEnd) {
  if (!open && !sessions.length) return replace("sessions", el("p", { class: "muted" }, "None."));
  const byRoute = new Map();
  // Every route with open sessions, listed or not (only the ends are listed).
  for (const route of Object.keys(openByRoute)) byRoute.set(route, []);
  for (const s of sessions) {
    if (!byRoute.has(s.route)) byRoute.set(s.route, []);
    byRoute.get(s.route).push(s);
  }
  const parts = [];
  for (const [route, list] of [...byRoute].sort()) {
    list.sort((a, b) => b.age_seconds - a.age_seconds);
    const withWorker = list.some((s) => s.worker !== undefined);
    const headers = ["request ID", "client", "upstream", "path", "age",
      "bytes →", "bytes ←", "messages →", "messages ←"];
    if (withWorker) headers.push("worker");
    const rows = list.map((s) => {
      const cells = [s.request_id, s.client, s.upstream, s.path, age(s.age_seconds),
        bytes(s.bytes_client_to_upstream), bytes(s.bytes_upstream_to_client),
        s.messages_client_to_upstream, s.messages_upstream_to_client];
      if (withWorker) cells.push(s.worker);
      return { cells, attrs: { "data-request-id": s.request_id } };
    });
    const count = openByRoute[route] !== undefined ? openByRoute[route] : list.length;
    const shown = count > list.length ? " (" + list.length + " shown)" : "";
    parts.push(el("h3", {}, "route " + route + ": " + count + " open" + shown));
    if (rows.length) parts.push(table(headers, rows, [4, 5, 6, 7, 8]));
  }
  if (open > sessions.length) {
    parts.push(el("p", { class: "muted" }, "Listed: the " + perEnd + " newest and the " + perEnd +
      " oldest of " + open + " open sessions (status.json?sessions=N lists up to 1000 of each)."));
  }
  parts.push(el("p", { class: "muted" }, "→ client to upstream, ← upstream to client."));
  replace("sessions", ...parts);
}

function drawBusiest(busiest) {
  if (!busiest.length) return replace("busiest", el("p", { class: "muted" }, "None moved since the last look."));
  const withWorker = busiest.some((s) => s.worker !== undefined);
  const headers = ["request ID", "route", "client", "path", "age", "bytes moved", "in"];
  if (withWorker) headers.push("worker");
  const rows = busiest.map((s) => {
    const cells = [s.request_id, s.route, s.client, s.path, age(s.age_seconds),
      bytes(s.bytes_moved), age(s.over_seconds)];
    if (withWorker) cells.push(s.worker);
    return { cells, attrs: { "data-request-id": s.request_id } };
  });
  replace("busiest", table(headers, rows, [4, 5, 6]),
    el("p", { class: "muted" }, "Most bytes both ways since the previous look (this page's last refresh or a " +
      "Prometheus scrape, whichever came last)."));
}

function drawUpgrades(upgrades) {
  const routes = Object.keys(upgrades).sort();
  if (!routes.length) return replace("upgrades", el("p", { class: "muted" }, "None yet."));
  const results = [...new Set(routes.flatMap((r) => Object.keys(upgrades[r])))].sort();
  const rows = routes.map((r) => ({ cells: [r, ...results.map((x) => upgrades[r][x] || 0)] }));
  replace("upgrades", table(["route", ...results], rows, results.map((_, i) => i + 1)));
}

function drawCloses(closes) {
  const buckets = closes.buckets || [];
  const kinds = ["client", "upstream", "proxy"];
  const max = Math.max(1, ...buckets.map((b) => kinds.reduce((n, k) => n + (b.closed_by[k] || 0), 0)));
  const ns = "http://www.w3.org/2000/svg";
  const width = 600, height = 120, barWidth = width / Math.max(1, buckets.length);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height + 16);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "sessions ended per " + closes.bucket_seconds + " s, by who closed");
  buckets.forEach((b, i) => {
    let y = height;
    for (const kind of kinds) {
      const n = b.closed_by[kind] || 0;
      if (!n) continue;
      const h = (n / max) * (height - 4);
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", i * barWidth + 1);
      rect.setAttribute("y", y - h);
      rect.setAttribute("width", Math.max(1, barWidth - 2));
      rect.setAttribute("height", h);
      rect.setAttribute("fill", COLORS[kind]);
      const title = document.createElementNS(ns, "title");
      title.textContent = new Date(b.start * 1000).toLocaleTimeString() + ": " + n + " closed by " + kind;
      rect.append(title);
      svg.append(rect);
      y -= h;
    }
  });
  const axis = document.createElementNS(ns, "text");
  axis.setAttribute("x", 0);
  axis.setAttribute("y", height + 14);
  axis.setAttribute("font-size", "11");
  axis.textContent = "peak " + max + " per " + closes.bucket_seconds + " s; oldest left, now right";
  svg.append(axis);
  const legend = el("p", { class: "legend" }, ...kinds.map((k) =>
    el("span", {}, el("span", { class: "swatch", style: "background:" + COLORS[k] }), "closed by " + k)));
  const codes = {};
  for (const b of buckets) for (const [code, n] of Object.entries(b.codes)) codes[code] = (codes[code] || 0) + n;
  const codeRows = Object.keys(codes).sort().map((c) => ({ cells: [c, codes[c]] }));
  const codeTable = codeRows.length
    ? table(["close code", "sessions"], codeRows, [1])
    : el("p", { class: "muted" }, "No session ended in this window.");
  replace("closes", svg, legend, codeTable);
}

function drawUpstreams(upstreams) {
  const rows = [];
  for (const group of Object.keys(upstreams).sort()) {
    for (const [server, state] of Object.entries(upstreams[group])) {
      rows.push({ cells: [group, server, el("span", { class: state === "up" ? "up" : "down" }, state)] });
    }
  }
  replace("upstreams", rows.length ? table(["upstream", "server", "state"], rows) : el("p", {}, "None."));
}

function drawEarly(early) {
  if (!early.length) return replace("early", el("p", { class: "muted" }, "None."));
  replace("early", ...early.map((e) => el("div", { class: "early", "data-request-id": e.request_id },
    el("div", {}, el("strong", {}, e.at + " route " + e.route), " ",
      "closed by " + e.closed_by + " (" + e.how + ", code " + e.code + ") after " +
      e.duration_ms + " ms; path " + e.path + "; client " + e.client + "; upstream " + e.upstream +
      (e.worker !== undefined ? "; worker " + e.worker : "") + "; request ID " + e.request_id),
    el("p", {}, e.diagnosis || ""),
    el("div", {}, "Test that server's handshakes: ", el("code", { class: "probe" }, e.probe || "")))));
}

async function refresh() {
  try {
    const response = await fetch("status.json", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const status = await response.json();
    drawBinding(status.admin || { host: "?", loopback_only: false });
    const listed = status.active_sessions || [];
    const open = status.open_sessions !== undefined ? status.open_sessions : listed.length;
    drawSessions(listed, status.open_by_route || {}, open, status.sessions_listed_per_end || 0);
    drawBusiest(status.busiest_sessions || []);
    drawUpgrades(status.upgrades || {});
    drawCloses(status.closes || { buckets: [], bucket_seconds: 10 });
    drawUpstreams(status.upstreams || {});
    drawEarly(status.recent_early_closes || []);
    const workers = status.workers ? "; " + status.workers.length + " workers" : "";
    document.getElementById("summary").textContent =
      (status.draining ? "DRAINING; " : "") + open + " open sessions" + workers + "; updated " + new Date().toLocaleTimeString() +
      ", every " + REFRESH_MS / 1000 + " s";
    document.getElementById("error").textContent = "";
    document.body.dataset.updated = String(Date.now());
  } catch (error) {
    document.getElementById("error").textContent = "cannot read status.json: " + error.message;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
