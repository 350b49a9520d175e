// The unitable web console: one page, hash routes, data from the JSON API under /api/v1/.
// Every value from the server is put into the page as text (never as HTML).
"use strict";

const TOKEN_KEY = "unitable.token";
const POLL_MS = 2000;
const CHART_SAMPLES = 600;

let stopPolling = () => {};

// ---- API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const err = (body && body.error) || {};
    throw new ApiError(response.status, err.code || String(response.status), err.message || response.statusText);
  }
  return body;
}

// ---- DOM helpers -------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const svgNs = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const node = document.createElementNS(svgNs, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

function text(v) {
  return v === undefined || v === null ? "–" : String(v);
}

function time(ms) {
  if (!ms) return "–";
  return new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC");
}

function duration(ms) {
  if (ms === undefined || ms === null) return "–";
  if (ms < 1000) return ms + " ms";
  if (ms < 120000) return (ms / 1000).toFixed(1) + " s";
  return (ms / 60000).toFixed(1) + " min";
}

function bytes(n) {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return (i === 0 ? v : v.toFixed(1)) + " " + units[i];
}

function offsetsText(offsets) {
  if (!offsets) return "–";
  const parts = Object.entries(offsets).map(([p, o]) => p + ":" + o);
  return parts.length ? parts.join(",") : "–";
}

function stat(label, value, field) {
  return el("div", { class: "stat" },
    el("div", { class: "label", text: label }),
    el("div", { class: "value", "data-field": field, text: text(value) }));
}

function grid(headers, rows, attrs = {}) {
  const head = el("tr", {}, headers.map(([h, cls]) => el("th", { class: cls, text: h })));
  return el("table", Object.assign({ class: "grid" }, attrs), el("thead", {}, head), el("tbody", {}, rows));
}

function errorBox(err) {
  return el("p", { class: "bad", role: "alert", "data-error": err.code || "error" },
    (err.code ? err.code + ": " : "") + err.message);
}

// ---- login ---------------------------------------------------------------------------------

async function session() {
  // Whether this server lets callers in without a token (it answers without credentials).
  const auth = await api("/api/v1/auth");
  if (!sessionStorage.getItem(TOKEN_KEY) && !auth.anonymous) return null;
  try {
    return await api("/api/v1/whoami");
  } catch (err) {
    if (err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      return null;
    }
    throw err;
  }
}

function loginPage(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  const input = el("input", { type: "password", id: "token", name: "token", autocomplete: "off",
    placeholder: "ut_…", size: 40, required: true });
  const form = el("form", { class: "login", id: "login" },
    el("h1", { text: "Sign in" }),
    el("p", { class: "muted", text: "Paste a unitable token (from `unitable token create USER`)." }),
    el("p", {}, input),
    el("p", {}, el("button", { type: "submit", id: "login-submit", text: "Sign in" })),
    message ? el("p", { class: "bad", role: "alert", id: "login-error", text: message }) : null);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    try {
      await api("/api/v1/whoami");
      route();
    } catch (err) {
      sessionStorage.removeItem(TOKEN_KEY);
      loginPage(err.status === 401 ? "That token is not valid: " + err.message : err.message);
    }
  });
  show(form);
  input.focus();
}

// ---- tables ------------------------------------------------------------------------------

async function tablesPage() {
  const data = await api("/api/v1/tables");
  const rows = data.tables.map((t) => {
    if (t.error) {
      return el("tr", { "data-table": t.table },
        el("td", {}, el("a", { href: "#/table/" + encodeURIComponent(t.table), text: t.table })),
        el("td", { colspan: 6, class: "bad", text: t.error }));
    }
    const f = t.freshness || {};
    return el("tr", { "data-table": t.table },
      el("td", {}, el("a", { href: "#/table/" + encodeURIComponent(t.table), text: t.table })),
      el("td", { class: "num", "data-field": "columns", text: t.columns }),
      el("td", { "data-field": "primary_key", text: t.primary_key.length ? t.primary_key.join(", ") : "(append-only)" }),
      el("td", { class: "num", "data-field": "rows", text: text(t.rows) }),
      el("td", { class: "mono", "data-field": "current_snapshot_id", text: text(t.current_snapshot_id) }),
      el("td", { class: "num", "data-field": "lag_records", text: text(f.lag_records) }),
      el("td", { class: "num", "data-field": "lag_ms", text: duration(f.lag_ms) }));
  });
  show(
    el("h1", { text: "Tables" }),
    data.tables.length === 0
      ? el("p", { class: "muted", id: "no-tables", text: "No tables you can read." })
      : el("section", { class: "card" }, grid(
        [["Table"], ["Columns", "num"], ["Primary key"], ["Rows", "num"], ["Snapshot"], ["Uncommitted records", "num"], ["Oldest uncommitted", "num"]],
        rows, { id: "tables" })));
}

// ---- one table ---------------------------------------------------------------------------

async function tablePage(name) {
  const base = "/api/v1/tables/" + encodeURIComponent(name);
  const [table, history, consumers, letters, sampled] = await Promise.all([
    api(base), api(base + "/snapshots"), api(base + "/consumers"), api(base + "/dead-letters?limit=20"),
    api(base + "/freshness"),
  ]);
  const freshnessChart = lagChart();
  for (const sample of sampled.samples) freshnessChart.add(sample, sample.time_ms);
  freshnessChart.add(table.freshness, Date.now());
  const page = [
    el("h1", { id: "table-name", text: table.table }),
    overviewCard(table),
    el("section", { class: "card", id: "freshness" },
      el("h2", { text: "Freshness" }),
      el("div", { class: "stats" },
        stat("Current snapshot", table.freshness.snapshot_id, "snapshot_id"),
        stat("Committed at", time(table.freshness.commit_time_ms), "commit_time"),
        stat("Uncommitted records", table.freshness.lag_records, "lag_records"),
        stat("Oldest uncommitted", duration(table.freshness.lag_ms), "lag_ms"),
        stat("Changelog head", offsetsText(table.heads), "heads"),
        stat("Covered offsets", offsetsText(table.freshness.offsets), "covered")),
      el("p", { class: "legend muted" },
        el("span", {}, el("span", { class: "swatch records" }), "uncommitted records"),
        el("span", {}, el("span", { class: "swatch age" }), "age of the oldest, s"),
        "sampled by the server every " + duration(sampled.interval_ms) + " (" + sampled.samples.length +
        " samples kept), and every 2 s while this page is open"),
      freshnessChart.node),
    snapshotsCard(history),
    compactionCard(table, history),
    consumersCard(consumers),
    deadLettersCard(letters),
    grantsCard(table),
  ];
  show(...page);
  const timer = setInterval(async () => {
    try {
      const now = await api(base);
      freshnessChart.add(now.freshness, Date.now());
      for (const [field, value] of [["lag_records", now.freshness.lag_records],
        ["lag_ms", duration(now.freshness.lag_ms)], ["snapshot_id", now.freshness.snapshot_id],
        ["commit_time", time(now.freshness.commit_time_ms)], ["heads", offsetsText(now.heads)],
        ["covered", offsetsText(now.freshness.offsets)]]) {
        const node = document.querySelector('#freshness [data-field="' + field + '"]');
        if (node) node.textContent = text(value);
      }
    } catch (_) {
      // The next sample tries again; a page left open must not fill the console with errors.
    }
  }, POLL_MS);
  stopPolling = () => clearInterval(timer);
}

function overviewCard(t) {
  const columns = t.columns.map((c) => el("tr", { "data-column": c.name },
    el("td", { class: "mono", text: c.name }),
    el("td", { class: "mono", text: c.type }),
    el("td", { text: c.required ? "not null" : "" }),
    el("td", { text: t.primary_key.includes(c.name) ? "key " + (t.primary_key.indexOf(c.name) + 1) : "" }),
    el("td", { class: "num", text: c.field_id })));
  const topic = t.changelog_topic;
  const props = Object.entries(t.properties || {}).map(([k, v]) => el("tr", {},
    el("td", { class: "mono", text: k }), el("td", { class: "mono", text: v })));
  return el("section", { class: "card", id: "overview" },
    el("div", { class: "stats" },
      stat("Primary key", t.primary_key.length ? t.primary_key.join(", ") : "(append-only)", "primary_key"),
      stat("Buckets", t.buckets, "buckets"),
      stat("Partitioned by", t.partition_by.length ? t.partition_by.join(", ") : "(unpartitioned)", "partition_by"),
      stat("Snapshots", t.snapshot_count, "snapshot_count"),
      stat("Schema id", t.schema_id, "schema_id")),
    el("h2", { text: "Schema" }),
    grid([["Column"], ["Type"], ["Null"], ["Key"], ["Field id", "num"]], columns, { id: "schema" }),
    el("h2", { text: "Changelog" }),
    el("p", { id: "changelog" },
      el("span", { class: "mono", "data-field": "topic", text: t.changelog.topic }),
      " — ", el("span", { "data-field": "changelog_partitions", text: t.changelog.partitions }), " partitions, format ",
      el("span", { class: "mono", "data-field": "format", text: t.changelog.format }),
      topic ? ", backend " + topic.backend + (topic.replication_factor ? ", replication factor " + topic.replication_factor : "") : ""),
    topic && topic.problems.length
      ? el("ul", { class: "bad" }, topic.problems.map((p) => el("li", { text: p })))
      : null,
    el("p", { class: "muted" }, "Location ", el("span", { class: "mono", text: t.location })),
    props.length ? el("div", {}, el("h2", { text: "Properties" }), grid([["Key"], ["Value"]], props, { id: "properties" })) : null);
}

function lagChart() {
  const width = 800;
  const height = 140;
  const node = svg("svg", { class: "chart", viewBox: "0 0 " + width + " " + height, preserveAspectRatio: "none", id: "lag-chart" });
  const records = svg("polyline", { class: "line" });
  const age = svg("polyline", { class: "line2" });
  const label = svg("text", { x: 6, y: 14 });
  node.append(records, age, label);
  const samples = [];
  return {
    node,
    // One sample (a freshness: lag_records, lag_ms) taken at `at` (ms since the epoch).
    add(freshness, at) {
      samples.push({ at, records: freshness.lag_records, seconds: freshness.lag_ms / 1000 });
      if (samples.length > CHART_SAMPLES) samples.shift();
      const first = samples[0].at;
      const span = Math.max(1, samples[samples.length - 1].at - first);
      const maxRecords = Math.max(1, ...samples.map((s) => s.records));
      const maxSeconds = Math.max(1, ...samples.map((s) => s.seconds));
      const x = (t) => 2 + ((t - first) / span) * (width - 4);
      const y = (v, max) => height - 4 - (v / max) * (height - 24);
      records.setAttribute("points", samples.map((s) => x(s.at) + "," + y(s.records, maxRecords)).join(" "));
      age.setAttribute("points", samples.map((s) => x(s.at) + "," + y(s.seconds, maxSeconds)).join(" "));
      label.textContent = "last " + duration(span) + "; max " + maxRecords + " records, " + maxSeconds.toFixed(1) + " s";
    },
  };
}

function summaryNumber(s, key) {
  const v = s.summary[key];
  return v === undefined ? null : Number(v);
}

function snapshotsCard(history) {
  const snapshots = history.snapshots;
  const rows = snapshots.slice().reverse().map((s) => el("tr", { "data-snapshot": s.snapshot_id },
    el("td", { text: time(s.timestamp_ms) }),
    el("td", { class: "mono", text: s.snapshot_id + (s.snapshot_id === history.current_snapshot_id ? " (current)" : "") }),
    el("td", { "data-field": "operation", text: s.operation }),
    el("td", { class: "num", "data-field": "added_records", text: text(summaryNumber(s, "added-records")) }),
    el("td", { class: "num", "data-field": "position_deletes", text: text(summaryNumber(s, "added-position-deletes")) }),
    el("td", { class: "num", "data-field": "deleted_records", text: text(summaryNumber(s, "deleted-records")) }),
    el("td", { class: "num", text: text(summaryNumber(s, "added-data-files")) }),
    el("td", { class: "num", text: text(summaryNumber(s, "added-delete-files")) }),
    el("td", { class: "mono", "data-field": "offsets", text: offsetsText(s.offsets) })));
  return el("section", { class: "card", id: "snapshots" },
    el("h2", { text: "Snapshot timeline" }),
    snapshotChart(snapshots),
    snapshots.length === 0
      ? el("p", { class: "muted", text: "No snapshot yet: nothing has been committed." })
      : grid([["Committed"], ["Snapshot"], ["Operation"], ["Rows added", "num"], ["Rows deleted (position deletes)", "num"], ["Rows removed with files", "num"],
        ["Data files", "num"], ["Delete files", "num"], ["Anchored offsets"]], rows, { id: "snapshot-table" }));
}

function snapshotChart(snapshots) {
  const width = 800;
  const height = 140;
  const node = svg("svg", { class: "chart", viewBox: "0 0 " + width + " " + height, preserveAspectRatio: "none", id: "snapshot-chart" });
  if (snapshots.length === 0) return node;
  const first = snapshots[0].timestamp_ms;
  const span = Math.max(1, snapshots[snapshots.length - 1].timestamp_ms - first);
  const maxRows = Math.max(1, ...snapshots.map((s) => summaryNumber(s, "added-records") || 0));
  for (const s of snapshots) {
    const rows = summaryNumber(s, "added-records") || 0;
    const h = Math.max(2, (rows / maxRows) * (height - 24));
    const x = 4 + ((s.timestamp_ms - first) / span) * (width - 12);
    const bar = svg("rect", { class: "bar " + s.operation, x: x, y: height - 4 - h, width: 4, height: h });
    const title = svg("title", {});
    title.textContent = s.operation + " " + s.snapshot_id + ": " + rows + " rows added";
    bar.append(title);
    node.append(bar);
  }
  const label = svg("text", { x: 6, y: 14 });
  label.textContent = snapshots.length + " snapshots over " + duration(span) + "; bar height = rows added";
  node.append(label);
  return node;
}

function compactionCard(t, history) {
  const c = t.compaction;
  const rewrites = history.snapshots.filter((s) => s.operation === "replace").reverse();
  const body = c
    ? el("div", {},
      el("div", { class: "stats" },
        stat("Scheduled", c.enabled ? "yes" : "no", "compaction_enabled"),
        stat("Data files", c.data_files, "data_files"),
        stat("Data size", bytes(c.data_bytes), "data_bytes"),
        stat("Small files", c.small_files, "small_files"),
        stat("Delete files", c.delete_files, "delete_files"),
        stat("Deleted rows", c.deleted_rows, "deleted_rows"),
        stat("Delete ratio", (c.delete_ratio * 100).toFixed(1) + " %", "delete_ratio"),
        stat("Pending tasks", c.pending_tasks, "pending_tasks"),
        stat("Last run", time(c.last_run_ms), "last_run")),
      c.last_error ? el("p", { class: "bad", text: "Last error (" + c.consecutive_failures + " in a row): " + c.last_error }) : null)
    : el("p", { class: "muted", text: "The compaction status could not be computed (see the server log)." });
  const rows = rewrites.map((s) => el("tr", {},
    el("td", { text: time(s.timestamp_ms) }),
    el("td", { class: "mono", text: s.snapshot_id }),
    el("td", { class: "num", text: text(summaryNumber(s, "deleted-data-files")) }),
    el("td", { class: "num", text: text(summaryNumber(s, "added-data-files")) }),
    el("td", { class: "num", text: text(summaryNumber(s, "removed-delete-files")) })));
  return el("section", { class: "card", id: "compaction" },
    el("h2", { text: "Compaction" }),
    body,
    el("h2", { text: "Rewrites still in the metadata" }),
    rows.length
      ? grid([["Committed"], ["Snapshot"], ["Files removed", "num"], ["Files written", "num"], ["Delete files removed", "num"]], rows, { id: "rewrites" })
      : el("p", { class: "muted", id: "no-rewrites", text: "No rewrite among the snapshots kept." }));
}

function consumersCard(data) {
  const streams = data.streams.map((s) => el("tr", { "data-stream": s.subscriber },
    el("td", { class: "mono", text: s.subscriber || "(unnamed)" }),
    el("td", { text: time(s.started_ms) }),
    el("td", { text: s.partitions.join(", ") }),
    el("td", { class: "num", text: s.records_read }),
    el("td", { class: "num", text: s.rows_delivered }),
    el("td", { class: "num", "data-field": "lag_records", text: s.lag_records })));
  const groups = data.groups.map((g) => el("tr", { "data-group": g.group },
    el("td", { class: "mono", text: g.group }),
    el("td", { class: "num", text: g.generation }),
    el("td", { text: g.members.map((m) => m.member + " [" + m.partitions.join(",") + "]").join("; ") || "(none)" }),
    el("td", { class: "num", "data-field": "lag_records", text: g.lag_records })));
  return el("section", { class: "card", id: "consumers" },
    el("h2", { text: "Open streams on this node" }),
    streams.length
      ? grid([["Subscriber"], ["Since"], ["Partitions"], ["Records read", "num"], ["Rows delivered", "num"], ["Lag (records)", "num"]], streams, { id: "streams" })
      : el("p", { class: "muted", text: "No STREAM read is open on this node." }),
    el("h2", { text: "Consumer groups" }),
    groups.length
      ? grid([["Group"], ["Generation", "num"], ["Members [partitions]"], ["Lag (records)", "num"]], groups, { id: "groups" })
      : el("p", { class: "muted", text: "No consumer group has read this table." }));
}

function deadLettersCard(data) {
  const rows = data.dead_letters.map((d) => {
    const r = d.record || {};
    return el("tr", { "data-offset": d.offset },
      el("td", { text: time(d.timestamp_ms) }),
      el("td", { class: "num", text: text(r.row) }),
      el("td", { text: text(r.op) }),
      el("td", { class: "mono", "data-field": "field", text: text(r.field) }),
      el("td", { "data-field": "reason", text: text(r.reason) }),
      el("td", { class: "mono", text: text(r.input) }));
  });
  return el("section", { class: "card", id: "dead-letters" },
    el("h2", { text: "Recently rejected rows" }),
    rows.length
      ? grid([["When"], ["Row", "num"], ["Op"], ["Field"], ["Reason"], ["Input"]], rows, { id: "dead-letter-table" })
      : el("p", { class: "muted", text: "No rejected rows in the dead-letter topic (rows go there when the table property unitable.write.dead-letter is true)." }));
}

function grantsCard(t) {
  return el("section", { class: "card", id: "grants" },
    el("h2", { text: "Grants on this table you can see" }),
    t.grants.length
      ? el("ul", {}, t.grants.map((g) => el("li", { class: "mono", text: g.grant })))
      : el("p", { class: "muted", text: "None visible to you (an anonymous server has no grants)." }));
}

// ---- SQL ---------------------------------------------------------------------------------

function sqlPage() {
  const input = el("textarea", { id: "sql-input", spellcheck: "false" });
  input.value = sessionStorage.getItem("unitable.sql") || "";
  const mode = el("select", { id: "sql-mode" },
    el("option", { value: "snapshot", text: "SNAPSHOT" }),
    el("option", { value: "fresh", text: "FRESH" }));
  const out = el("div", { id: "sql-output" });
  const run = async () => {
    sessionStorage.setItem("unitable.sql", input.value);
    out.replaceChildren(el("p", { class: "muted", text: "Running…" }));
    try {
      const r = await api("/api/v1/sql", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sql: input.value, mode: mode.value, limit: 500 }),
      });
      const names = r.columns.map((c) => c.name);
      const rows = r.rows.map((row) => el("tr", {}, names.map((n) => el("td", { class: "mono", text: text(row[n]) }))));
      const asOf = Object.entries(r.as_of).map(([t, a]) =>
        t + " @ snapshot " + text(a.snapshot_id) + (a.lag_records ? " (" + a.lag_records + " records behind)" : ""));
      out.replaceChildren(
        el("p", { class: "muted" },
          el("span", { id: "sql-count", text: r.row_count }), " rows", r.truncated ? " (first " + r.rows.length + " shown)" : "",
          asOf.length ? "; read " + asOf.join(", ") : ""),
        grid(names.map((n) => [n]), rows, { id: "sql-result" }));
    } catch (err) {
      out.replaceChildren(el("p", { class: "bad", role: "alert", id: "sql-error", text: err.code + ": " + err.message }));
    }
  };
  show(
    el("h1", { text: "SQL" }),
    el("section", { class: "card" },
      el("p", { class: "muted", text: "Read-only queries over the tables you can read (DataFusion SQL; tables as \"namespace\".\"table\" or namespace.table)." }),
      input,
      el("p", {}, mode, " ", el("button", { type: "button", id: "sql-run", onclick: run, text: "Run" }))),
    out);
}

// ---- routing -----------------------------------------------------------------------------

async function route() {
  stopPolling();
  stopPolling = () => {};
  let me;
  try {
    me = await session();
  } catch (err) {
    show(errorBox(err));
    return;
  }
  if (!me) {
    loginPage();
    return;
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = me.authenticated_by === "anonymous";
  document.getElementById("who").textContent = me.user;
  const hash = location.hash || "#/tables";
  try {
    if (hash.startsWith("#/table/")) {
      await tablePage(decodeURIComponent(hash.slice("#/table/".length)));
    } else if (hash === "#/sql") {
      sqlPage();
    } else {
      await tablesPage();
    }
  } catch (err) {
    if (err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      loginPage(err.message);
    } else {
      show(errorBox(err));
    }
  }
}

document.getElementById("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  route();
});
window.addEventListener("hashchange", route);
route();
