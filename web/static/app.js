// The PopQL web view: query page (editor, text search, grid or table, similar images, save)
// and populations page (sizes, splits, metrics with intervals, failure discovery).

import { ApiError, get, post } from "./api.js";
import { metricsChart, splitChart } from "./charts.js";
import { Editor } from "./editor.js";
import { Grid, formatValue } from "./grid.js";

const $ = (id) => document.getElementById(id);
const state = { info: null, result: null, tablePage: 0, current: null };

const editor = new Editor($("editor"), { onRun: () => runEditor() });
const grid = new Grid($("grid"), {
  onOpen: (sid, row, more) => (more ? moreLike(sid) : openSample(sid)),
  onMark: (marks) => showMarks(marks),
});

function showError(err, target = $("diagnostics")) {
  const payload = err instanceof ApiError ? err.payload?.error : null;
  target.hidden = false;
  if (payload?.rendered) {
    target.textContent = payload.rendered;
    editor.markErrors(payload.diagnostics);
  } else {
    target.textContent = payload?.message || String(err.message || err);
  }
}

function clearMessages() {
  $("diagnostics").hidden = true;
  $("message").hidden = true;
}

function say(text) {
  $("message").textContent = text;
  $("message").hidden = false;
}

async function loadInfo() {
  state.info = await get("/api/info");
  const i = state.info;
  $("dataset-info").textContent = `${i.dataset || "in-memory session"}${i.version != null ? ` · version ${i.version}` : ""} · ${i.allow_writes ? "read-write" : "read-only"}`;
  $("save-btn").disabled = !i.allow_writes;
  $("write-note").hidden = i.allow_writes;
}

async function run(text) {
  clearMessages();
  $("status").textContent = "running\u2026";
  const started = performance.now();
  try {
    const result = await post("/api/query", { text });
    state.result = result;
    showResult(result, performance.now() - started);
  } catch (err) {
    $("status").textContent = "";
    showError(err);
  }
}

function runEditor() { return run(editor.value); }

function showResult(result, ms) {
  const secs = (ms / 1000).toFixed(2);
  if (result.kind !== "query") {
    $("grid").hidden = true;
    $("table-view").hidden = result.total === 0;
    if (result.total) showTable(result, 0);
    $("status").textContent = `done in ${secs} s`;
    say(`Statement ran (${result.kind}).`);
    loadInfo();
    return;
  }
  $("status").textContent = `${result.total.toLocaleString()} row${result.total === 1 ? "" : "s"} · ${secs} s`;
  if (result.image) {
    $("table-view").hidden = true;
    $("grid").hidden = false;
    grid.show(result);
  } else {
    $("grid").hidden = true;
    $("side").hidden = true;
    $("table-view").hidden = false;
    showTable(result, 0);
  }
}

const TABLE_PAGE = 200;

function quoteIdent(name) {
  return /^[a-z_][a-z0-9_]*$/.test(name) ? name : `"${name.replace(/"/g, '""')}"`;
}

async function showTable(result, page) {
  let rows = result.rows.slice(0, TABLE_PAGE);
  if (page > 0) {
    const data = await get(`/api/result/${result.id}`, { offset: page * TABLE_PAGE, limit: TABLE_PAGE });
    rows = data.rows;
  }
  state.tablePage = page;
  const table = $("table");
  table.innerHTML = "";
  const head = table.createTHead().insertRow();
  result.columns.forEach((c, k) => {
    const th = document.createElement("th");
    th.textContent = c;
    th.title = result.types[k];
    head.appendChild(th);
  });
  const body = table.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const v of row) tr.insertCell().textContent = formatValue(v);
  }
  const pages = Math.max(1, Math.ceil(result.total / TABLE_PAGE));
  $("page-info").textContent = `page ${page + 1} of ${pages}`;
  $("prev-page").disabled = page === 0;
  $("next-page").disabled = page + 1 >= pages;
}

async function openSample(sid) {
  state.current = sid;
  $("side").hidden = false;
  $("side-img").src = `/thumb/${encodeURIComponent(sid)}`;
  $("side-img").alt = sid;
  const table = $("sample-tags");
  table.innerHTML = "";
  try {
    const sample = await get(`/api/sample/${encodeURIComponent(sid)}`);
    for (const [k, v] of Object.entries(sample)) {
      const tr = table.insertRow();
      tr.insertCell().textContent = k;
      tr.insertCell().textContent = formatValue(v);
    }
  } catch (err) {
    table.insertRow().insertCell().textContent = String(err.message || err);
  }
}

async function build(body) {
  try {
    const { statement } = await post("/api/build", body);
    editor.value = statement;
    return run(statement);
  } catch (err) {
    showError(err);
  }
}

function top() { return parseInt($("search-top").value, 10) || 100; }

function moreLike(sid) { return build({ kind: "near", positives: [sid], negatives: [], top: top() }); }

function refine() {
  const positives = [], negatives = [];
  for (const [sid, kind] of grid.marks) (kind === "pos" ? positives : negatives).push(sid);
  return build({ kind: "near", positives, negatives, top: top() });
}

function showMarks(marks) {
  const pos = [...marks.values()].filter((k) => k === "pos").length;
  const neg = marks.size - pos;
  $("selection").textContent = marks.size ? `${pos} positive, ${neg} negative` : "";
  $("refine").disabled = pos === 0;
  $("clear-selection").disabled = marks.size === 0;
}

async function save() {
  clearMessages();
  const name = $("save-name").value.trim();
  if (!name) { showError(new Error("Give the population a name.")); return; }
  try {
    const res = await post("/api/populations", { name, query: editor.value, description: $("save-desc").value.trim() });
    say(`Saved population ${res.name}: ${res.statement}`);
    loadInfo();
  } catch (err) {
    showError(err);
  }
}

async function check(text) {
  if (!text.trim()) { $("diagnostics").hidden = true; return; }
  try {
    const res = await post("/api/check", { text });
    if (text !== editor.value) return;
    if (res.diagnostics.length) {
      $("diagnostics").hidden = false;
      $("diagnostics").textContent = res.rendered;
      editor.markErrors(res.diagnostics);
    } else {
      $("diagnostics").hidden = true;
      editor.markErrors([]);
    }
  } catch { /* the server went away; the next run says so */ }
}
editor.onCheck = check;

// -- populations page ---------------------------------------------------------------------

async function loadPopulations() {
  $("pop-diagnostics").hidden = true;
  let data;
  try {
    data = await get("/api/populations");
  } catch (err) {
    showError(err, $("pop-diagnostics"));
    return;
  }
  const table = $("pop-table");
  table.innerHTML = "";
  const head = table.createTHead().insertRow();
  for (const c of ["population", "samples", "description", "query", ""]) {
    const th = document.createElement("th"); th.textContent = c; head.appendChild(th);
  }
  const body = table.createTBody();
  for (const p of data.populations) {
    const tr = body.insertRow();
    tr.dataset.population = p.name;
    tr.insertCell().textContent = p.name;
    tr.insertCell().textContent = p.size == null ? (p.error || "?") : p.size.toLocaleString();
    tr.insertCell().textContent = p.description || "";
    const q = tr.insertCell(); q.textContent = p.query || ""; q.className = "muted";
    const open = document.createElement("button");
    open.textContent = "Open";
    open.addEventListener("click", () => { showPage("query"); editor.value = `SELECT * FROM ${quoteIdent(p.name)}`; runEditor(); });
    tr.insertCell().appendChild(open);
  }
  if (!data.populations.length) body.insertRow().insertCell().textContent = "No populations yet: save a query on the Query page.";
  splitChart($("split-chart"), data.splits);
  const select = $("model-select");
  const chosen = select.value;
  select.innerHTML = "";
  for (const m of data.models) {
    const o = document.createElement("option"); o.value = o.textContent = m; select.appendChild(o);
  }
  if (data.models.includes(chosen)) select.value = chosen;
  $("eval-btn").disabled = $("failures-btn").disabled = !data.models.length;
  $("eval-status").textContent = data.models.length ? "" : "No model has predictions yet (IMPORT PREDICTIONS or session.log_predictions).";
  state.allowWrites = data.allow_writes;
}

async function evaluate() {
  const model = $("model-select").value;
  $("eval-status").textContent = "evaluating\u2026";
  $("pop-diagnostics").hidden = true;
  try {
    const data = await get("/api/evaluate", { model });
    $("eval-status").textContent = "";
    $("eval-statement").hidden = !data.statement;
    $("eval-statement").textContent = data.statement || "";
    metricsChart($("metrics-chart"), data);
    const t = $("expectations");
    t.innerHTML = "";
    t.hidden = !data.expectations.length;
    if (data.expectations.length) {
      const head = t.createTHead().insertRow();
      for (const c of ["status", "expectation", "value", "interval", "n", "reason"]) {
        const th = document.createElement("th"); th.textContent = c; head.appendChild(th);
      }
      const body = t.createTBody();
      for (const e of data.expectations) {
        const tr = body.insertRow();
        tr.className = e.status;
        tr.insertCell().textContent = e.status === "fail" ? "\u2717 fail" : e.status;
        tr.insertCell().textContent = e.expectation;
        tr.insertCell().textContent = formatValue(e.value);
        tr.insertCell().textContent = e.lo == null ? "" : `[${formatValue(e.lo)}, ${formatValue(e.hi)}]`;
        tr.insertCell().textContent = formatValue(e.n);
        tr.insertCell().textContent = e.reason || "";
      }
    }
  } catch (err) {
    $("eval-status").textContent = "";
    showError(err, $("pop-diagnostics"));
  }
}

async function findFailures() {
  const model = $("model-select").value;
  $("eval-status").textContent = "searching for failing slices\u2026";
  try {
    const data = await get("/api/failures", { model });
    $("eval-status").textContent = `${data.rows.length} slice${data.rows.length === 1 ? "" : "s"} found`;
    const t = $("failures");
    t.innerHTML = "";
    t.hidden = false;
    $("failures-title").hidden = false;
    const head = t.createTHead().insertRow();
    for (const c of ["rank", "slice", "n", "metric", "value", "overall", "statement", ""]) {
      const th = document.createElement("th"); th.textContent = c; head.appendChild(th);
    }
    const body = t.createTBody();
    for (const r of data.rows) {
      const tr = body.insertRow();
      for (const c of ["rank", "slice", "n", "metric", "value", "overall"]) tr.insertCell().textContent = formatValue(r[c]);
      const st = tr.insertCell(); st.textContent = r.statement; st.className = "muted";
      const b = document.createElement("button");
      b.textContent = "Save";
      b.className = "save-failure";
      b.disabled = !state.allowWrites;
      b.title = state.allowWrites ? "Create this population" : "Start the server with --allow-writes to save";
      b.addEventListener("click", async () => {
        try {
          await post("/api/query", { text: r.statement });
          b.textContent = "Saved";
          b.disabled = true;
          loadPopulations();
        } catch (err) {
          showError(err, $("pop-diagnostics"));
        }
      });
      tr.insertCell().appendChild(b);
    }
  } catch (err) {
    $("eval-status").textContent = "";
    showError(err, $("pop-diagnostics"));
  }
}

// -- wiring -------------------------------------------------------------------------------

function showPage(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.page === name);
  $("page-query").hidden = name !== "query";
  $("page-populations").hidden = name !== "populations";
  if (name === "populations") loadPopulations();
  else grid.layout();
}

for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showPage(tab.dataset.page));
$("run").addEventListener("click", runEditor);
$("search-btn").addEventListener("click", () => {
  const text = $("search").value.trim();
  if (text) build({ kind: "similar", text, top: top() });
});
$("search").addEventListener("keydown", (e) => { if (e.key === "Enter") $("search-btn").click(); });
$("more-like").addEventListener("click", () => state.current && moreLike(state.current));
$("mark-pos").addEventListener("click", () => state.current && grid.mark(state.current, "pos"));
$("mark-neg").addEventListener("click", () => state.current && grid.mark(state.current, "neg"));
$("refine").addEventListener("click", refine);
$("clear-selection").addEventListener("click", () => grid.clearMarks());
$("side-close").addEventListener("click", () => { $("side").hidden = true; });
$("save-btn").addEventListener("click", save);
$("prev-page").addEventListener("click", () => showTable(state.result, state.tablePage - 1));
$("next-page").addEventListener("click", () => showTable(state.result, state.tablePage + 1));
$("eval-btn").addEventListener("click", evaluate);
$("failures-btn").addEventListener("click", findFailures);

(async () => {
  try {
    await loadInfo();
    const kw = await get("/api/keywords");
    editor.setKeywords(kw.keywords, kw.popql);
  } catch (err) {
    showError(err);
  }
  document.body.dataset.ready = "1";
})();
