"""Translate lark parse errors into PopQL :class:`~popql.diagnostics.Diagnostic` values.

The entry point is :func:`from_lark`. It turns lark's ``UnexpectedToken``,
``UnexpectedCharacters``, ``UnexpectedEOF`` and other ``UnexpectedInput`` errors into messages
in a person's words::

    unexpected FROM: expected an expression after ','
    unexpected end of input: expected an expression after WHERE
    unterminated string literal

Terminal naming follows the grammar's conventions (grammar/popql.lark): keywords are
case-insensitive string literals (``"SELECT"i``) named by their upper-case word; identifiers
are ``NAME`` and ``QUOTED_NAME``; string literals ``STRING``; numbers ``NUMBER``; punctuation
uses lark's default names (``COMMA``, ``LPAR`` ...) or named operators (``NE``, ``LE``,
``CONCAT``, ``DOUBLE_COLON`` ...). Unknown terminals are shown by the text of their string
pattern when a ``terminals`` table is available (see :func:`terminal_texts`), and otherwise by
their lower-cased name.

:func:`from_lark` never raises: anything unexpected gives a generic ``P001``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from lark.exceptions import (
    LarkError,
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    VisitError,
)

from popql.diagnostics import (
    Diagnostic,
    PopQLError,
    Span,
    did_you_mean,
    internal_error,
    join_or,
)

__all__ = [
    "describe_expected",
    "describe_terminal",
    "from_lark",
    "terminal_texts",
    "to_error",
]

#: What may be given as ``terminals``: a mapping name -> display text (or -> lark
#: ``TerminalDef``), or an iterable of ``TerminalDef`` such as ``Lark(...).terminals``.
TerminalsLike = Mapping[str, Any] | Iterable[Any]

_END = "$END"

#: Punctuation and operator terminals -> the characters a person types.
# fmt: off
PUNCTUATION: dict[str, str] = {
    "COMMA": ",", "SEMICOLON": ";", "_SEMI": ";", "SEMI": ";", "DOT": ".", "COLON": ":",
    "DOUBLE_COLON": "::", "LPAR": "(", "SUBQUERY_LPAR": "(", "RPAR": ")", "LSQB": "[",
    "RSQB": "]", "LBRACE": "{", "RBRACE": "}", "STAR": "*", "PLUS": "+", "MINUS": "-",
    "SLASH": "/", "PERCENT": "%", "CIRCUMFLEX": "^", "EQUAL": "=", "EQ": "=",
    "DOUBLE_EQUAL": "==", "NE": "<>", "NEQ": "<>", "LESSTHAN": "<", "LT": "<",
    "MORETHAN": ">", "GT": ">", "LE": "<=", "GE": ">=", "CONCAT": "||", "VBAR": "|",
    "PIPE": "|", "AMPERSAND": "&", "AMP": "&", "TILDE": "~", "BANG": "!", "QMARK": "?",
    "AT": "@", "HASH": "#", "DOLLAR": "$", "ARROW": "->", "FAT_ARROW": "=>",
    "BACKSLASH": "\\", "BACKQUOTE": "`", "DBLQUOTE": '"', "QUOTE": "'", "UNDERSCORE": "_",
}
# fmt: on
_PUNCT_ORDER = {name: i for i, name in enumerate(PUNCTUATION)}

#: Terminals for identifiers.
IDENTIFIER_TERMINALS = frozenset(
    {"NAME", "QUOTED_NAME", "BACKTICK_NAME", "IDENT", "IDENTIFIER", "CNAME"}
)
_NUMBER_TERMINALS = frozenset(
    {"NUMBER", "INT", "INTEGER", "FLOAT", "DECIMAL", "SIGNED_NUMBER", "SIGNED_INT", "SIGNED_FLOAT"}
)
_STRING_TERMINALS = frozenset({"STRING", "ESCAPED_STRING", "PREFIXED_STRING", "DOLLAR_STRING"})
#: Terminals for literal values.
LITERAL_TERMINALS = _NUMBER_TERMINALS | _STRING_TERMINALS
#: Terminals that may start an expression; collapsed into "an expression" when an
#: identifier and a literal are both expected.
# fmt: off
EXPRESSION_START = IDENTIFIER_TERMINALS | LITERAL_TERMINALS | frozenset(
    {
        "LPAR", "SUBQUERY_LPAR", "LSQB", "LBRACE", "MINUS", "PLUS", "TILDE", "NOT", "CASE",
        "CAST", "TRY_CAST", "TRUE", "FALSE", "NULL", "EXISTS", "INTERVAL", "DATE", "TIME",
        "TIMESTAMP", "ARRAY", "MAP", "STRUCT", "PARAM", "PARAMETER", "PLACEHOLDER", "QMARK",
        "DOLLAR",
    }
)

#: Binary operators and the keywords that continue an expression (by terminal name, and by
#: text for anonymous terminals); three or more of them in an expected set are shown together
#: as "an operator".
OPERATORS = frozenset(
    {
        "PLUS", "MINUS", "STAR", "SLASH", "PERCENT", "CIRCUMFLEX", "EQUAL", "EQ", "DOUBLE_EQUAL",
        "NE", "NEQ", "LESSTHAN", "LT", "MORETHAN", "GT", "LE", "GE", "CONCAT", "AMPERSAND",
        "AMP", "VBAR", "PIPE", "HASH",
    }
)
_OPERATOR_TEXTS = frozenset(
    {
        "+", "-", "*", "/", "%", "^", "=", "==", "<>", "!=", "<", ">", "<=", ">=", "||", "|",
        "&", "#", "<<", ">>", "<=>", "@>", "<@", "@@", "&&", "->>", "->", "#>>", "#>", "?|",
        "?&", "~", "~*", "!~", "!~*", "~~", "~~*", "!~~", "!~~*", "::",
        "AND", "OR", "NOT", "IN", "IS", "LIKE", "ILIKE", "RLIKE", "REGEXP", "GLOB", "BETWEEN",
        "SIMILAR", "COLLATE", "AT",
    }
)
# fmt: on

_PHRASES: dict[str, str] = {
    **dict.fromkeys(IDENTIFIER_TERMINALS, "a name"),
    **dict.fromkeys(_NUMBER_TERMINALS, "a number"),
    **dict.fromkeys(_STRING_TERMINALS, "a string"),
    "PARAM": "a parameter",
    "PARAMETER": "a parameter",
    "PLACEHOLDER": "a parameter",
}

#: Common SQL keywords, used to recognise a keyword in the source text when no terminal
#: table tells us (e.g. a keyword that the contextual lexer read as a NAME).
# fmt: off
_SQL_KEYWORDS = frozenset(
    [
        "ALL", "AND", "AS", "ASC", "BETWEEN", "BY", "CASE", "CAST", "CREATE", "CROSS", "DELETE",
        "DESC", "DISTINCT", "DROP", "ELSE", "END", "EXCEPT", "EXISTS", "FALSE", "FROM", "FULL",
        "GROUP", "HAVING", "IN", "INNER", "INSERT", "INTERSECT", "INTO", "IS", "JOIN", "LEFT",
        "LIKE", "LIMIT", "NOT", "NULL", "OFFSET", "ON", "OR", "ORDER", "OUTER", "RIGHT", "SELECT",
        "SET", "TABLE", "THEN", "TRUE", "UNION", "UPDATE", "USING", "VALUES", "VIEW", "WHEN",
        "WHERE", "WITH",
    ]
)
# fmt: on

_KEYWORD_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*\Z")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_WORD_AT = re.compile(r"[A-Za-z0-9_]+")
_MAX_LISTED = 8
_MAX_SOFT_KEYWORDS = 4
_MAX_TOKEN_TEXT = 30

# ---------------------------------------------------------------------------------------------
# Terminal names -> words
# ---------------------------------------------------------------------------------------------


def _pattern_text(value: Any) -> str | None:
    """Display text of a terminal table entry: a str, or a lark TerminalDef/Pattern."""
    if isinstance(value, str):
        return value
    pattern = getattr(value, "pattern", value)
    if getattr(pattern, "type", None) == "str":
        text = getattr(pattern, "value", None)
        if isinstance(text, str):
            return text
    return None


def terminal_texts(terminals: TerminalsLike | None) -> dict[str, str]:
    """Normalise a terminal table to ``{name: display text}``.

    Accepts ``Lark(...).terminals`` (a list of ``TerminalDef``), a mapping of names to
    ``TerminalDef`` (lark's ``terminals_by_name``) or a mapping of names to text. Terminals
    defined by a regular expression are left out (they are described by name).
    """
    out: dict[str, str] = {}
    if terminals is None:
        return out
    try:
        if isinstance(terminals, Mapping):
            for name, value in terminals.items():
                text = _pattern_text(value)
                if isinstance(name, str) and text:
                    out[name] = text
        else:
            for item in terminals:
                name = getattr(item, "name", None)
                text = _pattern_text(item)
                if isinstance(name, str) and text:
                    out[name] = text
    except Exception:  # a malformed table must not break error reporting
        return out
    return out


def _kind_and_text(name: str, texts: Mapping[str, str]) -> tuple[str, str]:
    """(kind, display) for a terminal name; kind in phrase/keyword/punct/other/end."""
    if name == _END:
        return "end", "end of input"
    if name in _PHRASES:
        return "phrase", _PHRASES[name]
    text = texts.get(name)
    if text is not None:
        if _WORD.match(text):
            return "keyword", text.upper()
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_ ]*", text):  # a multi-word keyword
            return "keyword", " ".join(text.upper().split())
        return "punct", f"'{text}'"
    if name in PUNCTUATION:
        return "punct", f"'{PUNCTUATION[name]}'"
    if _KEYWORD_NAME.match(name) and "_" not in name:
        return "keyword", name
    return "other", name.lstrip("_").lower().replace("_", " ")


def describe_terminal(name: str, terminals: TerminalsLike | None = None) -> str:
    """How a person would call terminal ``name``: ``FROM``, ``','``, ``a name``, ..."""
    return _kind_and_text(name, terminal_texts(terminals))[1]


_KIND_ORDER = {"phrase": 0, "keyword": 1, "operator": 2, "punct": 3, "other": 4, "end": 5}


def _expected_items(names: Iterable[str], texts: Mapping[str, str]) -> list[str]:
    """The expected terminals in words, grouped and ordered for a message.

    Expression starters collapse into "an expression" (when an identifier and a literal are
    both expected), identifiers into "a name", three or more operators into "an operator".
    Where an expression or a name is expected, a long tail of keywords is left out: in a
    grammar with soft keywords those are mostly keywords that may also serve as names.
    """
    names = {n for n in names if isinstance(n, str) and n}
    entries: list[tuple[int, str, str]] = []
    expression = bool(names & IDENTIFIER_TERMINALS) and bool(names & LITERAL_TERMINALS)
    if expression:
        names -= EXPRESSION_START
        entries.append((_KIND_ORDER["phrase"], "", "an expression"))
    described = [(n, *_kind_and_text(n, texts)) for n in names]
    operators = [
        n
        for n, kind, text in described
        if n in OPERATORS or (kind in ("punct", "keyword") and text.strip("'") in _OPERATOR_TEXTS)
    ]
    if len(operators) >= 3:
        entries.append((_KIND_ORDER["operator"], "", "an operator"))
        described = [d for d in described if d[0] not in operators]
    has_phrase = expression or any(kind == "phrase" for _, kind, _ in described)
    keywords = [n for n, kind, _ in described if kind == "keyword"]
    if has_phrase and len(keywords) > _MAX_SOFT_KEYWORDS:
        described = [d for d in described if d[1] != "keyword"]
    if expression:
        described = [d for d in described if d[1] != "other"]
    seen: set[str] = {e[2] for e in entries}
    for name, kind, text in described:
        if text in seen:
            continue
        seen.add(text)
        key = f"{_PUNCT_ORDER.get(name, len(_PUNCT_ORDER)):04d}{text}" if kind == "punct" else text
        entries.append((_KIND_ORDER[kind], key, text))
    entries.sort()
    return [e[2] for e in entries]


def describe_expected(names: Iterable[str], terminals: TerminalsLike | None = None) -> str:
    """``"an expression"``, ``"FROM, WHERE or ';'"`` ... for a set of terminal names."""
    items = _expected_items(names, terminal_texts(terminals))
    return _join_items(items)


def _join_items(items: list[str]) -> str:
    if len(items) > _MAX_LISTED:
        shown = _MAX_LISTED - 2
        return f"one of {', '.join(items[:shown])}, ... ({len(items) - shown} more)"
    return join_or(items)


# ---------------------------------------------------------------------------------------------
# Lexical helpers
# ---------------------------------------------------------------------------------------------


def _scan(source: str) -> tuple[str, tuple[str, int] | None]:
    """Mask comments with spaces and strings/quoted names with NULs; find what is unclosed.

    Returns (masked source of the same length, newlines kept, and (kind, start) of the first
    unclosed construct or None) where kind is "string", "name" or "comment".
    """
    out = list(source)
    n = len(source)
    i = 0

    def blank(a: int, b: int, fill: str = " ") -> None:
        for k in range(a, min(b, n)):
            if out[k] != "\n":
                out[k] = fill

    while i < n:
        c = source[i]
        if c in "'\"":
            k = i + 1
            while k < n:
                if source[k] == c:
                    if k + 1 < n and source[k + 1] == c:
                        k += 2
                        continue
                    break
                k += 1
            if k >= n:
                blank(i, n, "\0")
                return "".join(out), ("string" if c == "'" else "name", i)
            blank(i, k + 1, "\0")
            i = k + 1
        elif source.startswith("--", i):
            k = source.find("\n", i)
            k = n if k == -1 else k
            blank(i, k)
            i = k
        elif source.startswith("/*", i):
            k = source.find("*/", i + 2)
            if k == -1:
                blank(i, n)
                return "".join(out), ("comment", i)
            blank(i, k + 2)
            i = k + 2
        else:
            i += 1
    return "".join(out), None


def _end_of_line(source: str, pos: int) -> int:
    k = source.find("\n", pos)
    k = len(source) if k == -1 else k
    if k > pos and source[k - 1] == "\r":
        k -= 1
    return k


_GAP = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*", re.DOTALL)


def _only_gap(text: str) -> bool:
    return _GAP.fullmatch(text) is not None


_TWO_CHAR_OPS = ("<>", "!=", "<=", ">=", "||", "::", "->", "=>", "==")


def _previous_lexeme(source: str, pos: int) -> str | None:
    """The text of the lexeme just before ``pos`` (skipping blanks and comments)."""
    masked, _ = _scan(source[:pos])
    text = masked.rstrip()
    if not text:
        return None
    end = len(text)
    if text[-1] == "\0":  # a string literal or quoted name
        start = end - 1
        while start > 0 and text[start - 1] in "\0\n":
            start -= 1
        return source[start:end]
    m = re.search(r"[A-Za-z0-9_$]+\Z", text)
    if m:
        return m.group(0)
    if text[-2:] in _TWO_CHAR_OPS:
        return text[-2:]
    return text[-1]


def _short(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _MAX_TOKEN_TEXT:
        return text[: _MAX_TOKEN_TEXT - 3] + "..."
    return text


def _is_keyword_word(word: str, texts: Mapping[str, str], names: Iterable[str] = ()) -> bool:
    up = word.upper()
    if not _WORD.match(word):
        return False
    if any(t.upper() == up for t in texts.values() if _WORD.match(t)):
        return True
    if any(n == up for n in names):
        return True
    return up in _SQL_KEYWORDS


def _describe_token(
    tok: Any, texts: Mapping[str, str], *, verbose: bool, keywords: Iterable[str] = ()
) -> str:
    ttype = getattr(tok, "type", None)
    value = str(tok)
    if ttype == _END:
        return "end of input"
    if ttype is None:  # plain text from the source
        if _is_keyword_word(value, texts, keywords):
            return value.upper()
        if value[:1] in "'\"":
            return _short(value)
        return f"'{_short(value)}'"
    kind, text = _kind_and_text(ttype, texts)
    if kind == "keyword":
        return value.upper() if _WORD.match(value) else text
    if kind == "punct":
        return f"'{value}'" if value else text
    if ttype in IDENTIFIER_TERMINALS:
        if (
            verbose
            and _WORD.match(value)
            and any(t.upper() == value.upper() for t in texts.values())
        ):
            return value.upper()  # a keyword of the grammar, lexed as a name out of place
        shown = _short(value) if value.startswith('"') else f"'{_short(value)}'"
        return f"name {shown}" if verbose else shown
    if ttype in _STRING_TERMINALS:
        return f"string {_short(value)}" if verbose else _short(value)
    if _PHRASES.get(ttype) == "a number":
        return f"number {_short(value)}" if verbose else _short(value)
    return f"'{_short(value)}'"


def _offset(source: str, line: Any, column: Any) -> int | None:
    if not isinstance(line, int) or not isinstance(column, int) or line < 1 or column < 1:
        return None
    pos = 0
    for _ in range(line - 1):
        k = source.find("\n", pos)
        if k == -1:
            return None
        pos = k + 1
    return min(pos + column - 1, len(source))


def _error_pos(exc: Any, source: str) -> int | None:
    pos = getattr(exc, "pos_in_stream", None)
    if isinstance(pos, int) and 0 <= pos <= len(source):
        return pos
    return _offset(source, getattr(exc, "line", None), getattr(exc, "column", None))


def _eof_pos(masked: str) -> int:
    """Just past the last character of code (trailing blanks and comments skipped)."""
    return len(masked.rstrip())


# ---------------------------------------------------------------------------------------------
# Parser-state helpers (defensive: these read lark internals)
# ---------------------------------------------------------------------------------------------


def _parser_state(exc: Any) -> Any:
    state = getattr(exc, "state", None)
    if state is not None and hasattr(state, "value_stack") and hasattr(state, "parse_conf"):
        return state
    ip = getattr(exc, "interactive_parser", None)
    return getattr(ip, "parser_state", None)


def _expected_names(exc: Any) -> set[str]:
    """Terminals that would let the parser go on; lark's `accepts` where possible."""
    ip = getattr(exc, "interactive_parser", None)
    if ip is not None:
        try:
            accepts = ip.accepts()
            if accepts:
                return {str(a) for a in accepts}
        except Exception:
            pass
    for attr in ("expected", "allowed"):
        value = getattr(exc, attr, None)
        if value:
            try:
                return {str(getattr(v, "name", v)) for v in value}
            except Exception:
                continue
    return set()


def _auto_terminals(exc: Any) -> dict[str, str]:
    table = getattr(exc, "_terminals_by_name", None)
    if not table:
        try:
            lexer = exc.interactive_parser.lexer_thread.lexer
            lexer = getattr(lexer, "root_lexer", lexer)
            table = getattr(lexer, "terminals_by_name", None)
        except Exception:
            table = None
    return terminal_texts(table) if table else {}


def _previous(exc: Any, source: str, pos: int) -> Any:
    """The token (or source text) just before the error position, or None."""
    history = getattr(exc, "token_history", None)
    if history:
        last = history[-1]
        if last is not None and getattr(last, "type", None) is not None:
            return last
    state = _parser_state(exc)
    stack = getattr(state, "value_stack", None)
    if stack:
        top = stack[-1]
        end = getattr(top, "end_pos", None)
        if (
            getattr(top, "type", None) is not None
            and isinstance(end, int)
            and end <= pos
            and _only_gap(source[end:pos])
        ):
            return top
    return _previous_lexeme(source, pos)


# ---------------------------------------------------------------------------------------------
# Translation
# ---------------------------------------------------------------------------------------------


def _unclosed_diagnostic(kind: str, start: int, source: str, file: str | None) -> Diagnostic:
    span = Span.from_offsets(source, start, max(_end_of_line(source, start), start + 1))
    if kind == "string":
        return Diagnostic(
            "P003",
            "unterminated string literal",
            span,
            ("close the string with ' (write '' for a quote inside a string)",),
            file=file,
        )
    if kind == "name":
        return Diagnostic(
            "P005",
            "unterminated quoted identifier",
            span,
            ('close the name with " (write "" for a quote inside a quoted name)',),
            file=file,
        )
    return Diagnostic(
        "P006",
        "unterminated block comment",
        span,
        ("close the comment with */",),
        file=file,
    )


_CHAR_HINTS = {
    "\u2018": "this is a typographic quote; write strings with the ASCII quote '",
    "\u2019": "this is a typographic quote; write strings with the ASCII quote '",
    "\u201c": 'this is a typographic quote; write quoted names with the ASCII quote "',
    "\u201d": 'this is a typographic quote; write quoted names with the ASCII quote "',
    "`": 'quote names with double quotes: "name"',
    "\u00a0": "this is a non-breaking space; replace it with an ordinary space",
}


def _describe_char(ch: str) -> str:
    if ch.isprintable() and ch.isascii() and ch != " ":
        return f"'{ch}'"
    try:
        uname = unicodedata.name(ch)
    except ValueError:
        uname = ""
    shown = f"'{ch}' " if ch.isprintable() and not ch.isspace() else ""
    return f"{shown}(U+{ord(ch):04X}{' ' + uname if uname else ''})".strip()


def _context_hints(
    found: Any,
    prev: Any,
    expected: set[str],
    texts: Mapping[str, str],
    masked: str,
    pos: int,
) -> list[str]:
    hints: list[str] = []
    ftype = getattr(found, "type", None)
    fvalue = str(found) if found is not None else ""
    ptype = getattr(prev, "type", None)
    pvalue = str(prev) if prev is not None else ""
    expected_kw = [
        text for kind, text in (_kind_and_text(n, texts) for n in expected) if kind == "keyword"
    ]

    # a keyword the contextual lexer read as a name, e.g. the FROM in "SELECT a, FROM t"
    if ptype in IDENTIFIER_TERMINALS and _is_keyword_word(pvalue, texts):
        hints.append(
            f"{pvalue.upper()} was read as a name here; is something missing before it "
            "(or is there a ',' too many)?"
        )
    # a misspelt keyword read as a name (an alias): "SELECT a FORM t", "FROM t WHER x"
    elif ptype in IDENTIFIER_TERMINALS and expected_kw:
        close = did_you_mean(pvalue.upper(), expected_kw, n=1)
        if close:
            hints.append(f"did you mean {close[0]} instead of '{pvalue}'?")
    # a ',' too many: "SELECT a, FROM t", "f(a, )"
    prev_is_comma = ptype == "COMMA" or (ptype is None and pvalue == ",")
    found_kind = _kind_and_text(ftype, texts)[0] if isinstance(ftype, str) else None
    if prev_is_comma and (
        found_kind in ("keyword", "end") or ftype in ("RPAR", "RSQB", "SEMICOLON")
    ):
        hints.append("is there a ',' too many?")
    # a misspelt keyword: "SELECT a FORM t"
    if ftype in IDENTIFIER_TERMINALS and expected_kw:
        close = did_you_mean(fvalue.upper(), expected_kw, n=2)
        if close:
            hints.append(f"did you mean {join_or(close)}?")
    # a keyword where a name is expected
    if found_kind == "keyword" and expected & IDENTIFIER_TERMINALS and _WORD.match(fvalue):
        hints.append(f'{fvalue.upper()} is a keyword; to use it as a name, write "{fvalue}"')
    # a string where a name is expected
    if (
        ftype in _STRING_TERMINALS
        and expected & IDENTIFIER_TERMINALS
        and not expected & LITERAL_TERMINALS
    ):
        inner = fvalue[1:-1] if len(fvalue) >= 2 else fvalue
        hints.append(f'names are written in double quotes: "{inner}"')
    # parentheses
    depth = masked[:pos].count("(") - masked[:pos].count(")")
    if ftype == "RPAR" and "RPAR" not in expected and depth <= 0:
        hints.append("this ')' has no matching '('")
    elif depth > 0 and "RPAR" in expected and ftype != "RPAR":
        hints.append("a '(' is not closed" if depth == 1 else f"{depth} '(' are not closed")
    return hints


def _translate(
    exc: LarkError, source: str, file: str | None, terminals: TerminalsLike | None
) -> Diagnostic:
    if isinstance(exc, VisitError):
        orig = exc.orig_exc
        if isinstance(orig, PopQLError):
            d = orig.diagnostics[0]
            return d if d.file is not None or file is None else d.with_file(file)
        span = Span.from_meta(getattr(exc.obj, "meta", exc.obj))
        return internal_error(orig, statement=source, span=span, file=file)

    if not isinstance(exc, UnexpectedInput):
        return _generic(exc, source, file)

    texts = terminal_texts(terminals) if terminals is not None else _auto_terminals(exc)
    masked, unclosed = _scan(source)
    expected = _expected_names(exc)

    # -- the lexer found no terminal at all -------------------------------------------------
    if isinstance(exc, UnexpectedCharacters):
        pos = _error_pos(exc, source)
        if pos is None:
            return _generic(exc, source, file)
        ch = source[pos] if pos < len(source) else getattr(exc, "char", "")
        if ch == "'":
            return _unclosed_diagnostic("string", pos, source, file)
        if ch == '"':
            return _unclosed_diagnostic("name", pos, source, file)
        if source.startswith("/*", pos):
            return _unclosed_diagnostic("comment", pos, source, file)
        if unclosed is not None and unclosed[1] <= pos:
            return _unclosed_diagnostic(unclosed[0], unclosed[1], source, file)
        lexeme = _lexeme_at(source, pos, texts)
        if lexeme is None:
            return _invalid_character(exc, source, pos, ch, expected, texts, file)
        # A known word or symbol in the wrong place (e.g. Earley's dynamic lexer).
        token: Any = lexeme
        error_pos: int | None = pos
    else:
        token = getattr(exc, "token", None)
        error_pos = None

    # -- the parser got a token it cannot use, or the input ended ---------------------------
    at_end = isinstance(exc, UnexpectedEOF) or getattr(token, "type", None) == _END
    if not at_end and getattr(token, "type", None) is None and error_pos is None:
        # a bare UnexpectedInput: take the text at the error position
        error_pos = _error_pos(exc, source)
        if error_pos is None:
            return _generic(exc, source, file)
        if error_pos >= _eof_pos(masked):
            at_end = True
        else:
            token = _lexeme_at(source, error_pos, texts) or source[error_pos]
    if at_end:
        pos = _eof_pos(masked)
        span = Span.from_offsets(source, pos, pos)
    else:
        start = getattr(token, "start_pos", None) if error_pos is None else error_pos
        end = getattr(token, "end_pos", None) if error_pos is None else None
        if not isinstance(start, int):
            start = _error_pos(exc, source)
        if start is None:
            return _generic(exc, source, file)
        if not isinstance(end, int) or end < start:
            end = start + max(1, len(str(token) if token is not None else ""))
        pos = start
        span = Span.from_offsets(source, start, end)

    if unclosed is not None and unclosed[1] <= pos:
        return _unclosed_diagnostic(unclosed[0], unclosed[1], source, file)

    prev = _previous(exc, source, pos)
    items = _expected_items(expected, texts)
    exp = _join_items(items)
    if at_end:
        head = "unexpected end of input"
        code = "P002"
        found: Any = token if getattr(token, "type", None) == _END else _EndMarker()
    else:
        head = f"unexpected {_describe_token(token, texts, verbose=True)}"
        code = "P001"
        found = token
    message = head
    if exp:
        message += f": expected {exp}"
    if prev is not None:
        message += f" after {_describe_token(prev, texts, verbose=False, keywords=expected)}"
    hints = _context_hints(found, prev, expected, texts, masked, pos)
    if len(items) > _MAX_LISTED:
        hints.append(f"expected one of: {', '.join(items)}")
    return Diagnostic(code, message, span, tuple(hints), file=file)


def _lexeme_at(source: str, pos: int, texts: Mapping[str, str]) -> str | None:
    """A word, or the longest string terminal of the grammar, starting at ``pos``."""
    m = _WORD_AT.match(source, pos)
    if m:
        return m.group(0)
    known = [t for t in texts.values() if t and source.startswith(t, pos)]
    return max(known, key=len) if known else None


def _invalid_character(
    exc: Any,
    source: str,
    pos: int,
    ch: str,
    expected: set[str],
    texts: Mapping[str, str],
    file: str | None,
) -> Diagnostic:
    prev = _previous(exc, source, pos)
    hints: list[str] = []
    if ch in _CHAR_HINTS:
        hints.append(_CHAR_HINTS[ch])
    exp = _join_items(_expected_items(expected, texts))
    if exp:
        after = f" after {_describe_token(prev, texts, verbose=False, keywords=expected)}"
        hints.append(f"expected {exp}{after if prev is not None else ''}")
    return Diagnostic(
        "P004",
        f"invalid character {_describe_char(ch)}" if ch else "invalid character",
        Span.from_offsets(source, pos, pos + 1),
        tuple(hints),
        file=file,
    )


class _EndMarker:
    type = _END

    def __str__(self) -> str:
        return ""


def _generic(exc: BaseException, source: str, file: str | None) -> Diagnostic:
    """A P001 with the best span available; never raises."""
    span: Span | None = None
    try:
        pos = _error_pos(exc, source)
        if pos is not None:
            span = Span.from_offsets(source, pos, min(pos + 1, len(source)))
    except Exception:
        span = None
    try:
        text = str(exc).strip().splitlines()
        detail = text[0] if text else type(exc).__name__
    except Exception:
        detail = type(exc).__name__
    return Diagnostic("P001", f"syntax error: {detail}", span, file=file)


def from_lark(
    exc: LarkError,
    source: str,
    file: str | None = None,
    terminals: TerminalsLike | None = None,
) -> Diagnostic:
    """Translate a lark error raised while parsing ``source`` into a :class:`Diagnostic`.

    ``terminals`` describes terminals the built-in tables do not know: a mapping of terminal
    names to display text, or ``Lark(...).terminals``; when omitted, the table lark attached to
    the error (if any) is used. ``file`` is recorded on the diagnostic.

    Never raises: anything unexpected gives a generic ``P001`` with the best span available.
    """
    try:
        return _translate(exc, source, file, terminals)
    except Exception:
        try:
            return _generic(exc, source, file)
        except Exception:
            return Diagnostic("P001", "syntax error", None, file=file)


def to_error(
    exc: LarkError,
    source: str,
    file: str | None = None,
    terminals: TerminalsLike | None = None,
) -> PopQLError:
    """:func:`from_lark` wrapped in a :class:`PopQLError` that renders against ``source``."""
    return PopQLError(from_lark(exc, source, file, terminals), source=source, file=file)
