"""Context-aware completion for the PopQL shell, as pure functions over strings.

:func:`complete` takes the text typed so far, the cursor position and a :class:`Metadata`
snapshot of the catalog, and returns :class:`Suggestion` values; it never touches a session, so
it is tested and benchmarked on plain strings. :func:`load_metadata` builds the snapshot from a
live session (or any object with the :class:`popql.check.Catalog` methods), and
:class:`PopQLCompleter` adapts :func:`complete` to prompt_toolkit.

>>> meta = Metadata(tables={"samples": (ColumnMeta("weather", "string", tagger="weather"),
...                                     ColumnMeta("uri", "string"))},
...                 tag_values={("samples", "weather"): ("rainy", "sunny")})
>>> [s.text for s in complete("SELECT * FROM sam", None, meta)]
['samples']
>>> [s.text for s in complete("SELECT * FROM samples WHERE weather = 's", None, meta)]
["sunny'"]

What is offered where:

* at the start of a statement: the statements of the grammar (``SELECT``, ``CREATE
  POPULATION``, ``HOLD OUT``...); at the start of the input also the meta-commands (``.tables``);
* after ``FROM``/``JOIN``/``INTO``/``TABLE``/``DESCRIBE``...: tables (and populations after
  ``FROM``/``JOIN``: they are queried like tables);
* in expressions: the columns of the statement's tables (``alias.`` narrows to one table; tag
  columns first), functions and keywords;
* after ``POPULATION``, ``HOLD OUT n PERCENT OF``, ``EVALUATE m ON``, ``EXPECT ... ON``:
  populations; after ``MODEL``, ``EVALUATE``, ``COMPARE``: models; after ``USING`` in a
  similarity search: embedders;
* inside a string: file paths after ``NEAR IMAGE``/``IMPORT PREDICTIONS ... FROM``/``COPY ...
  TO``; the values of low-cardinality tag columns after ``col =``, ``col IN (``, ``col
  TAGGED``;
* after a meta-command: its arguments (tables, on/off, output modes, files).

Matches are case-insensitive prefix matches, then substring matches.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from .highlight import grammar_keywords, statement_openers

__all__ = [
    "IMAGE_SUFFIXES",
    "ColumnMeta",
    "Metadata",
    "PopQLCompleter",
    "Suggestion",
    "Token",
    "complete",
    "load_metadata",
    "load_tag_values",
    "tokenize",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")

#: Most distinct values a tag column may have to get its values completed.
MAX_TAG_VALUES = 50
#: Columns whose values are never completed (identifiers, paths, hashes).
_NO_VALUES = re.compile(r"(^|_)(id|uri|url|path|hash|content_hash|metadata|file|filename)$", re.I)


# ---------------------------------------------------------------------------------------------
# Catalog snapshot
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnMeta:
    """A column as completion sees it. ``tagger`` is set for columns a tagger produced."""

    name: str
    type: str = ""
    tagger: str | None = None

    @property
    def is_tag(self) -> bool:
        return self.tagger is not None or self.name.lower() in ("labels", "tags")


@dataclass
class Metadata:
    """What completion knows about the catalog: a plain snapshot, cheap to query.

    ``tag_values`` maps ``(table, column)`` (lower case) to the distinct values of a
    low-cardinality tag column; :func:`load_tag_values` fills it.
    """

    tables: dict[str, tuple[ColumnMeta, ...]] = field(default_factory=dict)
    functions: Sequence[str] = ()
    populations: Sequence[str] = ()
    models: Sequence[str] = ()
    embedders: Sequence[str] = ()
    tag_values: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    meta_commands: Sequence[str] = ()

    def __post_init__(self) -> None:
        self._lower = {name.lower(): name for name in self.tables}

    def columns_of(self, table: str) -> tuple[ColumnMeta, ...]:
        name = self._lower.get(table.lower(), table)
        return self.tables.get(name, ())

    def has_table(self, table: str) -> bool:
        return table.lower() in self._lower

    def values_of(self, table: str | None, column: str) -> tuple[str, ...]:
        col = column.lower()
        if table is not None:
            found = self.tag_values.get((table.lower(), col))
            if found is not None:
                return found
        merged: dict[str, None] = {}
        for (_, c), values in self.tag_values.items():
            if c == col:
                merged.update(dict.fromkeys(values))
        return tuple(merged)


def _call(obj: Any, name: str) -> list[str]:
    method = getattr(obj, name, None)
    if method is None:
        return []
    try:
        return [str(x) for x in method()]
    except Exception:
        return []


def load_metadata(source: Any, previous: Metadata | None = None) -> Metadata:
    """A :class:`Metadata` snapshot of ``source``: a :class:`popql.engine.Session` or any
    object with ``table_names()``, ``columns(table)`` and ``function_names()``, and optionally
    ``population_names()``, ``model_names()`` and ``embedder_names()`` (looked up duck-typed:
    sessions gain them as those features land). Tag values known to ``previous`` are kept.
    """
    catalog = getattr(source, "catalog", source)
    tables: dict[str, tuple[ColumnMeta, ...]] = {}
    describe = getattr(source, "describe", None)
    taggers_known = getattr(source, "snapshot", None) is not None
    for table in _call(catalog, "table_names"):
        cols: list[ColumnMeta] = []
        taggers: dict[str, str | None] = {}
        if describe is not None and taggers_known and table == "samples":
            try:
                d = describe(table).to_pydict()
                taggers = dict(zip(d["column"], d["tagger"], strict=True))
            except Exception:
                taggers = {}
        try:
            pairs = catalog.columns(table) or []
        except Exception:
            pairs = []
        for name, type_ in pairs:
            cols.append(ColumnMeta(str(name), str(type_), taggers.get(name)))
        tables[table] = tuple(cols)
    embedders = _call(source, "embedder_names")
    snapshot = getattr(source, "snapshot", None)
    if not embedders and snapshot is not None:
        embedders = [str(k) for k in (getattr(snapshot, "embedders", None) or {})]
    values = dict(previous.tag_values) if previous is not None else {}
    return Metadata(
        tables=tables,
        functions=sorted(set(_call(catalog, "function_names"))),
        populations=_call(source, "population_names") or _call(catalog, "population_names"),
        models=_call(source, "model_names") or _call(catalog, "model_names"),
        embedders=embedders,
        tag_values=values,
        meta_commands=previous.meta_commands if previous is not None else (),
    )


def _quote_ident(name: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name) and name.upper() not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


def _quote_string(value: str) -> str:
    return value.replace("'", "''")


def _value_candidates(meta: Metadata) -> list[tuple[str, ColumnMeta]]:
    out = []
    for table, cols in meta.tables.items():
        for c in cols:
            if (table.lower(), c.name.lower()) in meta.tag_values or _NO_VALUES.search(c.name):
                continue
            t = c.type
            if t in ("string", "large_string", "string_view") or (
                t.startswith(("list<", "large_list<")) and t.endswith(("string>", "string_view>"))
            ):
                out.append((table, c))
    return out


def load_tag_values(
    session: Any,
    meta: Metadata,
    *,
    limit: int = MAX_TAG_VALUES,
    max_columns: int = 64,
    stop: threading.Event | None = None,
) -> int:
    """Fill ``meta.tag_values`` with the distinct values of each string (or list of strings)
    column of ``session`` that has at most ``limit`` of them; returns how many columns were
    read. Identifier-like columns (``sample_id``, ``uri``, ``*_hash``...) are skipped.
    Runs plain DataFusion queries (``SELECT DISTINCT ... LIMIT limit + 1``); meant for a
    background thread, ``stop`` ends it early.
    """
    ctx = getattr(session, "ctx", None)
    if ctx is None:
        return 0
    done = 0
    candidates = _value_candidates(meta)
    # tag columns first: they are what users filter on
    candidates.sort(key=lambda tc: (not tc[1].is_tag, tc[0] != "samples"))
    for table, col in candidates[:max_columns]:
        if stop is not None and stop.is_set():
            break
        qt = '"' + table.replace('"', '""') + '"'
        qc = '"' + col.name.replace('"', '""') + '"'
        if col.type.startswith(("list<", "large_list<")):
            sql = (
                f"SELECT DISTINCT v FROM (SELECT unnest({qc}) AS v FROM {qt}) "
                f"WHERE v IS NOT NULL LIMIT {limit + 1}"
            )
        else:
            sql = f"SELECT DISTINCT {qc} AS v FROM {qt} WHERE {qc} IS NOT NULL LIMIT {limit + 1}"
        try:
            rows = ctx.sql(sql).to_pydict()["v"]
        except Exception:
            continue
        done += 1
        if len(rows) <= limit:
            meta.tag_values[(table.lower(), col.name.lower())] = tuple(sorted(map(str, rows)))
        else:
            meta.tag_values[(table.lower(), col.name.lower())] = ()
    return done


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # word, qname, string, number, op, punct, comment, ws; u* = unterminated
    text: str
    start: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""

    @property
    def name(self) -> str:
        """The identifier a word or quoted name spells (unquoted; words lower-cased)."""
        if self.kind == "qname":
            return self.text[1:-1].replace('""', '"')
        return self.text.lower()


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*|/\*(?:.|\n)*?\*/)
  | (?P<ucomment>/\*(?:.|\n)*)
  | (?P<string>[EeXxNnBbRr]?'(?:[^']|'')*')
  | (?P<ustring>[EeXxNnBbRr]?'(?:[^']|'')*)
  | (?P<qname>"(?:[^"]|"")*")
  | (?P<uqname>"(?:[^"]|"")*)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<word>(?:[^\W\d]|_)[\w$]*)
  | (?P<op>::|->>|->|=>|<=|>=|<>|!=|==|\|\||[-+*/%<>=~^&|!@#])
  | (?P<punct>.)
    """,
    re.VERBOSE,
)


def tokenize(text: str) -> list[Token]:
    """Split PopQL text into tokens (unterminated strings and comments at the end become
    ``ustring``/``ucomment``/``uqname`` tokens). Never fails."""
    return [Token(m.lastgroup or "punct", m.group(), m.start()) for m in _TOKEN.finditer(text)]


def _significant(tokens: Iterable[Token]) -> list[Token]:
    return [t for t in tokens if t.kind not in ("ws", "comment")]


def split_statements(text: str) -> list[tuple[int, int]]:
    """(start, end) of each statement of ``text``: ``;`` outside strings and comments ends
    one. The last range runs to the end of the text."""
    ranges = []
    start = 0
    for tok in tokenize(text):
        if tok.kind == "punct" and tok.text == ";":
            ranges.append((start, tok.start))
            start = tok.start + 1
    ranges.append((start, len(text)))
    return ranges


def statement_complete(text: str) -> bool:
    """Whether ``text`` ends with a ``;`` outside any string or comment (the shell runs the
    buffer then); trailing spaces and comments after it are allowed."""
    sig = _significant(tokenize(text))
    return bool(sig) and sig[-1].kind == "punct" and sig[-1].text == ";"


# ---------------------------------------------------------------------------------------------
# Suggestions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suggestion:
    """One completion: replace the ``-start`` characters before the cursor with ``text``."""

    text: str
    start: int
    kind: str  # statement, keyword, table, column, function, population, model, embedder,
    #            value, path, meta, option
    display: str | None = None
    meta: str | None = None


_RESERVED = frozenset(
    [
        "SELECT",
        "FROM",
        "WHERE",
        "GROUP",
        "HAVING",
        "ORDER",
        "LIMIT",
        "OFFSET",
        "UNION",
        "INTERSECT",
        "EXCEPT",
        "JOIN",
        "ON",
        "AND",
        "OR",
        "NOT",
        "AS",
        "INTO",
        "CASE",
        "WHEN",
        "THEN",
        "ELSE",
        "IS",
        "IN",
        "BETWEEN",
        "LIKE",
        "ILIKE",
        "DISTINCT",
        "BY",
        "NULL",
        "TRUE",
        "FALSE",
        "WITH",
        "USING",
        "QUALIFY",
        "WINDOW",
    ]
)
_TABLE_AFTER = frozenset({"FROM", "JOIN", "INTO", "TABLE", "UPDATE", "DESCRIBE", "DESC", "VIEW"})
_EXPR_AFTER = frozenset(
    {
        "SELECT", "WHERE", "AND", "OR", "NOT", "BY", "HAVING", "WHEN", "THEN", "ELSE", "CASE",
        "DISTINCT", "ON", "QUALIFY", "SET", "IF", "RETURN", "BETWEEN", "IS", "IN", "LIKE",
        "ILIKE", "ALL", "ANY", "ARRAY", "COUNT",
    }
)  # fmt: skip
_EXPR_OPS = frozenset({"(", ",", "=", "<", ">", "<=", ">=", "<>", "!=", "+", "-", "*", "/", "%",
                       "||", "::", "["})  # fmt: skip
_CLAUSE_KEYWORDS = (
    "FROM", "WHERE", "GROUP BY", "HAVING", "ORDER BY", "LIMIT", "OFFSET", "JOIN", "LEFT JOIN",
    "ON", "AS", "AND", "OR", "NOT", "IN", "IS NULL", "IS NOT NULL", "LIKE", "BETWEEN", "TAGGED",
    "SIMILAR TO", "NEAR", "TOP", "THRESHOLD", "USING", "DESC", "ASC", "UNION", "UNION ALL",
)  # fmt: skip
_POPQL_EXPR = ("SIMILARITY(", "NEAR IMAGE '", "NEAR SAMPLE '", "COUNT(", "ANY(", "ALL(")
_PATH_AFTER = frozenset({"IMAGE", "LOCATION"})
_META_OPTIONS: dict[str, tuple[str, ...]] = {
    ".timer": ("on", "off"),
    ".mode": ("table", "csv", "json", "markdown"),
    ".explain": ("on", "off"),
    ".thumbnails": ("on", "off"),
    ".pager": ("on", "off"),
}
_META_PATHS: dict[str, tuple[str, ...] | None] = {
    ".open": (),  # directories only
    ".read": (".popql", ".sql"),
    ".output": None,  # any file
}
#: (text matched, text inserted, kind, menu note)
_Cand = tuple[str, str, str, str | None]

_KIND_ORDER = {
    "meta": 0, "statement": 1, "clause": 1, "value": 1, "path": 1, "option": 1, "column": 2,
    "table": 2, "population": 2, "model": 2, "embedder": 2, "function": 4, "keyword": 5,
}  # fmt: skip


def _match(
    prefix: str, candidates: Iterable[_Cand]
) -> list[tuple[int, int, str, str, str, str | None]]:
    """Rank ``(match_text, insert_text, kind, meta)``: prefix matches, then substrings."""
    p = prefix.lower()
    out = []
    for i, (match_text, insert, kind, meta) in enumerate(candidates):
        m = match_text.lower()
        if m.startswith(p):
            tier = 0
        elif p and p in m:
            tier = 1
        else:
            continue
        out.append((tier, i, match_text, insert, kind, meta))
    out.sort(key=lambda r: (r[0], _KIND_ORDER.get(r[4], 9), r[1]))
    return out


def _kw_case(keyword: str, prefix: str) -> str:
    return keyword.lower() if prefix and prefix == prefix.lower() else keyword


def _tables_of_statement(sig: Sequence[Token], meta: Metadata) -> dict[str, str]:
    """alias/table name (lower case) -> table name, for the FROM/JOIN/UPDATE items of a
    statement's tokens."""
    found: dict[str, str] = {}
    i = 0
    while i < len(sig):
        t = sig[i]
        if t.upper in ("FROM", "JOIN", "UPDATE", "INTO") or (
            t.kind == "punct" and t.text == "," and found and _in_from_list(sig, i)
        ):
            j = i + 1
            if (
                j < len(sig)
                and sig[j].kind in ("word", "qname")
                and sig[j].upper
                not in (
                    "SELECT",
                    "LATERAL",
                )
            ):
                parts = [sig[j].name if sig[j].kind == "qname" else sig[j].text]
                j += 1
                while (
                    j + 1 < len(sig)
                    and sig[j].text == "."
                    and sig[j + 1].kind
                    in (
                        "word",
                        "qname",
                    )
                ):
                    parts.append(sig[j + 1].name if sig[j + 1].kind == "qname" else sig[j + 1].text)
                    j += 2
                table = ".".join(parts)
                alias = table
                if j < len(sig) and sig[j].upper == "AS":
                    j += 1
                if (
                    j < len(sig)
                    and sig[j].kind in ("word", "qname")
                    and sig[j].upper not in grammar_keywords()
                ):
                    alias = sig[j].name
                found[alias.lower()] = table
                found.setdefault(table.lower(), table)
                found.setdefault(parts[-1].lower(), table)
                i = j
                continue
        i += 1
    return {k: v for k, v in found.items() if meta.has_table(v)}


def _in_from_list(sig: Sequence[Token], i: int) -> bool:
    """Whether the comma at ``sig[i]`` separates FROM items (the last clause keyword before
    it, at the same parenthesis depth, is FROM)."""
    depth = 0
    for t in reversed(sig[:i]):
        if t.text == ")":
            depth += 1
        elif t.text == "(":
            if depth == 0:
                return False
            depth -= 1
        elif depth == 0 and t.upper in ("FROM", "JOIN"):
            return True
        elif depth == 0 and t.upper in ("SELECT", "WHERE", "ON", "BY", "HAVING", "SET"):
            return False
    return False


def _statement_start_suggestions(prefix: str, meta: Metadata, first: bool) -> list[Suggestion]:
    cands: list[_Cand] = []
    if first:
        cands.extend((m, m, "meta", "meta-command") for m in meta.meta_commands)
    for phrase in statement_openers():
        text = _kw_case(phrase, prefix)
        cands.append((phrase, text, "statement", None))
    return _to_suggestions(_match(prefix, cands), len(prefix))


def _to_suggestions(
    ranked: Sequence[tuple[int, int, str, str, str, str | None]], start: int
) -> list[Suggestion]:
    seen: set[str] = set()
    out = []
    for _tier, _i, match_text, insert, kind, meta in ranked:
        if insert in seen:
            continue
        seen.add(insert)
        display = match_text if match_text != insert else None
        out.append(Suggestion(insert, -start, kind, display, meta))
    return out


def _column_meta(c: ColumnMeta) -> str:
    if c.tagger:
        return f"{c.type}  tag:{c.tagger}"
    return c.type


def _path_suggestions(
    prefix: str, cwd: str | os.PathLike[str] | None, suffixes: tuple[str, ...] | None
) -> list[Suggestion]:
    """Entries of the directory ``prefix`` names (relative to ``cwd``), whose names start with
    its last part. ``suffixes``: files kept (None: all; empty: directories only)."""
    expanded = os.path.expanduser(prefix)
    head, base = os.path.split(expanded)
    directory = Path(head or ".")
    if not directory.is_absolute() and cwd is not None:
        directory = Path(cwd) / directory
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    show_hidden = base.startswith(".")
    for entry in entries:
        name = entry.name
        if name.startswith(".") and not show_hidden:
            continue
        if not name.lower().startswith(base.lower()):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir:
            out.append(Suggestion(name + "/", -len(base), "path", None, "directory"))
        elif suffixes is None or (suffixes and name.lower().endswith(suffixes)):
            out.append(Suggestion(name, -len(base), "path", None, "file"))
    return out


def _meta_command_suggestions(
    line: str, meta: Metadata, cwd: str | os.PathLike[str] | None
) -> list[Suggestion]:
    command, sep, arg = line.partition(" ")
    cands: list[_Cand]
    if not sep:
        cands = [(m, m, "meta", "meta-command") for m in meta.meta_commands]
        return _to_suggestions(_match(command, cands), len(command))
    arg = arg.lstrip()
    command = command.lower()
    if command == ".explain" and " " in arg.strip():
        return complete(arg, None, meta, cwd=cwd)
    if command == ".explain":
        cands = [(o, o, "option", None) for o in _META_OPTIONS[command]]
        return _to_suggestions(_match(arg, cands), len(arg)) + complete(arg, None, meta, cwd=cwd)
    if command in _META_OPTIONS:
        cands = [(o, o, "option", None) for o in _META_OPTIONS[command]]
        return _to_suggestions(_match(arg, cands), len(arg))
    if command == ".schema":
        cands = [(t, t, "table", "table") for t in meta.tables]
        return _to_suggestions(_match(arg, cands), len(arg))
    if command in _META_PATHS:
        return _path_suggestions(arg, cwd, _META_PATHS[command])
    return []


def _string_context(sig: Sequence[Token], i: int) -> tuple[str, str | None, str | None]:
    """What the string token ``sig[i]`` is: ("path", None, None), ("value", table-or-None,
    column) or ("", None, None)."""
    j = i - 1
    # walk back over `'a', 'b', (` of an IN / TAGGED list
    while j >= 0 and (sig[j].kind == "string" or sig[j].text == ","):
        j -= 1
    in_list = j >= 0 and sig[j].text == "("
    if in_list:
        j -= 1
    if j < 0:
        return "", None, None
    prev = sig[j]
    if prev.upper in _PATH_AFTER and not in_list:
        return "path", None, None
    if prev.upper in ("FROM", "TO") and not in_list:
        head = [t.upper for t in sig[: j + 1]]
        if "PREDICTIONS" in head or (head and head[0] == "COPY"):
            return "path", None, None
        return "", None, None
    if prev.upper in ("ALL", "ANY") and j >= 1 and sig[j - 1].upper == "TAGGED":
        j -= 1
        prev = sig[j]
    if prev.upper == "TAGGED":
        k = j - 1
        if k >= 0 and sig[k].upper == "NOT":
            k -= 1
        if k >= 0 and sig[k].kind in ("word", "qname") and sig[k].upper not in _RESERVED:
            return "value", _qualifier(sig, k), sig[k].name
        return "value", None, "labels"
    if (in_list and prev.upper == "IN") or prev.text in ("=", "!=", "<>", "==", "LIKE"):
        k = j - 1
        if in_list and k >= 0 and sig[k].upper == "NOT":
            k -= 1
        if k >= 0 and sig[k].kind in ("word", "qname") and sig[k].upper not in _RESERVED:
            return "value", _qualifier(sig, k), sig[k].name
    return "", None, None


def _qualifier(sig: Sequence[Token], k: int) -> str | None:
    if k >= 2 and sig[k - 1].text == "." and sig[k - 2].kind in ("word", "qname"):
        return sig[k - 2].name
    return None


def complete(
    text: str,
    cursor: int | None,
    meta: Metadata,
    *,
    cwd: str | os.PathLike[str] | None = None,
) -> list[Suggestion]:
    """Suggestions for the cursor position ``cursor`` (default: the end) of ``text``.

    Pure: reads nothing but ``meta`` (and the file system for path completion inside
    ``NEAR IMAGE '...'`` and after ``.read``/``.open``/``.output``, relative to ``cwd``).
    """
    cands: list[_Cand]
    if cursor is None:
        cursor = len(text)
    before = text[:cursor]
    # meta-commands: a line of its own starting with "."
    stripped = before.lstrip()
    if stripped.startswith(".") and "\n" not in stripped:
        return _meta_command_suggestions(stripped, meta, cwd)

    ranges = split_statements(text)
    stmt_start, stmt_end = next(((s, e) for s, e in ranges if s <= cursor <= e), ranges[-1])
    stmt_before = text[stmt_start:cursor]
    tokens = tokenize(stmt_before)
    if (
        tokens
        and tokens[-1].kind in ("comment", "ucomment")
        and not (tokens[-1].kind == "comment" and tokens[-1].text.startswith("/*"))
    ):
        return []
    if tokens and tokens[-1].kind == "ucomment":
        return []
    sig = _significant(tokens)

    # inside a string literal
    if sig and sig[-1].kind == "ustring" and tokens[-1] is sig[-1]:
        what, table, column = _string_context(sig, len(sig) - 1)
        raw = sig[-1].text[sig[-1].text.index("'") + 1 :]
        body = raw.replace("''", "'")
        if what == "path":
            return _path_suggestions(body, cwd, IMAGE_SUFFIXES if _near_image(sig) else None)
        if what == "value" and column is not None:
            if table is not None:
                aliases = _tables_of_statement(
                    _significant(tokenize(text[stmt_start:stmt_end])), meta
                )
                table = aliases.get(table.lower(), table)
            else:
                aliases = _tables_of_statement(
                    _significant(tokenize(text[stmt_start:stmt_end])), meta
                )
                tables = list(dict.fromkeys(aliases.values()))
                table = tables[0] if len(tables) == 1 else None
            values = meta.values_of(table, column)
            cands = [(v, _quote_string(v) + "'", "value", column) for v in values]
            return _to_suggestions(_match(body, cands), len(raw))
        return []

    # the word being typed
    word = ""
    if tokens and tokens[-1].kind in ("word", "uqname", "qname", "number"):
        word = tokens[-1].text
        if tokens[-1].kind == "number":
            return []
        sig = sig[:-1]
    qualifier: str | None = None
    if len(sig) >= 2 and sig[-1].text == "." and sig[-2].kind in ("word", "qname"):
        qualifier = sig[-2].name
        sig = sig[:-2]
    prefix = word.lstrip('"')
    prev = sig[-1] if sig else None
    first_word = sig[0].upper if sig else ""

    if prev is None:
        first = not text[:stmt_start].strip()
        return _statement_start_suggestions(prefix, meta, first)

    full_stmt = _significant(tokenize(text[stmt_start:stmt_end]))
    aliases = _tables_of_statement(full_stmt, meta)

    if qualifier is not None:
        table = aliases.get(qualifier.lower()) or (qualifier if meta.has_table(qualifier) else None)
        if table is None:
            return []
        cands = [
            (c.name, _quote_ident(c.name), "column", _column_meta(c))
            for c in meta.columns_of(table)
        ]
        return _to_suggestions(_match(prefix, cands), len(word))

    up = prev.upper
    cands = []
    # the next words of a statement that starts with several keywords (CREATE POPULATION)
    if all(t.kind == "word" for t in sig) and len(sig) < 4:
        typed = " ".join(t.upper for t in sig) + " "
        for phrase in statement_openers():
            if phrase.startswith(typed) and len(phrase) > len(typed):
                rest = phrase[len(typed) :]
                cands.append((rest, _kw_case(rest, prefix), "statement", None))
    statement_phrase = " ".join(t.upper for t in sig[:3])
    if (
        up == "POPULATION"
        or (up == "OF" and len(sig) >= 2 and sig[-2].upper == "PERCENT")
        or (
            (up == "ON" or prev.text == ",")
            and first_word in ("EVALUATE", "COMPARE", "EXPECT")
            and _after_on(sig)
        )
    ):
        cands += [(p, _quote_ident(p), "population", "population") for p in meta.populations]
    elif up in ("MODEL", "EVALUATE", "COMPARE") or (up == "WITH" and first_word == "COMPARE"):
        cands += [(m, _quote_ident(m), "model", "model") for m in meta.models]
    elif up == "USING" and _similarity_using(sig):
        cands += [(e, _quote_ident(e), "embedder", "embedder") for e in meta.embedders]
    elif (
        up in _TABLE_AFTER and not statement_phrase.startswith(("CREATE", "DROP POPULATION"))
    ) or (up in _TABLE_AFTER and first_word == "DROP"):
        cands += [(t, _quote_ident(t), "table", "table") for t in meta.tables]
        if up in ("FROM", "JOIN"):  # populations are queried like tables
            cands += [(p, _quote_ident(p), "population", "population") for p in meta.populations]
    elif up in _EXPR_AFTER or prev.text in _EXPR_OPS or (prev.kind == "op"):
        cands += _expression_candidates(aliases, meta, prefix)
    else:
        cands += [(k, _kw_case(k, prefix), "clause", None) for k in _CLAUSE_KEYWORDS]
        cands.extend(_expression_candidates(aliases, meta, prefix))
    return _to_suggestions(_match(prefix, cands), len(word))


def _after_on(sig: Sequence[Token]) -> bool:
    """In EVALUATE/COMPARE/EXPECT: whether the cursor is in the list after ON."""
    for t in reversed(sig):
        if t.upper == "ON":
            return True
        if t.kind in ("word", "qname") or t.text == ",":
            continue
        return False
    return False


def _near_image(sig: Sequence[Token]) -> bool:
    return len(sig) >= 2 and sig[-2].upper == "IMAGE"


def _similarity_using(sig: Sequence[Token]) -> bool:
    """USING in a similarity search (``... SIMILAR TO 'x' [THRESHOLD n] USING emb``,
    ``NEAR IMAGE 'x' USING``, ``SIMILARITY(image, 'x' USING``), not a join's USING (...)."""
    if len(sig) < 2:
        return False
    before = sig[-2]
    if before.kind in ("string", "number"):
        return True
    return any(t.upper in ("SIMILAR", "NEAR", "SIMILARITY") for t in sig[-6:])


def _expression_candidates(
    aliases: dict[str, str], meta: Metadata, prefix: str
) -> list[_Cand]:
    tables = list(dict.fromkeys(aliases.values()))
    cands: list[_Cand] = []
    cols: list[tuple[str, ColumnMeta]] = []
    for table in tables:
        cols.extend((table, c) for c in meta.columns_of(table))

    def tag_first(tc: tuple[str, ColumnMeta]) -> bool:
        return not (tc[1].is_tag or meta.tag_values.get((tc[0].lower(), tc[1].name.lower())))

    for _, c in sorted(cols, key=tag_first):
        cands.append((c.name, _quote_ident(c.name), "column", _column_meta(c)))
    if not tables:
        for table, tcols in meta.tables.items():
            for c in tcols:
                cands.append((c.name, _quote_ident(c.name), "column", f"{table}.{c.name}"))
    for p in _POPQL_EXPR:
        cands.append((p, _kw_case(p, prefix), "keyword", "PopQL"))
    for f in meta.functions:
        cands.append((f, f, "function", "function"))
    for k in _KEYWORDS_SORTED:
        cands.append((k, _kw_case(k, prefix), "keyword", None))
    return cands


_KEYWORDS_SORTED: tuple[str, ...] = tuple(sorted(grammar_keywords()))


# ---------------------------------------------------------------------------------------------
# prompt_toolkit adapter
# ---------------------------------------------------------------------------------------------


class PopQLCompleter(Completer):
    """A prompt_toolkit completer over :func:`complete`; ``metadata`` is a callable returning
    the current :class:`Metadata` (the shell refreshes it after each statement)."""

    def __init__(
        self,
        metadata: Callable[[], Metadata],
        cwd: Callable[[], str | os.PathLike[str] | None] = lambda: None,
    ) -> None:
        self._metadata = metadata
        self._cwd = cwd

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        before = document.text_before_cursor
        if not complete_event.completion_requested and (not before or before[-1] in " \t\n;,()"):
            return  # while typing, the menu opens on a word (or in a string), not on spaces
        for s in complete(
            document.text, document.cursor_position, self._metadata(), cwd=self._cwd()
        ):
            yield Completion(
                s.text,
                start_position=s.start,
                display=s.display or s.text,
                display_meta=s.meta or "",
            )
