"""Translate Apache DataFusion error messages into PopQL :class:`Diagnostic` values.

DataFusion reports problems as plain exceptions (``ValueError``, ``Exception``, sometimes a
``pyarrow.ArrowInvalid``) whose text looks like::

    Schema error: No field named x. Did you mean 't.a'?
    Valid fields are t.a, t.b.

    Error during planning: table 'datafusion.public.foo' not found
    Error during planning: Invalid function 'foo'.
    Did you mean 'cos'?
    DataFusion error: Optimizer rule 'simplify_expressions' failed
    caused by
    Arrow error: Cast error: Cannot cast string 'abc' to value of Int64 type

Everything here is a pure function over strings so it can be unit-tested without running a
query. :func:`translate_message` is the entry point: it classifies a message and builds one
diagnostic whose span points at the offending identifier in the *PopQL* statement text (the
first case-insensitive occurrence outside strings and comments), falling back to the span of
the whole statement when the name cannot be found (e.g. it only exists in the lowered SQL).

Codes produced: N001 unknown table, N002 unknown column, N003 unknown function, N005
ambiguous column, N007 missing parameter value, E001 any other engine error, F001/F003 file
problems while registering a source, I001 when DataFusion cannot parse the SQL PopQL
generated (that is a bug in the lowering, not the user's mistake).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from popql.diagnostics import Diagnostic, Span, did_you_mean, join_or

__all__ = [
    "DEFAULT_CATALOG",
    "DEFAULT_SCHEMA",
    "clean_message",
    "display_name",
    "find_identifier",
    "find_text",
    "format_field",
    "message_of",
    "parse_field_list",
    "repr_name",
    "split_qualified",
    "translate_file_error",
    "translate_message",
]

DEFAULT_CATALOG = "datafusion"
DEFAULT_SCHEMA = "public"

# Error-kind prefixes DataFusion (and arrow-rs / object_store) put in front of messages. They
# are stripped from the headline because they say where the error came from, not what it is.
_NOISE_PREFIX = re.compile(
    r"^(?:DataFusion error|Error during planning|Execution error|Schema error|Arrow error"
    r"|External error|Internal error|Optimizer rule '[^']*' failed|Context\(\"[^\"]*\"\)"
    r"|Shared error|Cast error|Compute error|Invalid argument error|Parse error"
    r"|Object Store error|IO error|Parquet error|Csv error|Json error|Unknown error)"
    r"\s*:?\s*"
)
_CAUSED_BY = re.compile(r"^\s*caused by\s*$", re.IGNORECASE)
_OPTIMIZER_FAILED = re.compile(r"^\s*(?:DataFusion error:\s*)?Optimizer rule '[^']*' failed\s*$")

_NO_FIELD = re.compile(r"No field named (?P<name>.+?)\.(?:\s+Did you mean '(?P<hint>.*?)'\?)?\s*$")
_VALID_FIELDS = re.compile(r"^Valid fields are (?P<fields>.*?)\.?\s*$")
_TABLE_NOT_FOUND = re.compile(r"table '(?P<name>.*)' not found")
_TABLE_FUNCTION_NOT_FOUND = re.compile(r"table function '(?P<name>.*)' not found")
_INVALID_FUNCTION = re.compile(r"Invalid function '(?P<name>.*?)'")
_FUNCTION_HINT = re.compile(r"Did you mean '(?P<hint>.*?)'\?")
_AMBIGUOUS = re.compile(r"Ambiguous reference to unqualified field (?P<name>\S+)")
_PLACEHOLDER = re.compile(
    r"(?:Placeholder '(?P<a>\$?[^']+)' was not provided a value"
    r"|No value found for placeholder with name (?P<b>\$?\S+))"
)
_PYERR = re.compile(r"PyErr \{ type: <class '(?P<type>[^']+)'>, value: (?P<value>.*?), traceback:")
_PYERR_TRACEBACK = re.compile(r'traceback: Some\("(?P<tb>.*)"\) \}', re.DOTALL)
_PARSER_ERROR = re.compile(r"(?:SQL error: )?ParserError\(")
_CASE_SENSITIVE = re.compile(r"^Column names are case sensitive")
_SIMPLE_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


def message_of(exc: BaseException) -> str:
    """The text of an exception raised by DataFusion or pyarrow."""
    text = str(exc)
    if not text and exc.args:
        text = repr(exc.args[0])
    return text or type(exc).__name__


def _strip_noise(line: str) -> str:
    previous = None
    while previous != line:
        previous = line
        line = _NOISE_PREFIX.sub("", line, count=1)
    return line.strip()


def _lower_first(text: str) -> str:
    """``"Divide by zero"`` -> ``"divide by zero"``, but keep ``"SQL ..."`` and ``"IO ..."``."""
    if len(text) >= 2 and text[0].isupper() and text[1].islower():
        return text[0].lower() + text[1:]
    return text


def clean_message(message: str) -> str:
    """The headline of a DataFusion error: its first meaningful line without kind prefixes.

    ``"DataFusion error: Optimizer rule 'x' failed\\ncaused by\\nArrow error: Divide by zero"``
    becomes ``"divide by zero"``.
    """
    for raw in message.splitlines():
        if not raw.strip() or _CAUSED_BY.match(raw) or _OPTIMIZER_FAILED.match(raw):
            continue
        line = _strip_noise(raw)
        if line:
            return _lower_first(line)
    return _lower_first(_strip_noise(message.strip())) or "the query engine reported an error"


# ---------------------------------------------------------------------------------------------
# Names as DataFusion prints them: t.a, "T1"."B c", "count(*)"
# ---------------------------------------------------------------------------------------------


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unquote(part: str) -> str:
    part = part.strip()
    if len(part) >= 2 and part[0] == part[-1] == '"':
        return part[1:-1].replace('""', '"')
    if len(part) >= 2 and part[0] == part[-1] == "`":
        return part[1:-1].replace("``", "`")
    return part


def split_qualified(name: str) -> tuple[str, ...]:
    """``'"T1"."B c"'`` -> ``("T1", "B c")``; ``"t.a"`` -> ``("t", "a")``."""
    return tuple(_unquote(p) for p in _split_outside_quotes(name.strip(), "."))


def parse_field_list(fields: str) -> list[tuple[str, ...]]:
    """``'t.a, t.b, t."Mixed"'`` -> ``[("t", "a"), ("t", "b"), ("t", "Mixed")]`` (deduplicated)."""
    result: list[tuple[str, ...]] = []
    for item in _split_outside_quotes(fields, ","):
        if item.strip():
            parts = split_qualified(item)
            if parts not in result:
                result.append(parts)
    return result


def _quote_if_needed(part: str) -> str:
    if _SIMPLE_IDENT.match(part):
        return part
    return '"' + part.replace('"', '""') + '"'


def display_name(parts: Sequence[str]) -> str:
    """How a user would write a (qualified) name: ``("T1", "B c")`` -> ``'"T1"."B c"'``."""
    return ".".join(_quote_if_needed(p) for p in parts)


def format_field(
    parts: Sequence[str], fields: Sequence[Sequence[str]], qualified: bool = False
) -> str:
    """A field for a suggestion: unqualified when its column name is unique among ``fields``
    (and ``qualified`` is false, i.e. the user did not write a qualified name)."""
    if len(parts) > 1 and not qualified:
        same = [f for f in fields if f and f[-1] == parts[-1]]
        if len(same) <= 1:
            return _quote_if_needed(parts[-1])
    return display_name(parts)


# ---------------------------------------------------------------------------------------------
# Finding a name in the statement text
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # "ident", "dot", "other"
    value: str  # identifier text (unquoted) or the punctuation
    start: int
    end: int


_IDENT_START = re.compile(r"[A-Za-z_\u00C0-\uFFFF]")
_IDENT_REST = re.compile(r"[A-Za-z0-9_$\u00C0-\uFFFF]*")
_DOLLAR_STRING = re.compile(r"\$([A-Za-z_]*)\$(?:.|\n)*?\$\1\$")
_PLACEHOLDER_TOKEN = re.compile(r"\$[A-Za-z0-9_]+")


def _skip_quoted(text: str, i: int, quote: str, backslash: bool = False) -> int:
    """Index just past the quoted run that starts at ``text[i] == quote``."""
    n = len(text)
    j = i + 1
    while j < n:
        ch = text[j]
        if backslash and ch == "\\":
            j += 2
            continue
        if ch == quote:
            if j + 1 < n and text[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    return n


def _tokens(text: str) -> list[_Token]:
    """A rough lexer: identifiers (bare, "double" or `back` quoted), dots, and the rest.

    Strings, dollar-quoted strings and comments are skipped so that a name inside them never
    matches.
    """
    out: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif text.startswith("--", i):
            nl = text.find("\n", i)
            i = n if nl == -1 else nl + 1
        elif text.startswith("/*", i):
            close = text.find("*/", i + 2)
            i = n if close == -1 else close + 2
        elif ch == "'":
            i = _skip_quoted(text, i, "'")
        elif ch in "EeXxNnBbRr" and i + 1 < n and text[i + 1] == "'":
            i = _skip_quoted(text, i + 1, "'", backslash=ch in "Ee")
        elif ch == "$":
            m = _DOLLAR_STRING.match(text, i)
            if m:
                i = m.end()
                continue
            m = _PLACEHOLDER_TOKEN.match(text, i)
            end = m.end() if m else i + 1
            out.append(_Token("other", text[i:end], i, end))
            i = end
        elif ch in '"`':
            end = _skip_quoted(text, i, ch)
            raw = text[i:end]
            out.append(_Token("ident", _unquote(raw) if raw.endswith(ch) else raw[1:], i, end))
            i = end
        elif _IDENT_START.match(ch):
            m = _IDENT_REST.match(text, i + 1)
            end = m.end() if m else i + 1
            out.append(_Token("ident", text[i:end], i, end))
            i = end
        elif ch == ".":
            out.append(_Token("dot", ".", i, i + 1))
            i += 1
        else:
            out.append(_Token("other", ch, i, i + 1))
            i += 1
    return out


def find_identifier(text: str, name: str | Sequence[str]) -> tuple[int, int] | None:
    """Offsets ``(start, end)`` of the first occurrence of identifier ``name`` in ``text``.

    ``name`` is a DataFusion-printed (possibly qualified, possibly quoted) name or a tuple of
    its parts. Matching is case-insensitive on whole identifier tokens, ignoring string
    literals and comments. A qualified name is searched as a whole (``t.x``, ``t . "X"``)
    first, then by its last part alone. None when the name does not occur.
    """
    parts = split_qualified(name) if isinstance(name, str) else tuple(name)
    parts = tuple(p for p in parts if p)
    if not parts:
        return None
    tokens = _tokens(text)
    wanted = [p.casefold() for p in parts]
    attempts = [wanted] if len(wanted) == 1 else [wanted, wanted[-1:]]
    for attempt in attempts:
        width = 2 * len(attempt) - 1
        for i in range(len(tokens) - width + 1):
            window = tokens[i : i + width]
            idents = window[0::2]
            dots = window[1::2]
            if (
                all(t.kind == "ident" for t in idents)
                and all(t.kind == "dot" for t in dots)
                and [t.value.casefold() for t in idents] == attempt
            ):
                return window[0].start, window[-1].end
    return None


def find_text(text: str, needle: str) -> tuple[int, int] | None:
    """Offsets of the first occurrence of ``needle`` (a ``$name`` placeholder, say) in ``text``
    outside strings and comments, matched case-insensitively on token boundaries."""
    for tok in _tokens(text):
        if tok.value.casefold() == needle.casefold() or text[tok.start : tok.end] == needle:
            return tok.start, tok.end
    return None


# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------


def _strip_default_qualifier(name: str) -> str:
    """``datafusion.public.foo`` -> ``foo``; ``datafusion.s.t`` -> ``s.t``."""
    parts = list(split_qualified(name))
    if len(parts) == 3 and parts[0] == DEFAULT_CATALOG:
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == DEFAULT_SCHEMA:
        parts = parts[1:]
    return ".".join(parts)


def _span(
    source: str,
    statement: tuple[int, int],
    found: tuple[int, int] | None,
) -> Span:
    start, end = statement
    if found is None:
        return Span.from_offsets(source, start, end)
    return Span.from_offsets(source, start + found[0], start + found[1])


def _details(message: str, headline: str) -> tuple[str, ...]:
    """Keep DataFusion's whole message (on one line) as a hint when the headline dropped
    more than kind prefixes."""
    full = " ".join(line.strip() for line in message.strip().splitlines() if line.strip())
    if not full or _strip_noise(full).casefold() == headline.casefold():
        return ()
    return (f"DataFusion said: {full}",)


_SENTENCE_END = re.compile(r"\.\s+(?=[A-Z])")


def _headline(message: str, limit: int = 100) -> str:
    """:func:`clean_message`, cut to its first sentence when it is long."""
    line = clean_message(message)
    if len(line) > limit:
        m = _SENTENCE_END.search(line)
        if m and m.start() > 10:
            line = line[: m.start()]
    return line


def translate_message(
    message: str,
    source: str,
    statement: tuple[int, int] | None = None,
    *,
    table_names: Iterable[str] = (),
    function_names: Iterable[str] = (),
    file: str | None = None,
    sql: str | None = None,
) -> Diagnostic:
    """One :class:`Diagnostic` for DataFusion error ``message``.

    ``source`` is the whole text the user gave (a file, a ``Session.sql`` string) and
    ``statement`` the ``(start, end)`` offsets of the failing statement inside it (default:
    all of ``source``); spans point into ``source``. ``table_names`` / ``function_names``
    feed "did you mean" hints. ``sql`` is the lowered SQL DataFusion saw, quoted in an
    internal-error diagnostic when DataFusion could not parse it.
    """
    if statement is None:
        statement = (0, len(source))
    stmt_text = source[statement[0] : statement[1]]
    lines = [ln.strip() for ln in message.strip().splitlines()]
    text = " ".join(lines)

    # -- unknown column -------------------------------------------------------------------
    m = _NO_FIELD.search(lines[0]) if lines else None
    if m:
        name = m.group("name")
        parts = split_qualified(name)
        fields: list[tuple[str, ...]] = []
        case_hint: str | None = None
        for line in lines[1:]:
            vm = _VALID_FIELDS.match(line)
            if vm:
                fields = parse_field_list(vm.group("fields"))
            elif _CASE_SENSITIVE.match(line):
                case_hint = (
                    "column names are case-sensitive: write a mixed-case name in double quotes"
                )
        suggestions: list[str] = []
        qualified = len(parts) > 1
        if m.group("hint"):
            suggestions.append(format_field(split_qualified(m.group("hint")), fields, qualified))
        shown = {display_name(f): f for f in fields}
        for cand in did_you_mean(display_name(parts), list(shown)):
            pretty = format_field(shown[cand], fields, qualified)
            if pretty not in suggestions:
                suggestions.append(pretty)
        hints: list[str] = []
        if suggestions:
            hints.append(f"did you mean {join_or([repr_name(s) for s in suggestions[:3]])}?")
        if case_hint:
            hints.append(case_hint)
        if fields and not suggestions:
            available = ", ".join(format_field(f, fields, qualified) for f in fields[:12])
            more = f" (and {len(fields) - 12} more)" if len(fields) > 12 else ""
            hints.append(f"available columns: {available}{more}")
        return Diagnostic(
            "N002",
            f"unknown column '{display_name(parts)}'",
            span=_span(source, statement, find_identifier(stmt_text, parts)),
            hints=tuple(hints),
            file=file,
        )

    # -- unknown table function (before plain tables: the pattern is a superset) ------------
    m = _TABLE_FUNCTION_NOT_FOUND.search(text)
    if m:
        name = m.group("name")
        hints = []
        close = did_you_mean(name, function_names)
        if close:
            hints.append(f"did you mean {join_or([repr_name(c) for c in close])}?")
        return Diagnostic(
            "N003",
            f"unknown table function '{name}'",
            span=_span(source, statement, find_identifier(stmt_text, name)),
            hints=tuple(hints),
            file=file,
        )

    # -- unknown table --------------------------------------------------------------------
    m = _TABLE_NOT_FOUND.search(text)
    if m:
        name = _strip_default_qualifier(m.group("name"))
        parts = split_qualified(name) if not _looks_like_path(name) else (name,)
        hints = []
        close = did_you_mean(name, table_names)
        if close:
            hints.append(f"did you mean {join_or([repr_name(c) for c in close])}?")
        elif not _looks_like_path(name):
            known = sorted(table_names)
            if known:
                listed = ", ".join(known[:12]) + (" ..." if len(known) > 12 else "")
                hints.append(f"known tables: {listed}")
            else:
                hints.append("no tables are registered yet")
        return Diagnostic(
            "N001",
            f"unknown table '{name}'",
            span=_span(source, statement, find_identifier(stmt_text, parts)),
            hints=tuple(hints),
            file=file,
        )

    # -- unknown function -----------------------------------------------------------------
    m = _INVALID_FUNCTION.search(text)
    if m:
        name = m.group("name")
        hints = []
        hm = _FUNCTION_HINT.search(text)
        suggestions = [hm.group("hint")] if hm else []
        for cand in did_you_mean(name, function_names):
            if cand not in suggestions:
                suggestions.append(cand)
        if suggestions:
            hints.append(f"did you mean {join_or([repr_name(s) for s in suggestions[:3]])}?")
        return Diagnostic(
            "N003",
            f"unknown function '{name}'",
            span=_span(source, statement, find_identifier(stmt_text, name)),
            hints=tuple(hints),
            file=file,
        )

    # -- ambiguous column -----------------------------------------------------------------
    m = _AMBIGUOUS.search(text)
    if m:
        name = m.group("name").rstrip(".")
        return Diagnostic(
            "N005",
            f"ambiguous column '{name}'",
            span=_span(source, statement, find_identifier(stmt_text, name)),
            hints=("qualify it with a table name or alias, e.g. t." + name,),
            file=file,
        )

    # -- parameter without a value ----------------------------------------------------------
    m = _PLACEHOLDER.search(text)
    if m:
        raw = m.group("a") or m.group("b") or ""
        placeholder = raw if raw.startswith("$") else "$" + raw
        key = placeholder[1:]
        hint = (
            f"pass a value for it, e.g. session.sql(text, params={{{key!r}: ...}})"
            if not key.isdigit()
            else "name the parameter ($name) and pass params={'name': ...}"
        )
        return Diagnostic(
            "N007",
            f"no value given for parameter {placeholder}",
            span=_span(source, statement, find_text(stmt_text, placeholder)),
            hints=(hint,),
            file=file,
        )

    # -- a Python function (UDF) raised ------------------------------------------------------
    m = _PYERR.search(text)
    if m:
        value = m.group("value").strip()
        tb = _PYERR_TRACEBACK.search(message)
        hints = []
        if tb:
            trace = tb.group("tb").encode("utf-8", "backslashreplace").decode("unicode_escape")
            hints.append("Python traceback: " + " ".join(trace.split()))
        return Diagnostic(
            "E003",
            f"extension function failed: {value}",
            span=_span(source, statement, None),
            hints=tuple(hints),
            file=file,
        )

    # -- DataFusion could not parse the SQL we generated: a lowering bug --------------------
    if _PARSER_ERROR.search(text):
        hints = [
            "this is a bug in PopQL; please report it together with the statement below",
            f"statement: {stmt_text.strip()}",
            f"DataFusion said: {message.strip()}",
        ]
        if sql is not None:
            hints.append(f"generated SQL: {sql}")
        return Diagnostic(
            "I001",
            "internal error: the generated SQL was rejected by DataFusion's parser",
            span=_span(source, statement, None),
            hints=tuple(hints),
            file=file,
        )

    # -- values of the wrong type (a failed cast or no common type) ------------------------
    headline = _headline(message)
    if _TYPE_MISMATCH.search(text):
        literal = re.search(r"Cannot cast string '([^']*)'", text)
        found = None
        if literal:
            stmt = source[statement[0] : statement[1]]
            at = stmt.find(f"'{literal.group(1)}'")
            found = (at, at + len(literal.group(1)) + 2) if at >= 0 else None
        span = _span(source, statement, found)
        return Diagnostic(
            "T001",
            f"type mismatch: {headline}",
            span=span,
            hints=(
                "compare values of the same type, or convert one with CAST(... AS ...)",
                *_details(message, headline),
            ),
            file=file,
        )

    # -- anything else ----------------------------------------------------------------------
    return Diagnostic(
        "E001",
        headline,
        span=_span(source, statement, None),
        hints=_details(message, headline),
        file=file,
    )


_TYPE_MISMATCH = re.compile(
    r"Cannot cast string|Cannot cast value|Cast error: Cannot cast|Cannot coerce|"
    r"There isn't a common type|Cannot infer common (argument )?type|"
    r"Cannot automatically convert"
)


def repr_name(name: str) -> str:
    """A name quoted for a message: ``'t.a'`` (a double-quoted name is shown as is)."""
    return f"'{name}'"


def _looks_like_path(name: str) -> bool:
    return "/" in name or "\\" in name


_MISSING_FILE = re.compile(
    r"No files found|No such file|not found|cannot find|does not exist", re.IGNORECASE
)


def translate_file_error(message: str, path: str, *, file: str | None = None) -> Diagnostic:
    """A diagnostic for DataFusion failing to register or read the data file(s) at ``path``.

    A missing file is F001; anything else DataFusion says while reading (a truncated Parquet
    file, a CSV that is not UTF-8...) is F003 "invalid data in file".
    """
    headline = _headline(message)
    if _MISSING_FILE.search(message):
        return Diagnostic(
            "F001",
            f"cannot read '{path}': {headline}",
            hints=_details(message, headline),
            file=file,
        )
    return Diagnostic(
        "F003",
        f"cannot read '{path}': {headline}",
        hints=_details(message, headline),
        file=file,
    )
