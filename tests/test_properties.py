"""Property-based tests (hypothesis) of the parser and the printer.

(a) random expression ASTs print (``to_sql`` and ``format_node``) to text that parses back to
    the same AST;
(b) random text and mutations of corpus queries never make ``popql.syntax.parse`` raise anything
    but :class:`popql.diagnostics.PopQLError`, whose diagnostics are well formed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popql import ast as A
from popql.diagnostics import CODES, PopQLError, Span, render, to_json
from popql.format import BINARY_LEVEL, format_node, format_script, to_sql
from popql.syntax import parse, parse_statement

CORPUS = sorted((Path(__file__).resolve().parent / "corpus" / "queries").glob("*.popql"))
CORPUS_TEXTS = [p.read_text(encoding="utf-8") for p in CORPUS]

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------------------------------------
# (a) Expressions

COMPARISONS = ("=", "==", "<>", "!=", "<", "<=", ">", ">=", "<=>")
BINARY_OPS = tuple(sorted(BINARY_LEVEL)) + COMPARISONS

_NAMES = ("a", "b", "c", "x1", "col_name", "uri", "score", "weather", "_hidden", "t2")
_QUOTED_ALPHABET = st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]) | st.sampled_from(
    ['"', " ", "\n"]
)

plain_identifiers = st.one_of(
    st.sampled_from(_NAMES),
    st.from_regex(r"c_[a-z0-9_]{0,6}", fullmatch=True),
).map(A.Identifier)
quoted_identifiers = st.text(_QUOTED_ALPHABET, min_size=1, max_size=8).map(
    lambda v: A.Identifier(v, quote='"')
)
identifiers = st.one_of(plain_identifiers, plain_identifiers, quoted_identifiers)

columns = st.lists(identifiers, min_size=1, max_size=2).map(lambda ps: A.Column(tuple(ps)))
numbers = st.one_of(
    st.integers(0, 10**12).map(str),
    st.sampled_from(["0.5", "1.0", ".25", "3.14159", "1e3", "2.5E-4", "0x1F"]),
).map(A.Number)
_STRING_SEGMENT = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="'"),
    max_size=8,
)
strings = st.lists(_STRING_SEGMENT, min_size=1, max_size=3).map(
    lambda parts: A.String("''".join(parts))
)
types = st.sampled_from(
    [
        A.DataType("INT"),
        A.DataType("BIGINT"),
        A.DataType("VARCHAR"),
        A.DataType("DOUBLE"),
        A.DataType("DOUBLE PRECISION"),
        A.DataType("DECIMAL", ("10", "2")),
        A.DataType("BOOLEAN"),
        A.DataType("DATE"),
        A.DataType("TIMESTAMP"),
        A.DataType("TIMESTAMP", time_zone="WITH TIME ZONE"),
        A.DataType("INT", array=("[]",)),
    ]
)
function_names = st.one_of(
    st.sampled_from(["f", "g", "lower", "coalesce", "abs", "my_udf"]).map(
        lambda n: (A.Identifier(n),)
    ),
    st.tuples(plain_identifiers, st.sampled_from(["f", "g"]).map(A.Identifier)),
)


def _extend(children: st.SearchStrategy[A.Expr]) -> st.SearchStrategy[A.Expr]:
    small_lists = st.lists(children, min_size=1, max_size=3).map(tuple)
    return st.one_of(
        st.builds(A.Binary, st.sampled_from(BINARY_OPS), children, children),
        st.builds(A.Not, children),
        st.builds(A.Unary, st.sampled_from(["-", "+", "~"]), children),
        st.builds(
            A.IsTest,
            children,
            st.sampled_from(["NULL", "TRUE", "FALSE", "UNKNOWN"]),
            st.booleans(),
        ),
        st.builds(A.Between, children, children, children, st.booleans(), st.booleans()),
        st.builds(A.InList, children, small_lists, st.booleans()),
        st.builds(
            A.Like,
            children,
            st.sampled_from(["LIKE", "ILIKE"]),
            children,
            st.booleans(),
            st.none() | children,
        ),
        st.builds(A.Cast, children, types, st.sampled_from(["CAST", "TRY_CAST", "::"])),
        st.builds(A.FunctionCall, function_names, st.lists(children, max_size=3).map(tuple)),
        st.builds(
            A.Case,
            st.none() | children,
            st.lists(st.builds(A.When, children, children), min_size=1, max_size=3).map(tuple),
            st.none() | children,
        ),
    )


expressions = st.recursive(st.one_of(columns, numbers, strings), _extend, max_leaves=12)


def select_expr(text: str) -> A.Expr:
    stmt = parse_statement("SELECT " + text)
    assert isinstance(stmt, A.Query) and isinstance(stmt.body, A.Select)
    assert len(stmt.body.items) == 1
    item = stmt.body.items[0]
    assert isinstance(item, A.SelectItem) and item.alias is None
    return item.expr


def where_expr(text: str) -> A.Expr:
    stmt = parse_statement("SELECT * FROM t WHERE " + text)
    assert isinstance(stmt, A.Query) and isinstance(stmt.body, A.Select)
    assert stmt.body.where is not None
    return stmt.body.where


@SETTINGS
@given(expressions)
def test_to_sql_of_random_expressions_parses_back(e: A.Expr) -> None:
    text = to_sql(e)
    assert select_expr(text) == e, text
    assert where_expr(text) == e, text


@SETTINGS
@given(expressions)
def test_format_node_of_random_expressions_parses_back(e: A.Expr) -> None:
    text = format_node(e)
    assert select_expr(text) == e, text
    # canonical text is a fixed point
    assert format_node(select_expr(text)) == text


# ------------------------------------------------------------------------------------------------
# (b) Robustness: only PopQLError, with well-formed diagnostics

_CODE = re.compile(r"[A-Z]\d{3}\Z")


def check_parse(text: str) -> None:
    """parse(text) returns a Script (that round-trips) or raises a well-formed PopQLError."""
    try:
        script = parse(text)
    except PopQLError as err:
        assert err.diagnostics
        for d in err.diagnostics:
            assert _CODE.match(d.code) and d.code in CODES, d.code
            assert d.message.strip()
            assert d.span is not None, d
            s = d.span
            assert 0 <= s.start <= s.end <= len(text), (s, len(text))
            assert s == Span.from_offsets(text, s.start, s.end), (s, text)
        rendered = render(err.diagnostics, text, "query.popql")
        assert "query.popql" in rendered
        data = json.loads(to_json(err.diagnostics))
        assert [x["code"] for x in data] == [d.code for d in err.diagnostics]
        return
    assert isinstance(script, A.Script)
    assert parse(format_script(script)) == script
    for stmt in script.statements:
        assert parse(to_sql(stmt)).statements == (stmt,)


@SETTINGS
@given(st.text(max_size=80))
def test_random_text_only_raises_popql_errors(text: str) -> None:
    check_parse(text)


_SQLISH = st.text(
    st.sampled_from(list("SELECT FROM WHERE abc xyz 0123 ()[]{},.;:*+-/<>=!~|&^#%'\"`$?@\n\t")),
    max_size=60,
)


@SETTINGS
@given(_SQLISH)
def test_random_sql_like_text_only_raises_popql_errors(text: str) -> None:
    check_parse(text)


_TOKEN = re.compile(r"\s+|\w+|'[^']*'|\"[^\"]*\"|.", re.S)
# fmt: off
_INSERTS = [
    "'", '"', "(", ")", ",", ";", "*", "[", "]", "{", "}", ":", "::", "$", "`", "\n", " ",
    "\u20ac", "\u2018", "\u00a0", "/*", "--", "*/", "0", "1.5", "x",
    " SELECT ", " FROM ", " WHERE ", " AND ", " OR ", " NOT ", " AS ", " ON ", " BY ", " END ",
    " CASE ", " WHEN ", " TAGGED ", " SIMILAR TO ", " NEAR ", " TOP ", " THRESHOLD ", " EXACT ",
    " USING ", " COUNT(", " ANY(", " ALL ", " IMAGE ", " SAMPLE ", " POPULATION ", " WITH ",
    " UNION ", " JOIN ", " IN ", " IS ", " NULL ", " LIKE ", " BETWEEN ", " CAST(", " INTERVAL ",
    " -> ", " => ",
]
# fmt: on


@st.composite
def mutated_queries(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(CORPUS_TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["del_char", "del_span", "insert", "swap", "token"]))
        n = len(text)
        i = draw(st.integers(0, max(n - 1, 0)))
        if kind == "del_char" and n:
            text = text[:i] + text[i + 1 :]
        elif kind == "del_span" and n:
            j = draw(st.integers(i, min(n, i + 20)))
            text = text[:i] + text[j:]
        elif kind == "insert":
            text = text[:i] + draw(st.sampled_from(_INSERTS)) + text[i:]
        elif kind == "swap" and n > 1:
            i = min(i, n - 2)
            text = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
        else:
            tokens = _TOKEN.findall(text)
            if len(tokens) < 2:
                continue
            k = draw(st.integers(0, len(tokens) - 2))
            op = draw(st.sampled_from(["delete", "duplicate", "swap"]))
            if op == "delete":
                del tokens[k]
            elif op == "duplicate":
                tokens.insert(k, tokens[k])
            else:
                tokens[k], tokens[k + 1] = tokens[k + 1], tokens[k]
            text = "".join(tokens)
    return text


@SETTINGS
@given(mutated_queries())
def test_mutated_corpus_queries_only_raise_popql_errors(text: str) -> None:
    check_parse(text)


def test_mutation_corpus_is_available() -> None:
    assert len(CORPUS_TEXTS) >= 40
