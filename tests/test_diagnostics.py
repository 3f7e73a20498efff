"""Tests for popql.diagnostics (spans, rendering, JSON, suggestions) and popql.syntax_errors."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import lark
import pytest

from popql.diagnostics import (
    CODES,
    Diagnostic,
    PopQLError,
    Span,
    did_you_mean,
    did_you_mean_hint,
    from_json,
    internal_error,
    join_or,
    render,
    title,
    to_json,
)
from popql.syntax_errors import describe_expected, describe_terminal, from_lark, to_error

ROOT = Path(__file__).resolve().parents[1]


def span_of(source: str, needle: str, occurrence: int = 0) -> Span:
    start = -1
    for _ in range(occurrence + 1):
        start = source.index(needle, start + 1)
    return Span.from_offsets(source, start, start + len(needle))


# ---------------------------------------------------------------------------------------------
# Span
# ---------------------------------------------------------------------------------------------


class TestSpan:
    def test_single_line(self) -> None:
        assert Span.from_offsets("SELECT a", 7, 8) == Span(7, 8, 1, 8, 1, 9)

    def test_multi_line(self) -> None:
        src = "SELECT a\nFROM t\nWHERE x"
        s = span_of(src, "t\nWHERE")
        assert (s.start, s.end) == (14, 21)
        assert (s.line, s.column, s.end_line, s.end_column) == (2, 6, 3, 6)

    def test_start_of_line_and_newline(self) -> None:
        src = "ab\ncd"
        assert Span.from_offsets(src, 3, 4) == Span(3, 4, 2, 1, 2, 2)
        # the newline itself belongs to the line it ends
        assert Span.from_offsets(src, 2, 3) == Span(2, 3, 1, 3, 2, 1)

    def test_end_of_input(self) -> None:
        src = "SELECT a,"
        assert Span.from_offsets(src, 9, 9) == Span(9, 9, 1, 10, 1, 10)
        src2 = "SELECT a\n"
        assert Span.from_offsets(src2, 9) == Span(9, 9, 2, 1, 2, 1)

    def test_clamped_and_ordered(self) -> None:
        assert Span.from_offsets("abc", -5, 99) == Span(0, 3, 1, 1, 1, 4)
        assert Span.from_offsets("abc", 2, 1) == Span(2, 2, 1, 3, 1, 3)
        assert Span.from_offsets("", 0, 0) == Span(0, 0, 1, 1, 1, 1)

    def test_tabs_count_as_one_column(self) -> None:
        assert Span.from_offsets("\tx", 1, 2).column == 2

    def test_merge(self) -> None:
        src = "SELECT a +\n  b FROM t"
        a, b = span_of(src, "a"), span_of(src, "b")
        merged = a.merge(b)
        assert merged == Span(7, 14, 1, 8, 2, 4)
        assert b.merge(a) == merged
        assert a.merge(a) == a
        assert merged.length == 7
        assert Span.from_offsets(src, 3, 3).length == 0

    def test_shifted(self) -> None:
        file_text = "SELECT 1;\nSELECT bad FROM t;"
        stmt_start = file_text.index("SELECT bad")
        stmt = file_text[stmt_start:]
        local = span_of(stmt, "bad")
        assert local.line == 1
        moved = local.shifted(stmt_start, file_text)
        assert moved == span_of(file_text, "bad")
        assert (moved.line, moved.column) == (2, 8)

    def test_from_meta(self) -> None:
        parser = lark.Lark("start: NAME\nNAME: /\\w+/", parser="lalr", propagate_positions=True)
        tree = parser.parse("hello")
        token = tree.children[0]
        assert Span.from_meta(token) == Span(0, 5, 1, 1, 1, 6)
        assert Span.from_meta(tree.meta) == Span(0, 5, 1, 1, 1, 6)
        assert Span.from_meta(lark.tree.Meta()) is None
        assert Span.from_meta(object()) is None

    def test_dict_round_trip(self) -> None:
        s = Span(1, 2, 3, 4, 5, 6)
        assert s.to_dict() == {
            "start": 1,
            "end": 2,
            "line": 3,
            "column": 4,
            "end_line": 5,
            "end_column": 6,
        }
        assert Span.from_dict(s.to_dict()) == s


# ---------------------------------------------------------------------------------------------
# Diagnostic / PopQLError / JSON
# ---------------------------------------------------------------------------------------------


class TestDiagnostic:
    def test_defaults_and_hints_tuple(self) -> None:
        d = Diagnostic("N002", "unknown column 'x'", hints=["a", "b"])  # type: ignore[arg-type]
        assert d.hints == ("a", "b")
        assert d.severity == "error"
        assert d.span is None and d.file is None
        assert d.title == "unknown column"
        assert hash(d) == hash(Diagnostic("N002", "unknown column 'x'", hints=("a", "b")))

    def test_single_string_hint(self) -> None:
        assert Diagnostic("N002", "m", hints="one").hints == ("one",)  # type: ignore[arg-type]

    def test_bad_severity(self) -> None:
        with pytest.raises(ValueError, match="severity"):
            Diagnostic("N002", "m", severity="fatal")

    def test_frozen(self) -> None:
        d = Diagnostic("N002", "m")
        with pytest.raises(AttributeError):
            d.code = "N001"  # type: ignore[misc]

    def test_to_dict(self) -> None:
        src = "SELECT x"
        d = Diagnostic("N002", "unknown column 'x'", span_of(src, "x"), ("h",), file="q.popql")
        assert d.to_dict() == {
            "code": "N002",
            "severity": "error",
            "message": "unknown column 'x'",
            "hints": ["h"],
            "file": "q.popql",
            "span": {"start": 7, "end": 8, "line": 1, "column": 8, "end_line": 1, "end_column": 9},
        }
        assert Diagnostic("I001", "bug").to_dict()["span"] is None

    def test_json_round_trip(self) -> None:
        src = "SELECT brightnes\nFROM t"
        diags = [
            Diagnostic("N002", "unknown column 'brightnes'", span_of(src, "brightnes"), ("h",)),
            Diagnostic("F001", "file not found: 'ü.parquet'", severity="warning", file="a.popql"),
        ]
        text = to_json(diags)
        data = json.loads(text)
        assert isinstance(data, list) and len(data) == 2
        assert data[1]["span"] is None and data[1]["severity"] == "warning"
        assert from_json(text) == diags
        assert [Diagnostic.from_dict(x) for x in data] == diags
        assert from_json(to_json(diags[0])) == [diags[0]]
        assert "ü" in text  # JSON keeps text readable

    def test_with_file_and_shifted(self) -> None:
        d = Diagnostic("N002", "m", Span.from_offsets("ab", 0, 1))
        assert d.with_file("f.popql").file == "f.popql"
        moved = d.shifted(3, "xx\nab")
        assert moved.span == Span(3, 4, 2, 1, 2, 2)
        nospan = Diagnostic("E001", "m")
        assert nospan.shifted(10, "x") is nospan
        assert d.with_hints("h1", "h2").hints == ("h1", "h2")

    def test_internal_error(self) -> None:
        d = internal_error(KeyError("x"), statement="SELECT 1\n")
        assert d.code == "I001"
        assert d.message == "internal error: KeyError: 'x'"
        assert d.hints[-1] == "statement: SELECT 1"


class TestPopQLError:
    def test_str_is_rendered_without_colour(self) -> None:
        src = "SELECT x FROM t"
        d = Diagnostic("N002", "unknown column 'x'", span_of(src, "x"))
        err = PopQLError(d, source=src, file="q.popql")
        assert str(err) == render([d], src, "q.popql")
        assert "\x1b[" not in str(err)
        assert err.diagnostics == (d,)
        assert err.code == "N002" and err.codes == ("N002",)
        assert err.diagnostic is d
        assert "N002" in repr(err)

    def test_many_and_empty(self) -> None:
        err = PopQLError([Diagnostic("N001", "a"), Diagnostic("N002", "b")])
        assert err.codes == ("N001", "N002")
        assert str(err) == "error[N001]: a\n\nerror[N002]: b"
        with pytest.raises(ValueError):
            PopQLError([])

    def test_pickle(self) -> None:
        err = PopQLError(Diagnostic("N001", "unknown table 't'"), source="x", file="f")
        back = pickle.loads(pickle.dumps(err))
        assert back.diagnostics == err.diagnostics
        assert (back.source, back.file) == ("x", "f")
        assert str(back) == str(err)

    def test_with_context(self) -> None:
        file_text = "SELECT 1;\nSELECT bad;"
        offset = file_text.index("SELECT bad")
        stmt = file_text[offset:]
        err = PopQLError(Diagnostic("N002", "m", span_of(stmt, "bad")), source=stmt)
        moved = err.with_context(file_text, "f.popql", offset)
        assert moved.diagnostic.span == span_of(file_text, "bad")
        assert " --> f.popql:2:8" in str(moved)

    def test_json(self) -> None:
        err = PopQLError(Diagnostic("N001", "x"))
        assert json.loads(err.to_json())[0]["code"] == "N001"


# ---------------------------------------------------------------------------------------------
# render
# ---------------------------------------------------------------------------------------------


class TestRender:
    def test_example(self) -> None:
        src = "SELECT id\nFROM images\nWHERE brightnes < 0.3"
        d = Diagnostic(
            "N002",
            "unknown column 'brightnes'",
            span_of(src, "brightnes"),
            ("did you mean 'brightness'?",),
        )
        assert render([d], src, file="query.popql") == (
            "error[N002]: unknown column 'brightnes'\n"
            " --> query.popql:3:7\n"
            "  |\n"
            "3 | WHERE brightnes < 0.3\n"
            "  |       ^^^^^^^^^\n"
            "  = hint: did you mean 'brightness'?"
        )

    def test_input_name_and_single_diagnostic(self) -> None:
        src = "SELECT x"
        d = Diagnostic("N002", "m", span_of(src, "x"))
        assert render(d, src) == (
            "error[N002]: m\n --> <input>:1:8\n  |\n1 | SELECT x\n  |        ^"
        )

    def test_wide_gutter(self) -> None:
        src = "\n" * 11 + "SELECT x"
        d = Diagnostic("N002", "m", span_of(src, "x"), ("h",), severity="warning")
        assert render([d], src) == (
            "warning[N002]: m\n  --> <input>:12:8\n   |\n12 | SELECT x\n   |        ^\n   = hint: h"
        )

    def test_multi_line_span_underlines_first_line(self) -> None:
        src = "SELECT (a +\n  b) FROM t"
        d = Diagnostic("T001", "m", span_of(src, "(a +\n  b)"))
        assert render([d], src) == (
            "error[T001]: m\n --> <input>:1:8\n  |\n1 | SELECT (a +\n  |        ^^^^"
        )

    def test_span_at_end_of_input(self) -> None:
        src = "SELECT a,"
        d = Diagnostic("P002", "unexpected end of input", Span.from_offsets(src, 9, 9))
        assert render([d], src) == (
            "error[P002]: unexpected end of input\n"
            " --> <input>:1:10\n"
            "  |\n"
            "1 | SELECT a,\n"
            "  |          ^"
        )

    def test_tabs_are_expanded(self) -> None:
        src = "SELECT\ta,\n\tbad FROM t"
        d = Diagnostic("N002", "m", span_of(src, "bad"))
        assert render([d], src) == (
            "error[N002]: m\n --> <input>:2:2\n  |\n2 |     bad FROM t\n  |     ^^^"
        )
        d2 = Diagnostic("N002", "m", span_of(src, "a,"))
        assert render([d2], src).splitlines()[-2:] == ["1 | SELECT  a,", "  |         ^^"]

    def test_wide_characters(self) -> None:
        src = "SELECT 名前, x"
        d = Diagnostic("N002", "m", span_of(src, "x"))
        assert render([d], src).splitlines()[-1] == "  |              ^"

    def test_crlf(self) -> None:
        src = "SELECT a\r\nFROM t\r\n"
        d = Diagnostic("N001", "m", span_of(src, "t"))
        assert render([d], src).splitlines()[-2:] == ["2 | FROM t", "  |      ^"]

    def test_no_span(self) -> None:
        d = Diagnostic("F001", "file not found: 'x.csv'", hints=("check the path",))
        assert render([d], "SELECT 1") == (
            "error[F001]: file not found: 'x.csv'\n  = hint: check the path"
        )
        with_file = Diagnostic("F002", "unsupported data format", file="x.xls")
        assert render([with_file], None) == "error[F002]: unsupported data format\n --> x.xls"

    def test_span_without_source(self) -> None:
        d = Diagnostic("N002", "m", Span(7, 8, 1, 8, 1, 9), ("h",))
        assert render([d], None, "q.popql") == "error[N002]: m\n --> q.popql:1:8\n  = hint: h"

    def test_other_file_is_not_shown_with_this_source(self) -> None:
        d = Diagnostic("N002", "m", Span(0, 1, 1, 1, 1, 2), file="other.popql")
        assert render([d], "SELECT", file="this.popql") == "error[N002]: m\n --> other.popql:1:1"

    def test_several_diagnostics_blank_line_separated(self) -> None:
        out = render([Diagnostic("N001", "a"), Diagnostic("N002", "b")], None)
        assert out == "error[N001]: a\n\nerror[N002]: b"
        assert render([], None) == ""

    def test_long_line_is_windowed(self) -> None:
        src = "SELECT " + ", ".join(f"c{i}" for i in range(80)) + ", bad FROM t"
        d = Diagnostic("N002", "m", span_of(src, "bad"))
        line, carets = render([d], src).splitlines()[-2:]
        assert line.startswith("1 | ...")
        assert len(line) <= 140
        col = carets.index("^")
        assert line[col : col + 3] == "bad"

    def test_color(self) -> None:
        src = "SELECT x"
        d = Diagnostic("N002", "m", span_of(src, "x"), ("h",))
        colored = render([d], src, color=True)
        assert "\x1b[1;31merror[N002]\x1b[0m" in colored
        assert "\x1b[1;31m^\x1b[0m" in colored
        assert re.sub(r"\x1b\[[0-9;]*m", "", colored) == render([d], src)
        assert "\x1b" not in render([d], src)


# ---------------------------------------------------------------------------------------------
# did_you_mean
# ---------------------------------------------------------------------------------------------


class TestDidYouMean:
    def test_typo(self) -> None:
        assert did_you_mean("brightnes", ["size", "brightness", "label"]) == ["brightness"]

    def test_case_insensitive_exact_first(self) -> None:
        cands = ["Brightnesss", "BRIGHTNESS", "width"]
        assert did_you_mean("brightness", cands) == ["BRIGHTNESS", "Brightnesss"]

    def test_identical_not_suggested(self) -> None:
        assert did_you_mean("a", ["a"]) == []

    def test_nothing_close(self) -> None:
        assert did_you_mean("zzz", ["brightness", "size"]) == []
        assert did_you_mean("x", []) == []

    def test_limit_and_order(self) -> None:
        cands = ["colour", "color1", "color2", "colors", "xyz"]
        got = did_you_mean("color", cands, n=2)
        assert len(got) == 2
        assert set(got) <= {"colour", "color1", "color2", "colors"}
        assert did_you_mean("color", cands, n=0) == []

    def test_qualified_names_compare_last_part(self) -> None:
        assert did_you_mean("t.brightnes", ["t.brightness", "t.size"]) == ["t.brightness"]
        assert did_you_mean("brightnes", ["images.brightness", "images.size"]) == [
            "images.brightness"
        ]
        # same column, other table: exact last part ranks before typos
        assert did_you_mean("u.size", ["t.sizes", "t.size"]) == ["t.size", "t.sizes"]
        # the qualifier breaks ties
        assert did_you_mean("img.size", ["tbl.size", "img2.size"])[0] == "img2.size"

    def test_duplicates_and_iterables(self) -> None:
        assert did_you_mean("nme", iter(["name", "name"])) == ["name"]

    def test_hint(self) -> None:
        assert did_you_mean_hint("brightnes", ["brightness"]) == "did you mean 'brightness'?"
        assert did_you_mean_hint("zzz", ["brightness"]) is None
        assert did_you_mean_hint("ab", ["abc", "abd"]) == "did you mean 'abc' or 'abd'?"

    def test_join_or(self) -> None:
        assert join_or([]) == ""
        assert join_or(["a"]) == "a"
        assert join_or(["a", "b"]) == "a or b"
        assert join_or(["a", "b", "c"]) == "a, b or c"


# ---------------------------------------------------------------------------------------------
# Code registry and docs
# ---------------------------------------------------------------------------------------------


REQUIRED_CODES = [
    *(f"P00{i}" for i in range(1, 7)),
    *(f"N00{i}" for i in range(1, 6)),
    "T001",
    "T002",
    "T003",
    "X001",
    "E001",
    "F001",
    "F002",
    "I001",
]


class TestCodes:
    def test_required_codes(self) -> None:
        for code in REQUIRED_CODES:
            assert code in CODES, code

    def test_code_shape(self) -> None:
        for code, text in CODES.items():
            assert re.fullmatch(r"[A-Z]\d{3}", code), code
            assert text and "\n" not in text and text == text.strip()
        assert title("N002") == "unknown column"
        assert title("Z999") == "unknown code"

    def test_every_code_documented(self) -> None:
        doc = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
        rows = dict(re.findall(r"^\| `([A-Z]\d{3})` \| ([^|]+?) \|", doc, flags=re.MULTILINE))
        assert set(rows) == set(CODES)
        for code, text in CODES.items():
            assert rows[code] == text, code


# ---------------------------------------------------------------------------------------------
# from_lark, with a tiny local grammar
# ---------------------------------------------------------------------------------------------

GRAMMAR = r"""
start: stmt (";" stmt)* ";"?
stmt: "SELECT"i select_list ("FROM"i NAME NAME?)? ("WHERE"i expr)?
select_list: "*" | expr ("," expr)*
?expr: expr "+" term | expr "*" term | expr "/" term | expr "=" term | expr NE term | term
?term: NAME | QUOTED_NAME | NUMBER | STRING | "(" expr ")" | NAME "(" [expr ("," expr)*] ")"
NE: "<>" | "!="
NAME: /[A-Za-z_][A-Za-z0-9_]*/
QUOTED_NAME: /"([^"\n]|"")*"/
NUMBER: /\d+(\.\d+)?/
STRING: /'([^'\n]|'')*'/
COMMENT: /--[^\n]*/ | /\/\*(.|\n)*?\*\//
%ignore COMMENT
%ignore /\s+/
"""


@pytest.fixture(scope="module")
def parser() -> lark.Lark:
    return lark.Lark(GRAMMAR, parser="lalr", lexer="contextual", propagate_positions=True)


def diagnose(parser: lark.Lark, source: str, **kwargs: object) -> Diagnostic:
    with pytest.raises(lark.exceptions.UnexpectedInput) as info:
        parser.parse(source)
    d = from_lark(info.value, source, **kwargs)  # type: ignore[arg-type]
    assert isinstance(d, Diagnostic)
    return d


class TestFromLark:
    def test_expression_after_comma_at_end(self, parser: lark.Lark) -> None:
        d = diagnose(parser, "SELECT a,")
        assert d.code == "P002"
        assert d.message == "unexpected end of input: expected an expression after ','"
        assert d.span == Span.from_offsets("SELECT a,", 9, 9)

    def test_expression_after_comma_before_paren(self, parser: lark.Lark) -> None:
        src = "SELECT f(a, )"
        d = diagnose(parser, src)
        assert d.code == "P001"
        assert d.message == "unexpected ')': expected an expression after ','"
        assert d.span == span_of(src, ")")
        assert "is there a ',' too many?" in d.hints

    def test_keyword_list(self, parser: lark.Lark) -> None:
        src = "SELECT a FROM t t2 t3"
        d = diagnose(parser, src)
        assert d.code == "P001"
        assert d.message == "unexpected name 't3': expected WHERE, ';' or end of input after 't2'"
        assert d.span == span_of(src, "t3")

    def test_after_keyword(self, parser: lark.Lark) -> None:
        src = "SELECT a FROM t WHERE"
        d = diagnose(parser, src)
        assert d.message == "unexpected end of input: expected an expression after WHERE"
        assert d.span is not None and (d.span.line, d.span.column) == (1, 22)

    def test_after_select(self, parser: lark.Lark) -> None:
        d = diagnose(parser, "select")
        assert d.message == "unexpected end of input: expected an expression or '*' after SELECT"

    def test_eof_skips_trailing_blanks(self, parser: lark.Lark) -> None:
        src = "SELECT a,\n\n"
        d = diagnose(parser, src)
        assert d.span == Span.from_offsets(src, 9, 9)

    def test_eof_after_comment(self, parser: lark.Lark) -> None:
        src = "SELECT a -- the first\n  ,"
        d = diagnose(parser, src)
        assert d.message.endswith("after ','")
        assert d.span is not None and (d.span.line, d.span.column) == (2, 4)

    def test_operators_collapse(self, parser: lark.Lark) -> None:
        src = "SELECT (a + 1 FROM t"
        d = diagnose(parser, src)
        assert d.message == "unexpected FROM: expected an operator or ')' after '1'"
        assert "a '(' is not closed" in d.hints

    def test_unmatched_paren(self, parser: lark.Lark) -> None:
        d = diagnose(parser, "SELECT a )")
        assert d.code == "P001"
        assert d.message.startswith("unexpected ')': expected FROM, WHERE, an operator, ',', ';'")
        assert d.message.endswith(" or end of input after 'a'")
        assert "this ')' has no matching '('" in d.hints

    def test_keyword_typo(self, parser: lark.Lark) -> None:
        d = diagnose(parser, "SELECT a FORM t")
        assert d.code == "P001"
        assert "did you mean FROM?" in d.hints

    def test_misspelt_keyword_read_as_alias(self, parser: lark.Lark) -> None:
        d = diagnose(parser, "SELECT a FROM t WHER x = 1")
        assert d.message == "unexpected name 'x': expected WHERE, ';' or end of input after 'WHER'"
        assert "did you mean WHERE instead of 'WHER'?" in d.hints

    def test_keyword_read_as_name(self, parser: lark.Lark) -> None:
        d = diagnose(parser, "SELECT a, FROM t")
        assert d.code == "P001"
        assert d.message.endswith("after 'FROM'")
        assert any(h.startswith("FROM was read as a name here") for h in d.hints)

    def test_string_where_name_expected(self, parser: lark.Lark) -> None:
        d = diagnose(parser, "SELECT a FROM 'images'")
        assert d.message == "unexpected string 'images': expected a name after FROM"
        assert 'names are written in double quotes: "images"' in d.hints

    def test_unterminated_string(self, parser: lark.Lark) -> None:
        src = "SELECT 'abc\nFROM t"
        d = diagnose(parser, src)
        assert d.code == "P003"
        assert d.message == "unterminated string literal"
        assert d.span == span_of(src, "'abc")

    def test_unterminated_quoted_name(self, parser: lark.Lark) -> None:
        src = 'SELECT a FROM t WHERE "abc = 1'
        d = diagnose(parser, src)
        assert d.code == "P005"
        assert d.span == span_of(src, '"abc = 1')

    def test_unterminated_block_comment(self, parser: lark.Lark) -> None:
        # the lexer reads '/' and '*' as operators here, the error comes later
        src = "SELECT a /* the rest\nFROM t"
        d = diagnose(parser, src)
        assert d.code == "P006"
        assert d.span == span_of(src, "/* the rest")
        d2 = diagnose(parser, "SELECT a, /* x")
        assert d2.code == "P006"

    def test_invalid_character(self, parser: lark.Lark) -> None:
        src = "SELECT a # b"
        d = diagnose(parser, src)
        assert d.code == "P004"
        assert d.message == "invalid character '#'"
        assert d.span == span_of(src, "#")
        assert d.hints and d.hints[-1].startswith("expected FROM, WHERE")

    def test_typographic_quote(self, parser: lark.Lark) -> None:
        d = diagnose(parser, "SELECT \u2018x\u2019")
        assert d.code == "P004"
        assert "U+2018" in d.message
        assert "typographic quote" in d.hints[0]

    def test_empty_input(self, parser: lark.Lark) -> None:
        d = diagnose(parser, "")
        assert d.code == "P002"
        assert d.message == "unexpected end of input: expected SELECT"
        assert d.span == Span(0, 0, 1, 1, 1, 1)

    def test_file_and_render(self, parser: lark.Lark) -> None:
        src = "SELECT a,\n  b +\n  ) FROM t"
        d = diagnose(parser, src, file="q.popql")
        assert d.file == "q.popql"
        assert render([d], src, "q.popql") == (
            "error[P001]: unexpected ')': expected an expression after '+'\n"
            " --> q.popql:3:3\n"
            "  |\n"
            "3 |   ) FROM t\n"
            "  |   ^\n"
            "  = hint: this ')' has no matching '('"
        )

    def test_to_error(self, parser: lark.Lark) -> None:
        src = "SELECT a,"
        with pytest.raises(lark.exceptions.UnexpectedInput) as info:
            parser.parse(src)
        err = to_error(info.value, src, "q.popql")
        assert err.code == "P002" and err.source == src
        assert str(err).startswith("error[P002]: unexpected end of input")

    def test_terminal_table_for_anonymous_terminals(self) -> None:
        p = lark.Lark(
            'start: "SELECT"i NAME ("ORDER BY"i NAME)?\nNAME: /[a-z]+/\n%ignore " "',
            parser="lalr",
            propagate_positions=True,
        )
        src = "SELECT a b"
        with pytest.raises(lark.exceptions.UnexpectedInput) as info:
            p.parse(src)
        with_table = from_lark(info.value, src, terminals=p.terminals)
        expected = "unexpected name 'b': expected ORDER BY or end of input after 'a'"
        assert with_table.message == expected
        without = from_lark(info.value, src, terminals={})
        assert "anon" in without.message  # falls back to the (lower-cased) terminal name

    def test_earley(self) -> None:
        p = lark.Lark(GRAMMAR, parser="earley", propagate_positions=True)
        for src, code in [("SELECT a,", "P002"), ("SELECT a b", "P001"), ("SELECT #", "P004")]:
            with pytest.raises(lark.exceptions.UnexpectedInput) as info:
                p.parse(src)
            assert from_lark(info.value, src).code == code

    def test_visit_error(self, parser: lark.Lark) -> None:
        class Boom(lark.Transformer):  # type: ignore[type-arg]
            def stmt(self, children: list[object]) -> object:
                raise PopQLError(Diagnostic("P007", "invalid literal"))

        class Bug(lark.Transformer):  # type: ignore[type-arg]
            def stmt(self, children: list[object]) -> object:
                raise ZeroDivisionError("oops")

        tree = parser.parse("SELECT 1")
        with pytest.raises(lark.exceptions.VisitError) as info:
            Boom().transform(tree)
        assert from_lark(info.value, "SELECT 1").code == "P007"
        with pytest.raises(lark.exceptions.VisitError) as info:
            Bug().transform(tree)
        d = from_lark(info.value, "SELECT 1")
        assert d.code == "I001"
        assert d.span == Span.from_offsets("SELECT 1", 0, 8)
        assert "statement: SELECT 1" in d.hints

    def test_never_raises(self) -> None:
        assert from_lark(lark.exceptions.GrammarError("bad grammar"), "x").code == "P001"
        assert from_lark(None, "x").code == "P001"  # type: ignore[arg-type]

        class Weird(lark.exceptions.UnexpectedInput):
            pass

        w = Weird()
        setattr(w, "pos_in_stream", 7)  # noqa: B010
        d = from_lark(w, "SELECT b")
        assert d.code == "P001" and d.span == Span.from_offsets("SELECT b", 7, 8)

        class Hostile(lark.exceptions.UnexpectedToken):
            def __init__(self) -> None:
                pass

            def __getattribute__(self, name: str) -> object:
                raise RuntimeError(name)

        assert from_lark(Hostile(), "SELECT").code == "P001"


class TestDescribe:
    def test_describe_terminal(self) -> None:
        assert describe_terminal("COMMA") == "','"
        assert describe_terminal("DOUBLE_COLON") == "'::'"
        assert describe_terminal("NE") == "'<>'"
        assert describe_terminal("FROM") == "FROM"
        assert describe_terminal("NAME") == "a name"
        assert describe_terminal("$END") == "end of input"
        assert describe_terminal("__ANON_3", {"__ANON_3": "=>"}) == "'=>'"
        assert describe_terminal("__ANON_4", {"__ANON_4": "group by"}) == "GROUP BY"
        assert describe_terminal("SOME_THING") == "some thing"

    def test_describe_expected(self) -> None:
        assert describe_expected({"NAME", "NUMBER", "STRING", "LPAR", "MINUS"}) == "an expression"
        assert describe_expected({"SEMICOLON", "WHERE", "FROM"}) == "FROM, WHERE or ';'"
        assert describe_expected({"NAME", "QUOTED_NAME", "LPAR"}) == "a name or '('"
        assert describe_expected({"RPAR", "$END"}) == "')' or end of input"
        many = {f"KW{c}" for c in "ABCDEFGHIJ"}
        assert describe_expected(many) == "one of KWA, KWB, KWC, KWD, KWE, KWF, ... (4 more)"
        # where a name is expected, a long tail of (soft) keywords is left out
        soft = {"NAME", "QUOTED_NAME", "LPAR", "COUNT", "LEFT", "RIGHT", "VALUES", "TABLE"}
        assert describe_expected(soft) == "a name or '('"
        assert describe_expected({"NAME", "LATERAL"}) == "a name or LATERAL"
        # operators, named or anonymous, are grouped
        ops = {"PLUS", "__ANON_1", "__ANON_2", "RPAR"}
        assert describe_expected(ops, {"__ANON_1": "<=", "__ANON_2": "||"}) == "an operator or ')'"
        assert describe_expected(set()) == ""


# ---------------------------------------------------------------------------------------------
# Smoke test against the real grammar (which may still change): never raises, always a span
# ---------------------------------------------------------------------------------------------

BAD_INPUTS = [
    "SELECT a,",
    "SELECT",
    "SELECT a FROM",
    "SELECT a FROM t WHERE",
    "SELECT a b c",
    "SELECT 'abc",
    'SELECT "abc',
    "SELECT a /* x",
    "SELECT (a + 1",
    "SELECT a )",
    "SELEC a",
    "SELECT f(a, )",
    "CREATE POPULATION p AS",
    "SELECT a FROM t GROUP a",
    "SELECT $$abc",
    "SELECT 1 +\n\n-- trailing comment\n",
]


@pytest.mark.slow
def test_real_grammar_smoke() -> None:
    path = ROOT / "grammar" / "popql.lark"
    try:
        real = lark.Lark(
            path.read_text(encoding="utf-8"),
            parser="lalr",
            lexer="contextual",
            propagate_positions=True,
        )
    except Exception as exc:  # the grammar is being written elsewhere
        pytest.skip(f"grammar/popql.lark does not load: {exc}")
    for src in BAD_INPUTS:
        try:
            real.parse(src)
        except lark.exceptions.UnexpectedInput as exc:
            for terminals in (None, real.terminals):
                d = from_lark(exc, src, terminals=terminals)
                assert d.code.startswith("P"), (src, d)
                assert d.span is not None, (src, d)
                assert 0 <= d.span.start <= d.span.end <= len(src)
                assert render([d], src).startswith(f"error[{d.code}]: ")
