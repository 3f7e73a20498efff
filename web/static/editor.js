// The PopQL editor: a textarea over a highlighted copy of its text, completion from the
// server (the REPL's completion engine over the live catalog) and diagnostics underlined.

import { post } from "./api.js";

const TOKEN = /(\s+)|(--[^\n]*|\/\*[\s\S]*?(?:\*\/|$))|([EeXxNnBbRr]?'(?:[^']|'')*'?)|("(?:[^"]|"")*"?)|((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)|((?:[^\W\d]|_)[\w$]*)|(.)/gu;

function escapeHtml(text) {
  return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
}

export class Editor {
  constructor(root, { onRun } = {}) {
    this.input = root.querySelector("textarea");
    this.overlay = root.querySelector("pre");
    this.popup = document.getElementById("completions");
    this.keywords = new Set();
    this.popqlKeywords = new Set();
    this.errors = [];           // [start, end) character ranges to underline
    this.suggestions = [];
    this.active = 0;
    this.onRun = onRun;
    this.onCheck = null;
    this.checkTimer = null;
    this.completeTimer = null;
    this.input.addEventListener("input", () => this.changed(true));
    this.input.addEventListener("scroll", () => this.syncScroll());
    this.input.addEventListener("keydown", (e) => this.keydown(e));
    this.input.addEventListener("blur", () => setTimeout(() => this.hidePopup(), 150));
    this.render();
  }

  setKeywords(keywords, popql) {
    this.keywords = new Set(keywords.map((k) => k.toUpperCase()));
    this.popqlKeywords = new Set(popql.map((k) => k.toUpperCase()));
    this.render();
  }

  get value() { return this.input.value; }

  set value(text) {
    this.input.value = text;
    this.errors = [];
    this.changed(false);
  }

  changed(typed) {
    this.errors = [];
    this.render();
    clearTimeout(this.checkTimer);
    this.checkTimer = setTimeout(() => this.onCheck && this.onCheck(this.value), 350);
    if (typed) {
      const before = this.value.slice(0, this.input.selectionStart);
      clearTimeout(this.completeTimer);
      if (/[\w.]$/.test(before) || /(FROM|JOIN|WHERE|ON|=|\(|,)\s$/i.test(before)) {
        this.completeTimer = setTimeout(() => this.complete(false), 200);
      } else {
        this.hidePopup();
      }
    }
  }

  markErrors(diagnostics) {
    this.errors = [];
    for (const d of diagnostics || []) {
      if (d.span && d.span.start != null) {
        const end = Math.max(d.span.end ?? d.span.start + 1, d.span.start + 1);
        this.errors.push([d.span.start, end]);
      }
    }
    this.render();
  }

  render() {
    const text = this.input.value;
    let html = "";
    TOKEN.lastIndex = 0;
    let m;
    while ((m = TOKEN.exec(text)) !== null) {
      const tok = m[0];
      let cls = null;
      if (m[2]) cls = "tok-com";
      else if (m[3]) cls = "tok-str";
      else if (m[5]) cls = "tok-num";
      else if (m[6]) {
        const up = tok.toUpperCase();
        if (this.popqlKeywords.has(up)) cls = "tok-pq";
        else if (this.keywords.has(up)) cls = "tok-kw";
      }
      html += this.wrap(tok, m.index, cls);
      if (tok.length === 0) TOKEN.lastIndex++;
    }
    // a trailing newline needs a character after it to be shown
    this.overlay.innerHTML = html + "\n ";
    this.syncScroll();
  }

  wrap(tok, start, cls) {
    const end = start + tok.length;
    const parts = [];
    let pos = start;
    for (const [a, b] of this.errors) {
      if (b <= pos || a >= end) continue;
      const s = Math.max(a, pos);
      const e = Math.min(b, end);
      if (s > pos) parts.push([tok.slice(pos - start, s - start), false]);
      parts.push([tok.slice(s - start, e - start), true]);
      pos = e;
    }
    if (pos < end) parts.push([tok.slice(pos - start), false]);
    return parts.map(([t, err]) => {
      const classes = [cls, err ? "tok-err" : null].filter(Boolean).join(" ");
      return classes ? `<span class="${classes}">${escapeHtml(t)}</span>` : escapeHtml(t);
    }).join("");
  }

  syncScroll() {
    this.overlay.scrollTop = this.input.scrollTop;
    this.overlay.scrollLeft = this.input.scrollLeft;
  }

  keydown(e) {
    const open = !this.popup.hidden && this.suggestions.length > 0;
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {
      e.preventDefault();
      this.hidePopup();
      this.onRun && this.onRun();
    } else if (e.ctrlKey && (e.key === " " || e.code === "Space")) {
      e.preventDefault();
      this.complete(true);
    } else if (open && e.key === "ArrowDown") {
      e.preventDefault();
      this.select(this.active + 1);
    } else if (open && e.key === "ArrowUp") {
      e.preventDefault();
      this.select(this.active - 1);
    } else if (open && (e.key === "Tab" || e.key === "Enter")) {
      e.preventDefault();
      this.accept(this.active);
    } else if (open && e.key === "Escape") {
      e.preventDefault();
      this.hidePopup();
    }
  }

  async complete(explicit) {
    const text = this.value;
    const cursor = this.input.selectionStart;
    let data;
    try {
      data = await post("/api/complete", { text, cursor });
    } catch {
      return;
    }
    if (this.value !== text || this.input.selectionStart !== cursor) return;  // typed on
    if (!explicit && document.activeElement !== this.input) return;  // the user moved on
    // while typing, offer only what adds something to the word under the cursor
    this.suggestions = (data.suggestions || []).filter((s) =>
      explicit || s.text !== text.slice(cursor + Math.min(0, s.start), cursor));
    if (!this.suggestions.length) {
      this.hidePopup();
      return;
    }
    this.popup.innerHTML = "";
    this.suggestions.forEach((s, i) => {
      const li = document.createElement("li");
      li.dataset.index = i;
      li.innerHTML = `<span class="text"></span><span class="kind"></span>`;
      li.querySelector(".text").textContent = s.display || s.text;
      li.querySelector(".kind").textContent = s.meta && s.meta !== s.kind ? `${s.kind} · ${s.meta}` : s.kind;
      li.addEventListener("mousedown", (ev) => { ev.preventDefault(); this.accept(i); });
      this.popup.appendChild(li);
    });
    this.popup.hidden = false;
    this.select(0);
  }

  select(i) {
    const n = this.suggestions.length;
    this.active = (i + n) % n;
    [...this.popup.children].forEach((li, k) => li.classList.toggle("active", k === this.active));
    this.popup.children[this.active]?.scrollIntoView({ block: "nearest" });
  }

  accept(i) {
    const s = this.suggestions[i];
    if (!s) return;
    const cursor = this.input.selectionStart;
    const from = cursor + Math.min(0, s.start);   // start counts back from the cursor
    const text = this.value;
    this.input.value = text.slice(0, from) + s.text + text.slice(cursor);
    const at = from + s.text.length;
    this.input.setSelectionRange(at, at);
    this.hidePopup();
    this.changed(false);
    this.input.focus();
  }

  hidePopup() {
    this.popup.hidden = true;
    this.suggestions = [];
  }
}
