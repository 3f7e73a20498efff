"""FIND FAILURES: slices of the data where a model is significantly worse than overall.

``FIND FAILURES FOR MODEL m [VERSION v] [BY expr, ...] [MIN SUPPORT n]`` searches the samples
that have a prediction of ``m`` and ground truth, SliceLine-style (Sagadeeva & Boehm, SIGMOD
2021):

1. **Basic predicates** from the tag columns of ``samples`` (or the ``BY`` expressions):
   ``col = v`` for booleans, strings with at most 30 values and numbers with at most 10;
   ``col < t`` and ``col >= t`` at the deciles of other numbers; ``col IS NULL`` when a column
   has nulls.
2. **Lattice search**: level 1 is every predicate with support >= ``MIN SUPPORT`` (default
   ``max(10, 1 % of the samples)``); level k+1 joins each of the best 30 slices of level k
   whose error is above the overall error with a predicate on another column (up to 3
   predicates). A slice's score is SliceLine's
   ``alpha (e_S / e - 1) - (1 - alpha) (n / |S| - 1)`` with ``alpha = 0.95`` (``e`` the mean
   per-sample error: 1 - correct for classification, absolute error for regression).
3. **Embedding clusters**: when ``samples`` has ``embedding_*`` columns, k-means (numpy,
   k-means++ seeding, seeded) with k = 2, 4, 8 and 16 over the L2-normalised embeddings gives
   extra candidate slices (``sample_id IN (...)``).
4. **Significance**: a one-sided test of the slice's error against the rest of the samples
   (two-proportion z-test for 0/1 errors, Welch's z for others), Bonferroni-corrected for the
   number of slices evaluated; only slices with corrected p < 0.05 are reported.
5. **Ranking**: by score; a slice with the same samples as a better-ranked one, or a
   conjunction no worse than one of its reported sub-slices, is left out.

Each result row carries a ready ``CREATE POPULATION ... AS SELECT * FROM samples WHERE ...``
whose query selects exactly the slice's samples (among those the model predicted).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from popql import ast as A
from popql.diagnostics import Diagnostic, PopQLError
from popql.format import format_node

from . import metrics as M
from .evaluate import _query, build_frame
from .predictions import load_predictions, model_ref

if TYPE_CHECKING:
    from .commands import CommandContext
    from .result import Result
    from .session import Session

__all__ = ["Slice", "find_failures", "search"]

ALPHA = 0.95
SIGNIFICANCE = 0.05
BEAM = 30
MAX_LEVEL = 3
MAX_VALUES_STRING = 30
MAX_VALUES_NUMBER = 10
QUANTILES = tuple(q / 10 for q in range(1, 10))
EXCLUDED = {"sample_id", "uri", "content_hash", "metadata", "ingested_at", "size_bytes", "split"}
SEED = 7
#: k-means is run with each of these k (the coarsest clusters that fail win on score).
CLUSTER_KS = (2, 4, 8, 16)
#: A slice sharing this share of its samples with a better-ranked one is not reported.
OVERLAP = 0.5


@dataclass(frozen=True)
class Predicate:
    column: str  # the SQL text of the column or expression
    sql: str  # the predicate as SQL
    mask: np.ndarray
    op: str = "="  # "<" and ">=" are thresholds that refinement may move
    values: np.ndarray | None = None  # the column as float64 (NaN: null), for thresholds


@dataclass(frozen=True)
class Slice:
    """One reported slice."""

    where: str
    predicates: tuple[str, ...]
    n: int
    error: float
    overall: float
    p_value: float
    score: float
    kind: str  # "tags" or "cluster"
    mask: np.ndarray


def _literal(v: Any) -> str:
    if isinstance(v, bool | np.bool_):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return repr(float(v))
    return "'" + str(v).replace("'", "''") + "'"


def _threshold(v: float) -> float:
    """``v`` rounded to 4 significant digits (what is printed is what is compared)."""
    if v == 0 or not math.isfinite(v):
        return float(v)
    return float(f"{v:.4g}")


def predicates_for(name: str, col: pa.ChunkedArray | pa.Array) -> list[Predicate]:
    """The basic predicates of one column (see the module docstring)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    out: list[Predicate] = []
    nulls = np.asarray(col.is_null().to_numpy(zero_copy_only=False))
    if nulls.any() and not nulls.all():
        out.append(Predicate(name, f"{name} IS NULL", nulls))
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = col.type
    if pa.types.is_boolean(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        values = [v for v in pc.unique(col).to_pylist() if v is not None]
        if len(values) > MAX_VALUES_STRING or len(values) < 2:
            return out
        arr = np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)
        for v in sorted(values, key=str):
            out.append(Predicate(name, f"{name} = {_literal(v)}", (arr == v) & ~nulls))
        return out
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        return out
    arr = np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    present = arr[~nulls]
    if not len(present):
        return out
    distinct = np.unique(present)
    if len(distinct) < 2:
        return out
    if len(distinct) <= MAX_VALUES_NUMBER:
        integer = pa.types.is_integer(t)
        for v in distinct:
            lit = _literal(int(v)) if integer else _literal(float(v))
            out.append(Predicate(name, f"{name} = {lit}", (arr == v) & ~nulls))
        return out
    cuts = sorted({_threshold(float(q)) for q in np.quantile(present, QUANTILES)})
    for c in cuts:
        lit = _literal(c)
        below = (arr < c) & ~nulls
        if below.any() and not below[~nulls].all():
            out.append(Predicate(name, f"{name} < {lit}", below, "<", arr))
            out.append(Predicate(name, f"{name} >= {lit}", (arr >= c) & ~nulls, ">=", arr))
    return out


def _p_value(err: np.ndarray, mask: np.ndarray, binary: bool) -> float:
    """One-sided p-value that the slice's mean error exceeds the rest's."""
    a, b = err[mask], err[~mask]
    if len(a) == 0 or len(b) == 0:
        return 1.0
    if binary:
        p1, p2 = a.mean(), b.mean()
        pooled = err.mean()
        se = math.sqrt(pooled * (1 - pooled) * (1 / len(a) + 1 / len(b)))
    else:
        p1, p2 = a.mean(), b.mean()
        se = (
            math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
            if len(a) > 1 and len(b) > 1
            else 0.0
        )
    if se == 0:
        return 0.0 if p1 > p2 else 1.0
    z = (p1 - p2) / se
    return 0.5 * math.erfc(z / math.sqrt(2))


def _score(e_slice: float, n_slice: int, e_all: float, n_all: int) -> float:
    if e_all <= 0 or n_slice == 0:
        return -math.inf
    return ALPHA * (e_slice / e_all - 1) - (1 - ALPHA) * (n_all / n_slice - 1)


def kmeans(
    x: np.ndarray, k: int, iterations: int = 30, seed: int = SEED, restarts: int = 5
) -> np.ndarray:
    """Cluster labels of the rows of ``x``: the best (least inertia) of ``restarts`` runs of
    Lloyd's algorithm from k-means++ seeds."""
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray] | None = None
    for _ in range(restarts):
        labels, inertia = _lloyd(x, k, iterations, rng)
        if best is None or inertia < best[0]:
            best = (inertia, labels)
    assert best is not None
    return best[1]


def _lloyd(
    x: np.ndarray, k: int, iterations: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    n = len(x)
    centres = [x[rng.integers(n)]]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = d2.sum()
        idx = int(rng.integers(n)) if total <= 0 else int(rng.choice(n, p=d2 / total))
        centres.append(x[idx])
        d2 = np.minimum(d2, ((x - x[idx]) ** 2).sum(axis=1))
    c = np.array(centres, dtype=np.float64)
    labels = np.full(n, -1, dtype=np.int64)
    dist = np.zeros((n, k))
    for _ in range(iterations):
        dist = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]
        new = dist.argmin(axis=1)
        if (new == labels).all():
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(axis=0)
    inertia = float(dist[np.arange(n), labels].sum())
    return labels, inertia


def search(
    err: np.ndarray,
    predicates: list[Predicate],
    *,
    min_support: int,
    binary: bool,
    clusters: list[Predicate] | None = None,
    top: int = 10,
) -> list[Slice]:
    """The SliceLine-style search over ``predicates`` (see the module docstring)."""
    n = len(err)
    if n == 0:
        return []
    e_all = float(err.mean())
    evaluated: list[tuple[tuple[int, ...], np.ndarray]] = []
    basic = [p for p in predicates if min_support <= int(p.mask.sum()) < n]
    level: list[tuple[tuple[int, ...], np.ndarray]] = [
        ((i,), basic[i].mask) for i in range(len(basic))
    ]
    evaluated.extend(level)
    seen = {key for key, _ in level}
    for _ in range(1, MAX_LEVEL):
        ranked = sorted(
            ((key, mask) for key, mask in level if float(err[mask].mean()) > e_all),
            key=lambda km: -_score(float(err[km[1]].mean()), int(km[1].sum()), e_all, n),
        )[:BEAM]
        nxt = []
        for key, mask in ranked:
            cols = {basic[i].column for i in key}
            for j, p in enumerate(basic):
                if p.column in cols:
                    continue
                new_key = tuple(sorted((*key, j)))
                if new_key in seen:
                    continue
                seen.add(new_key)
                m = mask & p.mask
                if int(m.sum()) >= min_support:
                    nxt.append((new_key, m))
        if not nxt:
            break
        evaluated.extend(nxt)
        level = nxt
    best = sorted(
        (km for km in evaluated if float(err[km[1]].mean()) > e_all),
        key=lambda km: -_score(float(err[km[1]].mean()), int(km[1].sum()), e_all, n),
    )[:BEAM]
    refined = [_refine([basic[i] for i in key], err, e_all, min_support) for key, _ in best]
    conjunctions = [[basic[i] for i in key] for key, _ in evaluated] + refined
    candidates: list[tuple[str, tuple[str, ...], np.ndarray, str]] = []
    done: set[tuple[str, ...]] = set()
    for conj in conjunctions:
        kept = _simplify(conj, err, min_support, binary)
        sqls = tuple(p.sql for p in kept)
        if sqls in done:
            continue
        done.add(sqls)
        mask = np.logical_and.reduce([p.mask for p in kept])
        candidates.append((" AND ".join(sqls), sqls, mask, "tags"))
    for cl in clusters or []:
        if min_support <= int(cl.mask.sum()) < n:
            candidates.append((cl.sql, (cl.sql,), cl.mask, "cluster"))
    tests = max(1, len(candidates))
    found: list[Slice] = []
    for where, texts, mask, kind in candidates:
        size = int(mask.sum())
        e = float(err[mask].mean())
        if e <= e_all:
            continue
        p_adj = min(1.0, _p_value(err, mask, binary) * tests)
        if p_adj >= SIGNIFICANCE:
            continue
        score = _score(e, size, e_all, n)
        found.append(Slice(where, texts, size, e, e_all, p_adj, score, kind, mask))
    found.sort(key=lambda s: (-s.score, len(s.predicates), s.where))
    out: list[Slice] = []
    for s in found:
        # a slice mostly made of the samples of a better one says nothing new
        overlap = any(int((s.mask & o.mask).sum()) >= OVERLAP * min(s.n, o.n) for o in out)
        if overlap:
            continue
        out.append(s)
        if len(out) >= top:
            break
    return out


_RESERVED = {
    "select",
    "from",
    "where",
    "group",
    "having",
    "order",
    "limit",
    "offset",
    "union",
    "intersect",
    "except",
    "join",
    "on",
    "and",
    "or",
    "not",
    "as",
    "into",
    "case",
    "when",
    "then",
    "else",
    "is",
    "in",
    "between",
    "like",
    "ilike",
    "distinct",
    "by",
    "null",
    "true",
    "false",
    "with",
    "using",
    "qualify",
    "window",
}


def _ident(name: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name) and name not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


def _simplify(
    preds: list[Predicate], err: np.ndarray, min_support: int, binary: bool
) -> list[Predicate]:
    """Drop the predicates that do not earn their place: one that removes fewer than
    ``min_support`` samples from the slice of the others, or whose removed samples are not
    significantly better (one-sided p >= 0.01) than those it keeps."""
    preds = list(preds)
    changed = True
    while changed and len(preds) > 1:
        changed = False
        for i, p in enumerate(preds):
            rest = np.logical_and.reduce([q.mask for j, q in enumerate(preds) if j != i])
            removed = rest & ~p.mask
            if (
                int(removed.sum()) < min_support
                or _p_value(err[rest], p.mask[rest], binary) >= 0.01
            ):
                del preds[i]
                changed = True
                break
    return preds


def _refine(
    preds: list[Predicate], err: np.ndarray, e_all: float, min_support: int
) -> list[Predicate]:
    """Move each threshold of a conjunction to the percentile (1..99, within the other
    predicates) that maximises the score: the slice's boundary, not just a decile."""
    n = len(err)
    preds = list(preds)
    for i, p in enumerate(preds):
        if p.values is None or p.op not in ("<", ">="):
            continue
        others = [q.mask for j, q in enumerate(preds) if j != i]
        base = np.logical_and.reduce(others) if others else np.ones(n, dtype=bool)
        vals = p.values[base & ~np.isnan(p.values)]
        if not len(vals):
            continue
        best_p, best_s = p, -math.inf
        for c in sorted({_threshold(float(v)) for v in np.percentile(vals, range(1, 100))}):
            m = (p.values < c) if p.op == "<" else (p.values >= c)
            m = m & ~np.isnan(p.values)
            both = base & m
            size = int(both.sum())
            if size < min_support or size == n:
                continue
            sc = _score(float(err[both].mean()), size, e_all, n)
            if sc > best_s:
                best_s = sc
                best_p = Predicate(p.column, f"{p.column} {p.op} {_literal(c)}", m, p.op, p.values)
        preds[i] = best_p
    return preds


def _columns(
    session: Session, by: tuple[A.Expr, ...], span: Any
) -> tuple[pa.Table, list[str], list[str]]:
    """The samples' candidate columns: (table with sample_id, c0.., names, embedding cols)."""
    from .evaluate import population_schema

    schema = population_schema(session, "samples", span)
    embeddings = [
        f.name
        for f in schema
        if f.name.startswith("embedding_")
        and (pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type))
    ]
    if by:
        names = [format_node(e) for e in by]
        exprs = [f"({n})" for n in names]
        names = [n if isinstance(e, A.Column) else f"({n})" for n, e in zip(names, by, strict=True)]
    else:
        names = []
        for f in schema:
            t = f.type
            if f.name.lower() in EXCLUDED or f.name.startswith("embedding_"):
                continue
            if (
                pa.types.is_boolean(t)
                or pa.types.is_integer(t)
                or pa.types.is_floating(t)
                or pa.types.is_string(t)
                or pa.types.is_large_string(t)
                or t == pa.string_view()
                or pa.types.is_dictionary(t)
            ):
                names.append(_ident(f.name))
        exprs = names
    select = ", ".join(f'{e} AS "c{i}"' for i, e in enumerate(exprs))
    emb = ", ".join(f'"{c}" AS "e{i}"' for i, c in enumerate(embeddings))
    parts = (
        ["CAST(sample_id AS VARCHAR) AS sample_id"]
        + ([select] if select else [])
        + ([emb] if emb else [])
    )
    table = _query(session, f"SELECT {', '.join(parts)} FROM samples", span)
    return table, names, embeddings


def find_failures(session: Session, stmt: A.FindFailures, ctx: CommandContext) -> Result:
    """The FIND FAILURES statement: one row per slice, best first."""
    from .result import Result

    if not ctx.execute:
        return Result.empty()
    model, version = model_ref(stmt.model)
    preds = load_predictions(session, model, version, span=stmt.model.span)
    if preds.task == "classification":
        spec, metric = M.MetricSpec("error_rate"), "error_rate"
    elif preds.task == "regression":
        spec, metric = M.MetricSpec("mae"), "mae"
    else:
        raise PopQLError(
            Diagnostic(
                "V003",
                f"FIND FAILURES needs a per-sample error: model '{model}' makes "
                f"{preds.task} predictions",
                stmt.model.span,
                hints=("it works on classification (label) and regression (value) predictions",),
            )
        )
    frame = build_frame(session, preds, None, [spec], None, stmt.span)
    err = M.per_sample(frame, spec)
    assert err is not None
    table, names, embeddings = _columns(session, stmt.by, stmt.span)
    tids = table.column("sample_id").combine_chunks()
    pos = pc.index_in(pa.array(frame.sample_ids.astype(str), pa.string()), value_set=tids)
    have = np.asarray(pos.is_valid().to_numpy(zero_copy_only=False))
    err = err[have]
    ids = frame.sample_ids[have]
    take = pa.array(np.asarray(pos.drop_null().to_numpy()))
    n = len(err)
    min_support = int(float(stmt.min_support)) if stmt.min_support else max(10, math.ceil(0.01 * n))
    preds_list: list[Predicate] = []
    for i, name in enumerate(names):
        preds_list.extend(predicates_for(name, table.column(f"c{i}").combine_chunks().take(take)))
    clusters: list[Predicate] = []
    for i, name in enumerate(embeddings):
        col = table.column(f"e{i}").combine_chunks().take(take)
        valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False))
        if n < 2 * min_support or not valid.all():
            continue
        x = np.array(col.to_pylist(), dtype=np.float32)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        for k in CLUSTER_KS:
            if k * min_support > n:
                break
            labels = kmeans(x, k)
            for j in range(k):
                mask = labels == j
                members = ", ".join(_literal(s) for s in sorted(ids[mask].astype(str)))
                clusters.append(
                    Predicate(f"cluster:{name}:{k}:{j}", f"sample_id IN ({members})", mask)
                )
    binary = metric == "error_rate"
    slices = search(err, preds_list, min_support=min_support, binary=binary, clusters=clusters)
    rows = []
    for rank, s in enumerate(slices, start=1):
        pop = f"failures_{model}_{rank}"
        describe = (
            f"{model}@{preds.version}: {metric} {s.error:.3f} vs {s.overall:.3f} overall, "
            f"n = {s.n}" + (f", k-means cluster of {s.kind}" if s.kind == "cluster" else "")
        ).replace("'", "''")
        statement = (
            f"CREATE POPULATION {pop} DESCRIPTION '{describe}' AS\n"
            f"  SELECT * FROM samples WHERE {s.where}"
        )
        rows.append(
            {
                "rank": rank,
                "slice": s.where if s.kind == "tags" else f"cluster of {s.n} samples (embeddings)",
                "kind": s.kind,
                "n": s.n,
                "metric": metric,
                "value": s.error,
                "overall": s.overall,
                "p_value": s.p_value,
                "score": s.score,
                "statement": statement,
            }
        )
    schema = pa.schema(
        [
            ("rank", pa.int64()),
            ("slice", pa.string()),
            ("kind", pa.string()),
            ("n", pa.int64()),
            ("metric", pa.string()),
            ("value", pa.float64()),
            ("overall", pa.float64()),
            ("p_value", pa.float64()),
            ("score", pa.float64()),
            ("statement", pa.string()),
        ]
    )
    return Result(pa.Table.from_pylist(rows, schema=schema), kind="query", statement=ctx.statement)
