// A virtually scrolled grid of thumbnails: only the rows in view exist in the DOM, and rows
// are fetched from the server a page at a time, so a result of 100k samples stays responsive.

import { get } from "./api.js";

const PAGE = 200;

export class Grid {
  constructor(container, { onOpen, onMark } = {}) {
    this.el = container;
    this.spacer = container.querySelector(".grid-spacer");
    this.onOpen = onOpen;
    this.onMark = onMark;
    this.cells = new Map();     // row index -> element
    this.pages = new Map();     // page number -> rows (or a pending Promise)
    this.result = null;
    this.marks = new Map();     // sample id -> "pos" | "neg"
    this.current = null;
    this.el.addEventListener("scroll", () => this.draw());
    window.addEventListener("resize", () => this.layout());
  }

  show(result) {
    this.result = result;
    this.pages = new Map([[0, result.rows]]);
    for (const cell of this.cells.values()) cell.remove();
    this.cells.clear();
    this.sidIndex = result.columns.indexOf("sample_id");
    this.el.scrollTop = 0;
    this.layout();
  }

  layout() {
    if (!this.result) return;
    const size = parseFloat(getComputedStyle(document.documentElement).getPropertyValue("--cell")) || 132;
    this.step = size + 8;
    this.cols = Math.max(1, Math.floor((this.el.clientWidth - 8) / this.step));
    const rows = Math.ceil(this.result.total / this.cols);
    this.spacer.style.height = `${rows * this.step + 8}px`;
    for (const cell of this.cells.values()) cell.remove();
    this.cells.clear();
    this.draw();
  }

  rowAt(i) {
    const page = this.pages.get(Math.floor(i / PAGE));
    return Array.isArray(page) ? page[i % PAGE] : undefined;
  }

  async fetchPage(p) {
    if (this.pages.has(p)) return;
    const result = this.result;
    const pending = get(`/api/result/${result.id}`, { offset: p * PAGE, limit: PAGE });
    this.pages.set(p, pending);
    try {
      const data = await pending;
      if (this.result !== result) return;
      this.pages.set(p, data.rows);
      this.draw();
    } catch (err) {
      this.pages.delete(p);
    }
  }

  draw() {
    if (!this.result || !this.cols) return;
    const top = this.el.scrollTop;
    const firstRow = Math.max(0, Math.floor(top / this.step) - 2);
    const lastRow = Math.ceil((top + this.el.clientHeight) / this.step) + 2;
    const first = firstRow * this.cols;
    const last = Math.min(this.result.total, lastRow * this.cols);
    for (const [i, cell] of this.cells) {
      if (i < first || i >= last) { cell.remove(); this.cells.delete(i); }
    }
    for (let i = first; i < last; i++) {
      if (this.cells.has(i)) continue;
      const row = this.rowAt(i);
      if (row === undefined) { this.fetchPage(Math.floor(i / PAGE)); continue; }
      const cell = this.makeCell(row, i);
      this.el.appendChild(cell);
      this.cells.set(i, cell);
    }
  }

  makeCell(row, i) {
    const sid = row[this.sidIndex];
    const cell = document.createElement("div");
    cell.className = "cell";
    cell.dataset.sid = sid;
    cell.dataset.index = i;
    cell.style.left = `${8 + (i % this.cols) * this.step}px`;
    cell.style.top = `${8 + Math.floor(i / this.cols) * this.step}px`;
    cell.title = this.result.columns.map((c, k) => `${c}: ${formatValue(row[k])}`).join("\n");
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = sid;
    img.src = `/thumb/${encodeURIComponent(sid)}`;
    cell.appendChild(img);
    const badge = document.createElement("span");
    badge.className = "badge";
    cell.appendChild(badge);
    const marks = document.createElement("div");
    marks.className = "marks";
    for (const [label, kind] of [["+", "pos"], ["\u2212", "neg"]]) {
      const b = document.createElement("button");
      b.textContent = label;
      b.className = `mark-${kind}`;
      b.title = kind === "pos" ? "positive example" : "negative example";
      b.addEventListener("click", (e) => { e.stopPropagation(); this.mark(sid, kind); });
      marks.appendChild(b);
    }
    cell.appendChild(marks);
    cell.addEventListener("click", () => this.open(sid, row));
    cell.addEventListener("dblclick", () => this.onOpen && this.onOpen(sid, row, true));
    this.paint(cell);
    return cell;
  }

  open(sid, row) {
    this.current = sid;
    for (const cell of this.cells.values()) this.paint(cell);
    this.onOpen && this.onOpen(sid, row, false);
  }

  mark(sid, kind) {
    if (this.marks.get(sid) === kind) this.marks.delete(sid);
    else this.marks.set(sid, kind);
    for (const cell of this.cells.values()) this.paint(cell);
    this.onMark && this.onMark(this.marks);
  }

  clearMarks() {
    this.marks.clear();
    for (const cell of this.cells.values()) this.paint(cell);
    this.onMark && this.onMark(this.marks);
  }

  paint(cell) {
    const mark = this.marks.get(cell.dataset.sid);
    cell.classList.toggle("pos", mark === "pos");
    cell.classList.toggle("neg", mark === "neg");
    cell.classList.toggle("current", this.current === cell.dataset.sid && !mark);
    cell.querySelector(".badge").textContent = mark === "pos" ? "+" : mark === "neg" ? "\u2212" : "";
  }
}

export function formatValue(v) {
  if (v === null || v === undefined) return "NULL";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(4);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}
