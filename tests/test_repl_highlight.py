"""The PopQL Pygments lexer and the keyword list it is built from (repl/highlight.py)."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import pytest
from pygments import lex
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename
from pygments.token import Comment, Error, Keyword, Name, Number, Operator, Punctuation, String

from popql.repl.highlight import (
    POPQL_ONLY_KEYWORDS,
    PopQLLexer,
    grammar_keywords,
    statement_openers,
)
from popql.syntax import parser


def _tokens(text: str) -> list[tuple[Any, str]]:
    return [(t, v) for t, v in lex(text, PopQLLexer()) if v.strip()]


def test_keywords_are_every_keyword_terminal_of_the_grammar() -> None:
    """Independent check: Lark's own terminals (built from the same .lark file) whose pattern
    is a case-insensitive word are all in the extracted list."""
    words = set()
    for term in parser().terminals:
        pattern = term.pattern
        if type(pattern).__name__ == "PatternStr" and pattern.value.isidentifier():
            words.add(pattern.value.upper())
    assert words, "the grammar has keyword terminals"
    assert words <= grammar_keywords()
    # the regular-expression terminals contribute their words too
    assert {"YEAR", "YEARS", "TIMESTAMPTZ", "QUALIFY", "WINDOW", "SOME"} <= grammar_keywords()
    assert not {"NUMBER", "STRING", "PGOTHER"} & grammar_keywords()


def test_popql_keywords_are_grammar_keywords() -> None:
    assert grammar_keywords() >= POPQL_ONLY_KEYWORDS


def test_statement_openers_come_from_the_grammar() -> None:
    openers = statement_openers()
    for phrase in (
        "SELECT",
        "WITH",
        "CREATE POPULATION",
        "HOLD OUT",
        "EVALUATE",
        "EXPECT",
        "FIND FAILURES FOR MODEL",
        "SHOW POPULATIONS",
        "DESCRIBE",
        "EXPLAIN",
    ):
        assert phrase in openers
    assert all(word in grammar_keywords() for p in openers for word in p.split())


def test_lexes_sql_and_popql() -> None:
    toks = _tokens(
        "SELECT uri, count(*) AS n FROM samples\n"
        "WHERE image SIMILAR TO 'a dog' THRESHOLD 0.25 AND labels TAGGED ('a', 'b') "
        "AND NEAR IMAGE 'x.jpg' TOP 5; -- note\n/* block\ncomment */ SELECT \"Mixed Case\", $1"
    )
    kinds = dict((v, t) for t, v in toks)
    assert kinds["SELECT"] is Keyword
    assert kinds["uri"] is Name
    assert kinds["count"] in (Keyword, Name.Function)
    assert kinds["image"] is Name  # a column, not the IMAGE keyword
    assert kinds["IMAGE"] is Keyword.Pseudo  # NEAR IMAGE 'x.jpg'
    assert kinds["SIMILAR"] is Keyword
    assert kinds["TAGGED"] is Keyword.Pseudo
    assert kinds["THRESHOLD"] is Keyword.Pseudo
    assert kinds["'a dog'"] is String.Single
    assert kinds["0.25"] is Number.Float
    assert kinds["5"] is Number.Integer
    assert kinds["-- note"] is Comment.Single
    assert kinds['"Mixed Case"'] is Name.Quoted
    assert kinds["$1"] is Name.Variable
    assert kinds[";"] is Punctuation
    assert kinds["*"] is Operator
    assert any(t is Comment.Multiline for t, _ in toks)


def test_lexer_keeps_every_character_and_never_errors() -> None:
    text = "SELECT 'unterminated\nFROM t WHERE a::int >= 2 || 'x' # ~ @> ;"
    values = "".join(v for _, v in lex(text, PopQLLexer()))
    assert values.rstrip("\n") == text
    assert not any(t is Error for t, _ in lex(text, PopQLLexer()))


@pytest.mark.parametrize(
    "text, kind",
    [
        ("similarity(image, 'x')", Keyword.Pseudo),
        ("abs(x)", Name.Function),
        ("select", Keyword),
        ("populations", Keyword.Pseudo),
    ],
)
def test_first_token(text: str, kind: object) -> None:
    assert _tokens(text)[0][0] is kind


def test_meta_commands_are_highlighted() -> None:
    toks = _tokens(".schema samples")
    assert toks[0] == (Keyword.Pseudo, ".schema")


def test_registered_as_a_pygments_lexer() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="pygments.lexers")}
    assert names.get("popql") == "popql.repl.highlight:PopQLLexer"
    assert isinstance(get_lexer_by_name("popql"), PopQLLexer)
    assert isinstance(get_lexer_for_filename("suite.popql"), PopQLLexer)
