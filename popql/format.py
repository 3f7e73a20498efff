"""Typed AST → text.

One printer serves two purposes:

* ``format_script`` / ``format_node``: canonical PopQL text (``popql fmt``): upper-case keywords,
  minimal parentheses, one clause per line for top-level queries.  ``parse(fmt(parse(x)))``
  equals ``parse(x)`` (spans aside) for every query in the test corpus.
* ``to_sql``: the same construct on one line with every nested operator parenthesised, used by
  the engine after PopQL's own constructs were rewritten away, so DataFusion's parser sees exactly
  the tree we parsed whatever its operator precedence.

Identifiers, numbers and strings are printed exactly as they were written.

>>> from popql.syntax import parse
>>> format_script(parse("select a,b from t where x>1 and not y"))
'SELECT a, b\\nFROM t\\nWHERE x > 1 AND NOT y;\\n'
>>> to_sql(parse("select a + b * c from t").statements[0])
'SELECT a + (b * c) FROM t'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from popql import ast as A

# Binding strength of each operator level, as the grammar layers them (higher binds tighter).
OR, AND, NOT, SHIFT, IS, LIKE, CMP, BITOR, BITXOR, BITAND, ADD, MUL, UNARY, ATTZ, POSTFIX, ATOM = (
    range(1, 17)
)

BINARY_LEVEL: dict[str, int] = {
    "OR": OR,
    "AND": AND,
    "|": BITOR,
    "^": BITXOR,
    "#": BITXOR,
    "&": BITAND,
    "<<": SHIFT,
    ">>": SHIFT,
    "+": ADD,
    "-": ADD,
    "*": MUL,
    "/": MUL,
    "%": MUL,
    "||": MUL,
}


def binary_level(op: str) -> int:
    return BINARY_LEVEL.get(op, CMP)


class Printer:
    def __init__(self, *, conservative: bool = False, pretty: bool = False) -> None:
        self.conservative = conservative
        self.pretty = pretty
        self._dispatch: dict[type, Callable[[Any], str]] = {}
        for cls in A.all_node_types():
            method = getattr(self, "_" + cls.__name__, None)
            if method is not None:
                self._dispatch[cls] = method

    # --- entry points --------------------------------------------------------------------------

    def node(self, node: A.Node) -> str:
        try:
            method = self._dispatch[type(node)]
        except KeyError:
            raise TypeError(f"no printer for {type(node).__name__}") from None
        return method(node)

    def expr(self, node: A.Node, min_level: int = 0) -> str:
        text = self.node(node)
        level = self.level(node)
        needs_parens = level < min_level or (
            # SQL mode: parenthesise every nested operator so DataFusion's own precedence
            # cannot regroup it; postfix forms (x::t, x[i]) bind tighter than any operator.
            self.conservative and min_level > 0 and level < POSTFIX
        )
        return f"({text})" if needs_parens else text

    def level(self, node: A.Node) -> int:
        if isinstance(node, A.Binary):
            return binary_level(node.op)
        if isinstance(node, A.Not):
            return NOT
        if isinstance(node, (A.IsTest, A.IsDistinctFrom, A.IsNullPostfix)):
            return IS
        if isinstance(
            node,
            (
                A.Like,
                A.RegexMatch,
                A.InList,
                A.InSubquery,
                A.Between,
                A.SimilarTo,
                A.Near,
                A.Tagged,
            ),
        ):
            return LIKE
        if isinstance(node, A.QuantifiedComparison):
            return CMP
        if isinstance(node, A.Unary):
            return UNARY
        if isinstance(node, A.AtTimeZone):
            return ATTZ
        if isinstance(node, (A.Subscript, A.Slice, A.FieldAccess, A.Collate)):
            return POSTFIX
        if isinstance(node, A.Cast) and node.kind == "::":
            return POSTFIX
        return ATOM

    def join(self, items: Iterable[A.Node], sep: str = ", ") -> str:
        return sep.join(self.expr(i) if isinstance(i, A.Expr) else self.node(i) for i in items)

    # --- names and literals --------------------------------------------------------------------

    def _Identifier(self, n: A.Identifier) -> str:
        if n.quote == '"':
            return '"' + n.value.replace('"', '""') + '"'
        if n.quote == "`":
            return "`" + n.value.replace("`", "``") + "`"
        return n.value

    def name(self, parts: tuple[A.Identifier, ...]) -> str:
        return ".".join(self._Identifier(p) for p in parts)

    def _Column(self, n: A.Column) -> str:
        return self.name(n.parts)

    def _Number(self, n: A.Number) -> str:
        return n.text

    def _String(self, n: A.String) -> str:
        if n.prefix.startswith("$"):
            return f"{n.prefix}{n.value}{n.prefix}"
        return f"{n.prefix}'{n.value}'"

    def _Boolean(self, n: A.Boolean) -> str:
        return "TRUE" if n.value else "FALSE"

    def _Null(self, n: A.Null) -> str:
        return "NULL"

    def _Default(self, n: A.Default) -> str:
        return "DEFAULT"

    def _Placeholder(self, n: A.Placeholder) -> str:
        return n.text

    def _TypedString(self, n: A.TypedString) -> str:
        return f"{n.type_name.upper()} {self._String(n.value)}"

    def _IntervalUnit(self, n: A.IntervalUnit) -> str:
        return n.text.upper()

    def _Interval(self, n: A.Interval) -> str:
        value = self.node(n.value)
        if isinstance(n.value, (A.String, A.Number)) or (
            isinstance(n.value, A.Unary) and isinstance(n.value.operand, A.Number)
        ):
            pass
        else:
            value = f"({value})"
        unit = f" {self._IntervalUnit(n.unit)}" if n.unit else ""
        return f"INTERVAL {value}{unit}" if n.keyword else f"{value}{unit}"

    # --- operators -----------------------------------------------------------------------------

    def _Unary(self, n: A.Unary) -> str:
        operand = self.expr(n.operand, UNARY)
        if operand.startswith(("-", "+")) and n.op in "-+":
            return f"{n.op} {operand}"
        return f"{n.op}{operand}"

    def _Binary(self, n: A.Binary) -> str:
        level = binary_level(n.op)
        return f"{self.expr(n.left, level)} {n.op} {self.expr(n.right, level + 1)}"

    def _Not(self, n: A.Not) -> str:
        return f"NOT {self.expr(n.operand, NOT)}"

    def _IsTest(self, n: A.IsTest) -> str:
        neg = " NOT" if n.negated else ""
        return f"{self.expr(n.operand, IS)} IS{neg} {n.test}"

    def _IsNullPostfix(self, n: A.IsNullPostfix) -> str:
        return f"{self.expr(n.operand, IS)} {'NOTNULL' if n.negated else 'ISNULL'}"

    def _IsDistinctFrom(self, n: A.IsDistinctFrom) -> str:
        neg = " NOT" if n.negated else ""
        return f"{self.expr(n.left, IS)} IS{neg} DISTINCT FROM {self.expr(n.right, LIKE)}"

    def _Like(self, n: A.Like) -> str:
        neg = "NOT " if n.negated else ""
        esc = f" ESCAPE {self.expr(n.escape, CMP)}" if n.escape is not None else ""
        return f"{self.expr(n.operand, LIKE)} {neg}{n.op} {self.expr(n.pattern, CMP)}{esc}"

    def _RegexMatch(self, n: A.RegexMatch) -> str:
        return f"{self.expr(n.operand, LIKE)} {n.op} {self.expr(n.pattern, CMP)}"

    def _InList(self, n: A.InList) -> str:
        neg = "NOT " if n.negated else ""
        return f"{self.expr(n.operand, LIKE)} {neg}IN ({self.join(n.items)})"

    def _InSubquery(self, n: A.InSubquery) -> str:
        neg = "NOT " if n.negated else ""
        return f"{self.expr(n.operand, LIKE)} {neg}IN ({self.query_inline(n.query)})"

    def _Between(self, n: A.Between) -> str:
        neg = "NOT " if n.negated else ""
        sym = "SYMMETRIC " if n.symmetric else ""
        return (
            f"{self.expr(n.operand, LIKE)} {neg}BETWEEN {sym}{self.expr(n.low, BITOR)}"
            f" AND {self.expr(n.high, BITOR)}"
        )

    def _QuantifiedComparison(self, n: A.QuantifiedComparison) -> str:
        return f"{self.expr(n.left, CMP)} {n.op} {n.quantifier} ({self.query_inline(n.query)})"

    def _AnyArray(self, n: A.AnyArray) -> str:
        return f"{n.quantifier}({self.expr(n.operand)})"

    def _AtTimeZone(self, n: A.AtTimeZone) -> str:
        return f"{self.expr(n.operand, ATTZ)} AT TIME ZONE {self.expr(n.zone, POSTFIX)}"

    def _Cast(self, n: A.Cast) -> str:
        if n.kind == "::":
            return f"{self.expr(n.operand, POSTFIX)}::{self._DataType(n.type)}"
        return f"{n.kind}({self.expr(n.operand)} AS {self._DataType(n.type)})"

    def _Subscript(self, n: A.Subscript) -> str:
        return f"{self.postfix_base(n.operand)}[{self.expr(n.index)}]"

    def _Slice(self, n: A.Slice) -> str:
        def part(e: A.Expr | None) -> str:
            return self.expr(e) if e is not None else ""

        inner = f"{part(n.start)}:{part(n.stop)}"
        if n.has_step:
            inner += f":{part(n.step)}"
        return f"{self.postfix_base(n.operand)}[{inner}]"

    def _FieldAccess(self, n: A.FieldAccess) -> str:
        base = self.postfix_base(n.operand)
        if isinstance(n.operand, (A.Column, A.Number)) and not base.startswith("("):
            base = f"({base})"
        return f"{base}.{self._Identifier(n.field)}"

    def postfix_base(self, operand: A.Expr) -> str:
        text = self.node(operand)
        if self.level(operand) < POSTFIX:
            return f"({text})"
        return text

    def _Collate(self, n: A.Collate) -> str:
        return f"{self.postfix_base(n.operand)} COLLATE {self._Identifier(n.collation)}"

    def _Tuple(self, n: A.Tuple) -> str:
        return f"({self.join(n.items)})"

    def _ScalarSubquery(self, n: A.ScalarSubquery) -> str:
        return f"({self.query_inline(n.query)})"

    def _Exists(self, n: A.Exists) -> str:
        return f"EXISTS ({self.query_inline(n.query)})"

    def _ArrayLiteral(self, n: A.ArrayLiteral) -> str:
        return f"{'ARRAY' if n.keyword else ''}[{self.join(n.items)}]"

    def _StructField(self, n: A.StructField) -> str:
        return f"{self.node(n.key)}: {self.expr(n.value)}"

    def _StructLiteral(self, n: A.StructLiteral) -> str:
        return "{" + self.join(n.fields) + "}"

    def _MapEntry(self, n: A.MapEntry) -> str:
        return f"{self.expr(n.key)}: {self.expr(n.value)}"

    def _MapLiteral(self, n: A.MapLiteral) -> str:
        return "MAP {" + self.join(n.entries) + "}"

    def _When(self, n: A.When) -> str:
        return f"WHEN {self.expr(n.condition)} THEN {self.expr(n.result)}"

    def _Case(self, n: A.Case) -> str:
        parts = ["CASE"]
        if n.operand is not None:
            parts.append(self.expr(n.operand))
        parts.extend(self._When(w) for w in n.whens)
        if n.else_ is not None:
            parts.append(f"ELSE {self.expr(n.else_)}")
        parts.append("END")
        return " ".join(parts)

    # --- functions -----------------------------------------------------------------------------

    def _NamedArg(self, n: A.NamedArg) -> str:
        return f"{self._Identifier(n.name)} => {self.expr(n.value)}"

    def _AliasedArg(self, n: A.AliasedArg) -> str:
        return f"{self.expr(n.value)} AS {self.node(n.alias)}"

    def _Lambda(self, n: A.Lambda) -> str:
        return f"{self._Identifier(n.param)} -> {self.expr(n.body)}"

    def _QualifiedStar(self, n: A.QualifiedStar) -> str:
        return f"{self.name(n.qualifier)}.*"

    def _OrderItem(self, n: A.OrderItem) -> str:
        out = self.expr(n.expr)
        if n.direction:
            out += f" {n.direction}"
        if n.nulls:
            out += f" NULLS {n.nulls}"
        return out

    def _FrameBound(self, n: A.FrameBound) -> str:
        if n.offset is None:
            return n.kind
        off = self.node(n.offset)
        if not isinstance(n.offset, (A.Number, A.String, A.Interval, A.Placeholder)):
            off = f"({off})"
        return f"{off} {n.kind}"

    def _WindowFrame(self, n: A.WindowFrame) -> str:
        if n.end is None:
            return f"{n.units} {self._FrameBound(n.start)}"
        return f"{n.units} BETWEEN {self._FrameBound(n.start)} AND {self._FrameBound(n.end)}"

    def _WindowSpec(self, n: A.WindowSpec) -> str:
        parts = []
        if n.base is not None:
            parts.append(self._Identifier(n.base))
        if n.partition_by:
            parts.append("PARTITION BY " + self.join(n.partition_by))
        if n.order_by:
            parts.append("ORDER BY " + self.join(n.order_by))
        if n.frame is not None:
            parts.append(self._WindowFrame(n.frame))
        return " ".join(parts)

    def _FunctionCall(self, n: A.FunctionCall) -> str:
        args: list[str] = []
        if n.star:
            args.append("*")
        args.extend(self.expr(a) for a in n.args)
        inner = ", ".join(args)
        if n.distinct:
            inner = "DISTINCT " + inner
        elif n.all:
            inner = "ALL " + inner
        if n.order_by:
            inner += " ORDER BY " + self.join(n.order_by)
        if n.inner_null_treatment:
            inner += f" {n.inner_null_treatment}"
        out = f"{self.name(n.name)}({inner})"
        if n.within_group:
            out += f" WITHIN GROUP (ORDER BY {self.join(n.within_group)})"
        if n.filter is not None:
            out += f" FILTER (WHERE {self.expr(n.filter)})"
        if n.null_treatment:
            out += f" {n.null_treatment}"
        if isinstance(n.over, A.Identifier):
            out += f" OVER {self._Identifier(n.over)}"
        elif n.over is not None:
            out += f" OVER ({self._WindowSpec(n.over)})"
        return out

    def _Extract(self, n: A.Extract) -> str:
        return f"EXTRACT({self.node(n.field)} FROM {self.expr(n.operand)})"

    def _Position(self, n: A.Position) -> str:
        return f"POSITION({self.expr(n.needle, BITOR)} IN {self.expr(n.haystack, BITOR)})"

    def _Substring(self, n: A.Substring) -> str:
        out = f"{n.name.upper()}({self.expr(n.operand)}"
        if n.start is not None:
            out += f" FROM {self.expr(n.start)}"
        if n.length is not None:
            out += f" FOR {self.expr(n.length)}"
        return out + ")"

    def _Trim(self, n: A.Trim) -> str:
        inner = ""
        if n.where:
            inner += n.where + " "
        if not n.from_:
            return f"TRIM({inner}{self.expr(n.operand)})"
        if n.chars is not None:
            inner += self.expr(n.chars) + " "
        return f"TRIM({inner}FROM {self.expr(n.operand)})"

    def _Overlay(self, n: A.Overlay) -> str:
        out = (
            f"OVERLAY({self.expr(n.operand)} PLACING {self.expr(n.placing)}"
            f" FROM {self.expr(n.start)}"
        )
        if n.length is not None:
            out += f" FOR {self.expr(n.length)}"
        return out + ")"

    # --- PopQL expressions ---------------------------------------------------------------------

    def _SearchOptions(self, n: A.SearchOptions) -> str:
        parts = []
        if n.using:
            parts.append("USING " + self.name(n.using))
        if n.top_k is not None:
            parts.append(f"TOP {n.top_k}")
        if n.threshold is not None:
            parts.append(f"THRESHOLD {n.threshold}")
        if n.exact:
            parts.append("EXACT")
        return " ".join(parts)

    def _NearExample(self, n: A.NearExample) -> str:
        kind = "" if n.kind == "TEXT" else f"{n.kind} "
        return f"{'NOT ' if n.negated else ''}{kind}{self.node(n.value)}"

    def _SimilarTo(self, n: A.SimilarTo) -> str:
        out = ""
        if n.operand is not None:
            out = self.expr(n.operand, LIKE) + " "
        out += f"{'NOT ' if n.negated else ''}SIMILAR TO {self.expr(n.target, CMP)}"
        if n.escape is not None:
            out += f" ESCAPE {self.expr(n.escape, CMP)}"
        opts = self._SearchOptions(n.options)
        return f"{out} {opts}" if opts else out

    def _Near(self, n: A.Near) -> str:
        out = ""
        if n.operand is not None:
            out = self.expr(n.operand, LIKE) + " "
        examples = self.join(n.examples)
        if n.parenthesized:
            examples = f"({examples})"
        out += f"{'NOT ' if n.negated else ''}NEAR {examples}"
        opts = self._SearchOptions(n.options)
        return f"{out} {opts}" if opts else out

    def _SimilarityScore(self, n: A.SimilarityScore) -> str:
        inner = f"{self.expr(n.operand)}, " if n.operand is not None else ""
        inner += self.node(n.target)
        if n.using:
            inner += " USING " + self.name(n.using)
        return f"SIMILARITY({inner})"

    def _Tagged(self, n: A.Tagged) -> str:
        out = self.expr(n.operand, LIKE) + " " if n.operand is not None else ""
        labels = ", ".join(self._String(s) for s in n.labels)
        if n.mode == "ONE":
            rhs = labels
        elif n.mode == "ANY":
            rhs = f"({labels})"
        else:
            rhs = f"ALL ({labels})"
        return f"{out}{'NOT ' if n.negated else ''}TAGGED {rhs}"

    def _ListQuantifier(self, n: A.ListQuantifier) -> str:
        return f"{n.func}({self.expr(n.operand)} WHERE {self.expr(n.predicate)})"

    # --- types ---------------------------------------------------------------------------------

    def _DataType(self, n: A.DataType) -> str:
        if n.generic:
            out = f"{n.name}<{', '.join(self._DataType(p) for p in n.params)}>"
        elif n.fields:
            inner = ", ".join(f"{self._Identifier(k)} {self._DataType(t)}" for k, t in n.fields)
            out = f"{n.name}({inner})"
        else:
            out = n.name
            if n.args:
                out += "(" + ", ".join(n.args) + ")"
            if n.time_zone:
                out += " " + n.time_zone
        return out + "".join(n.array)

    # --- queries -------------------------------------------------------------------------------

    def nl(self) -> str:
        return "\n" if self.pretty else " "

    def query_inline(self, q: A.Query) -> str:
        saved = self.pretty
        self.pretty = False
        try:
            return self._Query(q)
        finally:
            self.pretty = saved

    def _Cte(self, n: A.Cte) -> str:
        cols = f"({self.join(n.columns)})" if n.columns else ""
        return f"{self._Identifier(n.name)}{cols} AS ({self.query_inline(n.query)})"

    def _With(self, n: A.With) -> str:
        rec = "RECURSIVE " if n.recursive else ""
        return f"WITH {rec}" + ", ".join(self._Cte(c) for c in n.ctes)

    def _Query(self, n: A.Query) -> str:
        parts = []
        if n.with_ is not None:
            parts.append(self._With(n.with_))
        parts.append(self.set_operand(n.body, top=True))
        if n.order_by:
            parts.append("ORDER BY " + self.join(n.order_by))
        if n.order_by_all is not None:
            parts.append("ORDER BY " + self._OrderItem(n.order_by_all))
        limit = (
            "LIMIT ALL"
            if n.limit_all
            else (f"LIMIT {self.expr(n.limit)}" if n.limit is not None else None)
        )
        offset = f"OFFSET {self.expr(n.offset)}" if n.offset is not None else None
        ordered = [offset, limit] if n.offset_first else [limit, offset]
        parts.extend(p for p in ordered if p)
        return self.nl().join(parts)

    def set_operand(self, body: A.Node, top: bool = False) -> str:
        if isinstance(body, A.Query):
            return f"({self.query_inline(body)})"
        return self.node(body)

    def _SetOperation(self, n: A.SetOperation) -> str:
        quant = f" {n.quantifier}" if n.quantifier else ""
        right = n.right
        # The grammar is left-associative and INTERSECT binds tighter than UNION / EXCEPT.
        right_text = self.set_operand(right)
        if isinstance(right, A.SetOperation) and not (
            n.op != "INTERSECT" and right.op == "INTERSECT"
        ):
            right_text = f"({self.query_inline(A.Query(right))})"
        left_text = self.set_operand(n.left)
        if n.op == "INTERSECT" and isinstance(n.left, A.SetOperation) and n.left.op != "INTERSECT":
            left_text = f"({self.query_inline(A.Query(n.left))})"
        return f"{left_text}{self.nl()}{n.op}{quant}{self.nl()}{right_text}"

    def _SelectItem(self, n: A.SelectItem) -> str:
        out = self.expr(n.expr)
        if n.alias is not None:
            out += f" AS {self._Identifier(n.alias)}"
        return out

    def _RenameItem(self, n: A.RenameItem) -> str:
        return f"{self._Identifier(n.old)} AS {self._Identifier(n.new)}"

    def _WildcardOption(self, n: A.WildcardOption) -> str:
        items = self.join(n.items)
        return f"{n.kind} ({items})" if n.parenthesized else f"{n.kind} {items}"

    def _Star(self, n: A.Star) -> str:
        out = f"{self.name(n.qualifier)}.*" if n.qualifier else "*"
        for opt in n.options:
            out += " " + self._WildcardOption(opt)
        return out

    def _TableAlias(self, n: A.TableAlias) -> str:
        cols = f"({self.join(n.columns)})" if n.columns else ""
        return f" AS {self._Identifier(n.name)}{cols}"

    def alias(self, a: A.TableAlias | None) -> str:
        return self._TableAlias(a) if a is not None else ""

    def _TableName(self, n: A.TableName) -> str:
        version = f" AS OF VERSION {n.version}" if n.version is not None else ""
        return self.name(n.name) + version + self.alias(n.alias)

    def _DerivedTable(self, n: A.DerivedTable) -> str:
        lateral = "LATERAL " if n.lateral else ""
        return f"{lateral}({self.query_inline(n.query)}){self.alias(n.alias)}"

    def _TableFunction(self, n: A.TableFunction) -> str:
        lateral = "LATERAL " if n.lateral else ""
        return f"{lateral}{self.name(n.name)}({self.join(n.args)}){self.alias(n.alias)}"

    def _ValuesTable(self, n: A.ValuesTable) -> str:
        return f"{self._Values(n.values)}{self.alias(n.alias)}"

    def _ParenTable(self, n: A.ParenTable) -> str:
        return f"({self.node(n.table)}){self.alias(n.alias)}"

    def _JoinOn(self, n: A.JoinOn) -> str:
        return f"ON {self.expr(n.condition)}"

    def _JoinUsing(self, n: A.JoinUsing) -> str:
        return f"USING ({self.join(n.columns)})"

    def _Join(self, n: A.Join) -> str:
        right = self.node(n.right)
        if isinstance(n.right, A.Join):
            right = f"({right})"
        natural = "NATURAL " if n.natural else ""
        out = f"{self.node(n.left)} {natural}{n.kind} {right}"
        if n.constraint is not None:
            out += " " + self.node(n.constraint)
        return out

    def _Rollup(self, n: A.Rollup) -> str:
        return f"ROLLUP ({self.join(n.items)})"

    def _Cube(self, n: A.Cube) -> str:
        return f"CUBE ({self.join(n.items)})"

    def _GroupingSets(self, n: A.GroupingSets) -> str:
        return f"GROUPING SETS ({self.join(n.items)})"

    def _EmptyGrouping(self, n: A.EmptyGrouping) -> str:
        return "()"

    def _GroupBy(self, n: A.GroupBy) -> str:
        return "GROUP BY ALL" if n.all else "GROUP BY " + self.join(n.items)

    def _NamedWindow(self, n: A.NamedWindow) -> str:
        return f"{self._Identifier(n.name)} AS ({self._WindowSpec(n.spec)})"

    def _Select(self, n: A.Select) -> str:
        head = "SELECT"
        if n.distinct == "DISTINCT" and n.distinct_on:
            head += f" DISTINCT ON ({self.join(n.distinct_on)})"
        elif n.distinct:
            head += f" {n.distinct}"
        parts = [f"{head} {self.join(n.items)}"]
        if n.into:
            parts[-1] += f" INTO {self.name(n.into)}"
        if n.from_:
            parts.append("FROM " + self.join(n.from_))
        if n.where is not None:
            parts.append("WHERE " + self.expr(n.where))
        if n.group_by is not None:
            parts.append(self._GroupBy(n.group_by))
        if n.having is not None:
            parts.append("HAVING " + self.expr(n.having))
        if n.windows:
            parts.append("WINDOW " + self.join(n.windows))
        if n.qualify is not None:
            parts.append("QUALIFY " + self.expr(n.qualify))
        return self.nl().join(parts)

    def _ValuesRow(self, n: A.ValuesRow) -> str:
        return f"{'ROW' if n.row_keyword else ''}({self.join(n.items)})"

    def _Values(self, n: A.Values) -> str:
        return "VALUES " + ", ".join(self._ValuesRow(r) for r in n.rows)

    # --- statements ----------------------------------------------------------------------------

    def _Explain(self, n: A.Explain) -> str:
        opts = "".join(" " + o for o in n.options)
        return f"EXPLAIN{opts} {self.statement_inline(n.statement)}"

    def statement_inline(self, s: A.Statement) -> str:
        saved = self.pretty
        self.pretty = False
        try:
            return self.node(s)
        finally:
            self.pretty = saved

    def _ColumnConstraint(self, n: A.ColumnConstraint) -> str:
        if n.value is not None:
            return f"{n.kind} {self.expr(n.value, BITOR)}"
        return n.kind

    def _ColumnDef(self, n: A.ColumnDef) -> str:
        out = f"{self._Identifier(n.name)} {self._DataType(n.type)}"
        for c in n.constraints:
            out += " " + self._ColumnConstraint(c)
        return out

    def _TableConstraint(self, n: A.TableConstraint) -> str:
        name = f"CONSTRAINT {self._Identifier(n.name)} " if n.name is not None else ""
        return f"{name}{n.kind} ({self.join(n.columns)})"

    def create_head(self, kind: str, or_replace: bool, temporary: str | None = None) -> str:
        out = "CREATE"
        if or_replace:
            out += " OR REPLACE"
        if temporary:
            out += f" {temporary}"
        return f"{out} {kind}"

    def _CreateTable(self, n: A.CreateTable) -> str:
        out = self.create_head("TABLE", n.or_replace, n.temporary)
        if n.if_not_exists:
            out += " IF NOT EXISTS"
        out += " " + self.name(n.name)
        if n.has_elements:
            out += f" ({self.join(n.elements)})"
        if n.query is not None:
            out += " AS " + self.query_inline(n.query)
        return out

    def _OptionItem(self, n: A.OptionItem) -> str:
        if n.value is None:
            return n.key
        return f"{n.key} {self.node(n.value)}"

    def _PartitionColumn(self, n: A.PartitionColumn) -> str:
        if n.type is None:
            return self._Identifier(n.name)
        return f"{self._Identifier(n.name)} {self._DataType(n.type)}"

    def _ExternalClause(self, n: A.ExternalClause) -> str:
        if n.kind in ("STORED AS", "COMPRESSION TYPE"):
            return f"{n.kind} {n.text}"
        if n.kind in ("LOCATION", "DELIMITER"):
            return f"{n.kind} {self.node(n.items[0])}"
        if n.kind == "WITH HEADER ROW":
            return n.kind
        return f"{n.kind} ({self.join(n.items)})"

    def _CreateExternalTable(self, n: A.CreateExternalTable) -> str:
        out = "CREATE"
        if n.or_replace:
            out += " OR REPLACE"
        if n.unbounded:
            out += " UNBOUNDED"
        out += " EXTERNAL TABLE"
        if n.if_not_exists:
            out += " IF NOT EXISTS"
        out += " " + self.name(n.name)
        if n.has_elements:
            out += f" ({self.join(n.elements)})"
        for c in n.clauses:
            out += " " + self._ExternalClause(c)
        return out

    def _CreateView(self, n: A.CreateView) -> str:
        out = self.create_head("VIEW", n.or_replace, n.temporary)
        if n.if_not_exists:
            out += " IF NOT EXISTS"
        out += " " + self.name(n.name)
        if n.columns:
            out += f" ({self.join(n.columns)})"
        return out + " AS " + self.query_inline(n.query)

    def _CreateSchema(self, n: A.CreateSchema) -> str:
        ine = " IF NOT EXISTS" if n.if_not_exists else ""
        return f"CREATE {n.kind}{ine} {self.name(n.name)}"

    def _CreateFunction(self, n: A.CreateFunction) -> str:
        out = self.create_head("FUNCTION", n.or_replace)
        params = ", ".join(self._DataType(p) for p in n.params)
        out += f" {self.name(n.name)}({params}) RETURNS {self._DataType(n.returns)}"
        for kw, value in n.body:
            out += f" {kw} {self.expr(value) if isinstance(value, A.Expr) else self.node(value)}"
        return out

    def _Drop(self, n: A.Drop) -> str:
        ie = " IF EXISTS" if n.if_exists else ""
        names = ", ".join(self.name(x) for x in n.names)
        beh = f" {n.behavior}" if n.behavior else ""
        return f"DROP {n.kind}{ie} {names}{beh}"

    def _DefaultValues(self, n: A.DefaultValues) -> str:
        return "DEFAULT VALUES"

    def _Insert(self, n: A.Insert) -> str:
        table = " TABLE" if n.table_keyword else ""
        cols = f" ({self.join(n.columns)})" if n.columns else ""
        src = (
            self.node(n.source)
            if isinstance(n.source, A.DefaultValues)
            else self.query_inline(n.source)
        )
        return f"INSERT {n.mode}{table} {self.name(n.table)}{cols} {src}"

    def _Assignment(self, n: A.Assignment) -> str:
        return f"{self._Column(n.target)} = {self.expr(n.value)}"

    def _Update(self, n: A.Update) -> str:
        out = f"UPDATE {self.name(n.table)}{self.alias(n.alias)} SET {self.join(n.assignments)}"
        if n.from_:
            out += " FROM " + self.join(n.from_)
        if n.where is not None:
            out += " WHERE " + self.expr(n.where)
        return out

    def _Delete(self, n: A.Delete) -> str:
        out = f"DELETE FROM {self.name(n.table)}{self.alias(n.alias)}"
        if n.where is not None:
            out += " WHERE " + self.expr(n.where)
        return out

    def _SetVariable(self, n: A.SetVariable) -> str:
        scope = f" {n.scope}" if n.scope else ""
        return f"SET{scope} {n.name} = {self.expr(n.value)}"

    def _SetTimeZone(self, n: A.SetTimeZone) -> str:
        eq = "= " if n.equals else ""
        return f"SET TIME ZONE {eq}{self.expr(n.value)}"

    def _Reset(self, n: A.Reset) -> str:
        return f"RESET {n.name}"

    def _Show(self, n: A.Show) -> str:
        full = ("EXTENDED " if n.extended else "") + ("FULL " if n.full else "")
        verbose = " VERBOSE" if n.verbose else ""
        if n.kind == "TIME ZONE":
            return "SHOW TIME ZONE" + verbose
        if n.kind == "ALL":
            return "SHOW ALL"
        if n.kind == "TABLES":
            return f"SHOW {full}TABLES"
        if n.kind == "COLUMNS":
            return f"SHOW {full}COLUMNS FROM {self.name(n.name)}"
        if n.kind == "FUNCTIONS":
            return "SHOW FUNCTIONS" + (f" LIKE {n.target}" if n.target else "")
        if n.kind == "POPULATIONS":
            return "SHOW POPULATIONS"
        if n.kind == "VARIABLE":
            return f"SHOW {n.target}{verbose}"
        return f"SHOW {n.kind} {self.name(n.name)}"

    def _Describe(self, n: A.Describe) -> str:
        if isinstance(n.target, A.Query):
            return f"{n.keyword} {self.query_inline(n.target)}"
        return f"{n.keyword} {self.name(n.target)}"

    def _Copy(self, n: A.Copy) -> str:
        src = (
            f"({self.query_inline(n.source)})"
            if isinstance(n.source, A.Query)
            else self.name(n.source)
        )
        out = f"COPY {src} TO {self._String(n.target)}"
        for c in n.clauses:
            out += " " + self._ExternalClause(c)
        return out

    def _Truncate(self, n: A.Truncate) -> str:
        return f"TRUNCATE {'TABLE ' if n.table_keyword else ''}{self.name(n.table)}"

    def _Prepare(self, n: A.Prepare) -> str:
        types = f"({', '.join(self._DataType(t) for t in n.types)})" if n.types else ""
        return f"PREPARE {self._Identifier(n.name)}{types} AS {self.statement_inline(n.statement)}"

    def _Execute(self, n: A.Execute) -> str:
        args = f"({self.join(n.args)})" if n.has_args else ""
        return f"EXECUTE {self._Identifier(n.name)}{args}"

    def _Deallocate(self, n: A.Deallocate) -> str:
        return f"DEALLOCATE {'PREPARE ' if n.prepare_keyword else ''}{self._Identifier(n.name)}"

    # --- PopQL statements ----------------------------------------------------------------------

    def _CreatePopulation(self, n: A.CreatePopulation) -> str:
        out = self.create_head("POPULATION", n.or_replace)
        if n.if_not_exists:
            out += " IF NOT EXISTS"
        out += " " + self._Identifier(n.name)
        if n.description is not None:
            out += " DESCRIPTION " + self._String(n.description)
        body = self._Query(n.query)
        if self.pretty:
            body = "\n".join("  " + line for line in body.splitlines())
            return f"{out} AS\n{body}"
        return f"{out} AS {body}"

    def _FreezePopulation(self, n: A.FreezePopulation) -> str:
        tag = f" AS {self._String(n.tag)}" if n.tag else ""
        return f"FREEZE POPULATION {self._Identifier(n.name)}{tag}"

    def _DiffPopulation(self, n: A.DiffPopulation) -> str:
        tag = f" FROM {self._String(n.tag)}" if n.tag else ""
        return f"DIFF POPULATION {self._Identifier(n.name)}{tag}"

    def _HoldOut(self, n: A.HoldOut) -> str:
        salt = f" SALT {self._String(n.salt)}" if n.salt else ""
        return f"HOLD OUT {n.percent} PERCENT OF {self._Identifier(n.population)}{salt}"

    def _ShowSplits(self, n: A.ShowSplits) -> str:
        if not n.populations:
            return "SHOW SPLITS"
        return "SHOW SPLITS OF " + ", ".join(self._Identifier(p) for p in n.populations)

    def _ShowLeakage(self, n: A.ShowLeakage) -> str:
        out = "SHOW LEAKAGE"
        if n.threshold is not None:
            out += f" THRESHOLD {n.threshold}"
        if n.using:
            out += " USING " + ".".join(self._Identifier(p) for p in n.using)
        return out

    def _ModelRef(self, n: A.ModelRef) -> str:
        version = f" VERSION {self.node(n.version)}" if n.version is not None else ""
        return self._Identifier(n.name) + version

    def _Metric(self, n: A.Metric) -> str:
        args = f"({self.join(n.args)})" if n.has_args else ""
        return self._Identifier(n.name) + args

    def metrics(self, metrics: tuple[A.Metric, ...]) -> str:
        return " METRICS " + self.join(metrics) if metrics else ""

    def _Evaluate(self, n: A.Evaluate) -> str:
        out = f"EVALUATE {self._ModelRef(n.model)}"
        if n.by:
            out += " BY " + self.join(n.by)
        else:
            out += " ON " + self.join(n.populations)
        return out + self.metrics(n.metrics)

    def _Compare(self, n: A.Compare) -> str:
        return (
            f"COMPARE {self._ModelRef(n.model)} WITH {self._ModelRef(n.baseline)}"
            f" ON {self.join(n.populations)}{self.metrics(n.metrics)}"
        )

    def _Expect(self, n: A.Expect) -> str:
        out = (
            f"EXPECT {self._Metric(n.metric)} {n.op} {n.value} ON {self._Identifier(n.population)}"
        )
        if n.model is not None:
            out += f" FOR MODEL {self._ModelRef(n.model)}"
        if n.min_support is not None:
            out += f" MIN SUPPORT {n.min_support}"
        return out

    def _FindFailures(self, n: A.FindFailures) -> str:
        out = f"FIND FAILURES FOR MODEL {self._ModelRef(n.model)}"
        if n.by:
            out += " BY " + self.join(n.by)
        if n.min_support is not None:
            out += f" MIN SUPPORT {n.min_support}"
        return out

    def _ImportPredictions(self, n: A.ImportPredictions) -> str:
        return f"IMPORT PREDICTIONS FOR MODEL {self._ModelRef(n.model)} FROM {self._String(n.path)}"

    def _Script(self, n: A.Script) -> str:
        sep = ";\n\n" if self.pretty else "; "
        body = sep.join(self.node(s) for s in n.statements)
        return body + (";\n" if self.pretty and n.statements else "")


_CANONICAL = Printer(pretty=True)
_INLINE = Printer()
_SQL = Printer(conservative=True)


def format_script(script: A.Script) -> str:
    """Canonical PopQL text of a whole script (what ``popql fmt`` writes)."""
    return _CANONICAL.node(script)


def format_node(node: A.Node) -> str:
    """Canonical one-line PopQL text of any node."""
    return _INLINE.node(node)


def to_sql(node: A.Node) -> str:
    """One-line SQL for DataFusion, with every nested operator parenthesised."""
    return _SQL.node(node)
