"""EXPECT and test suites: pass / fail / inconclusive with intervals, JUnit XML, HTML reports.

``EXPECT accuracy >= 0.9 ON dark_streets [FOR MODEL m [VERSION v]] [MIN SUPPORT 200]``
computes the metric on the population (as EVALUATE does) and decides, by the :class:`Policy`:

* **inconclusive** when fewer than ``MIN SUPPORT`` samples (default
  :attr:`Policy.min_support`) were evaluated, when the metric is undefined there, or, under
  ``decide="interval"`` (the default), when the 95 % interval straddles the threshold;
* otherwise **pass** or **fail**: under ``decide="interval"`` the whole interval must satisfy
  the comparison to pass and violate it to fail; under ``decide="point"`` the point estimate
  decides;
* **error** when the expectation cannot run (unknown population, no predictions...).

:func:`run_suite` runs a ``.popql`` file statement by statement (setup statements, then the
expectations), :func:`junit_xml` and :func:`html_report` write its results. ``popql test`` and
the pytest plugin (:mod:`popql.repl.pytest_plugin`) are built on them.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from popql import ast as A
from popql.diagnostics import PopQLError
from popql.format import format_node

from . import metrics as M
from .evaluate import build_frame, metric_spec, population_ids, population_schema, resolve_model
from .predictions import load_predictions

if TYPE_CHECKING:
    from .commands import CommandContext
    from .result import Result
    from .session import Session

__all__ = [
    "OUTCOME_SCHEMA",
    "Outcome",
    "Policy",
    "SuiteReport",
    "decide",
    "expect",
    "html_report",
    "junit_xml",
    "run_suite",
]

STATUSES = ("pass", "fail", "inconclusive", "error")


@dataclass(frozen=True)
class Policy:
    """How expectations are decided.

    ``decide``: ``"interval"`` (the 95 % interval must clear the threshold) or ``"point"``
    (the estimate decides). ``min_support``: the support below which an expectation without
    ``MIN SUPPORT`` is inconclusive. ``inconclusive``: ``"ok"`` (reported, does not fail the
    suite) or ``"fail"`` (counts as a failure).
    """

    decide: str = "interval"
    min_support: int = 1
    inconclusive: str = "ok"

    def __post_init__(self) -> None:
        if self.decide not in ("interval", "point"):
            raise ValueError(f"decide must be 'interval' or 'point', not {self.decide!r}")
        if self.inconclusive not in ("ok", "fail"):
            raise ValueError(f"inconclusive must be 'ok' or 'fail', not {self.inconclusive!r}")


@dataclass(frozen=True)
class Outcome:
    """The result of one EXPECT statement."""

    expectation: str
    metric: str
    op: str
    threshold: float
    population: str
    model: str | None
    version: str | None
    n: int
    value: float
    lo: float
    hi: float
    min_support: int
    status: str
    reason: str
    line: int | None = None
    file: str | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "error")


OUTCOME_SCHEMA = pa.schema(
    [
        ("expectation", pa.string()),
        ("status", pa.string()),
        ("metric", pa.string()),
        ("op", pa.string()),
        ("threshold", pa.float64()),
        ("population", pa.string()),
        ("model", pa.string()),
        ("version", pa.string()),
        ("n", pa.int64()),
        ("min_support", pa.int64()),
        ("value", pa.float64()),
        ("lo", pa.float64()),
        ("hi", pa.float64()),
        ("reason", pa.string()),
    ]
)


def _holds(x: float, op: str, t: float) -> bool:
    return {
        ">=": x >= t,
        ">": x > t,
        "<=": x <= t,
        "<": x < t,
        "=": x == t,
        "==": x == t,
        "!=": x != t,
        "<>": x != t,
    }[op]


def decide(
    value: float,
    lo: float,
    hi: float,
    n: int,
    op: str,
    threshold: float,
    min_support: int,
    policy: Policy,
) -> tuple[str, str]:
    """(status, reason) of one expectation."""
    if n < min_support:
        return "inconclusive", f"support {n} is below the minimum {min_support}"
    if value is None or math.isnan(value):
        return "inconclusive", "the metric is undefined on this population"
    if policy.decide == "point" or op in ("=", "==", "!=", "<>") or math.isnan(lo):
        ok = _holds(value, op, threshold)
        return ("pass" if ok else "fail"), (
            f"{value:.4g} {op} {threshold:g}" if ok else f"{value:.4g} is not {op} {threshold:g}"
        )
    interval = f"95% interval [{lo:.4g}, {hi:.4g}]"
    if _holds(lo, op, threshold) and _holds(hi, op, threshold):
        return "pass", f"{interval} is {op} {threshold:g}"
    if not _holds(lo, op, threshold) and not _holds(hi, op, threshold):
        return "fail", f"{interval} is not {op} {threshold:g}"
    return "inconclusive", f"{interval} straddles the threshold {threshold:g}"


def _policy(session: Session) -> Policy:
    policy = getattr(session, "test_policy", None)
    return policy if isinstance(policy, Policy) else Policy()


def evaluate_expectation(session: Session, stmt: A.Expect, text: str) -> Outcome:
    """Run one EXPECT statement (errors become ``status="error"`` outcomes)."""
    policy = _policy(session)
    spec = metric_spec(stmt.metric)
    threshold = float(stmt.value)
    min_support = int(float(stmt.min_support)) if stmt.min_support else policy.min_support
    model, version = resolve_model(session, stmt.model, stmt.span)
    preds = load_predictions(
        session, model, version, span=stmt.model.span if stmt.model else stmt.span
    )
    ids = population_ids(session, stmt.population, stmt.population.span)
    frame = build_frame(session, preds, ids, [spec], stmt.population, stmt.population.span)
    mv = M.compute(frame, spec)
    status, reason = decide(mv.value, mv.lo, mv.hi, mv.n, stmt.op, threshold, min_support, policy)
    return Outcome(
        expectation=text,
        metric=spec.label,
        op=stmt.op,
        threshold=threshold,
        population=stmt.population.value,
        model=preds.model,
        version=preds.version,
        n=mv.n,
        value=mv.value,
        lo=mv.lo,
        hi=mv.hi,
        min_support=min_support,
        status=status,
        reason=reason,
        line=stmt.span.line if stmt.span else None,
    )


def outcome_table(outcomes: Sequence[Outcome]) -> pa.Table:
    def nn(x: float) -> float | None:
        return None if x is None or math.isnan(x) else x

    rows = [
        {
            "expectation": o.expectation,
            "status": o.status,
            "metric": o.metric,
            "op": o.op,
            "threshold": o.threshold,
            "population": o.population,
            "model": o.model,
            "version": o.version,
            "n": o.n,
            "min_support": o.min_support,
            "value": nn(o.value),
            "lo": nn(o.lo),
            "hi": nn(o.hi),
            "reason": o.reason,
        }
        for o in outcomes
    ]
    return pa.Table.from_pylist(rows, schema=OUTCOME_SCHEMA)


def expect(session: Session, stmt: A.Expect, ctx: CommandContext) -> Result:
    """The EXPECT statement: one row (see :data:`OUTCOME_SCHEMA`)."""
    from .result import Result

    metric_spec(stmt.metric)
    population_schema(session, stmt.population, stmt.population.span)
    if not ctx.execute:
        return Result.empty()
    outcome = evaluate_expectation(session, stmt, format_node(stmt))
    return Result(outcome_table([outcome]), kind="query", statement=ctx.statement)


# ---------------------------------------------------------------------------------------------
# Suites
# ---------------------------------------------------------------------------------------------


@dataclass
class SuiteReport:
    """The outcomes of one suite file."""

    file: str
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    policy: Policy = field(default_factory=Policy)

    def counts(self) -> dict[str, int]:
        return {s: sum(o.status == s for o in self.outcomes) for s in STATUSES}

    @property
    def ok(self) -> bool:
        """No failure or error (nor, under ``inconclusive="fail"``, inconclusive outcome)."""
        bad = {"fail", "error"} | (
            {"inconclusive"} if self.policy.inconclusive == "fail" else set()
        )
        return not any(o.status in bad for o in self.outcomes)

    def table(self) -> pa.Table:
        return outcome_table(self.outcomes)


def run_suite(
    session: Session, path: str | os.PathLike[str], policy: Policy | None = None
) -> SuiteReport:
    """Run a ``.popql`` file: every statement in order; each EXPECT gives an :class:`Outcome`.

    A statement other than EXPECT that fails stops the suite (its PopQLError is raised, with
    the file and line); an EXPECT that cannot run is an ``error`` outcome and the suite goes on.
    """
    from .session import _with_context, read_source

    policy = policy or _policy(session)
    previous = getattr(session, "test_policy", None)
    session.test_policy = policy
    text = read_source(path)
    shown = os.fspath(path)
    report = SuiteReport(shown, policy=policy)
    started = time.perf_counter()
    try:
        script = session._parse(text, shown)
        for stmt in script.statements:
            if not isinstance(stmt, A.Expect):
                result = session._run_statement(stmt, text, shown, None, execute=True)
                if result.kind == "query" and not result.consumed:
                    result.materialize()
                continue
            t0 = time.perf_counter()
            written = format_node(stmt)
            try:
                outcome = evaluate_expectation(session, stmt, written)
            except PopQLError as err:
                err = _with_context(err, text, shown)
                first = err.diagnostics[0] if err.diagnostics else None
                outcome = Outcome(
                    expectation=written,
                    metric=format_node(stmt.metric),
                    op=stmt.op,
                    threshold=float(stmt.value),
                    population=stmt.population.value,
                    model=None if stmt.model is None else stmt.model.name.value,
                    version=None,
                    n=0,
                    value=math.nan,
                    lo=math.nan,
                    hi=math.nan,
                    min_support=int(float(stmt.min_support)) if stmt.min_support else 0,
                    status="error",
                    reason=f"{first.code}: {first.message}" if first else str(err),
                )
            outcome = replace(
                outcome,
                line=stmt.span.line if stmt.span else None,
                file=shown,
                seconds=time.perf_counter() - t0,
            )
            report.outcomes.append(outcome)
    finally:
        session.test_policy = previous
    report.seconds = time.perf_counter() - started
    return report


def format_report(report: SuiteReport) -> str:
    """The pass / fail table ``popql test`` prints, and a summary line."""
    from .result import format_table

    def num(x: float) -> str:
        return "" if x is None or math.isnan(x) else f"{x:.4f}"

    rows = [
        {
            "status": o.status.upper(),
            "expectation": o.expectation,
            "n": o.n,
            "value": num(o.value),
            "95% interval": "" if math.isnan(o.lo) else f"[{num(o.lo)}, {num(o.hi)}]",
            "reason": o.reason,
        }
        for o in report.outcomes
    ]
    schema = pa.schema(
        [
            ("status", pa.string()),
            ("expectation", pa.string()),
            ("n", pa.int64()),
            ("value", pa.string()),
            ("95% interval", pa.string()),
            ("reason", pa.string()),
        ]
    )
    table = format_table(
        pa.Table.from_pylist(rows, schema=schema),
        max_rows=None,
        max_width=80,
        show_types=False,
        row_count=False,
    )
    c = report.counts()
    summary = (
        f"{report.file}: {c['pass']} passed, {c['fail']} failed, "
        f"{c['inconclusive']} inconclusive, {c['error']} errors "
        f"({len(report.outcomes)} expectations, {report.seconds:.2f} s)"
    )
    return table + "\n" + summary


# ---------------------------------------------------------------------------------------------
# JUnit XML
# ---------------------------------------------------------------------------------------------


def junit_xml(reports: Sequence[SuiteReport]) -> str:
    """JUnit XML (one ``testsuite`` per file, one ``testcase`` per expectation): ``failure``
    for fail, ``error`` for error, ``skipped`` for inconclusive (``failure`` under
    ``inconclusive="fail"``)."""
    root = ET.Element("testsuites", name="popql")
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for report in reports:
        c = report.counts()
        strict = report.policy.inconclusive == "fail"
        attrs = {
            "tests": len(report.outcomes),
            "failures": c["fail"] + (c["inconclusive"] if strict else 0),
            "errors": c["error"],
            "skipped": 0 if strict else c["inconclusive"],
        }
        for k, v in attrs.items():
            totals[k] += v
        suite = ET.SubElement(
            root,
            "testsuite",
            {
                "name": report.file,
                "time": f"{report.seconds:.3f}",
                "timestamp": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                **{k: str(v) for k, v in attrs.items()},
            },
        )
        stem = Path(report.file).stem
        for o in report.outcomes:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=stem,
                name=o.expectation,
                file=report.file,
                line=str(o.line or 0),
                time=f"{o.seconds:.3f}",
            )
            props = ET.SubElement(case, "properties")
            for name, value in (
                ("metric", o.metric),
                ("population", o.population),
                ("model", f"{o.model}@{o.version}"),
                ("n", o.n),
                ("value", o.value),
                ("lo", o.lo),
                ("hi", o.hi),
            ):
                ET.SubElement(props, "property", name=name, value=str(value))
            detail = (
                f"{o.expectation}\nmodel: {o.model}@{o.version}  population: {o.population}\n"
                f"n = {o.n}, value = {o.value:.6g}, 95% interval [{o.lo:.6g}, {o.hi:.6g}]\n"
                f"{o.reason}"
            )
            if o.status == "fail" or (o.status == "inconclusive" and strict):
                ET.SubElement(case, "failure", message=o.reason, type=o.status).text = detail
            elif o.status == "error":
                ET.SubElement(case, "error", message=o.reason, type="error").text = detail
            elif o.status == "inconclusive":
                ET.SubElement(case, "skipped", message=f"inconclusive: {o.reason}")
    for k, v in totals.items():
        root.set(k, str(v))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ---------------------------------------------------------------------------------------------
# HTML report
# ---------------------------------------------------------------------------------------------

_COLORS = {"pass": "#1a7f37", "fail": "#cf222e", "inconclusive": "#bf8700", "error": "#6e7781"}

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1f2328}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.summary span{display:inline-block;margin-right:14px;font-weight:600}
table{border-collapse:collapse;font-size:13px;margin-top:8px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{font-weight:700;text-transform:uppercase}
.chart{margin:8px 0 16px} .muted{color:#57606a;font-size:12px}
"""


def _fmt(x: float, digits: int = 4) -> str:
    return "" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def metric_chart(metric: str, outcomes: Sequence[Outcome]) -> str:
    """An inline SVG: one row per expectation of ``metric``: the estimate (dot), its 95 %
    interval (bar) and the threshold (dashed tick), coloured by status."""
    rows = [o for o in outcomes if o.metric == metric]
    values = [v for o in rows for v in (o.lo, o.hi, o.value, o.threshold) if not math.isnan(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad
    left, width, row_h, top = 260, 460, 30, 30
    height = top + row_h * len(rows) + 30

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * width

    parts = [
        f'<svg class="chart" role="img" aria-label="{html.escape(metric)} per population" '
        f'xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{height}" '
        f'viewBox="0 0 {left + width + 90} {height}">',
        f'<text x="0" y="16" font-size="14" font-weight="600">{html.escape(metric)}</text>',
    ]
    for i in range(6):
        v = lo + (hi - lo) * i / 5
        parts.append(
            f'<line x1="{x(v):.1f}" y1="{top - 6}" x2="{x(v):.1f}" y2="{height - 24}" '
            'stroke="#eaeef2"/>'
            f'<text x="{x(v):.1f}" y="{height - 8}" font-size="11" text-anchor="middle" '
            f'fill="#57606a">{v:.3g}</text>'
        )
    for i, o in enumerate(rows):
        y = top + row_h * i + row_h / 2
        color = _COLORS[o.status]
        who = o.population + ("" if o.model is None else f"  ({o.model}@{o.version})")
        parts.append(
            f'<text x="{left - 10}" y="{y + 4:.1f}" font-size="12" text-anchor="end">'
            f"{html.escape(who[:40])}</text>"
        )
        if not math.isnan(o.threshold):
            parts.append(
                f'<line x1="{x(o.threshold):.1f}" y1="{y - 11:.1f}" x2="{x(o.threshold):.1f}" '
                f'y2="{y + 11:.1f}" stroke="#1f2328" stroke-width="2" stroke-dasharray="3,2">'
                f"<title>threshold {o.op} {o.threshold:g}</title></line>"
            )
        if not (math.isnan(o.lo) or math.isnan(o.hi)):
            parts.append(
                f'<line x1="{x(o.lo):.1f}" y1="{y:.1f}" x2="{x(o.hi):.1f}" y2="{y:.1f}" '
                f'stroke="{color}" stroke-width="4" stroke-linecap="round">'
                f"<title>95% interval [{_fmt(o.lo)}, {_fmt(o.hi)}]</title></line>"
            )
        if not math.isnan(o.value):
            parts.append(
                f'<circle cx="{x(o.value):.1f}" cy="{y:.1f}" r="6" fill="{color}" '
                f'stroke="white" stroke-width="1.5"><title>{html.escape(o.status)}: '
                f"{_fmt(o.value)} (n = {o.n})</title></circle>"
            )
        parts.append(
            f'<text x="{left + width + 10}" y="{y + 4:.1f}" font-size="11" fill="{color}">'
            f"{html.escape(o.status)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def html_report(reports: Sequence[SuiteReport], title: str = "PopQL test report") -> str:
    """A self-contained HTML page (inline CSS and SVG, no external resource): a summary, a
    chart per metric with each population's estimate and 95 % interval against its threshold,
    and the table of expectations."""
    outcomes = [o for r in reports for o in r.outcomes]
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES}
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<div class="muted">{html.escape(", ".join(r.file for r in reports))} — {when}</div>',
        '<p class="summary" id="summary">'
        + "".join(f'<span style="color:{_COLORS[s]}">{counts[s]} {s}</span>' for s in STATUSES)
        + "</p>",
    ]
    metrics = list(dict.fromkeys(o.metric for o in outcomes))
    if metrics:
        body.append("<h2>Metrics per population</h2>")
        body.append(
            '<p class="muted">dot: estimate; bar: 95% interval (Wilson for proportions, '
            "bootstrap otherwise); dashed tick: the expectation's threshold.</p>"
        )
    for metric in metrics:
        body.append(f'<div class="metric" data-metric="{html.escape(metric)}">')
        body.append(metric_chart(metric, outcomes))
        body.append("</div>")
    body.append("<h2>Expectations</h2><table><thead><tr>")
    for head in (
        "status",
        "expectation",
        "population",
        "model",
        "n",
        "value",
        "95% interval",
        "reason",
        "where",
    ):
        body.append(f"<th>{head}</th>")
    body.append("</tr></thead><tbody>")
    for o in outcomes:
        body.append(
            "<tr>"
            f'<td class="status" style="color:{_COLORS[o.status]}">{o.status}</td>'
            f"<td><code>{html.escape(o.expectation)}</code></td>"
            f"<td>{html.escape(o.population)}</td>"
            f"<td>{html.escape(f'{o.model}@{o.version}' if o.model else '')}</td>"
            f'<td class="num">{o.n}</td><td class="num">{_fmt(o.value)}</td>'
            f'<td class="num">{"" if math.isnan(o.lo) else f"[{_fmt(o.lo)}, {_fmt(o.hi)}]"}</td>'
            f"<td>{html.escape(o.reason)}</td>"
            f"<td>{html.escape(f'{o.file}:{o.line}' if o.file else '')}</td>"
            "</tr>"
        )
    body.append("</tbody></table>")
    # A tiny script marks the page as rendered (a headless-browser test checks it ran cleanly).
    script = (
        "<script>document.addEventListener('DOMContentLoaded',function(){"
        "var n=document.querySelectorAll('svg.chart').length;"
        "document.body.setAttribute('data-charts',String(n));});</script>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>{script}</head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
