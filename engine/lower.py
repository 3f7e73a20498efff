"""Checked AST → DataFusion SQL: the one module that lowers PopQL to DataFusion.

Plain SQL is printed back unchanged (``popql.format.to_sql``: identifiers, numbers and strings as
written, every nested operator parenthesised), so DataFusion plans exactly what it would have
planned for the original text.  PopQL's own constructs are rewritten first, through the
``EXPR_LOWERINGS`` and ``STATEMENT_LOWERINGS`` tables below:

=====================================  =========================================================
PopQL                                  DataFusion SQL
=====================================  =========================================================
``labels TAGGED 'night'``              ``array_has(labels, 'night')``
``labels TAGGED ('a', 'b')``           ``array_has_any(labels, make_array('a', 'b'))``
``labels TAGGED ALL ('a', 'b')``       ``array_has_all(labels, make_array('a', 'b'))``
``x NOT TAGGED ...``                   ``NOT (...)``
``TAGGED 'x'`` (bare)                  the same on the table's ``labels`` or ``tags`` list column
``COUNT(dets WHERE p)``                ``popql_count_<hash>(dets)``: a vectorised Arrow UDF that
                                       evaluates ``p`` over the list's struct fields and counts
``ANY(dets WHERE p)``                  ``popql_count_<hash>(dets) > 0``
``ALL(dets WHERE p)``                  ``popql_count_<hash>(dets) = cardinality(dets)``
``text_col SIMILAR TO 'pat'``          unchanged: SQL's regular-expression match
``FROM t AS OF VERSION 3``             ``FROM "t@v3" AS t`` (the dataset snapshot, registered)
``image SIMILAR TO 'text' TOP k``,     a search run while lowering, its matches registered as
``NEAR ...``, ``SIMILARITY(...)``      a table and a score UDF: see ``lower_similarity.py``
populations, evaluation statements    X002 here: a session executes them (``engine/commands.py``)
=====================================  =========================================================
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from popql import ast as A
from popql.check import (
    Catalog,
    ColumnInfo,
    Scope,
    is_list_type,
    is_text_type,
    list_item_type,
)
from popql.diagnostics import Diagnostic, PopQLError
from popql.format import format_node, to_sql

from .lower_similarity import (
    SEARCH_NODES,
    SelectContext,
    lower_near,
    lower_select,
    lower_similar_to,
    lower_similarity_score,
    order_search,
    rank_order,
)


@dataclass(frozen=True)
class Lowered:
    sql: str
    params: dict[str, object] = field(default_factory=dict)
    udfs: tuple[Any, ...] = ()
    kind: str = "query"  # "query" returns rows, "command" changes state


QUERY_STATEMENTS = (A.Query, A.Explain, A.Show, A.Describe)


def compile_statement(stmt: A.Statement, catalog: Catalog | None) -> Lowered:
    """Check and lower one statement to DataFusion SQL (raises PopQLError)."""
    handler = STATEMENT_LOWERINGS.get(type(stmt))
    if handler is not None:
        handler(stmt)
    lowering = _Lowering(catalog)
    lowered = lowering.statement(stmt)
    kind = "query" if isinstance(stmt, QUERY_STATEMENTS) else "command"
    return Lowered(to_sql(lowered), {}, tuple(lowering.udfs.values()), kind)


def not_available(node: A.Node, what: str | None = None) -> PopQLError:
    name = what or _describe(node)
    return PopQLError(
        (
            Diagnostic(
                "X001",
                f"{name} is not available yet",
                node.span,
                hints=(
                    "PopQL parses and checks this construct already; the release that executes"
                    " it is on the roadmap (see README: Roadmap).",
                ),
            ),
        )
    )


def _describe(node: A.Node) -> str:
    return {
        A.CreatePopulation: "CREATE POPULATION",
        A.FreezePopulation: "FREEZE POPULATION",
        A.DiffPopulation: "DIFF POPULATION",
        A.HoldOut: "HOLD OUT",
        A.ShowSplits: "SHOW SPLITS",
        A.ShowLeakage: "SHOW LEAKAGE",
        A.Show: "SHOW POPULATIONS",
        A.Drop: "DROP POPULATION",
        A.Evaluate: "EVALUATE",
        A.Compare: "COMPARE",
        A.Expect: "EXPECT",
        A.FindFailures: "FIND FAILURES",
        A.ImportPredictions: "IMPORT PREDICTIONS",
        A.Near: "NEAR (image similarity search)",
        A.SimilarityScore: "SIMILARITY() (similarity score)",
        A.SimilarTo: "SIMILAR TO on an image column (text-to-image search)",
    }.get(type(node), type(node).__name__)


def _session_only(stmt: A.Statement) -> None:
    """Population and evaluation statements run in a session (engine/populations.py,
    engine/evaluate.py... via COMMANDS); lowering
    one to SQL without a session is a mistake of the caller, reported clearly."""
    if isinstance(stmt, A.Show) and stmt.kind != "POPULATIONS":
        return
    if isinstance(stmt, A.Drop) and stmt.kind != "POPULATION":
        return
    what = _describe(stmt)
    raise PopQLError(
        Diagnostic(
            "X002",
            f"{what} has no SQL form: a PopQL session executes it",
            stmt.span,
            hints=("run it with Session.sql(...), `popql run` or `popql query`",),
        )
    )


STATEMENT_LOWERINGS: dict[type, Callable[[A.Statement], None]] = {
    A.CreatePopulation: _session_only,
    A.FreezePopulation: _session_only,
    A.DiffPopulation: _session_only,
    A.HoldOut: _session_only,
    A.ShowSplits: _session_only,
    A.ShowLeakage: _session_only,
    A.Show: _session_only,
    A.Drop: _session_only,
    A.Evaluate: _session_only,
    A.Compare: _session_only,
    A.Expect: _session_only,
    A.FindFailures: _session_only,
    A.ImportPredictions: _session_only,
}


class _Lowering:
    """Rebuilds the statement bottom-up, rewriting PopQL nodes with the table below."""

    def __init__(self, catalog: Catalog | None) -> None:
        self.catalog = catalog
        self.udfs: dict[str, Any] = {}
        self.ctes: dict[str, str] = {}  # CTE name -> SQL that selects from it (for typing)
        self.expanding: tuple[str, ...] = ()  # populations being expanded (cycle check)
        self.selects: list[SelectContext] = []  # the SELECTs being lowered, innermost last
        self.current_with: A.With | None = None  # the lowered WITH clause in scope

    def statement(self, stmt: A.Statement) -> A.Statement:
        scope: Scope | None = None
        if isinstance(stmt, (A.Update, A.Delete)):
            scope = Scope.for_table(stmt.table, self.catalog)
        out = self.visit(stmt, scope)
        assert isinstance(out, A.Statement)
        return out

    def visit(self, node: Any, scope: Scope | None) -> Any:
        if isinstance(node, tuple):
            return tuple(self.visit(x, scope) for x in node)
        if not isinstance(node, A.Node):
            return node
        if isinstance(node, A.Query):
            return self.visit_query(node, scope)
        if isinstance(node, A.Select):
            select, _ = lower_select(self, node, scope)
            self.selects.pop()
            return select
        original = node
        node = self.visit_fields(node, scope)
        if isinstance(node, A.SelectItem) and isinstance(original, A.SelectItem):
            return self.name_select_item(original, node)
        rewrite = EXPR_LOWERINGS.get(type(node))
        if rewrite is not None:
            return rewrite(self, node, scope)
        return node

    def visit_fields(self, node: A.Node, scope: Scope | None, skip: tuple[str, ...] = ()) -> Any:
        changes = {}
        for f in dataclasses.fields(node):
            if f.name == "span" or f.name in skip:
                continue
            old = getattr(node, f.name)
            new = self.visit(old, scope)
            if new is not old:
                changes[f.name] = new
        if not changes:
            return node
        span = node.span
        node = dataclasses.replace(node, **changes)
        object.__setattr__(node, "span", span)
        return node

    def visit_query(self, query: A.Query, scope: Scope | None) -> A.Query:
        # WITH first (its CTEs type the body's FROM items), then the body, then ORDER BY /
        # LIMIT in the body's scope (query-level ORDER BY sees the SELECT's columns).
        saved = dict(self.ctes)
        saved_with = self.current_with
        with_ = query.with_
        if with_ is not None:
            new_ctes = []
            for cte in with_.ctes:
                new_cte = self.visit_fields(cte, scope)
                new_ctes.append(new_cte)
                prefix = A.With(tuple(new_ctes), with_.recursive)
                self.ctes[_norm_ident(cte.name)] = to_sql(
                    A.Query(A.Select((A.Star(),), from_=(A.TableName((cte.name,)),)), prefix)
                )
            with_ = dataclasses.replace(with_, ctes=tuple(new_ctes))
            object.__setattr__(with_, "span", query.with_.span if query.with_ else None)
            self.current_with = with_
        try:
            if isinstance(query.body, A.Select):
                # The body's context stays open for ORDER BY (SIMILARITY there reads the
                # WHERE clause's search; ORDER BY SIMILARITY(...) DESC LIMIT n is a top-n).
                body, ctx = lower_select(self, query.body, scope, order_search(query))
                try:
                    out = self.visit_fields(query, ctx.scope, skip=("body", "with_"))
                finally:
                    self.selects.pop()
                if not query.order_by and not query.order_by_all:
                    out = rank_order(out, body, ctx)
            else:
                body = self.visit(query.body, scope)
                out = self.visit_fields(query, scope, skip=("body", "with_"))
            out = dataclasses.replace(out, body=body, with_=with_)
            object.__setattr__(out, "span", query.span)
        finally:
            self.ctes = saved
            self.current_with = saved_with
        return out

    def sql_of(self, query: A.Query) -> str:
        """DataFusion SQL of a (sub)query, for typing derived tables; CTEs in scope included."""
        lowered = _Lowering(self.catalog)
        lowered.ctes = dict(self.ctes)
        sql = to_sql(lowered.visit(query, None))
        for name, udf in lowered.udfs.items():
            self.udfs[name] = udf
        return sql

    def name_select_item(self, original: A.SelectItem, item: A.SelectItem) -> A.SelectItem:
        """An unaliased PopQL expression keeps its PopQL text as the column name (not the
        name of the UDF it lowered to)."""
        if item.alias is not None or item is original:
            return item
        popql_nodes = (A.ListQuantifier, A.Tagged, *SEARCH_NODES)
        if not any(isinstance(n, popql_nodes) for n in original.expr.walk()):
            return item
        alias = A.Identifier(format_node(original.expr), quote='"')
        renamed = A.SelectItem(item.expr, alias)
        object.__setattr__(renamed, "span", item.span)
        return renamed

    # --- operand typing ------------------------------------------------------------------------

    def operand_info(self, operand: A.Expr | None, scope: Scope | None) -> ColumnInfo | None:
        if isinstance(operand, A.Column) and scope is not None:
            return scope.resolve(operand)
        return None

    def default_operand(
        self, node: A.Node, scope: Scope | None, kind: str, construct: str
    ) -> ColumnInfo:
        candidates = scope.default_column(kind) if scope is not None else []
        if len(candidates) == 1:
            return candidates[0]
        what = (
            "a list-of-labels column named labels or tags"
            if kind == "labels"
            else "an image column"
        )
        if not candidates:
            raise PopQLError(
                (
                    Diagnostic(
                        "N002",
                        f"{construct} without a column needs {what} in the FROM tables",
                        node.span,
                        hints=(f"name the column explicitly: <column> {construct} ...",),
                    ),
                )
            )
        names = ", ".join(f"{c.table}.{c.name}" for c in candidates)
        raise PopQLError(
            (
                Diagnostic(
                    "N005",
                    f"{construct} without a column is ambiguous: it could use {names}",
                    node.span,
                    hints=(f"name the column explicitly: <column> {construct} ...",),
                ),
            )
        )


def _norm_ident(ident: A.Identifier) -> str:
    return ident.value if ident.quote else ident.value.lower()


def _ident(name: str) -> tuple[A.Identifier, ...]:
    return (A.Identifier(name),)


def _call(name: str, *args: A.Expr) -> A.FunctionCall:
    return A.FunctionCall(_ident(name), tuple(args))


def _column_expr(info: ColumnInfo) -> A.Column:
    return A.Column((A.Identifier(info.name, quote='"'),))


def lower_tagged(lw: _Lowering, node: A.Tagged, scope: Scope | None) -> A.Expr:
    if node.operand is None:
        info = lw.default_operand(node, scope, "labels", "TAGGED")
        operand: A.Expr = _column_expr(info)
    else:
        operand = node.operand
        info = lw.operand_info(operand, scope)  # type: ignore[assignment]
    if info is not None and not (
        is_list_type(info.type) and is_text_type(list_item_type(info.type))
    ):
        raise PopQLError(
            (
                Diagnostic(
                    "T003",
                    f"TAGGED needs a list of labels, but column '{info.name}' is {info.type}",
                    (node.operand or node).span,
                    hints=(
                        "TAGGED tests membership in a list<string> tag column;"
                        " compare scalar tags with =, <, >",
                    ),
                ),
            )
        )
    if node.mode == "ONE":
        expr: A.Expr = _call("array_has", operand, node.labels[0])
    else:
        fn = "array_has_any" if node.mode == "ANY" else "array_has_all"
        expr = _call(fn, operand, _call("make_array", *node.labels))
    return A.Not(expr) if node.negated else expr


def lower_list_quantifier(lw: _Lowering, node: A.ListQuantifier, scope: Scope | None) -> A.Expr:
    from popql.engine.listpred import make_count_udf

    info = lw.operand_info(node.operand, scope)
    if info is None:
        raise PopQLError(
            (
                Diagnostic(
                    "T003",
                    f"{node.func}(... WHERE ...) needs a list column of a FROM table",
                    node.operand.span,
                    hints=("write the list column's name, e.g. COUNT(detections WHERE ...)",),
                ),
            )
        )
    if not is_list_type(info.type) or not list_item_type(info.type).startswith("struct<"):
        raise PopQLError(
            (
                Diagnostic(
                    "T003",
                    f"{node.func}(... WHERE ...) needs a list of structs (detections),"
                    f" but column '{info.name}' is {info.type}",
                    node.operand.span,
                ),
            )
        )
    arrow_type = info.arrow_type if info.arrow_type is not None else _arrow_type(lw.catalog, info)
    udf, name = make_count_udf(node.predicate, arrow_type)
    lw.udfs[name] = udf
    register = getattr(lw.catalog, "register_udf", None)
    if register is not None:
        register(udf)  # now, so that typing an enclosing derived table can plan it
    count = _call(name, node.operand)
    if node.func == "COUNT":
        return count
    if node.func == "ANY":
        return A.Binary(">", count, A.Number("0"))
    return A.Binary("=", count, _call("cardinality", node.operand))


def _arrow_type(catalog: Catalog | None, info: ColumnInfo) -> Any:
    schema_fn = getattr(catalog, "schema", None)
    schema = schema_fn(info.table) if schema_fn is not None else None
    if schema is None:
        raise PopQLError((Diagnostic("I001", f"no schema for table {info.table}"),))
    return schema.field(info.name).type


def lower_table_name(lw: _Lowering, node: A.TableName, scope: Scope | None) -> A.TableRef:
    """``FROM samples AS OF VERSION 3``: the catalog registers that snapshot under a new name.
    ``FROM <population>``: the population's stored query, as a derived table."""
    if node.version is None:
        return _expand_population(lw, node) or node
    resolve = getattr(lw.catalog, "versioned_table", None)
    if resolve is None:
        raise PopQLError(
            (
                Diagnostic(
                    "X002",
                    "AS OF VERSION needs a dataset opened with popql.connect(DIR)",
                    node.span,
                ),
            )
        )
    name = resolve(".".join(p.value for p in node.name), int(node.version), node.span)
    return A.TableName((A.Identifier(name, quote='"'),), node.alias or _default_alias(node))


def _expand_population(lw: _Lowering, node: A.TableName) -> A.TableRef | None:
    """``FROM dark`` where ``dark`` is a population (and no table): ``(<its query>) AS dark``.

    The query re-runs at each use, so membership follows the data. The catalog checks the
    embedder identity the population was written against (M005). Errors inside the stored
    query are reported at the population's name, naming the population."""
    find = getattr(lw.catalog, "population_query", None)
    if find is None or len(node.name) != 1:
        return None
    name = _norm_ident(node.name[0])
    if name in lw.ctes:
        return None  # a CTE of that name hides the population
    query = find(name, node.span)
    if query is None:
        return None
    if name in lw.expanding:
        chain = " -> ".join([*lw.expanding, name])
        raise PopQLError(
            Diagnostic("N006", f"population '{name}' refers to itself ({chain})", node.span)
        )
    inner = _Lowering(lw.catalog)
    inner.expanding = (*lw.expanding, name)
    text = format_node(query)
    try:
        lowered = inner.visit(query, None)
        plan = getattr(lw.catalog, "query_columns", None)
        if plan is not None:
            sql = to_sql(lowered)
            try:
                plan(sql)  # DataFusion's own errors, told against the population's query
            except Exception as exc:
                from popql.engine.errors import message_of, translate_message

                raise PopQLError(translate_message(message_of(exc), text, sql=sql)) from exc
    except PopQLError as err:
        raise PopQLError(
            tuple(
                Diagnostic(
                    d.code,
                    f"in population '{name}': {d.message}",
                    node.span,
                    hints=(*d.hints, f"population '{name}' is: {text}"),
                )
                for d in err.diagnostics
            )
        ) from err
    lw.udfs.update(inner.udfs)
    return A.DerivedTable(lowered, node.alias or _default_alias(node))


def _default_alias(node: A.TableName) -> A.TableAlias:
    # Keep `samples.col` references working after the rename.
    return A.TableAlias(node.name[-1])


EXPR_LOWERINGS: dict[type, Callable[[_Lowering, Any, Scope | None], Any]] = {
    A.TableName: lower_table_name,
    A.Tagged: lower_tagged,
    A.ListQuantifier: lower_list_quantifier,
    A.SimilarTo: lower_similar_to,
    A.Near: lower_near,
    A.SimilarityScore: lower_similarity_score,
}


def udf_name(prefix: str, key: str) -> str:
    return f"{prefix}_{hashlib.sha1(key.encode()).hexdigest()[:12]}"
