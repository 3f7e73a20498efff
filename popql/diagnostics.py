"""Diagnostics: errors are data.

Every stage of PopQL (parsing, checking, lowering, execution, I/O) reports problems as
:class:`Diagnostic` values -- a stable code, a message, an optional source :class:`Span` and
hints -- raised together inside a :class:`PopQLError`. This module renders them for people
(:func:`render`, rustc/PRQL style) and for programs (:meth:`Diagnostic.to_dict`,
:func:`to_json`).

This module is pure standard library: it must stay importable without lark, DataFusion or
torch.

Conventions for :class:`Span`:

* ``start``/``end`` are 0-based character offsets into the source text, ``end`` exclusive;
* ``line``/``column`` are 1-based and give the position of ``start``;
* ``end_line``/``end_column`` are 1-based and give the position of ``end``, i.e. the column
  just past the last character of the span (the same convention as lark's ``end_column``).

Columns count characters (a tab is one column); the renderer expands tabs itself.
"""

from __future__ import annotations

import difflib
import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "CODES",
    "SEVERITIES",
    "Diagnostic",
    "PopQLError",
    "Span",
    "did_you_mean",
    "did_you_mean_hint",
    "from_json",
    "internal_error",
    "join_or",
    "render",
    "title",
    "to_json",
]

# ---------------------------------------------------------------------------------------------
# Code registry
# ---------------------------------------------------------------------------------------------

#: Stable diagnostic codes and their one-line titles. Codes are never renumbered or reused;
#: docs/errors.md documents each one (example and what to do). The letter gives the stage:
#: P parse, N names, T types, X not available, E execution, F files, D datasets, M models,
#: S similarity search, V evaluation, R the interactive shell, I internal.
CODES: dict[str, str] = {
    # -- syntax (popql.syntax, popql.syntax_errors) --
    "P001": "unexpected token",
    "P002": "unexpected end of input",
    "P003": "unterminated string literal",
    "P004": "invalid character",
    "P005": "unterminated quoted identifier",
    "P006": "unterminated block comment",
    "P007": "invalid literal",
    "P008": "reserved word used as a name",
    # -- names (popql.check) --
    "N001": "unknown table",
    "N002": "unknown column",
    "N003": "unknown function",
    "N004": "unknown population",
    "N005": "ambiguous column",
    "N006": "duplicate name",
    "N007": "unknown parameter",
    "N008": "unknown tagger",
    # -- types (popql.check) --
    "T001": "type mismatch",
    "T002": "image extension used on a non-image column",
    "T003": "tag predicate on a column of the wrong type",
    "T004": "wrong number of arguments",
    "T005": "invalid argument value",
    # -- not available / not supported --
    "X001": "not available yet",
    "X002": "not supported",
    # -- execution (popql.engine) --
    "E001": "engine error",
    "E002": "query interrupted",
    "E003": "extension function failed",
    # -- files and data sources --
    "F001": "file not found or unreadable",
    "F002": "unsupported data format",
    "F003": "invalid data in file",
    "F004": "cannot write file",
    # -- datasets: versioned storage (popql.engine.dataset) --
    "D001": "invalid dataset manifest",
    "D002": "invalid dataset snapshot",
    "D003": "dataset file missing",
    "D004": "invalid dataset file",
    "D005": "duplicate sample id",
    "D006": "unknown dataset version",
    "D007": "dataset locked by another writer",
    "D008": "invalid dataset change",
    "D009": "leftover dataset file",
    # -- models: embedders (popql.engine.embedders) --
    "M001": "model weights unavailable",
    "M002": "unknown model",
    "M003": "model does not load",
    "M004": "model packages not installed",
    "M005": "population written for another embedder",
    # -- similarity search (popql.engine.lower_similarity, popql.engine.similarity) --
    "S001": "similarity search without a membership",
    "S002": "no embeddings to search",
    "S003": "invalid search example",
    "S004": "embedder does not match the stored vectors",
    # -- evaluation: predictions, metrics, tests (popql.engine.predictions/evaluate/testing) --
    "V001": "invalid predictions",
    "V002": "unknown metric",
    "V003": "cannot evaluate",
    # -- the interactive shell (popql.repl) --
    "R001": "invalid shell command",
    # -- bugs --
    "I001": "internal error",
}

#: Allowed values of :attr:`Diagnostic.severity`, most severe first.
SEVERITIES: tuple[str, ...] = ("error", "warning", "note")


def title(code: str) -> str:
    """The registered one-line title of ``code`` (``"unknown code"`` when unregistered)."""
    return CODES.get(code, "unknown code")


# ---------------------------------------------------------------------------------------------
# Spans
# ---------------------------------------------------------------------------------------------


def _line_col(source: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of a 0-based character offset (clamped to the source)."""
    offset = max(0, min(offset, len(source)))
    line = source.count("\n", 0, offset) + 1
    column = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return line, column


@dataclass(frozen=True)
class Span:
    """A region of source text. See the module docstring for the conventions."""

    start: int
    end: int
    line: int
    column: int
    end_line: int
    end_column: int

    @classmethod
    def from_offsets(cls, source: str, start: int, end: int | None = None) -> Span:
        """Build a span from character offsets, computing lines and columns.

        Offsets are clamped into ``[0, len(source)]``; ``end`` defaults to ``start`` (an empty
        span, rendered as a single caret) and is never before ``start``.
        """
        n = len(source)
        start = max(0, min(start, n))
        end = start if end is None else max(start, min(end, n))
        line, column = _line_col(source, start)
        end_line, end_column = _line_col(source, end)
        return cls(start, end, line, column, end_line, end_column)

    @classmethod
    def from_meta(cls, obj: Any) -> Span | None:
        """Span of anything carrying lark-style positions (a ``lark.Token`` or ``Tree.meta``).

        Duck-typed (reads ``start_pos``, ``end_pos``, ``line``, ``column``, ``end_line``,
        ``end_column``) so this module does not import lark. Returns None when the object has
        no positions (e.g. an empty ``Meta``).
        """
        try:
            start = obj.start_pos
            end = obj.end_pos
            line = obj.line
            column = obj.column
            end_line = getattr(obj, "end_line", None)
            end_column = getattr(obj, "end_column", None)
        except AttributeError:
            return None
        if not all(isinstance(v, int) for v in (start, end, line, column)):
            return None
        if not isinstance(end_line, int) or not isinstance(end_column, int):
            end_line, end_column = line, column + (end - start)
        return cls(start, end, line, column, end_line, end_column)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Span:
        return cls(
            int(data["start"]),
            int(data["end"]),
            int(data["line"]),
            int(data["column"]),
            int(data["end_line"]),
            int(data["end_column"]),
        )

    def merge(self, other: Span) -> Span:
        """The smallest span covering both ``self`` and ``other``."""
        first = self if (self.start, self.line) <= (other.start, other.line) else other
        last = self if (self.end, self.end_line) >= (other.end, other.end_line) else other
        return Span(first.start, last.end, first.line, first.column, last.end_line, last.end_column)

    def shifted(self, offset_chars: int, source: str) -> Span:
        """This span moved by ``offset_chars`` into ``source`` (lines/columns recomputed)."""
        return Span.from_offsets(source, self.start + offset_chars, self.end + offset_chars)

    def to_dict(self) -> dict[str, int]:
        return {
            "start": self.start,
            "end": self.end,
            "line": self.line,
            "column": self.column,
            "end_line": self.end_line,
            "end_column": self.end_column,
        }

    @property
    def length(self) -> int:
        """Number of characters covered (0 for a point such as the end of input)."""
        return self.end - self.start


# ---------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Diagnostic:
    """One problem: a stable ``code`` (see :data:`CODES`), a message, where, and what to do."""

    code: str
    message: str
    span: Span | None = None
    hints: tuple[str, ...] = field(default=())
    severity: str = "error"
    file: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.hints, str):
            object.__setattr__(self, "hints", (self.hints,))
        elif not isinstance(self.hints, tuple):
            object.__setattr__(self, "hints", tuple(self.hints))
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"unknown severity {self.severity!r}; expected one of {', '.join(SEVERITIES)}"
            )

    @property
    def title(self) -> str:
        """The registered title of :attr:`code`."""
        return title(self.code)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: code, severity, message, hints, file, span (or None)."""
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "hints": list(self.hints),
            "file": self.file,
            "span": None if self.span is None else self.span.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Diagnostic:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        span = data.get("span")
        return cls(
            code=str(data["code"]),
            message=str(data["message"]),
            span=None if span is None else Span.from_dict(span),
            hints=tuple(str(h) for h in data.get("hints") or ()),
            severity=str(data.get("severity", "error")),
            file=data.get("file"),
        )

    def with_file(self, file: str | None) -> Diagnostic:
        return replace(self, file=file)

    def with_span(self, span: Span | None) -> Diagnostic:
        return replace(self, span=span)

    def with_hints(self, *hints: str) -> Diagnostic:
        """A copy with ``hints`` appended."""
        return replace(self, hints=self.hints + tuple(hints))

    def shifted(self, offset_chars: int, source: str) -> Diagnostic:
        """Relocate the span by ``offset_chars`` into ``source`` (the whole file's text).

        Use this when a statement was parsed or checked on its own and its diagnostics must
        point into the file it came from. Diagnostics without a span are returned unchanged.
        """
        if self.span is None:
            return self
        return replace(self, span=self.span.shifted(offset_chars, source))


def internal_error(
    exc: BaseException,
    statement: str | None = None,
    span: Span | None = None,
    file: str | None = None,
) -> Diagnostic:
    """An ``I001`` diagnostic for an unexpected exception (a bug), quoting the statement."""
    hints = ["this is a bug in PopQL; please report it together with the statement below"]
    if statement is not None:
        hints.append(f"statement: {statement.strip()}")
    detail = str(exc).strip().splitlines()
    message = f"internal error: {type(exc).__name__}"
    if detail:
        message += f": {detail[0]}"
    return Diagnostic("I001", message, span=span, hints=tuple(hints), file=file)


class PopQLError(Exception):
    """An exception carrying one or more diagnostics.

    ``str(err)`` is the rendered text (no colour); ``err.diagnostics`` is the data.
    """

    diagnostics: tuple[Diagnostic, ...]
    source: str | None
    file: str | None

    def __init__(
        self,
        diagnostics: Diagnostic | Iterable[Diagnostic],
        source: str | None = None,
        file: str | None = None,
    ) -> None:
        if isinstance(diagnostics, Diagnostic):
            diags: tuple[Diagnostic, ...] = (diagnostics,)
        else:
            diags = tuple(diagnostics)
        if not diags:
            raise ValueError("PopQLError needs at least one diagnostic")
        self.diagnostics = diags
        self.source = source
        self.file = file
        super().__init__(diags[0].message)

    @property
    def diagnostic(self) -> Diagnostic:
        """The first (primary) diagnostic."""
        return self.diagnostics[0]

    @property
    def code(self) -> str:
        """The code of the first diagnostic."""
        return self.diagnostics[0].code

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(d.code for d in self.diagnostics)

    def render(self, color: bool = False) -> str:
        return render(self.diagnostics, self.source, self.file, color=color)

    def to_json(self, indent: int | None = None) -> str:
        return to_json(self.diagnostics, indent=indent)

    def with_context(
        self, source: str | None, file: str | None = None, offset: int = 0
    ) -> PopQLError:
        """A copy that renders against ``source``/``file``; spans are moved by ``offset``.

        For a statement that was processed alone and sits at character ``offset`` of a file.
        """
        diags = self.diagnostics
        if offset and source is not None:
            diags = tuple(d.shifted(offset, source) for d in diags)
        return PopQLError(diags, source=source, file=file if file is not None else self.file)

    def __str__(self) -> str:
        return self.render(color=False)

    def __repr__(self) -> str:
        d = self.diagnostics[0]
        more = f" (+{len(self.diagnostics) - 1} more)" if len(self.diagnostics) > 1 else ""
        return f"PopQLError({d.code}: {d.message!r}{more})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.diagnostics, self.source, self.file))


# ---------------------------------------------------------------------------------------------
# Suggestions
# ---------------------------------------------------------------------------------------------


def _last_part(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` candidates close to ``name``, best first.

    Matching is case-insensitive. Candidates equal to ``name`` except for case come first,
    then those whose last dotted part equals ``name``'s last part (``t.x`` vs ``u.x``), then
    :mod:`difflib` matches (ratio >= 0.6) on the last parts, so qualified names
    (``table.column``) are compared by their column part. A candidate identical to ``name``
    is never suggested.
    """
    if n <= 0:
        return []
    lname = name.lower()
    llast = _last_part(lname)
    seen: set[str] = set()
    scored: list[tuple[int, float, float, int, str]] = []
    for index, cand in enumerate(candidates):
        if cand in seen or cand == name:
            continue
        seen.add(cand)
        lcand = cand.lower()
        clast = _last_part(lcand)
        full = difflib.SequenceMatcher(None, lname, lcand).ratio()
        if lcand == lname:
            tier, score = 0, 1.0
        elif clast == llast:
            tier, score = 1, 1.0
        else:
            score = difflib.SequenceMatcher(None, llast, clast).ratio()
            if score < 0.6:
                continue
            tier = 2
        scored.append((tier, -score, -full, index, cand))
    scored.sort()
    return [entry[-1] for entry in scored[:n]]


def join_or(items: Sequence[str], conjunction: str = "or") -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    items = list(items)
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def did_you_mean_hint(
    name: str, candidates: Iterable[str], n: int = 3, quote: str = "'"
) -> str | None:
    """``"did you mean 'x'?"`` (or ``'x', 'y' or 'z'``), None when nothing is close."""
    found = did_you_mean(name, candidates, n)
    if not found:
        return None
    return f"did you mean {join_or([f'{quote}{c}{quote}' for c in found])}?"


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

_RESET = "\x1b[0m"
_BOLD = "\x1b[1m"
_SEVERITY_COLOR = {
    "error": "\x1b[1;31m",
    "warning": "\x1b[1;33m",
    "note": "\x1b[1;36m",
}
_GUTTER_COLOR = "\x1b[1;34m"
_HINT_COLOR = "\x1b[1;36m"

_TAB_WIDTH = 4
_MAX_LINE_WIDTH = 120
_CONTEXT_BEFORE = 40


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    if unicodedata.east_asian_width(ch) in ("W", "F"):
        return 2
    return 1


def _width(text: str) -> int:
    return sum(_char_width(ch) for ch in text)


def _snippet(source: str, span: Span) -> tuple[int, str, int, int] | None:
    """(line number, displayed line, caret column, caret width) for the first line of span."""
    n = len(source)
    if not 0 <= span.start <= n:
        return None
    start = span.start
    end = max(start, min(span.end, n))
    line_start = source.rfind("\n", 0, start) + 1
    line_end = source.find("\n", start)
    if line_end == -1:
        line_end = n
    text = source[line_start:line_end]
    if text.endswith("\r"):
        text = text[:-1]
    line_no = source.count("\n", 0, line_start) + 1

    col0 = start - line_start  # 0-based character column of the start
    end0 = min(end, line_end) - line_start  # the caret stops at the end of the first line
    prefix = text[:col0].expandtabs(_TAB_WIDTH)
    covered = text[:end0].expandtabs(_TAB_WIDTH)
    shown = text.expandtabs(_TAB_WIDTH)
    a, b = len(prefix), len(covered)  # indices into the tab-expanded line

    # Window very long lines around the start of the span.
    lo, hi = 0, len(shown)
    if _width(shown) > _MAX_LINE_WIDTH:
        lo = max(0, a - _CONTEXT_BEFORE)
        hi = min(len(shown), lo + _MAX_LINE_WIDTH)
        b = min(b, hi)
    left = "..." if lo > 0 else ""
    right = "..." if hi < len(shown) else ""
    displayed = (left + shown[lo:hi] + right).rstrip()
    caret_col = len(left) + _width(shown[lo:a])
    caret_width = max(1, _width(shown[a:b]))
    return line_no, displayed, caret_col, caret_width


def _render_one(diag: Diagnostic, source: str | None, default_file: str | None, color: bool) -> str:
    def paint(text: str, style: str) -> str:
        return f"{style}{text}{_RESET}" if color and text else text

    sev_style = _SEVERITY_COLOR.get(diag.severity, _SEVERITY_COLOR["error"])
    label = f"{diag.severity}[{diag.code}]" if diag.code else diag.severity
    lines = [paint(label, sev_style) + paint(f": {diag.message}", _BOLD)]

    file = diag.file or default_file
    # Only show source text that belongs to the file the diagnostic is about.
    same_source = source is not None and (
        diag.file is None or default_file is None or diag.file == default_file
    )
    snippet = (
        _snippet(source, diag.span)
        if same_source and source is not None and diag.span is not None
        else None
    )
    width = len(str(snippet[0])) if snippet is not None else 1
    pad = " " * width

    if diag.span is not None:
        where = f"{file or '<input>'}:{diag.span.line}:{diag.span.column}"
        lines.append(f"{pad}{paint('-->', _GUTTER_COLOR)} {where}")
    elif diag.file is not None:
        lines.append(f"{pad}{paint('-->', _GUTTER_COLOR)} {diag.file}")

    if snippet is not None:
        line_no, text, caret_col, caret_width = snippet
        bar = paint("|", _GUTTER_COLOR)
        lines.append(f"{pad} {bar}")
        number = paint(str(line_no).rjust(width), _GUTTER_COLOR)
        lines.append(f"{number} {bar} {text}".rstrip())
        carets = paint("^" * caret_width, sev_style)
        lines.append(f"{pad} {bar} {' ' * caret_col}{carets}")

    for hint in diag.hints:
        lines.append(f"{pad} {paint('= hint:', _HINT_COLOR)} {hint}")
    return "\n".join(lines)


def render(
    diagnostics: Diagnostic | Iterable[Diagnostic],
    source: str | None,
    file: str | None = None,
    color: bool = False,
) -> str:
    """Human-readable text for ``diagnostics`` (rustc/PRQL style), blank-line separated.

    ``source`` is the text the spans point into (None: no snippets); ``file`` names it in the
    ``-->`` line (``<input>`` when None). A diagnostic with its own ``file`` that differs from
    ``file`` is shown without a snippet. ANSI colour only when ``color`` is true. No trailing
    newline.
    """
    if isinstance(diagnostics, Diagnostic):
        diagnostics = (diagnostics,)
    return "\n\n".join(_render_one(d, source, file, color) for d in diagnostics)


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------


def to_json(diagnostics: Diagnostic | Iterable[Diagnostic], indent: int | None = None) -> str:
    """A JSON list of :meth:`Diagnostic.to_dict` objects."""
    if isinstance(diagnostics, Diagnostic):
        diagnostics = (diagnostics,)
    return json.dumps([d.to_dict() for d in diagnostics], indent=indent, ensure_ascii=False)


def from_json(text: str) -> list[Diagnostic]:
    """Inverse of :func:`to_json` (also accepts a single JSON object)."""
    data = json.loads(text)
    if isinstance(data, dict):
        data = [data]
    return [Diagnostic.from_dict(item) for item in data]
