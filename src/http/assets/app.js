// stockd dashboard: one Server-Sent Events stream (/api/v1/events, read with fetch so it can
// carry the API key) keeps the health panel, the stock board and the change list live; after
// each update the open alerts, the sales channels and the returns are fetched again, and the
// SKU detail when it is open. Every value is written with textContent (never as HTML). No
// dependencies, works offline.
//
// With authentication on, the page asks for an API key (readonly is enough to watch; the
// adjustment form needs ops) and keeps it in this tab's sessionStorage only.
"use strict";

const KEY_ITEM = "stockd-api-key";

// fetch with the API key; a 401 asks for a (new) key.
async function api(path, init = {}) {
  const key = sessionStorage.getItem(KEY_ITEM);
  const headers = new Headers(init.headers || {});
  if (key) headers.set("authorization", `Bearer ${key}`);
  const response = await fetch(path, { ...init, headers });
  if (response.status === 401) askForKey((await response.clone().json()).message);
  return response;
}

function askForKey(message) {
  $("login").hidden = false;
  $("login-message").textContent = message || "";
  $("live").classList.remove("on");
  $("live-text").textContent = "no key";
}

const $ = (id) => document.getElementById(id);
const view = { q: "", sort: "activity", paused: false, availableMax: "", after: "", pages: [] };
const opsHistory = [];
let stream = null;
let detailSku = null;

function fmtInt(n) {
  return n == null ? "-" : Number(n).toLocaleString("en-US");
}

function fmtBytes(n) {
  if (n == null) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function fmtDuration(s) {
  if (s == null) return "-";
  if (s < 1) return "now";
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d`;
}

function fmtMs(v) {
  return v == null ? "-" : v < 1 ? v.toFixed(2) : v.toFixed(1);
}

function fmtTime(ms) {
  return new Date(ms).toLocaleTimeString("en-GB");
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text != null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

// A small line chart of values, scaled to its own maximum.
function sparkline(svg, values) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  if (!values || values.length < 2) return;
  const max = Math.max(...values, 1e-9);
  const step = 120 / (values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(23 - (v / max) * 22).toFixed(1)}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
}

function trendSvg(values) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 120 24");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "trend");
  sparkline(svg, values);
  return svg;
}

function renderStatus(s) {
  const state = $("state");
  state.textContent = s.state === "ok" ? "accepting writes" : `read-only: ${s.state_detail || ""}`;
  state.className = `badge ${s.state === "ok" ? "ok" : "bad"}`;
  $("version").textContent = `v${s.version}`;
  $("uptime").textContent = `up ${fmtDuration(s.uptime_s)}`;
  $("ops").textContent = fmtInt(Math.round(s.ops_per_s));
  opsHistory.push(s.ops_per_s);
  if (opsHistory.length > 60) opsHistory.shift();
  sparkline($("ops-trend"), opsHistory);
  $("p50").textContent = fmtMs(s.latency_p50_ms);
  $("p99").textContent = fmtMs(s.latency_p99_ms);
  $("connections").textContent = fmtInt(s.connections);
  $("holds-open").textContent = fmtInt(s.holds_open);
  $("held-units").textContent = fmtInt(s.held_units);
  $("skus").textContent = fmtInt(s.skus);
  $("paused-skus").textContent = fmtInt(s.paused_skus);
  $("active-skus").textContent = fmtInt(s.active_skus);
  $("lsn").textContent = fmtInt(s.wal.durable_lsn);
  $("wal-rate").textContent = `${fmtBytes(s.wal.bytes_per_s)}/s`;
  $("fsyncs").textContent = fmtInt(Math.round(s.wal.fsyncs_per_s));
  $("fsync-avg").textContent = s.wal.fsync_avg_ms == null ? "-" : `${fmtMs(s.wal.fsync_avg_ms)} ms`;
  $("fsync-mode").textContent = s.wal.fsync;
  $("disk").textContent = fmtBytes(s.disk_free_bytes);
  $("snapshot-age").textContent = fmtDuration(s.snapshot_age_s);
  $("snapshot-lsn").textContent = fmtInt(s.snapshot_lsn);
}

function stateOf(row) {
  if (row.paused) return ["paused", "bad"];
  if (row.available === 0) return ["sold out", "bad"];
  if (row.activity && row.activity.sells_out_in_s != null && row.activity.sells_out_in_s < 600) {
    return ["selling fast", "warn"];
  }
  return ["on sale", "ok"];
}

const FIELDS = ["sku", "on_hand", "available", "unshipped", "safety_stock", "state", "rate", "trend", "sells_out"];
const NUMERIC = new Set(["on_hand", "available", "unshipped", "safety_stock", "rate"]);

// A board row for a SKU, created once and then updated in place, so that rows keep their
// identity (focus, hover, a pending click) across live updates.
function boardRow(sku) {
  const tr = el("tr");
  tr.dataset.sku = sku;
  tr.tabIndex = 0;
  for (const field of FIELDS) {
    const td = el("td", null, field === "sku" ? "sku" : NUMERIC.has(field) ? "num" : null);
    td.dataset.field = field;
    tr.appendChild(td);
  }
  tr.addEventListener("click", () => openDetail(sku));
  tr.addEventListener("keydown", (e) => { if (e.key === "Enter") openDetail(sku); });
  return tr;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function renderBoard(board) {
  const body = $("rows");
  const rows = board ? board.rows : [];
  const existing = new Map([...body.children].map((tr) => [tr.dataset.sku, tr]));
  const ordered = [];
  for (const row of rows) {
    const tr = existing.get(row.sku) || boardRow(row.sku);
    existing.delete(row.sku);
    const cells = Object.fromEntries([...tr.children].map((td) => [td.dataset.field, td]));
    setText(cells.sku, row.sku);
    setText(cells.on_hand, fmtInt(row.on_hand));
    setText(cells.available, fmtInt(row.available));
    setText(cells.unshipped, fmtInt(row.unshipped));
    cells.unshipped.title = `${fmtInt(row.held)} held + ${fmtInt(row.committed)} committed`;
    setText(cells.safety_stock, fmtInt(row.safety_stock));
    const [label, tone] = stateOf(row);
    if (cells.state.textContent !== label) cells.state.replaceChildren(el("span", label, `badge ${tone}`));
    const a = row.activity;
    setText(cells.rate, a ? `${fmtInt(Math.round(a.rate_per_min))}/min` : "-");
    cells.trend.replaceChildren(trendSvg(a ? a.trend : []));
    const out = a && a.sells_out_in_s != null
      ? (a.sells_out_in_s === 0 ? "sold out" : `in ${fmtDuration(a.sells_out_in_s)}`)
      : "-";
    setText(cells.sells_out, out);
    ordered.push(tr);
  }
  for (const gone of existing.values()) gone.remove();
  // Re-append only when the order changed.
  const current = [...body.children];
  if (current.length !== ordered.length || ordered.some((tr, i) => current[i] !== tr)) {
    body.replaceChildren(...ordered);
  }
  $("empty").hidden = rows.length > 0;
  $("matched").textContent = board ? `${fmtInt(board.matched)} matching` : "";
  view.nextAfter = board ? board.next_after : null;
  $("next").disabled = !view.nextAfter;
  $("first").disabled = view.after === "";
  $("next").hidden = $("first").hidden = view.sort !== "id";
}

function renderChanges(list, changes) {
  const fragment = document.createDocumentFragment();
  for (const c of changes || []) {
    const li = el("li");
    li.appendChild(el("time", fmtTime(c.at_ms)));
    const state = (v) => (v && v.state) || "new";
    const what = c.action === "set_safety_stock"
      ? `safety stock ${c.before.safety_stock} → ${c.after.safety_stock}`
      : c.action === "delete_sku"
        ? `deleted (had ${c.before.on_hand} on hand)`
      : c.action.startsWith("ticket_") || c.action === "parcel_scan"
        ? `${c.action.replace("_", " ")} ${state(c.before)} → ${state(c.after)}`
        : c.before && c.after && "on_hand" in c.before
          ? `on hand ${c.before.on_hand} → ${c.after.on_hand}`
          : c.action.replaceAll("_", " ");
    li.appendChild(el("span", ` ${c.target}: ${what} by ${c.actor} (${c.reason})`));
    fragment.appendChild(li);
  }
  list.replaceChildren(fragment);
}

function query() {
  const params = new URLSearchParams({ sort: view.sort, limit: "50" });
  if (view.q) params.set("q", view.q);
  if (view.paused) params.set("paused", "true");
  if (view.availableMax !== "") params.set("available_max", view.availableMax);
  if (view.sort === "id" && view.after) params.set("after", view.after);
  return params.toString();
}

function onUpdate(data) {
  $("live").classList.add("on");
  $("live-text").textContent = "live";
  renderStatus(data.status);
  renderBoard(data.board);
  renderChanges($("changes"), data.changes);
  refreshReturns();
  refreshOperations();
  if (detailSku) refreshDetail();
}

// Reads the event stream: blocks of "event: NAME" / "data: JSON" lines, separated by a blank
// line. Reconnects after an error unless a newer stream replaced this one.
async function openStream() {
  if (stream) stream.abort();
  const controller = new AbortController();
  stream = controller;
  try {
    const response = await api(`/api/v1/events?${query()}`, { signal: controller.signal });
    if (response.status === 401) return;
    if (!response.ok) throw new Error(`status ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        let data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (name === "update" && data) onUpdate(JSON.parse(data));
      }
    }
  } catch (e) {
    if (controller.signal.aborted) return;
  }
  if (stream !== controller) return;
  $("live").classList.remove("on");
  $("live-text").textContent = "reconnecting";
  setTimeout(() => { if (stream === controller) openStream(); }, 2000);
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_ITEM, new FormData(event.target).get("key").trim());
  event.target.reset();
  $("login").hidden = true;
  openStream();
});

// Open return tickets, overdue first, and the parcels no ticket matched.
let returnsBusy = false;
async function refreshReturns() {
  if (returnsBusy) return;
  returnsBusy = true;
  try {
    const [tickets, parcels] = await Promise.all([
      api("/api/v1/tickets?open=true&limit=200").then((r) => r.json()),
      api("/api/v1/aftersales/parcels").then((r) => r.json()),
    ]);
    const list = tickets.tickets || [];
    const overdue = list.filter((t) => t.overdue);
    const counts = {};
    for (const t of list) counts[t.state] = (counts[t.state] || 0) + 1;
    const states = Object.entries(counts).map(([s, n]) => `${n} ${s.replace("_", " ")}`).join(", ");
    setText($("returns-summary"),
      `${fmtInt(tickets.matched || 0)} open tickets${states ? ` (${states})` : ""}; ` +
      `${fmtInt(overdue.length)} overdue; ${fmtInt((parcels.parcels || []).length)} unmatched parcels`);
    const rows = document.createDocumentFragment();
    for (const t of [...overdue, ...list.filter((t) => !t.overdue)].slice(0, 50)) {
      const tr = el("tr");
      tr.dataset.ticket = t.id;
      const since = t.history.length ? t.history[t.history.length - 1].at_ms : t.created_at_ms;
      tr.append(el("td", t.id), el("td", t.kind.replace("_", " ")), el("td", t.state.replace("_", " ")),
        el("td", t.order), el("td", fmtTime(since)));
      const sla = el("td");
      sla.appendChild(t.overdue
        ? el("span", `overdue (${t.overdue.stage})`, "badge bad")
        : el("span", "on time", "badge ok"));
      tr.appendChild(sla);
      rows.appendChild(tr);
    }
    $("tickets").replaceChildren(rows);
  } catch (e) {
    setText($("returns-summary"), `returns unavailable: ${e}`);
  } finally {
    returnsBusy = false;
  }
}

// A channel's state at a glance: "failing" while pulls, the token or stock pushes fail,
// "token expiring" within five minutes of its expiry (tokens are refreshed ten minutes ahead
// by default, so only one that could not be refreshed gets there), otherwise "ok"; and the
// first problem.
const TOKEN_WARN_MS = 5 * 60 * 1000;
function channelHealth(c, now) {
  const pullError = c.failed_pulls > 0 && c.last_pull ? c.last_pull.error : null;
  const problem = c.token_error || pullError || c.push_error || "";
  if (c.failed_pulls > 0 || c.token_error || c.push_error) return { state: "failing", cls: "bad", problem };
  if (c.token_expires_at_ms != null && c.token_expires_at_ms - now < TOKEN_WARN_MS) {
    return { state: "token expiring", cls: "warn", problem };
  }
  return { state: "ok", cls: "ok", problem };
}

function channelRow(c, now) {
  const health = channelHealth(c, now);
  const tr = el("tr");
  tr.dataset.channel = c.name;
  const badge = el("td");
  badge.appendChild(el("span", health.state, `badge ${health.cls}`));
  const pull = !c.pull_enabled ? "off"
    : !c.last_pull ? "not yet"
    : `${fmtTime(c.last_pull.started_ms)} ${c.last_pull.status}` +
      (c.failed_pulls > 0 ? ` (${c.failed_pulls} failed in a row)` : "");
  const token = c.token_expires_at_ms == null ? "-"
    : c.token_expires_at_ms <= now ? "expired"
    : `expires in ${fmtDuration((c.token_expires_at_ms - now) / 1000)}`;
  const push = !c.push_enabled ? "off"
    : `${c.last_push_ms ? fmtTime(c.last_push_ms) : "not yet"}, ${fmtInt(c.push_pending_skus)} SKUs pending`;
  tr.append(el("td", c.name), badge, el("td", pull), el("td", fmtInt(c.orders_applied), "num"),
    el("td", fmtInt(c.orders_rejected), "num"), el("td", token), el("td", fmtInt(c.backlog), "num"),
    el("td", push), el("td", health.problem, "wrap"));
  return tr;
}

function alertRow(a) {
  const tr = el("tr");
  tr.dataset.alert = a.id;
  tr.dataset.rule = a.rule;
  tr.dataset.subject = a.subject;
  const severity = el("td");
  severity.appendChild(el("span", a.severity, `badge ${a.severity === "critical" ? "bad" : "warn"}`));
  const state = el("td", a.state === "acknowledged" ? `acknowledged by ${a.acknowledged_by}` : a.state);
  const action = el("td");
  if (a.state === "firing") {
    const button = el("button", "Acknowledge");
    button.type = "button";
    button.addEventListener("click", () => acknowledge(a.id));
    action.appendChild(button);
  }
  tr.append(severity, el("td", a.rule.replaceAll("_", " ")), el("td", a.subject),
    el("td", a.message, "wrap"), el("td", fmtTime(a.fired_ms)), state, action);
  return tr;
}

function showTable(rows, body, empty) {
  $(body).replaceChildren(rows);
  $(body).parentElement.hidden = !$(body).children.length;
  $(empty).hidden = $(body).children.length > 0;
}

function approvalRow(p, now) {
  const tr = el("tr");
  tr.dataset.approval = p.id;
  const changes = el("td", p.action.replaceAll("_", " "));
  changes.title = p.changes.join("\n");
  const actions = el("td");
  for (const [label, decision] of [["Approve", "approve"], ["Reject", "reject"]]) {
    const button = el("button", label);
    button.type = "button";
    button.dataset.decision = decision;
    button.addEventListener("click", () => decide(p.id, decision));
    actions.appendChild(button);
  }
  tr.append(el("td", p.id), changes, el("td", p.target), el("td", p.why, "wrap"),
    el("td", p.reason, "wrap"), el("td", p.requested_name),
    el("td", `in ${fmtDuration(Math.max(0, p.expires_ms - now) / 1000)}`), actions);
  return tr;
}

// Open alerts, changes waiting for a second admin (for keys that may see them) and the sales
// channels' sync state, with their summary cards.
let operationsBusy = false;
let alertsShown = null;
let approvalsShown = null;
async function refreshOperations() {
  if (operationsBusy) return;
  operationsBusy = true;
  try {
    const [alerts, channels, approvals] = await Promise.all([
      api("/api/v1/alerts").then((r) => r.json()),
      api("/api/v1/channels").then((r) => r.json()),
      api("/api/v1/approvals").then((r) => (r.ok ? r.json() : null)),
    ]);
    // Keys below the ops role may not list approvals: the panel stays hidden for them.
    $("approvals").hidden = approvals === null;
    const pending = approvals ? approvals.pending : [];
    // Redrawn when the list changes or a minute passes (the time left to expiry).
    const minute = Math.floor(Date.now() / 60000);
    const shownApprovals = JSON.stringify([minute, pending.map((p) => p.id)]);
    if (shownApprovals !== approvalsShown) {
      approvalsShown = shownApprovals;
      const rows = document.createDocumentFragment();
      for (const p of pending) rows.appendChild(approvalRow(p, Date.now()));
      showTable(rows, "approval-rows", "approvals-empty");
    }
    const now = Date.now();
    const open = alerts.alerts || [];
    // Redrawn only when they changed, so a row is not replaced under a click.
    const shown = JSON.stringify(open);
    if (shown !== alertsShown) {
      alertsShown = shown;
      const alertRows = document.createDocumentFragment();
      for (const a of open) alertRows.appendChild(alertRow(a));
      showTable(alertRows, "alert-rows", "alerts-empty");
    }
    const critical = open.filter((a) => a.severity === "critical").length;
    setText($("alerts-open"), fmtInt(open.length));
    $("alerts-open").className = critical ? "bad-text" : "";
    setText($("alerts-critical"), fmtInt(critical));
    setText($("alerts-acked"), fmtInt(open.filter((a) => a.state === "acknowledged").length));

    const list = channels.channels || [];
    const channelRows = document.createDocumentFragment();
    for (const c of list) channelRows.appendChild(channelRow(c, now));
    showTable(channelRows, "channel-rows", "channels-empty");
    const failing = list.filter((c) => channelHealth(c, now).state === "failing").length;
    setText($("channels-health"),
      !list.length ? "none" : failing ? `${failing} of ${list.length} failing` : `${list.length} ok`);
    $("channels-health").className = failing ? "bad-text" : "";
    setText($("channels-backlog"), fmtInt(list.reduce((sum, c) => sum + c.backlog, 0)));
  } catch (e) {
    setText($("alerts-open"), "?");
    setText($("channels-health"), "?");
  } finally {
    operationsBusy = false;
  }
}

// POSTs {actor} to `path` in the name typed in `actorInput`; returns the reply, or null when no
// name was typed (and says so in `result`).
async function postAs(path, actorInput, result, what) {
  const actor = $(actorInput).value.trim();
  if (!actor) {
    setText($(result), `enter your name to ${what}`);
    $(actorInput).focus();
    return null;
  }
  const response = await api(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ actor }),
  });
  return { response, body: await response.json() };
}

async function acknowledge(id) {
  const done = await postAs(`/api/v1/alerts/${id}/ack`, "ack-actor", "ack-result", "acknowledge");
  if (!done) return;
  setText($("ack-result"), done.response.ok
    ? `acknowledged alert ${id}`
    : done.response.status === 403 ? "this key may not acknowledge alerts (the ops role can)"
    : `not acknowledged: ${done.body.message}`);
  refreshOperations();
}

async function decide(id, decision) {
  const path = `/api/v1/approvals/${id}/${decision}`;
  const done = await postAs(path, "decide-actor", "decide-result", decision);
  if (!done) return;
  const { response, body } = done;
  setText($("decide-result"), !response.ok ? `not ${decision}d: ${body.message}`
    : decision === "approve"
      ? `approved ${id}: ${body.result.applied} applied, ${body.result.refused} refused`
      : `rejected ${id}`);
  refreshOperations();
}

async function refreshDetail() {
  const sku = detailSku;
  const response = await api(`/api/v1/skus/${encodeURIComponent(sku)}?holds_limit=50`);
  const data = await response.json();
  if (sku !== detailSku) return;
  if (!response.ok) {
    $("detail-counters").textContent = data.message;
    return;
  }
  const counters = $("detail-counters");
  const fragment = document.createDocumentFragment();
  for (const [name, key] of [["On hand", "on_hand"], ["Available", "available"], ["Held", "held"],
    ["Committed", "committed"], ["Safety stock", "safety_stock"], ["Damaged (returns)", "damaged"]]) {
    const box = el("div", null, "counter");
    box.appendChild(el("span", name, "muted"));
    const value = el("strong", fmtInt(data[key]));
    value.dataset.field = key;
    box.appendChild(value);
    fragment.appendChild(box);
  }
  counters.replaceChildren(fragment);
  const limits = data.limits;
  $("detail-limits").hidden = !limits;
  if (limits) {
    const perBuyer = limits.max_per_buyer ? `at most ${fmtInt(limits.max_per_buyer)} per buyer` : "no per-buyer limit";
    $("detail-limits-summary").textContent =
      `${perBuyer}; pool ${fmtInt(limits.pool_used)} of ${fmtInt(limits.pool)} used` +
      (limits.shared_pool ? " (shared with channels past their quota)" : "");
    const quotas = document.createDocumentFragment();
    for (const q of limits.quotas) {
      const tr = el("tr");
      tr.dataset.channel = q.channel;
      tr.append(el("td", q.channel), el("td", q.units != null ? fmtInt(q.units) : `${q.percent}%`, "num"),
        el("td", fmtInt(q.allocation), "num"), el("td", fmtInt(q.used), "num"));
      quotas.appendChild(tr);
    }
    $("detail-quotas").replaceChildren(quotas);
  }
  const supply = data.supply;
  $("detail-supply").hidden = !supply;
  if (supply) {
    $("detail-supply-summary").textContent = supply.preorder_max
      ? `preorders: ${fmtInt(supply.preordered)} of at most ${fmtInt(supply.preorder_max)} sold against incoming stock`
      : "no preorders: incoming stock is shown, not sold";
    const rows = document.createDocumentFragment();
    for (const l of supply.locations) {
      const tr = el("tr");
      tr.dataset.location = l.location;
      tr.append(el("td", l.location), el("td", fmtInt(l.priority), "num"), el("td", fmtInt(l.on_hand), "num"),
        el("td", fmtInt(l.held), "num"), el("td", fmtInt(l.committed), "num"),
        el("td", fmtInt(l.incoming), "num"), el("td", fmtInt(l.available), "num"));
      rows.appendChild(tr);
    }
    $("detail-locations").replaceChildren(rows);
    const deliveries = document.createDocumentFragment();
    for (const i of supply.incoming) {
      const tr = el("tr");
      tr.append(el("td", i.reference), el("td", i.location || "-"), el("td", fmtInt(i.qty), "num"),
        el("td", i.eta_ms ? fmtTime(i.eta_ms) : "-"));
      deliveries.appendChild(tr);
    }
    $("detail-incoming").replaceChildren(deliveries);
  }
  $("detail-holds-count").textContent = fmtInt(data.holds_count);
  const holds = document.createDocumentFragment();
  for (const h of data.holds) {
    const tr = el("tr");
    tr.append(el("td", h.reservation), el("td", fmtInt(h.qty), "num"), el("td", h.channel || "-"),
      el("td", h.customer || "-"), el("td", fmtTime(h.expires_at_ms)));
    holds.appendChild(tr);
  }
  $("detail-holds").replaceChildren(holds);
  renderChanges($("detail-changes"), data.changes);
}

function openDetail(sku) {
  detailSku = sku;
  $("detail-sku").textContent = sku;
  $("adjust-result").textContent = "";
  $("detail").hidden = false;
  refreshDetail();
}

$("detail-close").addEventListener("click", () => {
  detailSku = null;
  $("detail").hidden = true;
});

$("adjust").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const body = { delta: Number(form.get("delta")), reason: form.get("reason"), actor: form.get("actor") };
  const response = await api(`/api/v1/skus/${encodeURIComponent(detailSku)}/adjustments`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await response.json();
  $("adjust-result").textContent = response.ok
    ? `done: on hand now ${fmtInt(data.on_hand)} (audit #${data.audit_seq})`
    : `refused: ${data.message}`;
  refreshDetail();
});

let searchTimer = null;
$("search").addEventListener("input", (event) => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    view.q = event.target.value.trim();
    view.after = "";
    view.pages = [];
    openStream();
  }, 250);
});
$("sort").addEventListener("change", (event) => {
  view.sort = event.target.value;
  view.after = "";
  view.pages = [];
  openStream();
});
$("paused").addEventListener("change", (event) => {
  view.paused = event.target.checked;
  view.after = "";
  openStream();
});
$("available-max").addEventListener("change", (event) => {
  view.availableMax = event.target.value;
  view.after = "";
  openStream();
});
$("next").addEventListener("click", () => {
  if (!view.nextAfter) return;
  view.pages.push(view.after);
  view.after = view.nextAfter;
  openStream();
});
$("first").addEventListener("click", () => {
  view.after = "";
  view.pages = [];
  openStream();
});

openStream();
