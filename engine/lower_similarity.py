"""Lowering of similarity search: ``SIMILAR TO`` on images, ``NEAR``, ``SIMILARITY()``.

Each search becomes a registered result table ``(sample_id, score)`` computed before DataFusion
plans the statement (by :class:`popql.engine.similarity.SimilarityService`, reached through the
catalog's ``similarity_search``), and the construct is rewritten to plain SQL over it:

===========================================  ====================================================
PopQL                                        DataFusion SQL
===========================================  ====================================================
``image SIMILAR TO 'a dog' TOP 10``          ``s.sample_id IN (SELECT sample_id FROM sim_1)``
``NEAR IMAGE 'x.jpg' THRESHOLD 0.3``         the same, over the rows scoring at least 0.3
``x NOT SIMILAR TO ...`` / ``NOT (...)``     ``... NOT IN (...)``
``SIMILARITY('a dog')``                      ``__popql_score_1(s.sample_id)``: a lookup in a result
===========================================  ====================================================

**Which rows a search ranks** (filter-aware search). A search that is a conjunct of its SELECT's
WHERE clause (``WHERE <p> AND image SIMILAR TO 'x' TOP k``) ranks only the rows that satisfy the
other conjuncts (``<p>``, and the searches before it), so ``TOP k`` returns k rows whenever k rows
satisfy the predicates. A search anywhere else (under ``OR``, in a ``CASE``, in the SELECT list)
ranks every row of the FROM clause and its membership is combined by SQL. ``SIMILARITY()`` in the
SELECT list, ORDER BY, GROUP BY or HAVING scores the rows that pass the whole WHERE clause (read
from the WHERE clause's own search when it is the same query); in the WHERE clause it scores
every row of the FROM clause.

**Membership** is ``TOP k``, ``THRESHOLD t`` or, for a query ordered by the score with a LIMIT
(``ORDER BY SIMILARITY('x') DESC LIMIT n`` with no GROUP BY, DISTINCT or aggregate), the top
``n + offset``: that query gets the search as an implicit WHERE conjunct. A search with none of
these is diagnostic S001: PopQL never guesses a k for a threshold or a threshold for a k.

**The image of a FROM item** is its ``sample_id``: ``image`` names it (``s.image`` for an alias
``s``), and the bare forms (``SIMILAR TO 'x'``, ``NEAR ...``, ``SIMILARITY('x')``) take the one
FROM item with a ``sample_id`` column: the dataset's ``samples``, a population, a subquery over
them. ``AS OF VERSION n`` searches that version's vectors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from popql import ast as A
from popql.check import ColumnInfo, Scope, is_image_column, is_text_type
from popql.diagnostics import Diagnostic, PopQLError, did_you_mean
from popql.format import to_sql

from .similarity import ALL_ROWS, Example, SearchOutcome, SearchRequest

if TYPE_CHECKING:
    from .lower import _Lowering

SEARCH_NODES = (A.SimilarTo, A.Near, A.SimilarityScore)
# fmt: off
AGGREGATES = frozenset((
    "count", "sum", "avg", "mean", "min", "max", "array_agg", "string_agg", "median", "stddev",
    "stddev_pop", "stddev_samp", "var", "var_pop", "var_samp", "variance", "first_value",
    "last_value", "approx_distinct", "approx_median", "approx_percentile_cont", "bit_and",
    "bit_or", "bit_xor", "bool_and", "bool_or", "corr", "covar", "covar_pop", "covar_samp",
    "nth_value", "grouping", "regr_slope", "regr_intercept", "regr_count", "regr_r2",
    "regr_avgx", "regr_avgy", "regr_sxx", "regr_syy", "regr_sxy",
))
# fmt: on
_VERSIONED = re.compile(r"^(?:data\.)?samples@v(\d+)$")
_DATASET_TABLES = frozenset({"samples", "data.samples"})


@dataclass(frozen=True)
class Relation:
    """A FROM item whose rows are dataset samples (it has a ``sample_id`` column)."""

    qualifier: str | None
    table: str | None  # base table name, None for derived tables and CTEs
    version: int | None

    def key_column(self) -> A.Column:
        sid = A.Identifier("sample_id", quote='"')
        if self.qualifier is None:
            return A.Column((sid,))
        return A.Column((A.Identifier(self.qualifier, quote='"'), sid))


@dataclass(frozen=True)
class OrderSearch:
    """``ORDER BY SIMILARITY(...) DESC LIMIT n [OFFSET m]``: the top ``n + m`` by that score."""

    score: A.SimilarityScore
    k: int


@dataclass
class SelectContext:
    scope: Scope
    order: OrderSearch | None = None
    order_key: tuple[Any, ...] | None = None
    from_: tuple[Any, ...] = ()
    phase: str = "from"  # "from", "where", "post"
    conds: list[A.Expr] = field(default_factory=list)  # lowered WHERE conjuncts so far
    where_complete: bool = False  # conds is the whole WHERE clause (post phase)
    # the node being visited is a top-level WHERE conjunct: True, or "negated" under NOT (...)
    top_member: bool | str = False
    results: dict[tuple[Any, ...], tuple[Relation, SearchOutcome]] = field(default_factory=dict)
    scores: dict[tuple[Any, ...], SearchOutcome] = field(default_factory=dict)
    from_scope: Scope | None = None  # the lowered FROM clause, when lowering changed it


# ------------------------------------------------------------------------------------------------
# SELECT and its WHERE clause


def lower_select(
    lw: _Lowering, select: A.Select, parent: Scope | None, order: OrderSearch | None = None
) -> tuple[A.Select, SelectContext]:
    """Lower one SELECT: FROM, then WHERE (searches after the plain conjuncts), then the rest.
    The caller pops the returned context from ``lw.selects`` (query-level ORDER BY uses it)."""
    scope = Scope.for_select(select, lw.catalog, parent, lw.ctes, lw.sql_of)
    ctx = SelectContext(scope, order)
    lw.selects.append(ctx)
    from_ = lw.visit(select.from_, scope)
    ctx.from_ = from_
    if from_ != select.from_:
        # FROM t AS OF VERSION n is now FROM "t@vn": searches read that version's vectors
        lowered = A.Select((), from_=from_)
        ctx.from_scope = Scope.for_select(lowered, lw.catalog, parent, lw.ctes, lw.sql_of)
    if order is not None:
        rel = search_relation(lw, order.score.operand, scope, order.score, "SIMILARITY")
        ctx.order_key = _score_key(order.score, rel)
    where = select.where
    if where is not None:
        ctx.phase = "where"
        where = _lower_where(lw, ctx, where, scope)
    ctx.where_complete = True
    if order is not None and ctx.order_key is not None and ctx.order_key not in ctx.results:
        rel = search_relation(lw, order.score.operand, scope, order.score, "SIMILARITY")
        assert rel is not None
        outcome = _search(
            lw,
            ctx,
            rel,
            _score_examples(order.score),
            order.score.using,
            order.score,
            k=order.k,
            threshold=None,
            exact=False,
            filtered=True,
            construct="ORDER BY ... LIMIT",
        )
        member = _member(rel, outcome, negated=False)
        ctx.conds.append(member)
        ctx.results[ctx.order_key] = (rel, outcome)
        where = member if where is None else A.Binary("AND", where, member)
    ctx.phase = "post"
    rest = lw.visit_fields(select, scope, skip=("from_", "where"))
    out = A.Select(**{**_fields(rest), "from_": from_, "where": where})
    object.__setattr__(out, "span", select.span)
    return out, ctx


def _fields(node: A.Node) -> dict[str, Any]:
    return {k: v for k, v in node.__dict__.items() if k != "span"}


def _lower_where(lw: _Lowering, ctx: SelectContext, where: A.Expr, scope: Scope) -> A.Expr:
    if not any(isinstance(n, SEARCH_NODES) for n in where.walk()):
        lowered = lw.visit(where, scope)
        ctx.conds.append(lowered)
        return lowered  # type: ignore[no-any-return]
    conjuncts = _conjuncts(where)
    kinds = [_classify(lw, c, scope) for c in conjuncts]
    out: list[A.Expr | None] = [None] * len(conjuncts)
    for wanted in ("plain", "member", "other"):
        for i, c in enumerate(conjuncts):
            if kinds[i] != wanted:
                continue
            if wanted == "member":
                ctx.top_member = "negated" if isinstance(c, A.Not) else True
            try:
                out[i] = lw.visit(c, scope)
            finally:
                ctx.top_member = False
            if wanted != "other":
                ctx.conds.append(out[i])  # type: ignore[arg-type]
    result = out[0]
    assert result is not None
    for item in out[1:]:
        assert item is not None
        result = A.Binary("AND", result, item)
    # "other" conjuncts joined the WHERE too: the post phase sees every conjunct.
    ctx.conds = [x for x in out if x is not None]
    return result


def _conjuncts(expr: A.Expr) -> list[A.Expr]:
    if isinstance(expr, A.Binary) and expr.op.upper() == "AND":
        return _conjuncts(expr.left) + _conjuncts(expr.right)
    return [expr]


def _classify(lw: _Lowering, expr: A.Expr, scope: Scope) -> str:
    if not any(isinstance(n, SEARCH_NODES) for n in expr.walk()):
        return "plain"
    inner = expr.operand if isinstance(expr, A.Not) else expr
    if isinstance(inner, A.Near):
        return "member"
    if isinstance(inner, A.SimilarTo):
        rel = search_relation(lw, inner.operand, scope, inner, "SIMILAR TO", options=inner.options)
        if rel is None:  # SQL's regular-expression SIMILAR TO on text
            return "plain"
        return "member"
    return "other"


# ------------------------------------------------------------------------------------------------
# ORDER BY SIMILARITY(...) DESC LIMIT n


def order_search(query: A.Query) -> OrderSearch | None:
    body = query.body
    if not isinstance(body, A.Select) or not query.order_by or query.limit is None:
        return None
    if body.group_by or body.having or body.distinct or body.windows or body.qualify:
        return None
    first = query.order_by[0]
    if (first.direction or "").upper() != "DESC":
        return None
    expr: Any = first.expr
    items = [i for i in body.items if isinstance(i, A.SelectItem)]
    if isinstance(expr, A.Column) and len(expr.parts) == 1:
        name = _norm(expr.parts[0])
        expr = next((i.expr for i in items if i.alias and _norm(i.alias) == name), expr)
    elif isinstance(expr, A.Number) and expr.text.isdigit():
        n = int(expr.text)
        if 1 <= n <= len(body.items) and isinstance(body.items[n - 1], A.SelectItem):
            expr = body.items[n - 1].expr  # type: ignore[union-attr]
    if not isinstance(expr, A.SimilarityScore) or not _rows_are_samples(body):
        return None
    limit = _int_literal(query.limit)
    offset = 0 if query.offset is None else _int_literal(query.offset)
    if limit is None or offset is None:
        return None
    return OrderSearch(expr, limit + offset)


def rank_order(query: A.Query, body: A.Select, ctx: SelectContext) -> A.Query:
    """A query without ORDER BY whose WHERE clause holds a search returns its rows best first
    (then by sample_id): SQL leaves the order open, and rank order is what a search means."""
    if not ctx.results or not _rows_are_samples(body):
        return query
    rel, outcome = next(iter(ctx.results.values()))
    score = A.FunctionCall((A.Identifier(outcome.score_udf, quote='"'),), (rel.key_column(),))
    order = (A.OrderItem(score, "DESC"), A.OrderItem(rel.key_column(), "ASC"))
    out = A.Query(**{**_fields(query), "order_by": order})
    object.__setattr__(out, "span", query.span)
    return out


def _rows_are_samples(body: A.Select) -> bool:
    """True when each output row is one FROM row (no grouping, DISTINCT or aggregate)."""
    if body.group_by or body.having or body.distinct or body.windows or body.qualify:
        return False
    for item in body.items:
        if not isinstance(item, A.SelectItem):
            continue
        for node in item.expr.walk():
            if isinstance(node, A.FunctionCall) and (
                node.over is not None or _norm(node.name[-1]) in AGGREGATES
            ):
                return False
    return True


def _int_literal(expr: A.Expr | None) -> int | None:
    if isinstance(expr, A.Number) and expr.text.isdigit():
        return int(expr.text)
    return None


# ------------------------------------------------------------------------------------------------
# the constructs


def lower_similar_to(lw: _Lowering, node: A.SimilarTo, scope: Scope | None) -> A.Expr:
    rel = search_relation(lw, node.operand, scope, node, "SIMILAR TO", options=node.options)
    if rel is None:
        return node  # SQL's SIMILAR TO: a regular-expression match, kept as it is
    examples = (_text_example(node.target, "SIMILAR TO"),)
    return _lower_membership(lw, node, rel, examples, node.options, node.negated, "SIMILAR TO")


def lower_near(lw: _Lowering, node: A.Near, scope: Scope | None) -> A.Expr:
    rel = search_relation(lw, node.operand, scope, node, "NEAR", options=node.options)
    assert rel is not None
    examples = tuple(_near_example(e) for e in node.examples)
    return _lower_membership(lw, node, rel, examples, node.options, node.negated, "NEAR")


def lower_similarity_score(lw: _Lowering, node: A.SimilarityScore, scope: Scope | None) -> A.Expr:
    rel = search_relation(lw, node.operand, scope, node, "SIMILARITY")
    assert rel is not None
    ctx = lw.selects[-1] if lw.selects else None
    key = _score_key(node, rel)
    if ctx is not None and ctx.phase == "post" and key in ctx.results:
        outcome = ctx.results[key][1]
    else:
        post = ctx is not None and ctx.phase == "post"
        cache_key = (post, *key)
        cached = ctx.scores.get(cache_key) if ctx is not None else None
        if cached is None:
            cached = _search(
                lw,
                ctx,
                rel,
                _score_examples(node),
                node.using,
                node,
                k=None,
                threshold=ALL_ROWS,
                exact=False,
                filtered=post,
                construct="SIMILARITY",
            )
            if ctx is not None:
                ctx.scores[cache_key] = cached
        outcome = cached
    return A.FunctionCall((A.Identifier(outcome.score_udf, quote='"'),), (rel.key_column(),))


def _lower_membership(
    lw: _Lowering,
    node: A.Expr,
    rel: Relation,
    examples: tuple[Example, ...],
    options: A.SearchOptions,
    negated: bool,
    construct: str,
) -> A.Expr:
    ctx = lw.selects[-1] if lw.selects else None
    top = ctx is not None and bool(ctx.top_member)
    # a member of the result (not NOT x SIMILAR TO, not NOT (x SIMILAR TO ...))
    positive = not negated and not (ctx is not None and ctx.top_member == "negated")
    if ctx is not None:
        ctx.top_member = False  # only this node, not searches nested inside it
    using = options.using
    key = (rel.qualifier, _using_key(using), examples)
    k = _parse_k(options.top_k, node)
    threshold = _parse_threshold(options.threshold, node)
    if k is None and threshold is None:
        if ctx is not None and top and positive and ctx.order is not None and ctx.order_key == key:
            k = ctx.order.k
        else:
            raise PopQLError(
                (
                    Diagnostic(
                        "S001",
                        f"{construct} needs a membership: how many rows, or how similar?",
                        node.span,
                        hints=(
                            f"add TOP k (the k most similar rows) or THRESHOLD t (every row"
                            f" with cosine similarity at least t) after the {construct} target,"
                            " or order the query by SIMILARITY(...) DESC with a LIMIT",
                        ),
                    ),
                )
            )
    outcome = _search(
        lw,
        ctx,
        rel,
        examples,
        using,
        node,
        k=k,
        threshold=threshold,
        exact=options.exact,
        filtered=top,
        construct=construct,
    )
    if ctx is not None and top and positive:
        ctx.results[key] = (rel, outcome)
    return _member(rel, outcome, negated, top)


def _member(rel: Relation, outcome: SearchOutcome, negated: bool, top: bool = True) -> A.Expr:
    """Membership in a search's result: a literal IN list when it is small (DataFusion pushes it
    into the scans), a semi-join against the result table in a WHERE conjunct, and elsewhere
    (SELECT list, CASE, under OR: DataFusion plans IN subqueries only as filters) the result's
    score lookup tested for NULL."""
    if outcome.ids:
        items = tuple(A.String(i.replace("'", "''")) for i in outcome.ids)
        return A.InList(rel.key_column(), items, negated)
    if not top:
        score = A.FunctionCall((A.Identifier(outcome.score_udf, quote='"'),), (rel.key_column(),))
        return A.IsTest(score, "NULL", negated=not negated)
    sub = A.Query(
        A.Select(
            (A.SelectItem(A.Column((A.Identifier("sample_id", quote='"'),))),),
            from_=(A.TableName((A.Identifier(outcome.table, quote='"'),)),),
        )
    )
    return A.InSubquery(rel.key_column(), sub, negated)


def _search(
    lw: _Lowering,
    ctx: SelectContext | None,
    rel: Relation,
    examples: tuple[Example, ...],
    using: tuple[A.Identifier, ...],
    node: A.Node,
    *,
    k: int | None,
    threshold: float | None,
    exact: bool,
    filtered: bool,
    construct: str,
) -> SearchOutcome:
    hook = getattr(lw.catalog, "similarity_search", None)
    if hook is None:
        raise PopQLError(
            (
                Diagnostic(
                    "S002",
                    f"{construct} needs a dataset with embeddings (popql.connect(DIR))",
                    node.span,
                ),
            )
        )
    allowed, fallback = (None, None) if ctx is None else _allowed_sql(lw, ctx, rel, filtered)
    request = SearchRequest(
        examples=examples,
        using=".".join(p.value for p in using) if using else None,
        k=k,
        threshold=threshold,
        exact=exact,
        allowed_sql=allowed,
        fallback_sql=fallback,
        version=rel.version,
        span=node.span,
        construct=construct,
    )
    outcome: SearchOutcome = hook(request)
    return outcome


def _allowed_sql(
    lw: _Lowering, ctx: SelectContext, rel: Relation, filtered: bool
) -> tuple[str | None, str | None]:
    """SQL selecting the sample_id of the rows the search may rank (None: every row), and a
    fall-back without the WHERE conjuncts for when those reference an outer query."""
    conds = list(ctx.conds) if filtered else []
    from_only = None
    if not _is_whole_dataset(ctx.from_, rel):
        from_only = _select_keys(lw, ctx.from_, rel, [])
    if not conds:
        return from_only, None
    return _select_keys(lw, ctx.from_, rel, conds), from_only


def _select_keys(lw: _Lowering, from_: tuple[Any, ...], rel: Relation, conds: list[A.Expr]) -> str:
    where: A.Expr | None = None
    for c in conds:
        where = c if where is None else A.Binary("AND", where, c)
    query = A.Query(
        A.Select((A.SelectItem(rel.key_column()),), from_=from_, where=where),
        with_=lw.current_with,
    )
    return to_sql(query)


def _is_whole_dataset(from_: tuple[Any, ...], rel: Relation) -> bool:
    if len(from_) != 1 or not isinstance(from_[0], A.TableName):
        return False
    name = ".".join(_norm(p) for p in from_[0].name)
    return name in _DATASET_TABLES or bool(_VERSIONED.match(name))


# ------------------------------------------------------------------------------------------------
# which FROM item a search reads


def search_relation(
    lw: _Lowering,
    operand: A.Expr | None,
    scope: Scope | None,
    node: A.Node,
    construct: str,
    options: A.SearchOptions | None = None,
) -> Relation | None:
    """The FROM item a search ranks, or None when ``x SIMILAR TO`` keeps SQL's text meaning."""
    has_options = options is not None and bool(
        options.using or options.top_k or options.threshold or options.exact
    )
    if operand is None:
        return _unique_relation(lw, scope, None, node, construct)
    if not isinstance(operand, A.Column):
        if construct == "SIMILAR TO" and not has_options:
            return None  # an expression: SQL's meaning, typed by DataFusion
        raise _t002(f"{construct} needs an image column (image), not an expression", operand)
    name = _norm(operand.parts[-1])
    qualifier = _norm(operand.parts[-2]) if len(operand.parts) >= 2 else None
    info = scope.resolve(operand) if scope is not None else None
    if name == "image" and (
        info is None or not is_text_type(info.type) or _has_sample_id(lw, scope, qualifier)
    ):
        return _unique_relation(lw, scope, qualifier, node, construct)
    if info is not None and is_image_column(info) and not is_text_type(info.type):
        return _unique_relation(lw, scope, qualifier, node, construct)
    if construct == "SIMILAR TO" and not has_options and (info is None or is_text_type(info.type)):
        return None  # SQL's regular-expression match (or an unknown column for DataFusion)
    if info is not None and is_text_type(info.type) and construct == "SIMILAR TO":
        raise PopQLError(
            (
                Diagnostic(
                    "T002",
                    f"'{info.name}' is a text column: SIMILAR TO on it is a pattern match, and"
                    " USING / TOP / THRESHOLD / EXACT only apply to similarity search on an"
                    " image column",
                    node.span,
                    hints=_image_hint(scope),
                ),
            )
        )
    if info is not None:
        what = "a text column (pattern match) or an image column (similarity search)"
        if construct != "SIMILAR TO":
            what = "an image column"
        raise _t002(f"{construct} needs {what}, but '{info.name}' is {info.type}", operand, scope)
    raise PopQLError(
        (
            Diagnostic(
                "N002",
                f"unknown column '{'.'.join(p.value for p in operand.parts)}'",
                operand.span,
                hints=_image_hint(scope),
            ),
        )
    )


def _has_sample_id(lw: _Lowering, scope: Scope | None, qualifier: str | None) -> bool:
    return bool(_relations(lw, scope, qualifier))


def _relations(lw: _Lowering, scope: Scope | None, qualifier: str | None) -> list[Relation]:
    if scope is None:
        return []
    for ctx in reversed(lw.selects):
        if ctx.scope is scope and ctx.from_scope is not None:
            scope = ctx.from_scope
            break
    out = []
    for q, table, sql in scope.relations:
        if qualifier is not None and q != qualifier:
            continue
        cols = scope._relation_columns(table, sql)
        if not any(c.name == "sample_id" for c in cols):
            continue
        version = None
        if table is not None:
            m = _VERSIONED.match(table)
            version = int(m.group(1)) if m else None
        out.append(Relation(q, table, version))
    return out


def _unique_relation(
    lw: _Lowering, scope: Scope | None, qualifier: str | None, node: A.Node, construct: str
) -> Relation:
    rels = _relations(lw, scope, qualifier)
    if len(rels) == 1:
        return rels[0]
    if not rels:
        where = f"'{qualifier}'" if qualifier else "the FROM clause"
        raise PopQLError(
            (
                Diagnostic(
                    "N002",
                    f"{construct} needs the images of a dataset table, but {where} has no"
                    " sample_id column",
                    node.span,
                    hints=(
                        "search the dataset's samples (FROM samples), a population, or a"
                        " subquery that keeps their sample_id",
                    ),
                ),
            )
        )
    names = ", ".join(r.qualifier or r.table or "(subquery)" for r in rels)
    raise PopQLError(
        (
            Diagnostic(
                "N005",
                f"{construct} could search the images of {names}: say which",
                node.span,
                hints=(f"write <alias>.image {construct} ..., e.g. {rels[0].qualifier}.image",),
            ),
        )
    )


def _image_hint(scope: Scope | None) -> tuple[str, ...]:
    if scope is None:
        return ()
    images = [c.name for c in scope.default_column("image")]
    return tuple(f"did you mean '{n}'?" for n in did_you_mean("image", images)) or (
        "similarity search runs on a dataset's images: write image SIMILAR TO ... (see README)",
    )


def _t002(message: str, node: A.Node, scope: Scope | None = None) -> PopQLError:
    return PopQLError((Diagnostic("T002", message, node.span, hints=_image_hint(scope)),))


# ------------------------------------------------------------------------------------------------
# literals


def _text_example(target: A.Expr, construct: str) -> Example:
    if isinstance(target, A.String) and target.prefix == "":
        return Example("TEXT", target.value.replace("''", "'"), span=target.span)
    raise PopQLError(
        (
            Diagnostic(
                "S003",
                f"{construct} on images takes a text literal such as 'a red car'",
                target.span,
                hints=("for an image, write NEAR IMAGE 'file.jpg'; for a sample, NEAR SAMPLE",),
            ),
        )
    )


def _near_example(ex: A.NearExample) -> Example:
    value = ex.value
    text = value.value.replace("''", "'") if isinstance(value, A.String) else value.text
    return Example(ex.kind, text, ex.negated, span=ex.span)


def _score_examples(node: A.SimilarityScore) -> tuple[Example, ...]:
    if isinstance(node.target, A.NearExample):
        return (_near_example(node.target),)
    return (_text_example(node.target, "SIMILARITY"),)


def _score_key(node: A.SimilarityScore, rel: Relation | None) -> tuple[Any, ...]:
    q = rel.qualifier if rel is not None else None
    return (q, _using_key(node.using), _score_examples(node))


def _using_key(using: tuple[A.Identifier, ...]) -> str | None:
    return ".".join(p.value for p in using) if using else None


def _parse_k(text: str | None, node: A.Node) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise PopQLError(
            (Diagnostic("T005", f"TOP takes a whole number of rows, not {text}", node.span),)
        )
    return int(text)


def _parse_threshold(text: str | None, node: A.Node) -> float | None:
    if text is None:
        return None
    value = float(text)
    if not -1.0 <= value <= 1.0:
        raise PopQLError(
            (
                Diagnostic(
                    "T005",
                    f"THRESHOLD {text} is not a cosine similarity: it must lie in [-1, 1]",
                    node.span,
                ),
            )
        )
    return value


def _norm(ident: A.Identifier) -> str:
    return ident.value if ident.quote else ident.value.lower()


__all__ = [
    "ColumnInfo",
    "OrderSearch",
    "Relation",
    "SelectContext",
    "lower_near",
    "lower_select",
    "lower_similar_to",
    "lower_similarity_score",
    "order_search",
    "search_relation",
]
