"""The printer (popql.format) against the query corpus.

* round trips: ``parse(format_script(parse(x))) == parse(x)``, the same for ``format_node`` and
  ``to_sql`` of every statement of every file in ``tests/corpus/queries``;
* the identity corpus ``tests/corpus/fmt``: files already in canonical form print unchanged;
* golden files ``tests/corpus/golden/<name>.ast.txt`` (an AST dump) and ``<name>.sql.txt``
  (``to_sql`` of each statement), rewritten with
  ``POPQL_UPDATE_GOLDEN=1 pytest tests/test_format.py``;
* the doctests of popql.ast, popql.syntax and popql.format.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
from pathlib import Path
from typing import Any

import pytest

from popql import ast as A
from popql.diagnostics import PopQLError
from popql.format import Printer, format_node, format_script, to_sql
from popql.syntax import parse

CORPUS = Path(__file__).resolve().parent / "corpus"
QUERIES = sorted((CORPUS / "queries").glob("*.popql"))
FMT = sorted((CORPUS / "fmt").glob("*.popql"))
GOLDEN = CORPUS / "golden"

# ------------------------------------------------------------------------------------------------
# Helpers


def dump_ast(node: A.Node) -> str:
    """A readable, span-free dump of an AST: one node per line, indented by depth.

    Each line is ``<field>=<NodeType> <scalar>=<value> ...``; scalar fields are shown when they
    have no default or differ from it; child nodes (and nodes inside tuples, as ``field[i]``)
    follow on their own lines, indented by two spaces.
    """
    lines: list[str] = []
    _dump(node, "", 0, lines)
    return "\n".join(lines) + "\n"


def _has_node(value: Any) -> bool:
    if isinstance(value, A.Node):
        return True
    if isinstance(value, tuple):
        return any(_has_node(v) for v in value)
    return False


def _dump(value: Any, label: str, depth: int, lines: list[str]) -> None:
    pad = "  " * depth
    prefix = f"{label}=" if label else ""
    if isinstance(value, tuple):  # a tuple holding nodes somewhere (e.g. DataType.fields)
        for i, item in enumerate(value):
            item_label = f"{label}[{i}]"
            if _has_node(item):
                _dump(item, item_label, depth, lines)
            else:
                lines.append(f"{pad}{item_label}={item!r}")
        return
    assert isinstance(value, A.Node), value
    scalars: list[str] = []
    children: list[tuple[str, Any]] = []
    for f in dataclasses.fields(value):
        if f.name == "span":
            continue
        v = getattr(value, f.name)
        if f.default is not dataclasses.MISSING and v == f.default:
            continue
        if _has_node(v):
            children.append((f.name, v))
        else:
            scalars.append(f"{f.name}={v!r}")
    lines.append(f"{pad}{prefix}{type(value).__name__}" + "".join(" " + s for s in scalars))
    for name, v in children:
        _dump(v, name, depth + 1, lines)


# Expressions the engine rewrites (popql.engine.lower) before to_sql can be used.
_POPQL_EXPRS = (A.Near, A.SimilarityScore, A.Tagged, A.ListQuantifier)
_POPQL_STATEMENTS = (
    A.CreatePopulation,
    A.FreezePopulation,
    A.DiffPopulation,
    A.HoldOut,
    A.ShowSplits,
    A.ShowLeakage,
    A.Evaluate,
    A.Compare,
    A.Expect,
    A.FindFailures,
    A.ImportPredictions,
)


def not_lowered(stmt: A.Statement) -> str | None:
    """The node type that keeps ``stmt`` from going through to_sql unchanged, or None."""
    if isinstance(stmt, _POPQL_STATEMENTS):
        return type(stmt).__name__
    if isinstance(stmt, A.Show) and stmt.kind == "POPULATIONS":
        return "Show"
    if isinstance(stmt, A.Drop) and stmt.kind == "POPULATION":
        return "Drop"
    for node in stmt.walk():
        if isinstance(node, _POPQL_EXPRS):
            return type(node).__name__
        if isinstance(node, A.TableName) and getattr(node, "version", None) is not None:
            return "TableName"  # FROM samples AS OF VERSION 3 (dataset time travel)
        if isinstance(node, A.SimilarTo) and (
            node.operand is None or node.options != A.SearchOptions()
        ):
            return "SimilarTo"
    return None


def sql_lines(script: A.Script) -> str:
    out = []
    for stmt in script.statements:
        blocker = not_lowered(stmt)
        out.append(f"-- not lowered: {blocker}" if blocker else to_sql(stmt))
    return "\n".join(out) + "\n"


def check_golden(path: Path, actual: str, update: bool) -> None:
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"missing golden file {path}; run with POPQL_UPDATE_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{path.name} differs; run with POPQL_UPDATE_GOLDEN=1 to update"


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


@pytest.fixture(scope="module")
def scripts() -> dict[str, A.Script]:
    return {p.stem: parse(p.read_text(encoding="utf-8")) for p in QUERIES}


# ------------------------------------------------------------------------------------------------
# The corpus itself


def test_corpus_is_large_enough() -> None:
    assert len(QUERIES) >= 40
    assert len(FMT) >= 15


def test_corpus_covers_every_node_type(scripts: dict[str, A.Script]) -> None:
    seen = {type(n) for s in scripts.values() for n in s.walk()}
    missing = sorted(c.__name__ for c in A.all_node_types() if c not in seen)
    assert not missing, f"no corpus query produces {missing}"


def test_printer_covers_every_node_type() -> None:
    missing = [c.__name__ for c in A.all_node_types() if not hasattr(Printer, "_" + c.__name__)]
    assert not missing


# ------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("path", QUERIES, ids=_ids(QUERIES))
def test_format_script_round_trip(path: Path, scripts: dict[str, A.Script]) -> None:
    script = scripts[path.stem]
    assert script.statements
    text = format_script(script)
    assert parse(text) == script
    # canonical text is a fixed point
    assert format_script(parse(text)) == text


@pytest.mark.parametrize("path", QUERIES, ids=_ids(QUERIES))
def test_format_node_round_trip(path: Path, scripts: dict[str, A.Script]) -> None:
    for stmt in scripts[path.stem].statements:
        text = format_node(stmt)
        assert "\n" not in text
        assert parse(text).statements == (stmt,), text


@pytest.mark.parametrize("path", QUERIES, ids=_ids(QUERIES))
def test_to_sql_round_trip(path: Path, scripts: dict[str, A.Script]) -> None:
    for stmt in scripts[path.stem].statements:
        sql = to_sql(stmt)
        assert "\n" not in sql
        assert parse(sql).statements == (stmt,), sql


@pytest.mark.parametrize("path", QUERIES, ids=_ids(QUERIES))
def test_script_one_line_round_trip(path: Path, scripts: dict[str, A.Script]) -> None:
    script = scripts[path.stem]
    assert parse(format_node(script)) == script


# ------------------------------------------------------------------------------------------------
# Identity corpus


@pytest.mark.parametrize("path", FMT, ids=_ids(FMT))
def test_canonical_text_is_unchanged(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert format_script(parse(text)) == text


# ------------------------------------------------------------------------------------------------
# Goldens


@pytest.mark.parametrize("path", QUERIES, ids=_ids(QUERIES))
def test_golden_ast(path: Path, scripts: dict[str, A.Script], update_golden: bool) -> None:
    check_golden(GOLDEN / f"{path.stem}.ast.txt", dump_ast(scripts[path.stem]), update_golden)


@pytest.mark.parametrize("path", QUERIES, ids=_ids(QUERIES))
def test_golden_sql(path: Path, scripts: dict[str, A.Script], update_golden: bool) -> None:
    check_golden(GOLDEN / f"{path.stem}.sql.txt", sql_lines(scripts[path.stem]), update_golden)


def test_no_orphan_goldens() -> None:
    stems = {p.stem for p in QUERIES}
    orphans = sorted(p.name for p in GOLDEN.glob("*.txt") if p.name.split(".", 1)[0] not in stems)
    assert not orphans, f"golden files without a corpus query: {orphans}"


def test_dump_ast_omits_spans_and_defaults() -> None:
    script = parse("SELECT a FROM t WHERE b TAGGED 'x'")  # mode='ONE' is the default
    assert dump_ast(script) == (
        "Script\n"
        "  statements[0]=Query\n"
        "    body=Select\n"
        "      items[0]=SelectItem\n"
        "        expr=Column\n"
        "          parts[0]=Identifier value='a'\n"
        "      from_[0]=TableName\n"
        "        name[0]=Identifier value='t'\n"
        "      where=Tagged\n"
        "        operand=Column\n"
        "          parts[0]=Identifier value='b'\n"
        "        labels[0]=String value='x'\n"
    )
    assert "span" not in dump_ast(script)


def test_not_lowered_classification() -> None:
    def blocker(text: str) -> str | None:
        return not_lowered(parse(text).statements[0])

    assert blocker("SELECT a FROM t WHERE name SIMILAR TO 'a%'") is None
    assert blocker("SELECT a FROM t WHERE image SIMILAR TO 'a' TOP 5") == "SimilarTo"
    assert blocker("SELECT a FROM t WHERE SIMILAR TO 'a'") == "SimilarTo"
    assert blocker("SELECT a FROM t WHERE labels TAGGED 'x'") == "Tagged"
    assert blocker("EXPLAIN SELECT SIMILARITY('x')") == "SimilarityScore"
    assert blocker("FREEZE POPULATION p") == "FreezePopulation"
    assert blocker("SHOW POPULATIONS") == "Show"
    assert blocker("SHOW TABLES") is None
    assert blocker("SELECT * FROM samples AS OF VERSION 3") == "TableName"


# ------------------------------------------------------------------------------------------------
# Doctests



@pytest.mark.parametrize(
    "module",
    [
        "popql.ast",
        "popql.syntax",
        "popql.format",
    ],
)
def test_doctests(module: str) -> None:
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS, report=True, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0


# ------------------------------------------------------------------------------------------------
# Known printer bugs (xfail strict: these start failing once popql/format.py is fixed)


@pytest.mark.parametrize("printer", [format_node, to_sql], ids=["format_node", "to_sql"])
def test_bug_field_access_on_a_number(printer: Any) -> None:
    stmt = parse("SELECT (1).x").statements[0]
    assert parse(printer(stmt)).statements == (stmt,)


def test_reserved_word_is_not_a_column_name() -> None:
    # `select` is reserved (as in DataFusion): it must be quoted to be a column name.
    with pytest.raises(PopQLError):
        parse("SELECT 1 - select / 2")
    stmt = parse('SELECT 1 - "select" / 2').statements[0]
    assert parse(to_sql(stmt)).statements == (stmt,)
