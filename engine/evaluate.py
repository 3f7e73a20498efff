"""EVALUATE and COMPARE: per-population metrics with 95 % intervals, paired comparisons.

A population is any name that can stand in a FROM clause (a table, a view, a population): its
samples are ``SELECT sample_id FROM <name>`` run through PopQL. The samples evaluated are those
of the population with a prediction of the model (the version named, else the latest logged)
and with the ground truth the metric needs; ``n`` counts them.

Ground truth (``docs/evaluation.md``) is looked up by column name, first in the population's
own columns, then in ``samples``, then in ``labels``:

==============  ===================  ==================================================
prediction      true value column    metrics
==============  ===================  ==================================================
``label``       ``label``            accuracy, error_rate, precision, recall, f1
``detections``  ``gt_detections``    map50
``mask``        ``gt_mask``          miou (``class_iou`` needs no ground truth)
``value``       ``target``           mae
(a column)      --                   mean(col): the predictions' column, else the
                                     population's, else samples'
==============  ===================  ==================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from popql import ast as A
from popql.diagnostics import Diagnostic, PopQLError, did_you_mean_hint
from popql.format import format_node

from . import metrics as M
from .predictions import Predictions, load_predictions, model_names, model_ref, plain_types

if TYPE_CHECKING:
    from .commands import CommandContext
    from .result import Result
    from .session import Session

__all__ = ["Evaluation", "build_frame", "compare", "evaluate", "population_ids"]

#: Frame column -> the ground-truth column it is read from.
TRUTH = {
    "true_label": "label",
    "true_detections": "gt_detections",
    "true_mask": "gt_mask",
    "true_target": "target",
}
#: Frame column -> the predictions column.
PRED = {
    "pred_label": "label",
    "pred_detections": "detections",
    "pred_mask": "mask",
    "pred_class_iou": "class_iou",
    "pred_value": "value",
}
DEFAULT_METRICS = {
    "classification": ("accuracy", "f1"),
    "detection": ("map50",),
    "segmentation": ("miou",),
    "regression": ("mae",),
}
TRUTH_SOURCES = ("samples", "labels")
ALPHA = 0.05


def _error(code: str, message: str, span: Any = None, *hints: str) -> PopQLError:
    return PopQLError(Diagnostic(code, message, span, hints=tuple(h for h in hints if h)))


# ---------------------------------------------------------------------------------------------
# Metrics as written
# ---------------------------------------------------------------------------------------------


def metric_specs(metrics: Sequence[A.Metric], preds: Predictions | None) -> list[M.MetricSpec]:
    """The METRICS clause as :class:`MetricSpec` values (the task's defaults when empty)."""
    if not metrics:
        if preds is None:
            return []
        names = DEFAULT_METRICS.get(preds.task)
        if names is None:
            numeric = [
                f.name
                for f in preds.table.schema
                if f.name not in ("sample_id", "model", "version", "logged_at")
                and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))
            ]
            if not numeric:
                raise _error(
                    "V003",
                    f"model '{preds.model}' has no column to evaluate by default",
                    None,
                    "name the metrics: EVALUATE m ON pop METRICS mean(score)",
                )
            return [M.MetricSpec("mean", c) for c in numeric]
        return [M.MetricSpec(n) for n in names]
    return [metric_spec(m) for m in metrics]


def metric_spec(m: A.Metric) -> M.MetricSpec:
    name = m.name.value.lower()
    if name not in M.METRICS:
        raise _error(
            "V002",
            f"unknown metric '{m.name.value}'",
            m.name.span,
            did_you_mean_hint(name, M.METRICS) or "",
            "metrics: " + ", ".join(sorted(M.METRICS)),
        )
    if len(m.args) > 1 or (m.args and name not in M.TAKES_ARG):
        raise _error(
            "V002",
            f"metric '{name}' takes " + ("one argument" if name in M.TAKES_ARG else "no arguments"),
            m.span,
        )
    arg: str | None = None
    if m.args:
        a = m.args[0]
        if isinstance(a, A.String):
            arg = a.value.replace("''", "'")
        elif isinstance(a, A.Column) and len(a.parts) == 1:
            arg = a.parts[0].value
        elif isinstance(a, A.Number):
            arg = a.text
        else:
            raise _error(
                "V002",
                f"the argument of {name}() is a column name or a class ('cat')",
                a.span,
            )
    if M.TAKES_ARG.get(name) and arg is None:
        raise _error("V002", f"metric '{name}' needs a column: {name}(col)", m.span)
    return M.MetricSpec(name, arg)


# ---------------------------------------------------------------------------------------------
# Populations and frames
# ---------------------------------------------------------------------------------------------


def relation_text(ident: A.Identifier | str) -> str:
    if isinstance(ident, str):
        return '"' + ident.replace('"', '""') + '"'
    return format_node(ident)


def _query(session: Session, text: str, span: Any) -> pa.Table:
    """Run PopQL ``text`` (no file context); diagnostics are moved to ``span``."""
    try:
        return plain_types(session.sql(text).to_arrow())
    except PopQLError as err:
        diags = tuple(
            Diagnostic(d.code, d.message, span, hints=d.hints, severity=d.severity)
            for d in err.diagnostics
        )
        raise PopQLError(diags) from None


def population_schema(session: Session, ident: A.Identifier | str, span: Any) -> pa.Schema:
    return _query(session, f"SELECT * FROM {relation_text(ident)} LIMIT 0", span).schema


def population_ids(session: Session, ident: A.Identifier | str, span: Any = None) -> pa.Array:
    """The distinct sample ids of a population (anything that can stand in FROM)."""
    name = relation_text(ident)
    schema = population_schema(session, ident, span)
    if "sample_id" not in schema.names:
        raise _error(
            "V003",
            f"{name} has no sample_id column: it cannot be a population",
            span,
            "a population is a table or view of samples: SELECT * FROM samples WHERE ...",
        )
    table = _query(
        session, f"SELECT DISTINCT CAST(sample_id AS VARCHAR) AS sample_id FROM {name}", span
    )
    return table.column("sample_id").combine_chunks()


def _truth_lookup(
    session: Session, column: str, pop: A.Identifier | str | None, span: Any
) -> pa.Table | None:
    """``sample_id, <column>`` from the population, else samples, else labels."""
    sources: list[A.Identifier | str] = [pop] if pop is not None else []
    sources.extend(TRUTH_SOURCES)
    tables = set(session.tables())
    for source in sources:
        if isinstance(source, str) and source not in tables:
            continue
        try:
            schema = population_schema(session, source, span)
        except PopQLError:
            continue
        if column in schema.names and "sample_id" in schema.names:
            col = '"' + column.replace('"', '""') + '"'
            return _query(
                session,
                f"SELECT CAST(sample_id AS VARCHAR) AS sample_id, {col} AS v "
                f"FROM {relation_text(source)}",
                span,
            )
    return None


def _numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t):
        return np.asarray(col.to_numpy(zero_copy_only=False))
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)
    out = np.empty(len(col), dtype=object)
    out[:] = col.to_pylist()
    return out


def build_frame(
    session: Session,
    preds: Predictions,
    ids: pa.Array | None,
    specs: Sequence[M.MetricSpec],
    pop: A.Identifier | str | None,
    span: Any = None,
) -> M.Frame:
    """The aligned arrays the metrics ``specs`` need, for the samples in ``ids`` (all the
    model's predictions when None). Samples missing a needed value are left out."""
    table = preds.table
    if ids is not None:
        table = table.filter(pc.is_in(table.column("sample_id"), value_set=ids))
    needed: list[str] = []
    for spec in specs:
        for need in spec.needs():
            if need == "pred_mask|pred_class_iou":
                need = "pred_mask" if "mask" in table.column_names else "pred_class_iou"
                if need == "pred_mask":
                    needed.append("true_mask")
            if need not in needed:
                needed.append(need)
    sample_ids = table.column("sample_id").combine_chunks()
    keep = np.ones(len(sample_ids), dtype=bool)
    columns: dict[str, np.ndarray] = {}
    for need in needed:
        if need in PRED:
            source = PRED[need]
            if source not in table.column_names:
                raise _error(
                    "V003",
                    f"model '{preds.model}' version '{preds.version}' has no '{source}' "
                    f"predictions (needed by {_metrics_for(need)})",
                    span,
                    f"its columns: {', '.join(table.column_names)}",
                )
            col = table.column(source)
            keep &= ~np.asarray(col.is_null().to_numpy(zero_copy_only=False))
            columns[need] = _numpy(col)
        elif need in TRUTH or need.startswith("col:"):
            name = TRUTH.get(need) or need[4:]
            if need.startswith("col:") and name in table.column_names:
                col = table.column(name)
            else:
                truth = _truth_lookup(session, name, pop, span)
                if truth is None:
                    what = "ground truth" if need in TRUTH else "column"
                    raise _error(
                        "V003",
                        f"no {what} column '{name}' in "
                        + (f"{relation_text(pop)}, " if pop is not None else "")
                        + "samples or labels"
                        + ("" if need in TRUTH else f" or the predictions of '{preds.model}'"),
                        span,
                        f"{_metrics_for(need)}: the predictions are compared with '{name}'"
                        if need in TRUTH
                        else "",
                    )
                tids = truth.column("sample_id").combine_chunks()
                pos = pc.index_in(sample_ids, value_set=tids)
                valid = np.asarray(pos.is_valid().to_numpy(zero_copy_only=False))
                pos_np = np.where(valid, np.asarray(pos.fill_null(0).to_numpy()), 0)
                col = truth.column("v").combine_chunks().take(pa.array(pos_np))
                keep &= valid
            keep &= ~np.asarray(col.is_null().to_numpy(zero_copy_only=False))
            columns[need] = _numpy(col)
    idx = np.nonzero(keep)[0]
    ids_np = np.asarray(sample_ids.to_numpy(zero_copy_only=False), dtype=object)
    return M.Frame(ids_np, columns).take(idx)


def _metrics_for(need: str) -> str:
    return {
        "pred_label": "accuracy, precision, recall and f1",
        "true_label": "accuracy, precision, recall and f1",
        "pred_detections": "map50",
        "true_detections": "map50",
        "pred_mask": "miou",
        "true_mask": "miou",
        "pred_class_iou": "miou",
        "pred_value": "mae",
        "true_target": "mae",
    }.get(need, "mean()")


def resolve_model(
    session: Session, ref: A.ModelRef | None, span: Any = None
) -> tuple[str, str | None]:
    """(model, version) of ``FOR MODEL ref``; without one, the session's default model
    (``popql test --model``), else the only model with predictions."""
    if ref is not None:
        return model_ref(ref)
    default: str | None = getattr(session, "default_model", None)
    if default:
        name, _, version = default.partition("@")
        return name, version or None
    known = model_names(session)
    if len(known) == 1:
        return known[0], None
    raise _error(
        "V003",
        "which model? name it with FOR MODEL m"
        + (f" (models: {', '.join(known)})" if known else " (no predictions are logged)"),
        span,
        "or run the suite with popql test FILE --model m",
    )


# ---------------------------------------------------------------------------------------------
# EVALUATE
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """One population's metrics."""

    population: str
    n: int
    values: tuple[M.MetricValue, ...]


def evaluate_population(
    session: Session,
    preds: Predictions,
    pop: A.Identifier | str,
    specs: Sequence[M.MetricSpec],
    span: Any = None,
) -> Evaluation:
    ids = population_ids(session, pop, span)
    frame = build_frame(session, preds, ids, specs, pop, span)
    name = pop if isinstance(pop, str) else pop.value
    return Evaluation(name, len(frame), tuple(M.compute(frame, s) for s in specs))


def _wide(rows: list[dict[str, Any]], keys: list[str], specs: Sequence[M.MetricSpec]) -> pa.Table:
    fields: list[pa.Field] = []
    for k in keys:
        fields.append(pa.field(k, pa.string()))
    fields += [pa.field("model", pa.string()), pa.field("version", pa.string())]
    fields.append(pa.field("n", pa.int64()))
    for s in specs:
        for suffix in ("", "_lo", "_hi"):
            fields.append(pa.field(s.label + suffix, pa.float64()))
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def _nan_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def evaluate(session: Session, stmt: A.Evaluate, ctx: CommandContext) -> Result:
    """``EVALUATE m ON pop, ... [METRICS ...]`` and ``EVALUATE m BY expr, ...``."""
    from .result import Result

    specs_written = [metric_spec(m) for m in stmt.metrics]
    for pop in stmt.populations:
        population_schema(session, pop, pop.span)
    if not ctx.execute:
        return Result.empty()
    model, version = model_ref(stmt.model)
    preds = load_predictions(session, model, version, span=stmt.model.span)
    specs = specs_written or metric_specs((), preds)
    rows: list[dict[str, Any]] = []
    if stmt.by:
        keys = [format_node(e) for e in stmt.by]
        groups = _groups(session, stmt.by, stmt.span)
        all_ids = pa.array(sorted({i for ids in groups.values() for i in ids}), pa.string())
        frame = build_frame(session, preds, all_ids, specs, None, stmt.span)
        position = {sid: i for i, sid in enumerate(frame.sample_ids)}
        for key, ids in sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
            idx = np.array([position[i] for i in ids if i in position], dtype=np.int64)
            sub = frame.take(idx)
            values = [M.compute(sub, s) for s in specs]
            row: dict[str, Any] = {
                k: None if v is None else str(v) for k, v in zip(keys, key, strict=True)
            }
            rows.append(_row(row, preds, len(sub), values))
    else:
        keys = ["population"]
        for pop in stmt.populations:
            ev = evaluate_population(session, preds, pop, specs, pop.span)
            rows.append(_row({"population": ev.population}, preds, ev.n, list(ev.values)))
    return Result(_wide(rows, keys, specs), kind="query", statement=ctx.statement)


def _row(
    row: dict[str, Any], preds: Predictions, n: int, values: Sequence[M.MetricValue]
) -> dict[str, Any]:
    row.update({"model": preds.model, "version": preds.version, "n": n})
    for v in values:
        row[v.metric] = _nan_none(v.value)
        row[v.metric + "_lo"] = _nan_none(v.lo)
        row[v.metric + "_hi"] = _nan_none(v.hi)
    return row


def _groups(
    session: Session, exprs: Sequence[A.Expr], span: Any
) -> dict[tuple[Any, ...], list[str]]:
    select = ", ".join(f'({format_node(e)}) AS "g{i}"' for i, e in enumerate(exprs))
    table = _query(
        session, f"SELECT CAST(sample_id AS VARCHAR) AS sample_id, {select} FROM samples", span
    )
    ids = table.column("sample_id").to_pylist()
    keys = list(zip(*(table.column(f"g{i}").to_pylist() for i in range(len(exprs))), strict=True))
    groups: dict[tuple[Any, ...], list[str]] = {}
    for sid, key in zip(ids, keys, strict=True):
        groups.setdefault(key, []).append(sid)
    return groups


# ---------------------------------------------------------------------------------------------
# COMPARE
# ---------------------------------------------------------------------------------------------


def compare(session: Session, stmt: A.Compare, ctx: CommandContext) -> Result:
    """``COMPARE new WITH base ON pop, ... [METRICS ...]``: ``new - base`` per population and
    metric on the samples both models predicted, paired (McNemar for accuracy, else a paired
    bootstrap), p-values Holm-adjusted over the statement's rows; ``flag`` is ``regression``
    (or ``improvement``) when the adjusted p-value is below 0.05."""
    from .result import Result

    specs_written = [metric_spec(m) for m in stmt.metrics]
    for pop in stmt.populations:
        population_schema(session, pop, pop.span)
    if not ctx.execute:
        return Result.empty()
    new_model, new_version = model_ref(stmt.model)
    base_model, base_version = model_ref(stmt.baseline)
    new = load_predictions(session, new_model, new_version, span=stmt.model.span)
    base = load_predictions(session, base_model, base_version, span=stmt.baseline.span)
    specs = specs_written or metric_specs((), base)
    diffs: list[tuple[str, M.Difference]] = []
    for pop in stmt.populations:
        ids = population_ids(session, pop, pop.span)
        f_new = build_frame(session, new, ids, specs, pop, pop.span)
        f_base = build_frame(session, base, ids, specs, pop, pop.span)
        common = np.intersect1d(f_new.sample_ids.astype(str), f_base.sample_ids.astype(str))
        f_new = _align(f_new, common)
        f_base = _align(f_base, common)
        for spec in specs:
            diffs.append((pop.value, M.compare(f_base, f_new, spec)))
    adjusted = M.holm([d.p_value for _, d in diffs])
    rows = []
    for (pop_name, d), p_adj in zip(diffs, adjusted, strict=True):
        spec_hib = not d.metric.startswith(("mae", "error_rate"))
        flag = ""
        if not math.isnan(p_adj) and p_adj < ALPHA and d.diff != 0:
            worse = d.diff < 0 if spec_hib else d.diff > 0
            flag = "regression" if worse else "improvement"
        rows.append(
            {
                "population": pop_name,
                "metric": d.metric,
                "n": d.n,
                "baseline": f"{base.model}@{base.version}",
                "model": f"{new.model}@{new.version}",
                "baseline_value": _nan_none(d.base),
                "model_value": _nan_none(d.new),
                "diff": _nan_none(d.diff),
                "diff_lo": _nan_none(d.lo),
                "diff_hi": _nan_none(d.hi),
                "p_value": _nan_none(d.p_value),
                "p_holm": _nan_none(p_adj),
                "test": d.test,
                "flag": flag,
            }
        )
    schema = pa.schema(
        [
            ("population", pa.string()),
            ("metric", pa.string()),
            ("n", pa.int64()),
            ("baseline", pa.string()),
            ("model", pa.string()),
            ("baseline_value", pa.float64()),
            ("model_value", pa.float64()),
            ("diff", pa.float64()),
            ("diff_lo", pa.float64()),
            ("diff_hi", pa.float64()),
            ("p_value", pa.float64()),
            ("p_holm", pa.float64()),
            ("test", pa.string()),
            ("flag", pa.string()),
        ]
    )
    return Result(pa.Table.from_pylist(rows, schema=schema), kind="query", statement=ctx.statement)


def _align(frame: M.Frame, ids: np.ndarray) -> M.Frame:
    pos = {sid: i for i, sid in enumerate(frame.sample_ids.astype(str))}
    return frame.take(np.array([pos[i] for i in ids], dtype=np.int64))
