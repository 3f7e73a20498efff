"""Snapshots of rendered syntax errors (inputs the PARSER rejects).

Each case is stored as ``tests/snapshots/errors/<name>.txt``: the input, a line ``----``, then
``popql.diagnostics.render(diagnostics, input, "query.popql")``.  Rewrite them with
``POPQL_UPDATE_GOLDEN=1 pytest tests/test_error_snapshots.py``.  Semantic errors (unknown column,
type mismatch, ...) belong in a separate file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from popql.diagnostics import CODES, PopQLError, render, to_json
from popql.syntax import parse

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots" / "errors"
FILE = "query.popql"

CASES: dict[str, str] = {
    # -- lexical errors --
    "unterminated_string": "SELECT uri FROM samples WHERE weather = 'sunny",
    "unterminated_string_multiline": (
        "SELECT uri\nFROM samples\nWHERE labels TAGGED 'night\n  AND num_people > 5"
    ),
    "unterminated_quoted_identifier": 'SELECT "Sample ID FROM samples',
    "unterminated_block_comment": "SELECT uri /* the path\nFROM samples",
    "bad_character_section_sign": "SELECT 5 § 3",
    "bad_character_backslash": "SELECT a\\b FROM t",
    "bad_character_at_sign": "SELECT @",
    "wide_characters_before_error": "SELECT '日本語' AS 名前, § FROM t",
    # -- SQL --
    "missing_from_item": "SELECT a FROM",
    "trailing_operator": "SELECT a FROM t WHERE b = 1 AND",
    "select_one_plus": "SELECT 1 +",
    "comparison_without_right_side": "SELECT a FROM t WHERE x >",
    "missing_closing_paren": "SELECT count(a FROM t",
    "missing_closing_paren_where": "SELECT a FROM t WHERE (x > 1 AND y < 2",
    "unmatched_closing_paren": "SELECT a FROM t WHERE x > 1)",
    "extra_closing_paren_after_in_list": "SELECT * FROM t WHERE x IN (1, 2))",
    "where_without_condition": "SELECT * FROM t WHERE",
    "group_without_by": "SELECT a, count(*) FROM t GROUP a",
    "order_by_nothing": "SELECT a FROM t ORDER BY",
    "limit_without_value": "SELECT a FROM t LIMIT",
    "case_without_end": "SELECT CASE WHEN x > 1 THEN 'big' FROM t",
    "cast_without_type": "SELECT CAST(x AS) FROM t",
    "between_without_and": "SELECT * FROM t WHERE x BETWEEN 1 OR 2",
    "join_on_without_condition": "SELECT * FROM a JOIN b ON",
    "in_list_unclosed": "SELECT * FROM t WHERE x IN (1, 2",
    "empty_select_in_subquery": "SELECT * FROM t WHERE x IN (SELECT)",
    "insert_unfinished_values": "INSERT INTO t VALUES (1,",
    "create_table_without_name": "CREATE TABLE (a int)",
    "cte_without_parens": "WITH x AS SELECT 1 SELECT * FROM x",
    "three_names_in_a_row": "SELECT a b c FROM t",
    "misspelt_from": "SELECT a FORM t",
    "two_strings_in_a_row": "SELECT 'a' 'b'",
    "missing_semicolon_between_statements": "SELECT 1\nSELECT 2",
    # -- PopQL --
    "hold_out_without_number": "HOLD OUT PERCENT OF x",
    "expect_without_threshold": "EXPECT accuracy ON x",
    "near_image_without_path": "SELECT * FROM samples WHERE NEAR IMAGE",
    "near_trailing_comma": "SELECT * FROM t WHERE image NEAR (SAMPLE 'a',)",
    "similar_to_without_target": "SELECT * FROM samples WHERE image SIMILAR TO",
    "top_without_number": "SELECT * FROM samples WHERE image SIMILAR TO 'dog' TOP",
    "top_twice": "SELECT * FROM samples WHERE image SIMILAR TO 'dog' TOP 5 TOP 6",
    "tagged_without_label": "SELECT * FROM samples WHERE labels TAGGED",
    "tagged_with_a_name": "SELECT * FROM samples WHERE labels TAGGED night",
    "tagged_list_unfinished": "SELECT * FROM t WHERE labels TAGGED ('a',",
    "count_where_without_predicate": "SELECT * FROM samples WHERE COUNT(detections WHERE) > 5",
    "create_population_without_query": "CREATE POPULATION x AS",
    "create_population_without_as": "CREATE POPULATION p DESCRIPTION 'd' SELECT 1",
    "create_population_description_name": "CREATE POPULATION x DESCRIPTION night AS SELECT 1",
    "freeze_without_name": "FREEZE POPULATION",
    "drop_population_without_name": "DROP POPULATION",
    "evaluate_without_on": "EVALUATE detector night",
    "compare_without_with": "COMPARE m2 m1 ON night",
    "find_failures_without_model": "FIND FAILURES BY weather",
    "import_predictions_without_path": "IMPORT PREDICTIONS FOR MODEL m FROM",
    # -- positions and layout --
    "error_on_line_3": "SELECT uri,\n       width\nFROM samples WHERE width >> > 3\nORDER BY uri",
    "error_in_second_statement": "SELECT 1;\nSELECT 2 +;\nSELECT 3",
    "long_line": "SELECT " + ", ".join(f"column_{i}" for i in range(30)) + " FROM t WHERE ) ",
    "tab_indented": "SELECT a\n\tFROM t\n\tWHERE\tx =\t;",
}


def snapshot_text(text: str) -> str:
    with pytest.raises(PopQLError) as info:
        parse(text)
    return f"{text}\n----\n{render(info.value.diagnostics, text, FILE)}\n"


def test_enough_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_error_snapshot(name: str, update_golden: bool) -> None:
    actual = snapshot_text(CASES[name])
    path = SNAPSHOTS / f"{name}.txt"
    if update_golden:
        SNAPSHOTS.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"missing snapshot {path}; run with POPQL_UPDATE_GOLDEN=1"
    assert actual == path.read_text(encoding="utf-8")


def test_no_orphan_snapshots() -> None:
    orphans = sorted(p.stem for p in SNAPSHOTS.glob("*.txt") if p.stem not in CASES)
    assert not orphans, f"snapshots without a case: {orphans}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_error_is_a_parse_diagnostic(name: str) -> None:
    text = CASES[name]
    with pytest.raises(PopQLError) as info:
        parse(text, file=FILE)
    err = info.value
    assert err.diagnostics
    for d in err.diagnostics:
        assert d.code.startswith("P") and d.code in CODES
        assert d.file == FILE
        assert d.span is not None
        assert 0 <= d.span.start <= d.span.end <= len(text)
    data = json.loads(to_json(err.diagnostics))
    assert isinstance(data, list) and len(data) == len(err.diagnostics)
    for item, d in zip(data, err.diagnostics, strict=True):
        assert {"code", "message", "span"} <= set(item)
        assert item["code"] == d.code and item["message"] == d.message
        assert item["span"]["start"] == d.span.start  # type: ignore[union-attr]
        assert {"start", "end", "line", "column", "end_line", "end_column"} <= set(item["span"])
    assert json.loads(err.to_json()) == data


# ------------------------------------------------------------------------------------------------
# Known gaps: inputs that should be rejected but parse (xfail strict: fail once fixed)


@pytest.mark.parametrize(
    "text",
    [
        "SELECT price \u20ac FROM t",
        "SELECT uri FROM samples WHERE weather = \u2018sunny\u2019",
        "SELECT x FROM t WHERE y = \u201cquoted\u201d",
    ],
)
def test_gap_symbols_are_not_identifier_characters(text: str) -> None:
    with pytest.raises(PopQLError) as info:
        parse(text)
    assert info.value.code == "P004"


# (`SELECT a, FROM t` is valid: DataFusion accepts a trailing comma in the select list.)
@pytest.mark.parametrize("text", ["SELECT a + FROM t", "SELECT FROM t"])
def test_gap_keyword_read_as_a_name(text: str) -> None:
    with pytest.raises(PopQLError):
        parse(text)
