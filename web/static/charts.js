// Small SVG charts, drawn without a library: stacked split bars and metric intervals.

const NS = "http://www.w3.org/2000/svg";
const SPLIT_COLOURS = ["#2563eb", "#f59e0b", "#10b981", "#8b5cf6", "#ef4444", "#64748b"];

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// rows: [{population, split, samples}] (SHOW SPLITS; population "*" = the whole dataset)
export function splitChart(container, rows) {
  container.innerHTML = "";
  const pops = [...new Set(rows.map((r) => r.population))];
  const splits = [...new Set(rows.map((r) => r.split))];
  if (!pops.length) { container.textContent = "No populations yet."; return; }
  const width = 640, left = 160, barH = 22, gap = 8;
  const height = pops.length * (barH + gap) + 40;
  const svg = el("svg", { width, height, role: "img", "aria-label": "split breakdown", id: "split-svg" });
  pops.forEach((pop, i) => {
    const y = 10 + i * (barH + gap);
    const mine = rows.filter((r) => r.population === pop);
    const total = mine.reduce((a, r) => a + (r.samples || 0), 0) || 1;
    svg.appendChild(el("text", { x: left - 8, y: y + barH / 2 + 4, "text-anchor": "end" }, pop === "*" ? "(all samples)" : pop));
    let x = left;
    for (const r of mine) {
      const w = ((width - left - 20) * (r.samples || 0)) / total;
      const rect = el("rect", { x, y, width: Math.max(0, w), height: barH, fill: SPLIT_COLOURS[splits.indexOf(r.split) % SPLIT_COLOURS.length], "data-split": r.split, "data-population": pop });
      rect.appendChild(el("title", {}, `${pop} · ${r.split}: ${r.samples}`));
      svg.appendChild(rect);
      if (w > 30) svg.appendChild(el("text", { x: x + 4, y: y + barH / 2 + 4, fill: "#fff" }, String(r.samples)));
      x += w;
    }
  });
  let lx = left;
  splits.forEach((s, k) => {
    const y = height - 18;
    svg.appendChild(el("rect", { x: lx, y, width: 12, height: 12, fill: SPLIT_COLOURS[k % SPLIT_COLOURS.length] }));
    svg.appendChild(el("text", { x: lx + 16, y: y + 10 }, s));
    lx += 24 + s.length * 8;
  });
  container.appendChild(svg);
}

// One chart per metric: a bar per population with its 95 % interval; expectations draw their
// threshold and colour a failing population red.
export function metricsChart(container, data) {
  container.innerHTML = "";
  const { metrics, rows, expectations } = data;
  if (!rows.length) { container.textContent = "Nothing to evaluate."; return; }
  for (const metric of metrics) {
    const width = 640, left = 160, barH = 20, gap = 10;
    const height = rows.length * (barH + gap) + 40;
    const values = rows.flatMap((r) => [r[metric], r[`${metric}_lo`], r[`${metric}_hi`]]).filter((v) => v !== null && v !== undefined);
    const expects = (expectations || []).filter((e) => e.metric === metric);
    const max = Math.max(1e-9, ...values, ...expects.map((e) => e.threshold ?? 0), metric === "mae" ? 0 : 1);
    const scale = (v) => left + ((width - left - 60) * v) / max;
    const svg = el("svg", { width, height, role: "img", "aria-label": `${metric} per population`, class: "metric-chart", "data-metric": metric });
    svg.appendChild(el("text", { x: 8, y: 14, "font-weight": "600" }, metric));
    rows.forEach((r, i) => {
      const y = 24 + i * (barH + gap);
      const v = r[metric], lo = r[`${metric}_lo`], hi = r[`${metric}_hi`];
      const failing = expects.filter((e) => e.population === r.population && e.status === "fail");
      const passing = expects.filter((e) => e.population === r.population && e.status === "pass");
      const status = failing.length ? "fail" : passing.length ? "pass" : "none";
      svg.appendChild(el("text", { x: left - 8, y: y + barH / 2 + 4, "text-anchor": "end" }, `${failing.length ? "\u2717 " : ""}${r.population} (n=${r.n ?? "?"})`));
      if (v !== null && v !== undefined) {
        const bar = el("rect", { x: left, y, width: Math.max(1, scale(v) - left), height: barH, class: `bar bar-${status}`, "data-population": r.population, "data-status": status });
        bar.appendChild(el("title", {}, `${r.population}: ${metric} = ${v.toFixed(4)} [${lo?.toFixed(4)}, ${hi?.toFixed(4)}]`));
        svg.appendChild(bar);
        svg.appendChild(el("text", { x: scale(v) + 4, y: y + barH / 2 + 4 }, v.toFixed(3)));
      }
      if (lo !== null && hi !== null && lo !== undefined && hi !== undefined) {
        const cy = y + barH / 2;
        svg.appendChild(el("line", { x1: scale(lo), x2: scale(hi), y1: cy, y2: cy, stroke: "#111", "stroke-width": 2, class: "ci" }));
        for (const t of [lo, hi]) svg.appendChild(el("line", { x1: scale(t), x2: scale(t), y1: cy - 6, y2: cy + 6, stroke: "#111", "stroke-width": 2 }));
      }
      for (const e of expects.filter((x) => x.population === r.population && x.threshold !== null)) {
        svg.appendChild(el("line", { x1: scale(e.threshold), x2: scale(e.threshold), y1: y - 3, y2: y + barH + 3, stroke: e.status === "fail" ? "#dc2626" : "#16a34a", "stroke-width": 2, "stroke-dasharray": "4 2", class: "threshold" }));
      }
    });
    container.appendChild(svg);
  }
}
