"""The typed PopQL AST: one frozen dataclass per construct.

Every node carries a ``span`` (a :class:`popql.diagnostics.Span`) that is kept out of equality and
of ``repr``, so two parses of the same query compare equal whatever their layout.  Nodes hold
other nodes, tuples of nodes, strings, booleans or ``None``; the text of numbers, identifiers and
type names is kept as the user wrote it, so that lowering reproduces DataFusion's semantics exactly
(``1.0`` and ``1`` have different types; ``"Col"`` and ``col`` are different columns).

>>> from popql.syntax import parse
>>> stmt = parse("SELECT uri FROM samples WHERE num_faces >= 2").statements[0]
>>> type(stmt).__name__, type(stmt.body).__name__
('Query', 'Select')
>>> stmt.body.where == parse("select uri from samples where num_faces>=2").statements[0].body.where
True
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from popql.diagnostics import Span


@dataclass(frozen=True)
class Node:
    span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)

    def children(self) -> list[Node]:
        """Direct child nodes, in field order."""
        out: list[Node] = []
        for f in fields(self):
            if f.name == "span":
                continue
            _collect(getattr(self, f.name), out)
        return out

    def walk(self) -> Any:
        """Yield this node and every node below it, depth first."""
        yield self
        for child in self.children():
            yield from child.walk()


def _collect(value: Any, out: list[Node]) -> None:
    if isinstance(value, Node):
        out.append(value)
    elif isinstance(value, tuple):
        for item in value:
            _collect(item, out)


class Expr(Node):
    """Base class of expressions."""


class Statement(Node):
    """Base class of statements."""


class TableRef(Node):
    """Base class of FROM items."""


# ------------------------------------------------------------------------------------------------
# Names, literals


@dataclass(frozen=True)
class Identifier(Node):
    value: str
    quote: str | None = None  # '"' or '`' when quoted


@dataclass(frozen=True)
class Column(Expr):
    parts: tuple[Identifier, ...]


@dataclass(frozen=True)
class Number(Expr):
    text: str


@dataclass(frozen=True)
class String(Expr):
    value: str  # the body between the quotes, with '' escapes kept as written
    prefix: str = ""  # E, X, N, B, R for prefixed strings; "$tag$" for dollar-quoted strings


@dataclass(frozen=True)
class Boolean(Expr):
    value: bool


@dataclass(frozen=True)
class Null(Expr):
    pass


@dataclass(frozen=True)
class Placeholder(Expr):
    text: str


@dataclass(frozen=True)
class TypedString(Expr):
    type_name: str  # DATE, TIME, TIMESTAMP, ... as written
    value: String


@dataclass(frozen=True)
class IntervalUnit(Node):
    text: str  # "DAY", "YEAR TO MONTH", "SECOND(3)"


@dataclass(frozen=True)
class Interval(Expr):
    value: Expr
    unit: IntervalUnit | None = None
    keyword: bool = True  # False for a frame offset written as '1' DAY


# ------------------------------------------------------------------------------------------------
# Operators


@dataclass(frozen=True)
class Unary(Expr):
    op: str  # '-', '+', '~'
    operand: Expr


@dataclass(frozen=True)
class Binary(Expr):
    op: str  # AND, OR, =, <>, +, ||, ... (upper case for keywords)
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Not(Expr):
    operand: Expr


@dataclass(frozen=True)
class IsTest(Expr):
    operand: Expr
    test: str  # NULL, TRUE, FALSE, UNKNOWN
    negated: bool = False


@dataclass(frozen=True)
class IsNullPostfix(Expr):
    operand: Expr
    negated: bool  # ISNULL / NOTNULL


@dataclass(frozen=True)
class IsDistinctFrom(Expr):
    left: Expr
    right: Expr
    negated: bool = False


@dataclass(frozen=True)
class Like(Expr):
    operand: Expr
    op: str  # LIKE or ILIKE
    pattern: Expr
    negated: bool = False
    escape: Expr | None = None


@dataclass(frozen=True)
class RegexMatch(Expr):
    operand: Expr
    op: str  # ~, ~*, !~, !~*, ~~, ...
    pattern: Expr


@dataclass(frozen=True)
class InList(Expr):
    operand: Expr
    items: tuple[Expr, ...]
    negated: bool = False


@dataclass(frozen=True)
class InSubquery(Expr):
    operand: Expr
    query: Query
    negated: bool = False


@dataclass(frozen=True)
class Between(Expr):
    operand: Expr
    low: Expr
    high: Expr
    negated: bool = False
    symmetric: bool = False


@dataclass(frozen=True)
class QuantifiedComparison(Expr):
    left: Expr
    op: str
    quantifier: str  # ANY, ALL, SOME
    query: Query


@dataclass(frozen=True)
class AnyArray(Expr):
    quantifier: str  # ANY, ALL, SOME
    operand: Expr


@dataclass(frozen=True)
class AtTimeZone(Expr):
    operand: Expr
    zone: Expr


@dataclass(frozen=True)
class Cast(Expr):
    operand: Expr
    type: DataType
    kind: str = "CAST"  # CAST, TRY_CAST or :: (Postgres style)


@dataclass(frozen=True)
class Subscript(Expr):
    operand: Expr
    index: Expr


@dataclass(frozen=True)
class Slice(Expr):
    operand: Expr
    start: Expr | None
    stop: Expr | None
    step: Expr | None = None
    has_step: bool = False


@dataclass(frozen=True)
class FieldAccess(Expr):
    operand: Expr
    field: Identifier


@dataclass(frozen=True)
class Collate(Expr):
    operand: Expr
    collation: Identifier


@dataclass(frozen=True)
class Tuple(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class ScalarSubquery(Expr):
    query: Query


@dataclass(frozen=True)
class Exists(Expr):
    query: Query


@dataclass(frozen=True)
class ArrayLiteral(Expr):
    items: tuple[Expr, ...]
    keyword: bool = False  # written ARRAY[...]


@dataclass(frozen=True)
class StructField(Node):
    key: Identifier | String
    value: Expr


@dataclass(frozen=True)
class StructLiteral(Expr):
    fields: tuple[StructField, ...]


@dataclass(frozen=True)
class MapEntry(Node):
    key: Expr
    value: Expr


@dataclass(frozen=True)
class MapLiteral(Expr):
    entries: tuple[MapEntry, ...]


@dataclass(frozen=True)
class When(Node):
    condition: Expr
    result: Expr


@dataclass(frozen=True)
class Case(Expr):
    operand: Expr | None
    whens: tuple[When, ...]
    else_: Expr | None = None


# ------------------------------------------------------------------------------------------------
# Functions and windows


@dataclass(frozen=True)
class NamedArg(Expr):
    name: Identifier
    value: Expr


@dataclass(frozen=True)
class AliasedArg(Expr):
    value: Expr
    alias: Identifier | String


@dataclass(frozen=True)
class Lambda(Expr):
    param: Identifier
    body: Expr


@dataclass(frozen=True)
class QualifiedStar(Expr):
    qualifier: tuple[Identifier, ...]


@dataclass(frozen=True)
class OrderItem(Node):
    expr: Expr
    direction: str | None = None  # ASC / DESC
    nulls: str | None = None  # FIRST / LAST


@dataclass(frozen=True)
class FrameBound(Node):
    kind: str  # UNBOUNDED PRECEDING, UNBOUNDED FOLLOWING, CURRENT ROW, PRECEDING, FOLLOWING
    offset: Expr | None = None


@dataclass(frozen=True)
class WindowFrame(Node):
    units: str  # ROWS, RANGE, GROUPS
    start: FrameBound
    end: FrameBound | None = None


@dataclass(frozen=True)
class WindowSpec(Node):
    base: Identifier | None = None
    partition_by: tuple[Expr, ...] = ()
    order_by: tuple[OrderItem, ...] = ()
    frame: WindowFrame | None = None


@dataclass(frozen=True)
class FunctionCall(Expr):
    name: tuple[Identifier, ...]
    args: tuple[Expr, ...] = ()
    distinct: bool = False
    all: bool = False
    star: bool = False  # count(*) ; star plus args for f(*, x)
    order_by: tuple[OrderItem, ...] = ()
    inner_null_treatment: str | None = None  # f(x IGNORE NULLS)
    within_group: tuple[OrderItem, ...] = ()
    filter: Expr | None = None
    null_treatment: str | None = None  # f(x) IGNORE NULLS
    over: WindowSpec | Identifier | None = None


@dataclass(frozen=True)
class Extract(Expr):
    field: Identifier | String
    operand: Expr


@dataclass(frozen=True)
class Position(Expr):
    needle: Expr
    haystack: Expr


@dataclass(frozen=True)
class Substring(Expr):
    name: str  # SUBSTRING or SUBSTR, as written
    operand: Expr
    start: Expr | None
    length: Expr | None


@dataclass(frozen=True)
class Trim(Expr):
    operand: Expr
    where: str | None = None  # BOTH, LEADING, TRAILING
    chars: Expr | None = None
    from_: bool = True  # TRIM(... FROM x); False for TRIM(LEADING x)


@dataclass(frozen=True)
class Overlay(Expr):
    operand: Expr
    placing: Expr
    start: Expr
    length: Expr | None = None


# ------------------------------------------------------------------------------------------------
# PopQL expressions: similarity search and tag predicates


@dataclass(frozen=True)
class SearchOptions(Node):
    using: tuple[Identifier, ...] = ()
    top_k: str | None = None
    threshold: str | None = None
    exact: bool = False


@dataclass(frozen=True)
class NearExample(Node):
    kind: str  # IMAGE, SAMPLE or TEXT
    value: String | Number
    negated: bool = False


@dataclass(frozen=True)
class SimilarTo(Expr):
    """``x SIMILAR TO y``: a regex match on text, a similarity search on an image column."""

    operand: Expr | None  # None: the dataset's default image column
    target: Expr
    negated: bool = False
    escape: Expr | None = None
    options: SearchOptions = SearchOptions()


@dataclass(frozen=True)
class Near(Expr):
    operand: Expr | None
    examples: tuple[NearExample, ...]
    negated: bool = False
    options: SearchOptions = SearchOptions()
    parenthesized: bool = False


@dataclass(frozen=True)
class SimilarityScore(Expr):
    operand: Expr | None
    target: String | NearExample
    using: tuple[Identifier, ...] = ()


@dataclass(frozen=True)
class Tagged(Expr):
    """``labels TAGGED 'night'``: membership of labels in a list-of-labels tag column."""

    operand: Expr | None  # None: the dataset's default label column
    labels: tuple[String, ...]
    mode: str = "ONE"  # ONE ('x'), ANY (('x', 'y')), ALL (ALL ('x', 'y'))
    negated: bool = False


@dataclass(frozen=True)
class ListQuantifier(Expr):
    """``COUNT(detections WHERE label = 'person' AND score > 0.5)`` and ANY / ALL forms."""

    func: str  # COUNT, ANY, ALL
    operand: Expr
    predicate: Expr


# ------------------------------------------------------------------------------------------------
# Data types


@dataclass(frozen=True)
class DataType(Node):
    name: str  # words as written: "INT", "DOUBLE PRECISION", "BIGINT UNSIGNED"
    args: tuple[str, ...] = ()
    time_zone: str | None = None  # "WITH TIME ZONE" / "WITHOUT TIME ZONE"
    array: tuple[str, ...] = ()  # "[]" or "[3]" suffixes
    params: tuple[DataType, ...] = ()  # ARRAY<INT>, MAP<K, V>, STRUCT<...>
    generic: bool = False
    fields: tuple[tuple[Identifier, DataType], ...] = ()  # STRUCT(a INT, ...)


# ------------------------------------------------------------------------------------------------
# Queries


@dataclass(frozen=True)
class Cte(Node):
    name: Identifier
    columns: tuple[Identifier, ...]
    query: Query


@dataclass(frozen=True)
class With(Node):
    ctes: tuple[Cte, ...]
    recursive: bool = False


@dataclass(frozen=True)
class SelectItem(Node):
    expr: Expr
    alias: Identifier | None = None


@dataclass(frozen=True)
class WildcardOption(Node):
    kind: str  # EXCLUDE, EXCEPT, REPLACE, RENAME
    items: tuple[Node, ...]  # Identifiers, or (SelectItem for REPLACE: expr AS name), or RenameItem
    parenthesized: bool = True


@dataclass(frozen=True)
class RenameItem(Node):
    old: Identifier
    new: Identifier


@dataclass(frozen=True)
class Star(Node):
    qualifier: tuple[Identifier, ...] = ()
    options: tuple[WildcardOption, ...] = ()


@dataclass(frozen=True)
class TableAlias(Node):
    name: Identifier
    columns: tuple[Identifier, ...] = ()


@dataclass(frozen=True)
class TableName(TableRef):
    name: tuple[Identifier, ...]
    alias: TableAlias | None = None
    version: str | None = None  # AS OF VERSION n


@dataclass(frozen=True)
class DerivedTable(TableRef):
    query: Query
    alias: TableAlias | None = None
    lateral: bool = False


@dataclass(frozen=True)
class TableFunction(TableRef):
    name: tuple[Identifier, ...]
    args: tuple[Expr, ...]
    alias: TableAlias | None = None
    lateral: bool = False


@dataclass(frozen=True)
class ValuesTable(TableRef):
    values: Values
    alias: TableAlias | None = None


@dataclass(frozen=True)
class ParenTable(TableRef):
    table: TableRef
    alias: TableAlias | None = None


@dataclass(frozen=True)
class JoinOn(Node):
    condition: Expr


@dataclass(frozen=True)
class JoinUsing(Node):
    columns: tuple[Identifier, ...]


@dataclass(frozen=True)
class Join(TableRef):
    left: TableRef
    right: TableRef
    kind: str  # JOIN, INNER JOIN, LEFT JOIN, LEFT OUTER JOIN, CROSS JOIN, LEFT SEMI JOIN, ...
    constraint: JoinOn | JoinUsing | None = None
    natural: bool = False


@dataclass(frozen=True)
class Rollup(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Cube(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class GroupingSets(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class EmptyGrouping(Expr):
    pass


@dataclass(frozen=True)
class GroupBy(Node):
    items: tuple[Expr, ...] = ()
    all: bool = False


@dataclass(frozen=True)
class NamedWindow(Node):
    name: Identifier
    spec: WindowSpec


@dataclass(frozen=True)
class Select(Node):
    items: tuple[SelectItem | Star, ...]
    distinct: str | None = None  # ALL, DISTINCT
    distinct_on: tuple[Expr, ...] = ()
    into: tuple[Identifier, ...] = ()
    from_: tuple[TableRef, ...] = ()
    where: Expr | None = None
    group_by: GroupBy | None = None
    having: Expr | None = None
    windows: tuple[NamedWindow, ...] = ()
    qualify: Expr | None = None


@dataclass(frozen=True)
class ValuesRow(Node):
    items: tuple[Expr, ...]
    row_keyword: bool = False


@dataclass(frozen=True)
class Values(Node):
    rows: tuple[ValuesRow, ...]


@dataclass(frozen=True)
class SetOperation(Node):
    op: str  # UNION, EXCEPT, INTERSECT
    left: Node  # Select | Values | SetOperation | Query (parenthesised)
    right: Node
    quantifier: str | None = None  # ALL, DISTINCT, BY NAME, ALL BY NAME, DISTINCT BY NAME


@dataclass(frozen=True)
class Query(Statement):
    body: Node  # Select | Values | SetOperation | Query (a parenthesised query)
    with_: With | None = None
    order_by: tuple[OrderItem, ...] = ()
    order_by_all: OrderItem | None = None
    limit: Expr | None = None
    limit_all: bool = False
    offset: Expr | None = None
    offset_first: bool = False


# ------------------------------------------------------------------------------------------------
# DDL, DML and commands


@dataclass(frozen=True)
class Explain(Statement):
    statement: Statement
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class ColumnDef(Node):
    name: Identifier
    type: DataType
    constraints: tuple[ColumnConstraint, ...] = ()


@dataclass(frozen=True)
class ColumnConstraint(Node):
    kind: str  # NOT NULL, NULL, PRIMARY KEY, UNIQUE, DEFAULT
    value: Expr | None = None


@dataclass(frozen=True)
class TableConstraint(Node):
    kind: str  # PRIMARY KEY, UNIQUE
    columns: tuple[Identifier, ...]
    name: Identifier | None = None


@dataclass(frozen=True)
class CreateTable(Statement):
    name: tuple[Identifier, ...]
    elements: tuple[ColumnDef | TableConstraint, ...] = ()
    has_elements: bool = False
    query: Query | None = None
    or_replace: bool = False
    temporary: str | None = None
    if_not_exists: bool = False


@dataclass(frozen=True)
class OptionItem(Node):
    key: str  # as written, e.g. 'format.has_header' or format.delimiter
    value: Expr | Identifier | None = None


@dataclass(frozen=True)
class ExternalClause(Node):
    kind: str  # STORED AS, LOCATION, PARTITIONED BY, WITH ORDER, OPTIONS, WITH HEADER ROW, ...
    items: tuple[Node, ...] = ()
    text: str | None = None  # STORED AS format, COMPRESSION TYPE name


@dataclass(frozen=True)
class PartitionColumn(Node):
    name: Identifier
    type: DataType | None = None


@dataclass(frozen=True)
class CreateExternalTable(Statement):
    name: tuple[Identifier, ...]
    elements: tuple[ColumnDef | TableConstraint, ...] = ()
    has_elements: bool = False
    clauses: tuple[ExternalClause, ...] = ()
    or_replace: bool = False
    unbounded: bool = False
    if_not_exists: bool = False


@dataclass(frozen=True)
class CreateView(Statement):
    name: tuple[Identifier, ...]
    query: Query
    columns: tuple[Identifier, ...] = ()
    or_replace: bool = False
    temporary: str | None = None
    if_not_exists: bool = False


@dataclass(frozen=True)
class CreateSchema(Statement):
    kind: str  # SCHEMA or DATABASE
    name: tuple[Identifier, ...]
    if_not_exists: bool = False


@dataclass(frozen=True)
class CreateFunction(Statement):
    name: tuple[Identifier, ...]
    params: tuple[DataType, ...]
    returns: DataType
    body: tuple[tuple[str, Node], ...]  # (LANGUAGE, Identifier) | (AS, Expr) | (RETURN, Expr)
    or_replace: bool = False


@dataclass(frozen=True)
class Drop(Statement):
    kind: str  # TABLE, VIEW, SCHEMA, DATABASE, FUNCTION, POPULATION
    names: tuple[tuple[Identifier, ...], ...]
    if_exists: bool = False
    behavior: str | None = None


@dataclass(frozen=True)
class DefaultValues(Node):
    pass


@dataclass(frozen=True)
class Insert(Statement):
    table: tuple[Identifier, ...]
    source: Query | DefaultValues
    columns: tuple[Identifier, ...] = ()
    mode: str = "INTO"  # INTO or OVERWRITE
    table_keyword: bool = False


@dataclass(frozen=True)
class Assignment(Node):
    target: Column
    value: Expr


@dataclass(frozen=True)
class Update(Statement):
    table: tuple[Identifier, ...]
    assignments: tuple[Assignment, ...]
    alias: TableAlias | None = None
    from_: tuple[TableRef, ...] = ()
    where: Expr | None = None


@dataclass(frozen=True)
class Delete(Statement):
    table: tuple[Identifier, ...]
    alias: TableAlias | None = None
    where: Expr | None = None


@dataclass(frozen=True)
class Default(Expr):
    pass


@dataclass(frozen=True)
class SetVariable(Statement):
    name: str
    value: Expr
    scope: str | None = None


@dataclass(frozen=True)
class SetTimeZone(Statement):
    value: Expr
    equals: bool = False  # SET TIME ZONE = 'x' (a variable assignment) vs SET TIME ZONE 'x'


@dataclass(frozen=True)
class Reset(Statement):
    name: str


@dataclass(frozen=True)
class Show(Statement):
    kind: str  # ALL, TABLES, COLUMNS, FUNCTIONS, POPULATIONS, VARIABLE, CREATE TABLE, CREATE VIEW
    target: str | None = None  # the variable name or LIKE pattern as written
    name: tuple[Identifier, ...] = ()
    full: bool = False
    extended: bool = False
    verbose: bool = False


@dataclass(frozen=True)
class Describe(Statement):
    target: tuple[Identifier, ...] | Query
    keyword: str = "DESCRIBE"


@dataclass(frozen=True)
class Copy(Statement):
    source: tuple[Identifier, ...] | Query
    target: String
    clauses: tuple[ExternalClause, ...] = ()


@dataclass(frozen=True)
class Truncate(Statement):
    table: tuple[Identifier, ...]
    table_keyword: bool = False


@dataclass(frozen=True)
class Prepare(Statement):
    name: Identifier
    types: tuple[DataType, ...]
    statement: Statement


@dataclass(frozen=True)
class Execute(Statement):
    name: Identifier
    args: tuple[Expr, ...] = ()
    has_args: bool = False


@dataclass(frozen=True)
class Deallocate(Statement):
    name: Identifier
    prepare_keyword: bool = False


# ------------------------------------------------------------------------------------------------
# PopQL statements


@dataclass(frozen=True)
class CreatePopulation(Statement):
    name: Identifier
    query: Query
    description: String | None = None
    or_replace: bool = False
    if_not_exists: bool = False


@dataclass(frozen=True)
class FreezePopulation(Statement):
    name: Identifier
    tag: String | None = None


@dataclass(frozen=True)
class DiffPopulation(Statement):
    name: Identifier
    tag: String | None = None


@dataclass(frozen=True)
class HoldOut(Statement):
    percent: str
    population: Identifier
    salt: String | None = None


@dataclass(frozen=True)
class ShowSplits(Statement):
    """``SHOW SPLITS [OF pop, ...]``: the share of each split in each population."""

    populations: tuple[Identifier, ...] = ()


@dataclass(frozen=True)
class ShowLeakage(Statement):
    """``SHOW LEAKAGE [THRESHOLD t] [USING embedder]``: near-duplicates across splits."""

    threshold: str | None = None
    using: tuple[Identifier, ...] = ()


@dataclass(frozen=True)
class ModelRef(Node):
    name: Identifier
    version: String | Number | None = None


@dataclass(frozen=True)
class Metric(Node):
    name: Identifier
    args: tuple[Expr, ...] = ()
    has_args: bool = False


@dataclass(frozen=True)
class Evaluate(Statement):
    model: ModelRef
    populations: tuple[Identifier, ...] = ()
    by: tuple[Expr, ...] = ()
    metrics: tuple[Metric, ...] = ()


@dataclass(frozen=True)
class Compare(Statement):
    model: ModelRef
    baseline: ModelRef
    populations: tuple[Identifier, ...]
    metrics: tuple[Metric, ...] = ()


@dataclass(frozen=True)
class Expect(Statement):
    metric: Metric
    op: str
    value: str
    population: Identifier
    model: ModelRef | None = None
    min_support: str | None = None


@dataclass(frozen=True)
class FindFailures(Statement):
    model: ModelRef
    by: tuple[Expr, ...] = ()
    min_support: str | None = None


@dataclass(frozen=True)
class ImportPredictions(Statement):
    model: ModelRef
    path: String


@dataclass(frozen=True)
class Script(Node):
    statements: tuple[Statement, ...]


def all_node_types() -> list[type[Node]]:
    """Every concrete node class (used by tests that check the printer covers each one)."""
    out: list[type[Node]] = []
    stack: list[type[Node]] = [Node]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            stack.append(sub)
            if sub.__dataclass_params__.frozen and "__dataclass_fields__" in sub.__dict__:  # type: ignore[attr-defined]
                out.append(sub)
    return sorted(set(out), key=lambda c: c.__name__)
