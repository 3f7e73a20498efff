"""Text → parse tree → typed AST.

``parse(text)`` runs Lark's LALR parser over ``grammar/popql.lark`` and turns the tree into the
frozen dataclasses of :mod:`popql.ast` with one transformer method per grammar rule (a test checks
that every rule that can appear in a tree has its handler).  Syntax errors become
:class:`popql.diagnostics.PopQLError` with a ``P`` diagnostic.

>>> from popql.syntax import parse
>>> script = parse("SELECT 1; SELECT uri FROM samples WHERE labels TAGGED 'night'")
>>> [type(s).__name__ for s in script.statements]
['Query', 'Query']
>>> parse("SELECT FROM WHERE")
Traceback (most recent call last):
  ...
popql.diagnostics.PopQLError: error[P001]: ...
"""

from __future__ import annotations

import contextvars
import functools
import importlib.resources
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar, cast

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import LarkError, UnexpectedCharacters, VisitError
from lark.tree import Meta

from popql import ast as A
from popql.diagnostics import Diagnostic, PopQLError, Span


@functools.cache
def grammar_text() -> str:
    """The text of ``grammar/popql.lark``, the single source of the language."""
    return importlib.resources.files("popql.grammar").joinpath("popql.lark").read_text("utf-8")


_current_text: contextvars.ContextVar[str] = contextvars.ContextVar("popql_text", default="")


class _KeywordBoundary:
    """Lark post-lexer: a keyword must end at a word boundary.

    Where the grammar expects a keyword but no name, the contextual lexer would otherwise read
    ``SELECTa`` as ``SELECT a``.
    """

    always_accept: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.keywords: frozenset[str] | None = None

    def process(self, stream: Any) -> Any:
        text = _current_text.get()
        for tok in stream:
            value = str(tok)
            if (
                value[-1:].isalpha()
                and tok.end_pos is not None
                and tok.end_pos < len(text)
                and (text[tok.end_pos].isalnum() or text[tok.end_pos] in "_$")
                and tok.type not in _WORD_TERMINALS
            ):
                raise UnexpectedCharacters(
                    text, tok.end_pos, tok.line, tok.end_column, allowed={"a space"}
                )
            yield tok


# Terminals whose matches are whole words anyway (names, literals, lookahead keywords).
_WORD_TERMINALS = frozenset(
    {
        "NAME",
        "QUOTED_NAME",
        "BACKTICK_NAME",
        "STRING",
        "NUMBER",
        "PLACEHOLDER",
        "PREFIXED_STRING",
        "DOLLAR_STRING",
        "LAMBDA_PARAM",
    }
)


@functools.cache
def parser() -> Lark:
    return Lark(
        grammar_text(),
        postlex=_KeywordBoundary(),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
        # Building the LALR tables takes seconds; Lark caches them in the temp directory, keyed
        # by a hash of the grammar and options, so later processes load them in milliseconds.
        cache=True,
    )


def parse_tree(text: str) -> Tree:
    token = _current_text.set(text)
    try:
        return parser().parse(text)
    finally:
        _current_text.reset(token)


def parse(text: str, file: str | None = None) -> A.Script:
    """Parse PopQL text into a :class:`popql.ast.Script`; raise PopQLError on a syntax error."""
    token = _current_text.set(text)
    try:
        tree = parser().parse(text)
    except LarkError as exc:
        from popql.syntax_errors import from_lark

        diag = from_lark(exc, text, file, terminals=terminal_display())
        raise PopQLError((diag,), source=text, file=file) from None
    finally:
        _current_text.reset(token)
    try:
        script = _Builder(text).transform(tree)
    except VisitError as exc:
        inner = exc.orig_exc
        if isinstance(inner, PopQLError):
            diags = tuple(d.with_file(file) if file else d for d in inner.diagnostics)
            raise PopQLError(diags, source=text, file=file) from None
        from popql.diagnostics import internal_error

        raise PopQLError(internal_error(inner, text, None, file), source=text, file=file) from None
    assert isinstance(script, A.Script)
    return script


def parse_statement(text: str) -> A.Statement:
    """Parse exactly one statement."""
    script = parse(text)
    if len(script.statements) != 1:
        raise PopQLError(
            (Diagnostic("P001", f"expected one statement, found {len(script.statements)}"),),
            source=text,
        )
    return script.statements[0]


@functools.cache
def terminal_display() -> dict[str, str]:
    """Terminal name → how to show it to a person (for syntax error messages)."""
    out: dict[str, str] = {}
    for t in parser().terminals:
        pattern = t.pattern
        if pattern.type == "str":
            out[t.name] = str(pattern.value).upper()
    return out


# ------------------------------------------------------------------------------------------------


def _span(meta: Meta, text: str) -> Span | None:
    if getattr(meta, "empty", True):
        return None
    return Span(
        start=meta.start_pos,
        end=meta.end_pos,
        line=meta.line,
        column=meta.column,
        end_line=meta.end_line,
        end_column=meta.end_column,
    )


class _Clause:
    """A tagged intermediate value (an optional clause) used while building a node."""

    __slots__ = ("kind", "value")

    def __init__(self, kind: str, value: Any) -> None:
        self.kind = kind
        self.value = value


def _clauses(children: list[Any]) -> dict[str, Any]:
    return {c.kind: c.value for c in children if isinstance(c, _Clause)}


def _tok(children: list[Any], *types: str) -> Token | None:
    for c in children:
        if isinstance(c, Token) and c.type in types:
            return c
    return None


def _nodes(children: list[Any], cls: type | tuple[type, ...] = A.Node) -> list[Any]:
    return [c for c in children if isinstance(c, cls)]


def _upper_words(tokens: list[Any]) -> str:
    return " ".join(str(t).upper() for t in tokens if isinstance(t, Token))


def _string(tok: Token) -> A.String:
    return A.String(str(tok)[1:-1])


_Handler = Callable[..., Any]
_N = TypeVar("_N", bound=A.Node)


def _handler(fn: _Handler) -> _Handler:
    """Wrap a builder method so that it receives (meta, children) and stamps the span."""

    def wrapper(self: _Builder, meta: Meta, children: list[Any]) -> Any:
        try:
            node = fn(self, children)
        except PopQLError as err:
            span = _span(meta, self.text)
            raise PopQLError(
                tuple(d if d.span else replace(d, span=span) for d in err.diagnostics)
            ) from None
        if isinstance(node, A.Node) and node.span is None:
            object.__setattr__(node, "span", _span(meta, self.text))
        return node

    wrapper.__name__ = fn.__name__
    return v_args(meta=True)(wrapper)


class _Builder(Transformer):
    """One handler per grammar rule (or alias)."""

    def __init__(self, text: str) -> None:
        super().__init__(visit_tokens=False)
        self.text = text

    def _call_userfunc(self, tree: Tree, new_children: list[Any] | None = None) -> Any:
        # Calls the plain (self, meta, children) functions directly: Lark's v_args wrappers are
        # rebuilt on every attribute access, which cost ~15 % of parse time.
        children = new_children if new_children is not None else tree.children
        fn = _HANDLERS.get(tree.data)
        if fn is None:
            return self.__default__(tree.data, children, tree.meta)
        try:
            return fn(self, tree.meta, children)
        except Exception as exc:
            raise VisitError(tree.data, tree, exc) from exc

    # --- script and queries ------------------------------------------------------------------

    @_handler
    def start(self, c: list[Any]) -> A.Script:
        return A.Script(tuple(_nodes(c, A.Statement)))

    @_handler
    def query(self, c: list[Any]) -> A.Query:
        cl = _clauses(c)
        body = next(x for x in c if isinstance(x, A.Node) and not isinstance(x, A.With))
        with_ = next((x for x in c if isinstance(x, A.With)), None)
        limit = cl.get("limit", {})
        return A.Query(
            body=body,
            with_=with_,
            order_by=cl.get("order_by", ()),
            order_by_all=cl.get("order_by_all"),
            limit=limit.get("limit"),
            limit_all=limit.get("limit_all", False),
            offset=limit.get("offset"),
            offset_first=limit.get("offset_first", False),
        )

    @_handler
    def with_clause(self, c: list[Any]) -> A.With:
        return A.With(tuple(_nodes(c, A.Cte)), recursive=_tok(c, "RECURSIVE") is not None)

    @_handler
    def cte(self, c: list[Any]) -> A.Cte:
        cols = next((x.value for x in c if isinstance(x, _Clause)), ())
        return A.Cte(c[0], cols, _nodes(c, A.Query)[0])

    @_handler
    def column_list(self, c: list[Any]) -> _Clause:
        return _Clause("columns", tuple(c))

    def _setop(self, op: str, c: list[Any]) -> A.SetOperation:
        left, right = _nodes(c)
        quant = next((x.value for x in c if isinstance(x, _Clause)), None)
        return A.SetOperation(op, left, right, quant)

    @_handler
    def union(self, c: list[Any]) -> A.SetOperation:
        return self._setop("UNION", c)

    @_handler
    def except_(self, c: list[Any]) -> A.SetOperation:
        return self._setop("EXCEPT", c)

    @_handler
    def intersect(self, c: list[Any]) -> A.SetOperation:
        return self._setop("INTERSECT", c)

    @_handler
    def set_quantifier(self, c: list[Any]) -> _Clause:
        return _Clause("quantifier", _upper_words(c))

    @_handler
    def nested_query(self, c: list[Any]) -> A.Query:
        return c[0]

    @_handler
    def select_core(self, c: list[Any]) -> A.Select:
        cl = _clauses(c)
        distinct = cl.get("distinct")
        return A.Select(
            items=cl["items"],
            distinct=distinct[0] if distinct else None,
            distinct_on=distinct[1] if distinct else (),
            into=cl.get("into", ()),
            from_=cl.get("from", ()),
            where=cl.get("where"),
            group_by=cl.get("group_by"),
            having=cl.get("having"),
            windows=cl.get("windows", ()),
            qualify=cl.get("qualify"),
        )

    @_handler
    def select_all(self, c: list[Any]) -> _Clause:
        return _Clause("distinct", ("ALL", ()))

    @_handler
    def select_distinct(self, c: list[Any]) -> _Clause:
        return _Clause("distinct", ("DISTINCT", ()))

    @_handler
    def select_distinct_on(self, c: list[Any]) -> _Clause:
        return _Clause("distinct", ("DISTINCT", c[-1]))

    @_handler
    def select_list(self, c: list[Any]) -> _Clause:
        return _Clause("items", tuple(c))

    @_handler
    def into_clause(self, c: list[Any]) -> _Clause:
        return _Clause("into", c[0].value)

    @_handler
    def select_expr(self, c: list[Any]) -> A.SelectItem:
        return A.SelectItem(c[0])

    @_handler
    def select_expr_as(self, c: list[Any]) -> A.SelectItem:
        return A.SelectItem(c[0], c[1])

    @_handler
    def wildcard(self, c: list[Any]) -> A.Star:
        return A.Star((), tuple(c))

    @_handler
    def qualified_wildcard(self, c: list[Any]) -> A.Star:
        return A.Star(c[0].parts, tuple(c[1:]))

    def _wopt(self, kind: str, c: list[Any], meta_text: str) -> A.WildcardOption:
        return A.WildcardOption(kind, tuple(c), parenthesized="(" in meta_text)

    @v_args(meta=True)
    def wildcard_exclude(self, meta: Meta, c: list[Any]) -> A.WildcardOption:
        return self._stamp(meta, self._wopt("EXCLUDE", c, self._text(meta)))

    @v_args(meta=True)
    def wildcard_except(self, meta: Meta, c: list[Any]) -> A.WildcardOption:
        return self._stamp(meta, self._wopt("EXCEPT", c, self._text(meta)))

    @v_args(meta=True)
    def wildcard_replace(self, meta: Meta, c: list[Any]) -> A.WildcardOption:
        return self._stamp(meta, self._wopt("REPLACE", c, self._text(meta)))

    @v_args(meta=True)
    def wildcard_rename(self, meta: Meta, c: list[Any]) -> A.WildcardOption:
        return self._stamp(meta, self._wopt("RENAME", c, self._text(meta)))

    def _text(self, meta: Meta) -> str:
        return self.text[meta.start_pos : meta.end_pos] if not meta.empty else ""

    def _stamp(self, meta: Meta, node: _N) -> _N:
        object.__setattr__(node, "span", _span(meta, self.text))
        return node

    @_handler
    def replace_item(self, c: list[Any]) -> A.SelectItem:
        return A.SelectItem(c[0], c[1])

    @_handler
    def rename_item(self, c: list[Any]) -> A.RenameItem:
        return A.RenameItem(c[0], c[1])

    @_handler
    def from_clause(self, c: list[Any]) -> _Clause:
        return _Clause("from", tuple(c))

    @_handler
    def where_clause(self, c: list[Any]) -> _Clause:
        return _Clause("where", c[0])

    @_handler
    def having_clause(self, c: list[Any]) -> _Clause:
        return _Clause("having", c[0])

    @_handler
    def qualify_clause(self, c: list[Any]) -> _Clause:
        return _Clause("qualify", c[0])

    @_handler
    def group_by_clause(self, c: list[Any]) -> _Clause:
        return _Clause("group_by", A.GroupBy(tuple(c)))

    @_handler
    def group_by_all(self, c: list[Any]) -> _Clause:
        return _Clause("group_by", A.GroupBy((), all=True))

    @_handler
    def rollup(self, c: list[Any]) -> A.Rollup:
        return A.Rollup(tuple(c))

    @_handler
    def cube(self, c: list[Any]) -> A.Cube:
        return A.Cube(tuple(c))

    @_handler
    def grouping_sets(self, c: list[Any]) -> A.GroupingSets:
        return A.GroupingSets(tuple(c))

    @_handler
    def empty_grouping(self, c: list[Any]) -> A.EmptyGrouping:
        return A.EmptyGrouping()

    @_handler
    def window_clause(self, c: list[Any]) -> _Clause:
        return _Clause("windows", tuple(c))

    @_handler
    def named_window(self, c: list[Any]) -> A.NamedWindow:
        return A.NamedWindow(c[0], c[1])

    @_handler
    def order_by(self, c: list[Any]) -> _Clause:
        return _Clause("order_by", tuple(c))

    @_handler
    def order_by_all(self, c: list[Any]) -> _Clause:
        cl = _clauses(c)
        return _Clause(
            "order_by_all",
            A.OrderItem(A.Column((A.Identifier("ALL"),)), cl.get("direction"), cl.get("nulls")),
        )

    @_handler
    def order_item(self, c: list[Any]) -> A.OrderItem:
        cl = _clauses(c)
        return A.OrderItem(c[0], cl.get("direction"), cl.get("nulls"))

    @_handler
    def sort_direction(self, c: list[Any]) -> _Clause:
        return _Clause("direction", _upper_words(c))

    @_handler
    def nulls_order(self, c: list[Any]) -> _Clause:
        return _Clause("nulls", _upper_words(c)[len("NULLS ") :])

    @_handler
    def limit_offset(self, c: list[Any]) -> _Clause:
        return self._limit(c, offset_first=False)

    @_handler
    def offset_limit(self, c: list[Any]) -> _Clause:
        return self._limit(c, offset_first=True)

    def _limit(self, c: list[Any], offset_first: bool) -> _Clause:
        values: list[Any] = [x for x in c if isinstance(x, (A.Node, _Clause))]
        values.append(None)
        limit, offset = (values[1], values[0]) if offset_first else (values[0], values[1])
        out: dict[str, Any] = {"offset": offset, "offset_first": offset_first}
        if isinstance(limit, _Clause):
            out["limit_all"] = True
        else:
            out["limit"] = limit
        return _Clause("limit", out)

    @_handler
    def limit_all(self, c: list[Any]) -> _Clause:
        return _Clause("limit_all", True)

    @_handler
    def values_clause(self, c: list[Any]) -> A.Values:
        return A.Values(tuple(c))

    @v_args(meta=True)
    def values_row(self, meta: Meta, c: list[Any]) -> A.ValuesRow:
        items = next(x for x in c if isinstance(x, tuple))
        row_kw = self._text(meta)[:3].upper() == "ROW"
        return self._stamp(meta, A.ValuesRow(items, row_keyword=row_kw))  # type: ignore[return-value]

    # --- FROM ----------------------------------------------------------------------------------

    @_handler
    def join(self, c: list[Any]) -> A.Join:
        left, kind, right = c[0], c[1], c[2]
        constraint = c[3] if len(c) > 3 else None
        return A.Join(left, right, kind.value, constraint)

    @_handler
    def cross_join(self, c: list[Any]) -> A.Join:
        return A.Join(c[0], c[1], "CROSS JOIN")

    @_handler
    def natural_join(self, c: list[Any]) -> A.Join:
        nodes = [x for x in c if not isinstance(x, Token)]
        return A.Join(nodes[0], nodes[2], nodes[1].value, natural=True)

    @_handler
    def join_kind(self, c: list[Any]) -> _Clause:
        return _Clause("join_kind", _upper_words(c))

    @_handler
    def join_on(self, c: list[Any]) -> A.JoinOn:
        return A.JoinOn(c[0])

    @_handler
    def join_using(self, c: list[Any]) -> A.JoinUsing:
        return A.JoinUsing(tuple(c))

    @_handler
    def table_name(self, c: list[Any]) -> A.TableName:
        alias = next((x for x in c if isinstance(x, A.TableAlias)), None)
        version = next((x.value for x in c[1:] if isinstance(x, _Clause)), None)
        return A.TableName(c[0].value, alias, version)

    @_handler
    def as_of_version(self, c: list[Any]) -> _Clause:
        return _Clause("version", str(c[0]))

    @_handler
    def derived_table(self, c: list[Any]) -> A.DerivedTable:
        lateral = _tok(c, "LATERAL") is not None
        q = _nodes(c, A.Query)[0]
        alias = next((x for x in c if isinstance(x, A.TableAlias)), None)
        return A.DerivedTable(q, alias, lateral)

    @_handler
    def nested_join(self, c: list[Any]) -> A.ParenTable:
        return A.ParenTable(c[0], c[1] if len(c) > 1 else None)

    @v_args(meta=True)
    def nested_table(self, meta: Meta, c: list[Any]) -> A.ParenTable:
        aliases = [x for x in c if isinstance(x, A.TableAlias)]
        inner_alias = outer_alias = None
        if len(aliases) == 2:
            inner_alias, outer_alias = aliases
        elif aliases:
            alias = aliases[0]
            after = self.text[alias.span.end : meta.end_pos] if alias.span else ""
            if ")" in after:
                inner_alias = alias
            else:
                outer_alias = alias
        node = A.ParenTable(A.TableName(c[0].value, inner_alias), outer_alias)
        return self._stamp(meta, node)  # type: ignore[return-value]

    @_handler
    def table_function(self, c: list[Any]) -> A.TableFunction:
        lateral = _tok(c, "LATERAL") is not None
        rest = [x for x in c if not isinstance(x, Token)]
        name = rest[0].value
        alias = rest[-1] if rest and isinstance(rest[-1], A.TableAlias) else None
        args = tuple(x for x in rest[1:] if isinstance(x, A.Expr))
        return A.TableFunction(name, args, alias, lateral)

    @_handler
    def values_table(self, c: list[Any]) -> A.ValuesTable:
        return A.ValuesTable(c[0], c[1] if len(c) > 1 else None)

    @_handler
    def table_alias(self, c: list[Any]) -> A.TableAlias:
        cols = next((x.value for x in c if isinstance(x, _Clause)), ())
        return A.TableAlias(c[0], cols)

    # --- expressions ---------------------------------------------------------------------------

    @_handler
    def or_(self, c: list[Any]) -> A.Binary:
        return A.Binary("OR", c[0], c[1])

    @_handler
    def and_(self, c: list[Any]) -> A.Binary:
        return A.Binary("AND", c[0], c[1])

    @_handler
    def not_(self, c: list[Any]) -> A.Not:
        return A.Not(c[0])

    @_handler
    def is_(self, c: list[Any]) -> A.IsTest:
        return A.IsTest(c[0], c[-1].value, negated=_tok(c, "NOT") is not None)

    @_handler
    def is_target(self, c: list[Any]) -> _Clause:
        return _Clause("is", _upper_words(c))

    @_handler
    def is_distinct_from(self, c: list[Any]) -> A.IsDistinctFrom:
        nodes = _nodes(c)
        return A.IsDistinctFrom(nodes[0], nodes[1], negated=_tok(c, "NOT") is not None)

    @_handler
    def isnull(self, c: list[Any]) -> A.IsNullPostfix:
        return A.IsNullPostfix(c[0], negated=False)

    @_handler
    def notnull(self, c: list[Any]) -> A.IsNullPostfix:
        return A.IsNullPostfix(c[0], negated=True)

    @_handler
    def like(self, c: list[Any]) -> A.Like:
        nodes = _nodes(c)
        op = next(x.value for x in c if isinstance(x, _Clause))
        esc = next((x for x in c if isinstance(x, tuple)), None)
        return A.Like(nodes[0], op, nodes[1], _tok(c, "NOT") is not None, esc[0] if esc else None)

    @_handler
    def like_op(self, c: list[Any]) -> _Clause:
        return _Clause("op", _upper_words(c))

    @_handler
    def escape(self, c: list[Any]) -> tuple[A.Expr]:
        return (c[0],)

    @_handler
    def regex_match(self, c: list[Any]) -> A.RegexMatch:
        return A.RegexMatch(c[0], c[1].value, c[2])

    @_handler
    def regex_op(self, c: list[Any]) -> _Clause:
        return _Clause("op", str(c[0]))

    @_handler
    def similar_to(self, c: list[Any]) -> A.SimilarTo:
        rhs = c[-1]
        return A.SimilarTo(
            c[0], rhs["target"], _tok(c, "NOT") is not None, rhs["escape"], rhs["options"]
        )

    @_handler
    def similar_to_bare(self, c: list[Any]) -> A.SimilarTo:
        rhs = c[-1]
        return A.SimilarTo(None, rhs["target"], False, rhs["escape"], rhs["options"])

    @_handler
    def similar_rhs(self, c: list[Any]) -> dict[str, Any]:
        esc = next((x for x in c if isinstance(x, tuple)), None)
        return {"target": c[0], "escape": esc[0] if esc else None, "options": c[-1]}

    @_handler
    def near(self, c: list[Any]) -> A.Near:
        rhs = c[-1]
        return A.Near(c[0], rhs[0], _tok(c, "NOT") is not None, rhs[1], rhs[2])

    @_handler
    def near_bare(self, c: list[Any]) -> A.Near:
        rhs = c[-1]
        return A.Near(None, rhs[0], False, rhs[1], rhs[2])

    @_handler
    def near_rhs(self, c: list[Any]) -> tuple[Any, ...]:
        return (tuple(_nodes(c, A.NearExample)), c[-1], False)

    @_handler
    def near_rhs_multi(self, c: list[Any]) -> tuple[Any, ...]:
        return (tuple(_nodes(c, A.NearExample)), c[-1], True)

    @_handler
    def near_example(self, c: list[Any]) -> A.NearExample:
        ex = _nodes(c, A.NearExample)[0]
        return A.NearExample(ex.kind, ex.value, negated=_tok(c, "NOT") is not None)

    @_handler
    def near_image(self, c: list[Any]) -> A.NearExample:
        return A.NearExample("IMAGE", _string(c[0]))

    @_handler
    def near_text(self, c: list[Any]) -> A.NearExample:
        return A.NearExample("TEXT", _string(c[0]))

    @_handler
    def near_sample(self, c: list[Any]) -> A.NearExample:
        tok = c[0]
        value: A.String | A.Number = _string(tok) if tok.type == "STRING" else A.Number(str(tok))
        return A.NearExample("SAMPLE", value)

    @_handler
    def search_options(self, c: list[Any]) -> A.SearchOptions:
        kinds = [x.kind for x in c if isinstance(x, _Clause)]
        for kind in set(kinds):
            if kinds.count(kind) > 1 or (
                kind in ("top_k", "threshold") and {"top_k", "threshold"} <= set(kinds)
            ):
                word = {
                    "top_k": "TOP",
                    "threshold": "THRESHOLD",
                    "using": "USING",
                    "exact": "EXACT",
                }[kind]
                raise PopQLError(
                    (
                        Diagnostic(
                            "P001",
                            f"{word} given twice, or TOP together with THRESHOLD",
                            None,
                            hints=("a search takes one membership form: TOP k or THRESHOLD t",),
                        ),
                    )
                )
        cl = _clauses(c)
        return A.SearchOptions(
            using=cl.get("using", ()),
            top_k=cl.get("top_k"),
            threshold=cl.get("threshold"),
            exact="exact" in cl,
        )

    @_handler
    def using_embedder(self, c: list[Any]) -> _Clause:
        return _Clause("using", c[0].value)

    @_handler
    def top_k(self, c: list[Any]) -> _Clause:
        return _Clause("top_k", str(c[0]))

    @_handler
    def threshold(self, c: list[Any]) -> _Clause:
        return _Clause("threshold", str(c[0]))

    @_handler
    def exact(self, c: list[Any]) -> _Clause:
        return _Clause("exact", True)

    @_handler
    def tagged(self, c: list[Any]) -> A.Tagged:
        labels, mode = c[-1]
        return A.Tagged(c[0], labels, mode, _tok(c, "NOT") is not None)

    @_handler
    def tagged_bare(self, c: list[Any]) -> A.Tagged:
        labels, mode = c[-1]
        return A.Tagged(None, labels, mode)

    @_handler
    def tag_labels(self, c: list[Any]) -> tuple[Any, str]:
        return (_strings(c), "ONE")

    @_handler
    def tag_labels_any(self, c: list[Any]) -> tuple[Any, str]:
        return (_strings(c), "ANY")

    @_handler
    def tag_labels_all(self, c: list[Any]) -> tuple[Any, str]:
        return (_strings(c), "ALL")

    @_handler
    def in_subquery(self, c: list[Any]) -> A.InSubquery:
        nodes = _nodes(c)
        return A.InSubquery(nodes[0], nodes[1], _tok(c, "NOT") is not None)

    @_handler
    def in_list(self, c: list[Any]) -> A.InList:
        nodes = _nodes(c)
        items = next((x for x in c if isinstance(x, tuple)), ())
        return A.InList(nodes[0], items, _tok(c, "NOT") is not None)

    @_handler
    def between(self, c: list[Any]) -> A.Between:
        n = _nodes(c)
        return A.Between(
            n[0], n[1], n[2], _tok(c, "NOT") is not None, _tok(c, "SYMMETRIC") is not None
        )

    @_handler
    def compare(self, c: list[Any]) -> A.Binary:
        return A.Binary(c[1].value, c[0], c[2])

    @_handler
    def compare_subquery(self, c: list[Any]) -> A.QuantifiedComparison:
        quant = _tok(c, "QUANTIFIER")
        assert quant is not None
        return A.QuantifiedComparison(c[0], c[1].value, str(quant).upper(), _nodes(c, A.Query)[0])

    @_handler
    def cmp_op(self, c: list[Any]) -> _Clause:
        return _Clause("op", str(c[0]))

    @_handler
    def binary(self, c: list[Any]) -> A.Binary:
        op = c[1]
        return A.Binary(op.value if isinstance(op, _Clause) else str(op), c[0], c[2])

    @_handler
    def xor_op(self, c: list[Any]) -> _Clause:
        return _Clause("op", str(c[0]))

    @_handler
    def shift_op(self, c: list[Any]) -> _Clause:
        return _Clause("op", str(c[0]))

    @_handler
    def add_op(self, c: list[Any]) -> _Clause:
        return _Clause("op", str(c[0]))

    @_handler
    def mul_op(self, c: list[Any]) -> _Clause:
        return _Clause("op", str(c[0]))

    @_handler
    def unary(self, c: list[Any]) -> A.Unary:
        op = c[0]
        return A.Unary(op.value if isinstance(op, _Clause) else str(op), c[1])

    @_handler
    def at_time_zone(self, c: list[Any]) -> A.AtTimeZone:
        return A.AtTimeZone(c[0], c[1])

    @_handler
    def pg_cast(self, c: list[Any]) -> A.Cast:
        return A.Cast(c[0], c[1], "::")

    @_handler
    def subscript(self, c: list[Any]) -> A.Subscript:
        return A.Subscript(c[0], c[1])

    @_handler
    def slice(self, c: list[Any]) -> A.Slice:
        parts = {x.kind: x.value for x in c[1:] if isinstance(x, _Clause)}
        # The step's colon is present when the source has two colons inside the brackets.
        return A.Slice(
            c[0], parts.get("start"), parts.get("stop"), parts.get("step"), has_step="step" in parts
        )

    @_handler
    def slice_start(self, c: list[Any]) -> _Clause:
        return _Clause("start", c[0])

    @_handler
    def slice_stop(self, c: list[Any]) -> _Clause:
        return _Clause("stop", c[0])

    @_handler
    def slice_step(self, c: list[Any]) -> _Clause:
        return _Clause("step", c[0])

    @_handler
    def field_access(self, c: list[Any]) -> A.Expr:
        base = c[0]
        return A.FieldAccess(base, c[1])

    @_handler
    def collate(self, c: list[Any]) -> A.Collate:
        return A.Collate(c[0], c[1])

    @_handler
    def paren(self, c: list[Any]) -> A.Expr:
        return c[0]

    @_handler
    def tuple_(self, c: list[Any]) -> A.Tuple:
        return A.Tuple(tuple(c))

    @_handler
    def scalar_subquery(self, c: list[Any]) -> A.ScalarSubquery:
        return A.ScalarSubquery(_nodes(c, A.Query)[0])

    @_handler
    def exists(self, c: list[Any]) -> A.Exists:
        return A.Exists(c[0])

    @v_args(meta=True)
    def array_literal(self, meta: Meta, c: list[Any]) -> A.ArrayLiteral:
        items = next((x for x in c if isinstance(x, tuple)), ())
        keyword = self._text(meta)[:5].upper() == "ARRAY"
        return self._stamp(meta, A.ArrayLiteral(items, keyword))  # type: ignore[return-value]

    @_handler
    def struct_literal(self, c: list[Any]) -> A.StructLiteral:
        return A.StructLiteral(tuple(x for x in c if x is not None))

    @_handler
    def struct_field(self, c: list[Any]) -> A.StructField:
        key = c[0]
        if isinstance(key, Token):
            key = _string(key)
        return A.StructField(key, c[1])

    @_handler
    def map_literal(self, c: list[Any]) -> A.MapLiteral:
        return A.MapLiteral(tuple(x for x in c if x is not None))

    @_handler
    def map_entry(self, c: list[Any]) -> A.MapEntry:
        return A.MapEntry(c[0], c[1])

    @_handler
    def placeholder(self, c: list[Any]) -> A.Placeholder:
        return A.Placeholder(str(c[0]))

    @_handler
    def any_array(self, c: list[Any]) -> A.AnyArray:
        return A.AnyArray(str(c[0]).upper(), c[1])

    @_handler
    def list_quantifier(self, c: list[Any]) -> A.ListQuantifier:
        return A.ListQuantifier(str(c[0]).upper(), c[1], c[2])

    @_handler
    def similarity_score(self, c: list[Any]) -> A.SimilarityScore:
        cl = _clauses(c)
        nodes = [x for x in c if isinstance(x, A.Node)]
        target = cast(A.String | A.NearExample, nodes[-1])
        operand = cast(A.Expr, nodes[0]) if len(nodes) > 1 else None
        return A.SimilarityScore(operand, target, cl.get("using", ()))

    @_handler
    def score_text(self, c: list[Any]) -> A.String:
        return _string(c[0])

    @_handler
    def number(self, c: list[Any]) -> A.Number:
        return A.Number(str(c[0]))

    @_handler
    def signed_number(self, c: list[Any]) -> A.Expr:
        return A.Unary(c[0].value, A.Number(str(c[1])))

    @_handler
    def string(self, c: list[Any]) -> A.String:
        return _string(c[0])

    @_handler
    def prefixed_string(self, c: list[Any]) -> A.String:
        tok = str(c[0])
        return A.String(tok[2:-1], prefix=tok[0])

    @_handler
    def dollar_string(self, c: list[Any]) -> A.String:
        tok = str(c[0])
        tag_end = tok.index("$", 1) + 1
        tag = tok[:tag_end]
        return A.String(tok[tag_end : -len(tag)], prefix=tag)

    @_handler
    def true_(self, c: list[Any]) -> A.Boolean:
        return A.Boolean(True)

    @_handler
    def false_(self, c: list[Any]) -> A.Boolean:
        return A.Boolean(False)

    @_handler
    def null(self, c: list[Any]) -> A.Null:
        return A.Null()

    @_handler
    def typed_string(self, c: list[Any]) -> A.TypedString:
        return A.TypedString(str(c[0]).upper(), _string(c[1]))

    @_handler
    def interval(self, c: list[Any]) -> A.Interval:
        return A.Interval(c[0], c[1] if len(c) > 1 else None)

    @_handler
    def bare_interval(self, c: list[Any]) -> A.Interval:
        return A.Interval(_string(c[0]), c[1], keyword=False)

    @v_args(meta=True)
    def interval_unit(self, meta: Meta, c: list[Any]) -> A.IntervalUnit:
        text = " ".join(self._text(meta).upper().split())
        text = text.replace(" (", "(").replace("( ", "(").replace(" )", ")")
        return self._stamp(meta, A.IntervalUnit(text))  # type: ignore[return-value]

    @_handler
    def column_ref(self, c: list[Any]) -> A.Column:
        if isinstance(c[0], A.Column):
            return A.Column((*c[0].parts, c[1]))
        return A.Column((c[0],))

    @_handler
    def function_call(self, c: list[Any]) -> A.FunctionCall:
        name = c[0].parts
        cl = _clauses(c)
        args = cl.get("args", {})
        over = cl.get("over")
        return A.FunctionCall(
            name=name,
            args=args.get("args", ()),
            distinct=args.get("distinct", False),
            all=args.get("all", False),
            star=args.get("star", False),
            order_by=args.get("order_by", ()),
            inner_null_treatment=args.get("null_treatment"),
            within_group=cl.get("within_group", ()),
            filter=cl.get("filter"),
            null_treatment=cl.get("null_treatment"),
            over=over,
        )

    @_handler
    def qualified_name(self, c: list[Any]) -> _Clause:
        return _Clause("name", tuple(c))

    def _args(self, c: list[Any], **extra: Any) -> _Clause:
        cl = _clauses(c)
        args = tuple(x for x in c if isinstance(x, A.Node))
        out = {"args": args, "order_by": cl.get("func_order_by", ()), **extra}
        if "null_treatment" in cl:
            out["null_treatment"] = cl["null_treatment"]
        return _Clause("args", out)

    @_handler
    def func_args(self, c: list[Any]) -> _Clause:
        return self._args(c, all=_tok(c, "ALL") is not None)

    @_handler
    def func_args_distinct(self, c: list[Any]) -> _Clause:
        return self._args(c, distinct=True)

    @_handler
    def func_args_star(self, c: list[Any]) -> _Clause:
        return self._args(c, star=True)

    @_handler
    def named_arg(self, c: list[Any]) -> A.NamedArg:
        name = c[0] if isinstance(c[0], A.Identifier) else A.Identifier(str(c[0]))
        return A.NamedArg(name, c[1])

    @_handler
    def lambda_arg(self, c: list[Any]) -> A.Lambda:
        return A.Lambda(A.Identifier(str(c[0])), c[1])

    @_handler
    def qualified_star(self, c: list[Any]) -> A.QualifiedStar:
        return A.QualifiedStar(c[0].parts)

    @_handler
    def aliased_arg(self, c: list[Any]) -> A.AliasedArg:
        alias = c[1]
        if isinstance(alias, Token):
            alias = _string(alias)
        return A.AliasedArg(c[0], alias)

    @_handler
    def func_order_by(self, c: list[Any]) -> _Clause:
        return _Clause("func_order_by", tuple(c))

    @_handler
    def within_group(self, c: list[Any]) -> _Clause:
        return _Clause("within_group", tuple(c))

    @_handler
    def filter_clause(self, c: list[Any]) -> _Clause:
        return _Clause("filter", c[0])

    @_handler
    def null_treatment(self, c: list[Any]) -> _Clause:
        return _Clause("null_treatment", _upper_words(c))

    @_handler
    def over_clause(self, c: list[Any]) -> _Clause:
        return _Clause("over", c[0])

    @_handler
    def over_named(self, c: list[Any]) -> _Clause:
        return _Clause("over", c[0])

    @_handler
    def window_spec(self, c: list[Any]) -> A.WindowSpec:
        cl = _clauses(c)
        base = next((x for x in c if isinstance(x, A.Identifier)), None)
        return A.WindowSpec(
            base,
            cl.get("partition_by", ()),
            cl.get("window_order", ()),
            next((x for x in c if isinstance(x, A.WindowFrame)), None),
        )

    @_handler
    def partition_by(self, c: list[Any]) -> _Clause:
        return _Clause("partition_by", c[0])

    @_handler
    def window_order(self, c: list[Any]) -> _Clause:
        return _Clause("window_order", tuple(c))

    @_handler
    def frame_start(self, c: list[Any]) -> A.WindowFrame:
        return A.WindowFrame(c[0].value, c[1])

    @_handler
    def frame_between(self, c: list[Any]) -> A.WindowFrame:
        return A.WindowFrame(c[0].value, c[1], c[2])

    @_handler
    def frame_units(self, c: list[Any]) -> _Clause:
        return _Clause("units", _upper_words(c))

    @_handler
    def unbounded_preceding(self, c: list[Any]) -> A.FrameBound:
        return A.FrameBound("UNBOUNDED PRECEDING")

    @_handler
    def unbounded_following(self, c: list[Any]) -> A.FrameBound:
        return A.FrameBound("UNBOUNDED FOLLOWING")

    @_handler
    def current_row(self, c: list[Any]) -> A.FrameBound:
        return A.FrameBound("CURRENT ROW")

    @_handler
    def preceding(self, c: list[Any]) -> A.FrameBound:
        return A.FrameBound("PRECEDING", c[0])

    @_handler
    def following(self, c: list[Any]) -> A.FrameBound:
        return A.FrameBound("FOLLOWING", c[0])

    @_handler
    def cast(self, c: list[Any]) -> A.Cast:
        return A.Cast(c[1], c[2], c[0].value)

    @_handler
    def cast_kind(self, c: list[Any]) -> _Clause:
        return _Clause("kind", _upper_words(c))

    @_handler
    def extract(self, c: list[Any]) -> A.Extract:
        return A.Extract(c[0], c[1])

    @_handler
    def position(self, c: list[Any]) -> A.Position:
        return A.Position(c[0], c[1])

    @_handler
    def substring_from(self, c: list[Any]) -> A.Substring:
        n = _nodes(c)
        return A.Substring(c[0].value, n[0], n[1], n[2] if len(n) > 2 else None)

    @_handler
    def substring_for(self, c: list[Any]) -> A.Substring:
        n = _nodes(c)
        return A.Substring(c[0].value, n[0], None, n[1])

    @_handler
    def special_call(self, c: list[Any]) -> A.FunctionCall:
        return A.FunctionCall((A.Identifier(c[0].value),), tuple(_nodes(c)))

    @_handler
    def substring_kind(self, c: list[Any]) -> _Clause:
        return _Clause("name", str(c[0]).upper())

    @_handler
    def trim_from(self, c: list[Any]) -> A.Trim:
        where = next((x.value for x in c if isinstance(x, _Clause)), None)
        n = _nodes(c)
        if len(n) == 2:
            return A.Trim(n[1], where, n[0])
        return A.Trim(n[0], where, None)

    @_handler
    def trim_where_only(self, c: list[Any]) -> A.Trim:
        return A.Trim(c[1], c[0].value, None, from_=False)

    @_handler
    def trim_call(self, c: list[Any]) -> A.FunctionCall:
        return A.FunctionCall((A.Identifier("trim"),), tuple(_nodes(c)))

    @_handler
    def trim_where(self, c: list[Any]) -> _Clause:
        return _Clause("where", _upper_words(c))

    @_handler
    def overlay(self, c: list[Any]) -> A.Overlay:
        n = _nodes(c)
        return A.Overlay(n[0], n[1], n[2], n[3] if len(n) > 3 else None)

    @_handler
    def case_expr(self, c: list[Any]) -> A.Case:
        whens = tuple(x for x in c if isinstance(x, A.When))
        operand = c[0] if not isinstance(c[0], A.When) else None
        else_ = next((x.value for x in c if isinstance(x, _Clause)), None)
        return A.Case(operand, whens, else_)

    @_handler
    def when_clause(self, c: list[Any]) -> A.When:
        return A.When(c[0], c[1])

    @_handler
    def else_clause(self, c: list[Any]) -> _Clause:
        return _Clause("else", c[0])

    @_handler
    def expr_list(self, c: list[Any]) -> tuple[A.Expr, ...]:
        return tuple(c)

    # --- data types ----------------------------------------------------------------------------

    @_handler
    def data_type(self, c: list[Any]) -> A.DataType:
        words = [x.value for x in c if isinstance(x, A.Identifier)]
        cl = [x for x in c if isinstance(x, _Clause)]
        args = next((x.value for x in cl if x.kind == "type_args"), ())
        tz = next((x.value for x in cl if x.kind == "time_zone"), None)
        arrays = tuple(x.value for x in cl if x.kind == "array")
        quoted = [x for x in c if isinstance(x, A.Identifier) and x.quote]
        name = (
            " ".join(
                (f'"{w.value}"' if w.quote else w.value) for w in c if isinstance(w, A.Identifier)
            )
            if quoted
            else " ".join(words)
        )
        return A.DataType(name, args, tz, arrays)

    @_handler
    def generic_type(self, c: list[Any]) -> A.DataType:
        cl = [x for x in c if isinstance(x, _Clause)]
        kw = next(x.value for x in cl if x.kind == "generic")
        params = tuple(x for x in c if isinstance(x, A.DataType))
        arrays = tuple(x.value for x in cl if x.kind == "array")
        return A.DataType(kw, params=params, array=arrays, generic=True)

    @_handler
    def struct_type(self, c: list[Any]) -> A.DataType:
        flds = tuple(x for x in c if isinstance(x, tuple))
        arrays = tuple(x.value for x in c if isinstance(x, _Clause) and x.kind == "array")
        return A.DataType("STRUCT", fields=flds, array=arrays)

    @_handler
    def struct_type_field(self, c: list[Any]) -> tuple[A.Identifier, A.DataType]:
        return (c[0], c[1])

    @_handler
    def generic_kw(self, c: list[Any]) -> _Clause:
        return _Clause("generic", _upper_words(c))

    @_handler
    def type_args(self, c: list[Any]) -> _Clause:
        out = []
        for x in c:
            if isinstance(x, Token):
                out.append(str(x))
            elif isinstance(x, A.Unary):
                assert isinstance(x.operand, A.Number)
                out.append(x.op + x.operand.text)
            elif isinstance(x, A.Identifier):
                out.append(f'"{x.value}"' if x.quote else x.value)
        return _Clause("type_args", tuple(out))

    @_handler
    def time_zone(self, c: list[Any]) -> _Clause:
        return _Clause("time_zone", _upper_words(c))

    @_handler
    def array_suffix(self, c: list[Any]) -> _Clause:
        return _Clause("array", "".join(str(t) for t in c))

    @_handler
    def type_keyword(self, c: list[Any]) -> A.Identifier:
        return A.Identifier(str(c[0]))

    # --- names ---------------------------------------------------------------------------------

    @_handler
    def ident(self, c: list[Any]) -> A.Identifier:
        return A.Identifier(str(c[0]))

    @_handler
    def quoted_ident(self, c: list[Any]) -> A.Identifier:
        return A.Identifier(str(c[0])[1:-1].replace('""', '"'), quote='"')

    @_handler
    def backtick_ident(self, c: list[Any]) -> A.Identifier:
        return A.Identifier(str(c[0])[1:-1].replace("``", "`"), quote="`")

    @_handler
    def keyword_ident(self, c: list[Any]) -> A.Identifier:
        inner = c[0]
        return inner if isinstance(inner, A.Identifier) else A.Identifier(str(inner))

    @_handler
    def soft_keyword(self, c: list[Any]) -> A.Identifier:
        return A.Identifier(str(c[0]))

    # --- statements ----------------------------------------------------------------------------

    @_handler
    def explain_stmt(self, c: list[Any]) -> A.Explain:
        opts = tuple(x.value for x in c if isinstance(x, _Clause))
        return A.Explain(c[-1], opts)

    @v_args(meta=True)
    def explain_option(self, meta: Meta, c: list[Any]) -> _Clause:
        words = [str(x).upper() if isinstance(x, Token) else _ident_text(x) for x in c]
        return _Clause("explain", " ".join(words))

    @_handler
    def create_table_stmt(self, c: list[Any]) -> A.CreateTable:
        cl = _clauses(c)
        return A.CreateTable(
            name=cl["name"],
            elements=cl.get("elements", ()),
            has_elements="elements" in cl,
            query=cl.get("as"),
            or_replace="or_replace" in cl,
            temporary=cl.get("temporary"),
            if_not_exists="if_not_exists" in cl,
        )

    @_handler
    def or_replace(self, c: list[Any]) -> _Clause:
        return _Clause("or_replace", True)

    @_handler
    def temporary(self, c: list[Any]) -> _Clause:
        return _Clause("temporary", _upper_words(c))

    @_handler
    def if_not_exists(self, c: list[Any]) -> _Clause:
        return _Clause("if_not_exists", True)

    @_handler
    def if_exists(self, c: list[Any]) -> _Clause:
        return _Clause("if_exists", True)

    @_handler
    def create_as(self, c: list[Any]) -> _Clause:
        return _Clause("as", c[0])

    @_handler
    def table_elements(self, c: list[Any]) -> _Clause:
        return _Clause("elements", tuple(c))

    @_handler
    def column_def(self, c: list[Any]) -> A.ColumnDef:
        return A.ColumnDef(c[0], c[1], tuple(x for x in c[2:] if isinstance(x, A.ColumnConstraint)))

    @_handler
    def column_constraint(self, c: list[Any]) -> A.ColumnConstraint:
        words = _upper_words(c)
        value = next((x for x in c if isinstance(x, A.Expr)), None)
        return A.ColumnConstraint(words, value)

    @_handler
    def primary_key(self, c: list[Any]) -> A.TableConstraint:
        name = next((x for x in c if isinstance(x, A.Identifier)), None)
        cols = next(x.value for x in c if isinstance(x, _Clause))
        return A.TableConstraint("PRIMARY KEY", cols, name)

    @_handler
    def unique_key(self, c: list[Any]) -> A.TableConstraint:
        return A.TableConstraint("UNIQUE", c[0].value)

    @_handler
    def create_external_table_stmt(self, c: list[Any]) -> A.CreateExternalTable:
        cl = _clauses(c)
        return A.CreateExternalTable(
            name=cl["name"],
            elements=cl.get("elements", ()),
            has_elements="elements" in cl,
            clauses=tuple(x for x in c if isinstance(x, A.ExternalClause)),
            or_replace="or_replace" in cl,
            unbounded=_tok(c, "UNBOUNDED") is not None,
            if_not_exists="if_not_exists" in cl,
        )

    @_handler
    def stored_as(self, c: list[Any]) -> A.ExternalClause:
        return A.ExternalClause("STORED AS", text=_ident_text(c[0]))

    @_handler
    def location(self, c: list[Any]) -> A.ExternalClause:
        return A.ExternalClause("LOCATION", (_string(c[0]),))

    @_handler
    def partitioned_by(self, c: list[Any]) -> A.ExternalClause:
        return A.ExternalClause("PARTITIONED BY", tuple(c))

    @_handler
    def partition_col(self, c: list[Any]) -> A.PartitionColumn:
        return A.PartitionColumn(c[0], c[1] if len(c) > 1 else None)

    @_handler
    def with_order(self, c: list[Any]) -> A.ExternalClause:
        return A.ExternalClause("WITH ORDER", tuple(c))

    @_handler
    def options(self, c: list[Any]) -> A.ExternalClause:
        return A.ExternalClause("OPTIONS", tuple(c))

    @_handler
    def with_header_row(self, c: list[Any]) -> A.ExternalClause:
        return A.ExternalClause("WITH HEADER ROW")

    @_handler
    def delimiter(self, c: list[Any]) -> A.ExternalClause:
        return A.ExternalClause("DELIMITER", (_string(c[0]),))

    @_handler
    def compression_type(self, c: list[Any]) -> A.ExternalClause:
        return A.ExternalClause("COMPRESSION TYPE", text=_ident_text(c[0]))

    @_handler
    def option_item(self, c: list[Any]) -> A.OptionItem:
        key = c[0]
        key_text = f"'{key.value}'" if isinstance(key, A.String) else key.value
        return A.OptionItem(key_text, c[1] if len(c) > 1 else None)

    @_handler
    def option_path(self, c: list[Any]) -> _Clause:
        return _Clause("path", ".".join(_ident_text(x) for x in c))

    @_handler
    def create_view_stmt(self, c: list[Any]) -> A.CreateView:
        cl = _clauses(c)
        return A.CreateView(
            name=cl["name"],
            query=_nodes(c, A.Query)[0],
            columns=cl.get("columns", ()),
            or_replace="or_replace" in cl,
            temporary=cl.get("temporary"),
            if_not_exists="if_not_exists" in cl,
        )

    @_handler
    def create_schema_stmt(self, c: list[Any]) -> A.CreateSchema:
        cl = _clauses(c)
        return A.CreateSchema(cl["schema_kind"], cl["name"], "if_not_exists" in cl)

    @_handler
    def schema_kind(self, c: list[Any]) -> _Clause:
        return _Clause("schema_kind", _upper_words(c))

    @_handler
    def create_function_stmt(self, c: list[Any]) -> A.CreateFunction:
        cl = _clauses(c)
        types = [x for x in c if isinstance(x, A.DataType)]
        body = tuple(x.value for x in c if isinstance(x, _Clause) and x.kind == "body")
        return A.CreateFunction(cl["name"], tuple(types[:-1]), types[-1], body, "or_replace" in cl)

    @_handler
    def function_param(self, c: list[Any]) -> A.DataType:
        return c[0]

    @_handler
    def function_body(self, c: list[Any]) -> _Clause:
        return _Clause("body", (str(c[0]).upper(), c[1]))

    @_handler
    def drop_stmt(self, c: list[Any]) -> A.Drop:
        cl = [x for x in c if isinstance(x, _Clause)]
        kind = next(x.value for x in cl if x.kind == "drop_kind")
        names = tuple(x.value for x in cl if x.kind == "name")
        behavior = next((x.value for x in cl if x.kind == "behavior"), None)
        return A.Drop(kind, names, any(x.kind == "if_exists" for x in cl), behavior)

    @_handler
    def drop_kind(self, c: list[Any]) -> _Clause:
        return _Clause("drop_kind", _upper_words(c))

    @_handler
    def drop_behavior(self, c: list[Any]) -> _Clause:
        return _Clause("behavior", _upper_words(c))

    @v_args(meta=True)
    def insert_stmt(self, meta: Meta, c: list[Any]) -> A.Insert:
        cl = _clauses(c)
        source = next(x for x in c if isinstance(x, (A.Query, A.DefaultValues)))
        table_kw = self._text(meta).upper().split()[2:3] == ["TABLE"]
        node = A.Insert(
            cl["name"], source, cl.get("columns", ()), cl["mode"], table_keyword=table_kw
        )
        return self._stamp(meta, node)  # type: ignore[return-value]

    @_handler
    def insert_mode(self, c: list[Any]) -> _Clause:
        return _Clause("mode", _upper_words(c))

    @_handler
    def default_values(self, c: list[Any]) -> A.DefaultValues:
        return A.DefaultValues()

    @_handler
    def update_stmt(self, c: list[Any]) -> A.Update:
        cl = _clauses(c)
        return A.Update(
            cl["name"],
            tuple(x for x in c if isinstance(x, A.Assignment)),
            next((x for x in c if isinstance(x, A.TableAlias)), None),
            cl.get("from", ()),
            cl.get("where"),
        )

    @_handler
    def assignment(self, c: list[Any]) -> A.Assignment:
        return A.Assignment(c[0], c[1])

    @_handler
    def delete_stmt(self, c: list[Any]) -> A.Delete:
        cl = _clauses(c)
        return A.Delete(
            cl["name"], next((x for x in c if isinstance(x, A.TableAlias)), None), cl.get("where")
        )

    @_handler
    def set_stmt(self, c: list[Any]) -> A.SetVariable:
        cl = _clauses(c)
        value = next(x for x in c if isinstance(x, A.Expr))
        return A.SetVariable(cl["set_name"], value, cl.get("scope"))

    @_handler
    def set_scope(self, c: list[Any]) -> _Clause:
        return _Clause("scope", _upper_words(c))

    @_handler
    def set_name(self, c: list[Any]) -> _Clause:
        return _Clause("set_name", ".".join(_ident_text(x) for x in c))

    @_handler
    def default_value(self, c: list[Any]) -> A.Default:
        return A.Default()

    @_handler
    def set_time_zone(self, c: list[Any]) -> A.SetTimeZone:
        return A.SetTimeZone(next(x for x in c if isinstance(x, A.Expr)))

    @_handler
    def set_time_zone_eq(self, c: list[Any]) -> A.SetTimeZone:
        return A.SetTimeZone(next(x for x in c if isinstance(x, A.Expr)), equals=True)

    @_handler
    def reset_stmt(self, c: list[Any]) -> A.Reset:
        return A.Reset(c[0].value)

    @_handler
    def show_all(self, c: list[Any]) -> A.Show:
        return A.Show("ALL")

    @_handler
    def show_tables(self, c: list[Any]) -> A.Show:
        return A.Show("TABLES", full=_tok(c, "FULL") is not None)

    @_handler
    def show_columns(self, c: list[Any]) -> A.Show:
        return A.Show(
            "COLUMNS",
            name=c[-1].value,
            full=_tok(c, "FULL") is not None,
            extended=_tok(c, "EXTENDED") is not None,
        )

    @_handler
    def show_time_zone(self, c: list[Any]) -> A.Show:
        return A.Show("TIME ZONE", verbose=_tok(c, "VERBOSE") is not None)

    @_handler
    def null_word(self, c: list[Any]) -> A.Identifier:
        return A.Identifier("null")

    @_handler
    def show_functions(self, c: list[Any]) -> A.Show:
        like = _tok(c, "STRING")
        return A.Show("FUNCTIONS", target=str(like) if like else None)

    @_handler
    def show_populations(self, c: list[Any]) -> A.Show:
        return A.Show("POPULATIONS")

    @_handler
    def show_splits(self, c: list[Any]) -> A.ShowSplits:
        return A.ShowSplits(tuple(x for x in c if isinstance(x, A.Identifier)))

    @_handler
    def show_leakage(self, c: list[Any]) -> A.ShowLeakage:
        threshold = _tok(c, "NUMBER")
        using = tuple(x for x in c if isinstance(x, A.Identifier))
        return A.ShowLeakage(str(threshold) if threshold is not None else None, using)

    @_handler
    def show_variable(self, c: list[Any]) -> A.Show:
        words = [x for x in c if not (isinstance(x, Token) and x.type == "VERBOSE")]
        verbose = len(words) != len(c)
        return A.Show("VARIABLE", target=".".join(_ident_text(x) for x in words), verbose=verbose)

    @_handler
    def show_create(self, c: list[Any]) -> A.Show:
        return A.Show(f"CREATE {c[0].value}", name=c[-1].value)

    @_handler
    def create_kind(self, c: list[Any]) -> _Clause:
        return _Clause("create_kind", _upper_words(c))

    @_handler
    def describe_stmt(self, c: list[Any]) -> A.Describe:
        return A.Describe(c[-1].value, c[0].value)

    @_handler
    def describe_query(self, c: list[Any]) -> A.Describe:
        return A.Describe(c[-1], c[0].value)

    @_handler
    def describe_kw(self, c: list[Any]) -> _Clause:
        return _Clause("describe_kw", _upper_words(c))

    @_handler
    def copy_stmt(self, c: list[Any]) -> A.Copy:
        src = c[0].value if isinstance(c[0], _Clause) else c[0]
        target = next(x for x in c if isinstance(x, Token))
        return A.Copy(src, _string(target), tuple(x for x in c if isinstance(x, A.ExternalClause)))

    @_handler
    def copy_query(self, c: list[Any]) -> A.Query:
        return c[0]

    @v_args(meta=True)
    def truncate_stmt(self, meta: Meta, c: list[Any]) -> A.Truncate:
        table_kw = self._text(meta).upper().split()[1:2] == ["TABLE"]
        return self._stamp(meta, A.Truncate(c[-1].value, table_keyword=table_kw))  # type: ignore[return-value]

    @_handler
    def prepare_stmt(self, c: list[Any]) -> A.Prepare:
        types = tuple(x for x in c if isinstance(x, A.DataType))
        return A.Prepare(c[0], types, c[-1])

    @_handler
    def execute_stmt(self, c: list[Any]) -> A.Execute:
        args = next((x for x in c if isinstance(x, tuple)), None)
        return A.Execute(c[0], args or (), has_args=args is not None)

    @v_args(meta=True)
    def deallocate_stmt(self, meta: Meta, c: list[Any]) -> A.Deallocate:
        words = self._text(meta).upper().split()
        return self._stamp(meta, A.Deallocate(c[-1], "PREPARE" in words[1:2]))  # type: ignore[return-value]

    # --- PopQL statements ----------------------------------------------------------------------

    @_handler
    def create_population_stmt(self, c: list[Any]) -> A.CreatePopulation:
        cl = _clauses(c)
        name = next(x for x in c if isinstance(x, A.Identifier))
        desc = _tok(c, "STRING")
        return A.CreatePopulation(
            name,
            _nodes(c, A.Query)[0],
            _string(desc) if desc else None,
            "or_replace" in cl,
            "if_not_exists" in cl,
        )

    @_handler
    def freeze_population_stmt(self, c: list[Any]) -> A.FreezePopulation:
        tag = _tok(c, "STRING")
        return A.FreezePopulation(c[0], _string(tag) if tag else None)

    @_handler
    def diff_population_stmt(self, c: list[Any]) -> A.DiffPopulation:
        tag = _tok(c, "STRING")
        return A.DiffPopulation(c[0], _string(tag) if tag else None)

    @_handler
    def hold_out_stmt(self, c: list[Any]) -> A.HoldOut:
        salt = _tok(c, "STRING")
        return A.HoldOut(str(c[0]), c[1], _string(salt) if salt else None)

    @_handler
    def evaluate_stmt(self, c: list[Any]) -> A.Evaluate:
        cl = _clauses(c)
        pops = tuple(x for x in c if isinstance(x, A.Identifier))
        return A.Evaluate(c[0], populations=pops, metrics=cl.get("metrics", ()))

    @_handler
    def evaluate_by(self, c: list[Any]) -> A.Evaluate:
        cl = _clauses(c)
        by = next(x for x in c if isinstance(x, tuple))
        return A.Evaluate(c[0], by=by, metrics=cl.get("metrics", ()))

    @_handler
    def compare_stmt(self, c: list[Any]) -> A.Compare:
        cl = _clauses(c)
        pops = tuple(x for x in c if isinstance(x, A.Identifier))
        return A.Compare(c[0], c[1], pops, cl.get("metrics", ()))

    @_handler
    def model_ref(self, c: list[Any]) -> A.ModelRef:
        version = None
        if len(c) > 1:
            tok = c[1]
            version = _string(tok) if tok.type == "STRING" else A.Number(str(tok))
        return A.ModelRef(c[0], version)

    @_handler
    def metrics_clause(self, c: list[Any]) -> _Clause:
        return _Clause("metrics", tuple(c))

    @_handler
    def metric(self, c: list[Any]) -> A.Metric:
        args = next((x for x in c if isinstance(x, tuple)), None)
        return A.Metric(c[0], args or (), has_args=args is not None)

    @_handler
    def expect_stmt(self, c: list[Any]) -> A.Expect:
        metric, op = c[0], c[1].value
        nums = [str(x) for x in c if isinstance(x, Token) and x.type == "NUMBER"]
        pop = next(x for x in c[2:] if isinstance(x, A.Identifier))
        model = next((x for x in c if isinstance(x, A.ModelRef)), None)
        return A.Expect(metric, op, nums[0], pop, model, nums[1] if len(nums) > 1 else None)

    @_handler
    def find_failures_stmt(self, c: list[Any]) -> A.FindFailures:
        by = next((x for x in c if isinstance(x, tuple)), ())
        support = _tok(c, "NUMBER")
        return A.FindFailures(c[0], by, str(support) if support else None)

    @_handler
    def import_predictions_stmt(self, c: list[Any]) -> A.ImportPredictions:
        return A.ImportPredictions(c[0], _string(c[1]))


def _ident_text(x: Any) -> str:
    if isinstance(x, A.Identifier):
        return f'"{x.value}"' if x.quote == '"' else x.value
    if isinstance(x, A.String):
        return f"'{x.value}'"
    return str(x)


def _strings(c: list[Any]) -> tuple[A.String, ...]:
    return tuple(_string(t) for t in c if isinstance(t, Token) and t.type == "STRING")


def _plain_handlers() -> dict[str, Callable[[_Builder, Meta, list[Any]], Any]]:
    out = {}
    for name in dir(_Builder):
        if name.startswith("_"):
            continue
        attr = _Builder.__dict__.get(name)
        base = getattr(attr, "base_func", None)  # a v_args(meta=True) wrapper
        if base is not None:
            out[name] = base
    return out


_HANDLERS = _plain_handlers()


# Rules whose tree nodes are consumed by their parent through Lark's inlining never reach the
# transformer; every other rule name has a handler above (tests/test_grammar.py checks this).
HANDLED_RULES = frozenset(
    name for name in dir(_Builder) if not name.startswith("_") and callable(getattr(_Builder, name))
)
