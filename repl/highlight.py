"""PopQL's keywords, read from the grammar, and a Pygments lexer built from them.

The grammar (``grammar/popql.lark``) is the single source of the language, so the keyword
list is extracted from it by code, never written by hand: every case-insensitive literal
(``"SELECT"i``) and the words of the keyword-like regular-expression terminals (the reserved
words excluded from ``NAME``, ``INTERVAL_FIELD``...).

>>> "SIMILAR" in grammar_keywords() and "TAGGED" in grammar_keywords()
True
>>> "HOLD OUT" in statement_openers()
True

:class:`PopQLLexer` is registered as the Pygments lexer ``popql`` (entry point
``pygments.lexers``), so documentation tools highlight ``popql`` code blocks with it::

    from pygments import highlight
    from pygments.formatters import TerminalFormatter
    from popql.repl.highlight import PopQLLexer
    print(highlight("SELECT uri FROM samples WHERE labels TAGGED 'night';", PopQLLexer(),
                    TerminalFormatter()))

PopQL's own keywords (those that plain SQL does not have: ``SIMILAR TO`` on images, ``NEAR``,
``TAGGED``, populations and the testing statements) are emitted as ``Keyword.Pseudo`` so a
style can set them apart; the REPL's style shows them in another colour.
"""

from __future__ import annotations

import functools
import re

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import (
    Comment,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Text,
    Whitespace,
)

__all__ = [
    "POPQL_ONLY_KEYWORDS",
    "PopQLLexer",
    "grammar_keywords",
    "statement_openers",
]

# The literal forms of the grammar: "WORD"i
_LITERAL = re.compile(r'"([A-Za-z_][A-Za-z_0-9]*)"i')
# A terminal defined by a regular expression: NAME.2: /.../flags
_REGEX_TERMINAL = re.compile(r"^([A-Z_][A-Z_0-9]*)(?:\.\d+)?:\s*/(.*)/[a-z]*\s*$", re.MULTILINE)
# Upper-case words inside such a regular expression, with an optional plural "S?"
_REGEX_WORD = re.compile(r"(?<![A-Za-z_\\])([A-Z][A-Z_]*?[A-Z])(S\?)?(?![A-Za-z_])")
# Terminals whose regular expressions spell keywords (others, like NUMBER, spell no words).
_KEYWORD_TERMINALS = frozenset(
    {
        "NAME",
        "IN_SUBQUERY",
        "QUANTIFIER",
        "QUANTIFIER_ARRAY",
        "LIST_QUANT",
        "TYPED_STRING_TYPE",
        "INTERVAL_FIELD",
    }
)

#: Statements and clauses that PopQL adds to SQL. Each must be a grammar keyword (a test checks
#: it); the lexer shows them as ``Keyword.Pseudo``.
POPQL_ONLY_KEYWORDS: frozenset[str] = frozenset(
    {
        "SIMILARITY",
        "NEAR",
        "IMAGE",
        "SAMPLE",
        "TOP",
        "EXACT",
        "THRESHOLD",
        "TAGGED",
        "POPULATION",
        "POPULATIONS",
        "DESCRIPTION",
        "FREEZE",
        "DIFF",
        "HOLD",
        "OUT",
        "PERCENT",
        "SALT",
        "EVALUATE",
        "COMPARE",
        "METRICS",
        "EXPECT",
        "SUPPORT",
        "FIND",
        "FAILURES",
        "MODEL",
        "PREDICTIONS",
    }
)


def _grammar_text() -> str:
    from popql.syntax import grammar_text

    return grammar_text()


@functools.cache
def grammar_keywords() -> frozenset[str]:
    """Every keyword of the grammar, upper case."""
    text = _grammar_text()
    found = {m.group(1).upper() for m in _LITERAL.finditer(text)}
    for m in _REGEX_TERMINAL.finditer(text):
        if m.group(1) not in _KEYWORD_TERMINALS:
            continue
        for w in _REGEX_WORD.finditer(m.group(2)):
            found.add(w.group(1))
            if w.group(2):
                found.add(w.group(1) + "S")
    return frozenset(found)


@functools.cache
def statement_openers() -> tuple[str, ...]:
    """The keyword phrases that start a statement (``SELECT``, ``CREATE POPULATION``,
    ``HOLD OUT``, ``FIND FAILURES FOR MODEL``...), read from the grammar's ``*_stmt`` rules:
    the leading literals of each alternative, skipping optional rule references."""
    text = _grammar_text()
    phrases: list[str] = ["SELECT", "WITH", "VALUES"]
    rule = re.compile(r"^[?!]?([a-z_]+_stmt)\s*:(.*)$", re.MULTILINE)
    alternatives: list[str] = []
    for m in rule.finditer(text):
        alternatives.append(m.group(2))
        # continuation lines: "   | ..." right below the rule
        rest = text[m.end() :].split("\n")[1:]
        for line in rest:
            stripped = line.strip()
            if not stripped.startswith("|"):
                break
            alternatives.append(stripped[1:])
    # rules that are a choice of keywords: !describe_kw: "DESCRIBE"i | "DESC"i
    choices: dict[str, list[str]] = {}
    choice_rule = re.compile(r'^[!?]?([a-z_]+)\s*:\s*((?:"\w+"i\s*\|\s*)*"\w+"i)\s*$', re.M)
    for m in choice_rule.finditer(text):
        choices[m.group(1)] = [w.upper() for w in _LITERAL.findall(m.group(2))]
    for alt in alternatives:
        alt = alt.split("->")[0]
        heads: list[list[str]] = [[]]
        for tok in alt.split():
            lit = _LITERAL.fullmatch(tok)
            if lit:
                heads = [[*h, lit.group(1).upper()] for h in heads]
            elif tok in choices:
                heads = [[*h, w] for h in heads for w in choices[tok]]
            elif tok.endswith("?") and not tok.startswith(('"', "(")):
                continue
            else:
                break
        phrases.extend(" ".join(h) for h in heads if h)
    seen: dict[str, None] = {}
    for p in phrases:
        seen.setdefault(p, None)
    return tuple(seen)


_BEFORE_STRING = frozenset({"IMAGE", "SAMPLE"})


def _keyword_sets() -> tuple[list[str], list[str]]:
    keywords = grammar_keywords()
    # IMAGE and SAMPLE are keywords only before a string (NEAR IMAGE 'x.jpg'); elsewhere
    # they are usually column names (image SIMILAR TO ...), matched by a rule of their own.
    popql = sorted(keywords & POPQL_ONLY_KEYWORDS - _BEFORE_STRING, key=lambda k: (-len(k), k))
    sql = sorted(keywords - POPQL_ONLY_KEYWORDS, key=lambda k: (-len(k), k))
    return sql, popql


_SQL_KEYWORDS, _POPQL_KEYWORDS = _keyword_sets()


class PopQLLexer(RegexLexer):
    """Pygments lexer for PopQL (keywords taken from ``grammar/popql.lark``)."""

    name = "PopQL"
    aliases = ["popql"]
    filenames = ["*.popql"]
    mimetypes = ["text/x-popql"]
    url = "https://github.com/popql/popql"
    flags = re.IGNORECASE | re.MULTILINE

    tokens = {
        "root": [
            (r"\s+", Whitespace),
            (r"--[^\n]*", Comment.Single),
            (r"/\*", Comment.Multiline, "block-comment"),
            # REPL meta-commands: `.tables`, `.schema samples`
            (r"^(\.[a-z]+)([^\n]*)", bygroups(Keyword.Pseudo, Text)),
            (r"[EeXxNnBbRr]'(?:[^'\\]|\\.|'')*'", String.Single),
            (r"\$([A-Za-z_]*)\$(?:.|\n)*?\$\1\$", String.Other),
            (r"'(?:[^']|'')*'", String.Single),
            (r"'(?:[^']|'')*$", String.Single),  # an unterminated string while typing
            (r'"(?:[^"]|"")*"', Name.Quoted),
            (r"`(?:[^`]|``)*`", Name.Quoted),
            (r"0[xX][0-9A-Fa-f]+", Number.Hex),
            (r"(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?", Number.Float),
            (r"\d+(?:[eE][+-]?\d+)?", Number.Integer),
            (r"\$[A-Za-z0-9_]+|\?", Name.Variable),
            (r"(?:IMAGE|SAMPLE)(?=\s*')", Keyword.Pseudo),
            (words(_POPQL_KEYWORDS, prefix=r"(?<![\w$])", suffix=r"(?![\w$])"), Keyword.Pseudo),
            (words(_SQL_KEYWORDS, prefix=r"(?<![\w$])", suffix=r"(?![\w$])"), Keyword),
            (r"(?:[^\W\d]|_)[\w$]*(?=\s*\()", Name.Function),
            (r"(?:[^\W\d]|_)[\w$]*", Name),
            (
                r"::|->>|->|#>>|#>|=>|<=>|<=|>=|<>|!=|==|\|\||<<|>>|!~~\*|!~~|~~\*|~~|!~\*|!~|~\*"
                r"|@>|<@|&&|[-+*/%<>=~^&|!@#]",
                Operator,
            ),
            (r"[(),;.\[\]{}:]", Punctuation),
        ],
        "block-comment": [
            (r"[^*/]+", Comment.Multiline),
            (r"/\*", Comment.Multiline, "#push"),
            (r"\*/", Comment.Multiline, "#pop"),
            (r"[*/]", Comment.Multiline),
        ],
    }
