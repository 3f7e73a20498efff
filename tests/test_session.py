"""Tests for popql.engine: sessions, results, the DataFusion catalog and error translation.

Tests marked with the ``front_end`` fixture need ``popql.syntax`` and ``popql.engine.lower``
and are skipped until they exist.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import datafusion
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from popql.diagnostics import PopQLError, render
from popql.engine import DataFusionCatalog, Result, ResultConsumedError, Session, connect
from popql.engine.errors import (
    clean_message,
    find_identifier,
    find_text,
    parse_field_list,
    split_qualified,
    translate_file_error,
    translate_message,
)
from popql.engine.result import format_table, format_value
from popql.engine.session import quote_identifier, read_source

SAMPLE = pa.table({"id": [1, 2, 3], "label": ["cat", "dog", None]})


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture
def front_end() -> None:
    """Skip unless the parser and the lowering exist."""
    pytest.importorskip("popql.syntax")
    pytest.importorskip("popql.engine.lower")


def _rows(session: Session, table: str) -> list[dict[str, object]]:
    return session.ctx.sql(f"SELECT * FROM {quote_identifier(table)} ORDER BY 1").to_pylist()


# ---------------------------------------------------------------------------------------------
# connect / configuration
# ---------------------------------------------------------------------------------------------


def test_connect_in_memory_configures_context() -> None:
    s = connect()
    assert isinstance(s, Session)
    assert s.path is None
    assert s.tables() == []
    value = s.ctx.sql(
        "SELECT value FROM information_schema.df_settings "
        "WHERE name = 'datafusion.execution.target_partitions'"
    ).to_pylist()[0]["value"]
    assert int(value) == max(1, os.cpu_count() or 1)
    assert "Session" in repr(s)


def test_connect_dataset_creates_directory(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    s = connect(root)
    assert (root / "tables").is_dir()
    assert s.path == root
    assert s.tables() == []


def test_connect_dataset_registers_parquet_files_and_folders(tmp_path: Path) -> None:
    tables = tmp_path / "tables"
    (tables / "labels").mkdir(parents=True)
    (tables / "parts" / "year=2024").mkdir(parents=True)
    pq.write_table(SAMPLE, tables / "images.parquet")
    pq.write_table(SAMPLE, tables / "labels" / "part-0.parquet")
    pq.write_table(SAMPLE, tables / "labels" / "part-1.parquet")
    pq.write_table(SAMPLE, tables / "parts" / "year=2024" / "p.parquet")
    pq.write_table(SAMPLE, tables / "_ignored.parquet")
    (tables / "notes.txt").write_text("not a table")
    s = connect(tmp_path)
    assert s.tables() == ["images", "labels", "parts"]
    assert len(_rows(s, "labels")) == 6
    assert "year" in s.schema("parts").names


def test_connect_dataset_path_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "x.parquet"
    pq.write_table(SAMPLE, f)
    with pytest.raises(PopQLError) as info:
        connect(f)
    assert info.value.code == "F001"


# ---------------------------------------------------------------------------------------------
# register
# ---------------------------------------------------------------------------------------------


def test_register_arrow_table_recordbatch_reader_and_dataset() -> None:
    s = connect()
    s.register("t", SAMPLE)
    s.register("b", SAMPLE.to_batches()[0])
    s.register("r", pa.RecordBatchReader.from_batches(SAMPLE.schema, SAMPLE.to_batches()))
    s.register("d", pads.dataset(SAMPLE))
    assert s.tables() == ["b", "d", "r", "t"]
    for name in s.tables():
        assert _rows(s, name) == SAMPLE.to_pylist()
    assert s.schema("t") == SAMPLE.schema


def test_register_empty_table_keeps_schema() -> None:
    s = connect()
    s.register("e", SAMPLE.schema.empty_table())
    assert s.schema("e").names == ["id", "label"]
    assert _rows(s, "e") == []


def test_register_pandas() -> None:
    pd = pytest.importorskip("pandas")
    s = connect()
    s.register("p", pd.DataFrame({"x": [1, 2], "y": ["a", "b"]}))
    assert s.schema("p").names == ["x", "y"]
    assert _rows(s, "p") == [{"x": 1, "y": "a"}, {"x": 2, "y": "b"}]
    indexed = pd.DataFrame({"v": [1.5]}, index=pd.Index(["k"], name="key"))
    s.register("q", indexed)
    assert s.schema("q").names == ["v", "key"]


def test_register_object_with_arrow_stream() -> None:
    class Exporter:
        def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
            return SAMPLE.__arrow_c_stream__(requested_schema)

    s = connect()
    s.register("x", Exporter())
    assert _rows(s, "x") == SAMPLE.to_pylist()


def test_register_datafusion_dataframe() -> None:
    s = connect()
    s.register("v", s.ctx.sql("SELECT 42 AS answer"))
    assert _rows(s, "v") == [{"answer": 42}]


def _write_all_formats(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "parquet": folder / "a.parquet",
        "csv": folder / "a.csv",
        "arrow": folder / "a.arrow",
        "feather": folder / "a.feather",
        "ipc": folder / "a.ipc",
    }
    pq.write_table(SAMPLE, paths["parquet"])
    pacsv.write_csv(SAMPLE, paths["csv"])
    with pa.OSFile(str(paths["arrow"]), "wb") as sink, ipc.new_file(sink, SAMPLE.schema) as w:
        w.write_table(SAMPLE)
    feather.write_feather(SAMPLE, paths["feather"])
    with pa.OSFile(str(paths["ipc"]), "wb") as sink, ipc.new_stream(sink, SAMPLE.schema) as w:
        w.write_table(SAMPLE)
    return paths


@pytest.mark.parametrize("kind", ["parquet", "csv", "arrow", "feather", "ipc"])
def test_register_files(tmp_path: Path, kind: str) -> None:
    paths = _write_all_formats(tmp_path)
    s = connect()
    s.register("f", paths[kind])
    assert s.schema("f").names == ["id", "label"]
    rows = _rows(s, "f")
    assert [r["id"] for r in rows] == [1, 2, 3]
    s.register("g", str(paths[kind]))  # str paths work as well
    assert len(_rows(s, "g")) == 3


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".arrow"])
def test_register_folder(tmp_path: Path, suffix: str) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(2):
        target = folder / f"part-{i}{suffix}"
        if suffix == ".parquet":
            pq.write_table(SAMPLE, target)
        elif suffix == ".csv":
            pacsv.write_csv(SAMPLE, target)
        else:
            feather.write_feather(SAMPLE, target)
    (folder / ".hidden").write_text("x")
    s = connect()
    s.register("parts", folder)
    assert len(_rows(s, "parts")) == 6


def test_register_errors(tmp_path: Path) -> None:
    s = connect()
    with pytest.raises(PopQLError) as info:
        s.register("x", tmp_path / "missing.parquet")
    assert info.value.code == "F001"

    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(PopQLError) as info:
        s.register("x", odd)
    assert info.value.code == "F002"
    assert ".xlsx" in info.value.diagnostic.message

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pq.write_table(SAMPLE, mixed / "a.parquet")
    pacsv.write_csv(SAMPLE, mixed / "b.csv")
    with pytest.raises(PopQLError) as info:
        s.register("x", mixed)
    assert info.value.code == "F002"

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PopQLError) as info:
        s.register("x", empty)
    assert info.value.code == "F001"

    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"not parquet at all")
    with pytest.raises(PopQLError) as info:
        s.register("x", corrupt)
    assert info.value.code == "F003"

    with pytest.raises(TypeError):
        s.register("x", 42)

    def failing() -> object:
        yield SAMPLE.to_batches()[0]
        raise OSError("disk gone")

    reader = pa.RecordBatchReader.from_batches(SAMPLE.schema, failing())
    with pytest.raises(PopQLError) as info:
        s.register("x", reader)
    assert info.value.code == "E001" and "disk gone" in str(info.value)
    with pytest.raises(TypeError):
        s.register("", SAMPLE)


def test_register_replaces_and_keeps_exact_names() -> None:
    s = connect()
    s.register("t", SAMPLE)
    s.register("t", SAMPLE.slice(0, 1))
    assert len(_rows(s, "t")) == 1
    s.register("Mixed Case", SAMPLE)
    s.register("a.b", SAMPLE)
    assert s.tables() == ["Mixed Case", "a.b", "t"]
    assert len(_rows(s, "a.b")) == 3
    s.deregister("a.b")
    assert "a.b" not in s.tables()


def test_schema_unknown_table() -> None:
    s = connect()
    s.register("images", SAMPLE)
    with pytest.raises(PopQLError) as info:
        s.schema("imgaes")
    assert info.value.code == "N001"
    assert "images" in " ".join(info.value.diagnostic.hints)


# ---------------------------------------------------------------------------------------------
# DataFusionCatalog
# ---------------------------------------------------------------------------------------------


def test_catalog_reflects_ddl_and_registration() -> None:
    s = connect()
    cat = s.catalog
    assert isinstance(cat, DataFusionCatalog)
    s.ctx.sql("CREATE TABLE made AS SELECT 1 AS a, 'x' AS b").collect()
    s.ctx.sql("CREATE VIEW v AS SELECT a FROM made").collect()
    s.register("Reg", SAMPLE)
    assert cat.table_names() == ["Reg", "made", "v"]
    assert cat.columns("made") == [("a", "int64"), ("b", "string")]
    assert cat.columns("v") == [("a", "int64")]
    assert cat.columns("MADE") == [("a", "int64"), ("b", "string")]  # folded to lower case
    assert cat.columns("public.made") == [("a", "int64"), ("b", "string")]
    assert cat.columns("datafusion.public.made") is not None
    assert cat.columns("nope") is None
    assert cat.columns("reg") is None  # exact-case name only
    s.ctx.sql("DROP TABLE made").collect()
    assert "made" not in cat.table_names()


def test_catalog_function_names() -> None:
    s = connect()
    names = s.catalog.function_names()
    for fn in ["abs", "count", "sum", "row_number", "lag", "coalesce", "date_trunc", "array_agg"]:
        assert fn in names
    assert names == sorted(names)

    def plus_one(arr: pa.Array) -> pa.Array:
        return pc.add(arr, 1)

    plus = datafusion.udf(plus_one, [pa.int64()], pa.int64(), "immutable", name="plus_one")
    s.ctx.register_udf(plus)
    assert "plus_one" in s.catalog.function_names()


# ---------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------


def _df(query: str = "SELECT * FROM generate_series(1, 5) AS g(x) ORDER BY x") -> Result:
    ctx = datafusion.SessionContext()
    return Result(ctx.sql(query))


def test_result_to_arrow_is_cached_and_repeatable() -> None:
    r = _df("SELECT random() AS r FROM generate_series(1, 3)")
    assert not r.materialized
    first = r.to_arrow()
    assert r.materialized
    assert r.to_arrow() is first
    assert r.to_pylist() == first.to_pylist()
    assert r.num_rows == 3
    assert [b.num_rows for b in r] == [b.num_rows for b in first.to_batches()]
    assert pa.table(r).equals(first)


def test_result_streams_once() -> None:
    r = _df()
    assert r.schema.names == ["x"]
    batches = list(r)
    assert all(isinstance(b, pa.RecordBatch) for b in batches)
    assert sum(b.num_rows for b in batches) == 5
    assert r.consumed
    with pytest.raises(ResultConsumedError):
        r.to_arrow()
    with pytest.raises(ResultConsumedError):
        list(r)
    assert "consumed" in repr(r)


def test_result_streaming_preserves_order() -> None:
    r = _df("SELECT * FROM generate_series(1, 100000) AS g(x) ORDER BY x DESC")
    values = [v for b in r for v in b.column(0).to_pylist()]
    assert values == list(range(100000, 0, -1))


def test_result_from_table_and_empty() -> None:
    r = Result(SAMPLE, kind="command")
    assert r.materialized and r.kind == "command"
    assert r.to_pylist() == SAMPLE.to_pylist()
    assert [b.num_rows for b in r] == [3]
    assert [b.num_rows for b in r] == [3]  # a materialised result iterates any number of times
    e = Result.empty()
    assert e.num_rows == 0 and e.schema.names == []
    assert repr(e) == "OK"


def test_result_empty_query_keeps_schema() -> None:
    r = _df("SELECT 1 AS a WHERE false")
    assert r.to_arrow().schema.names == ["a"]
    assert r.num_rows == 0
    assert "(0 rows)" in repr(r)


def test_result_to_pandas() -> None:
    pytest.importorskip("pandas")
    df = _df().to_pandas()
    assert list(df["x"]) == [1, 2, 3, 4, 5]


def test_result_to_pandas_without_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def fake(name: str, package: str | None = None) -> object:
        if name == "pandas":
            raise ImportError("No module named 'pandas'")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ImportError, match=r"popql\[pandas\]"):
        _df().to_pandas()


def test_result_scalar() -> None:
    assert _df("SELECT 7 AS n").scalar() == 7
    assert _df("SELECT 7 AS n WHERE false").scalar() is None
    with pytest.raises(ValueError):
        _df().scalar()


def test_result_errors_are_translated() -> None:
    seen: list[BaseException] = []

    def on_error(exc: BaseException) -> BaseException:
        seen.append(exc)
        return RuntimeError("translated")

    ctx = datafusion.SessionContext()
    r = Result(ctx.sql("SELECT 1 / 0 AS boom"), on_error=on_error)
    with pytest.raises(RuntimeError, match="translated"):
        r.to_arrow()
    r = Result(ctx.sql("SELECT 1 / 0 AS boom"), on_error=on_error)
    with pytest.raises(RuntimeError, match="translated"):
        list(r)
    assert len(seen) == 2
    assert "Divide by zero" in str(seen[0])


def test_repr_aligned_table() -> None:
    r = _df("SELECT x, x * 1.5 AS y, 'v' || x AS s FROM generate_series(1, 25) AS g(x) ORDER BY x")
    text = repr(r)
    lines = text.splitlines()
    assert lines[0].split("|")[0].strip() == "x"
    assert "int64" in lines[1] and "double" in lines[1]
    assert set(lines[2]) <= {"-", "+"}
    assert lines[-1] == "(25 rows, 20 shown)"
    assert len(lines) == 3 + 20 + 1
    bars = {tuple(i for i, ch in enumerate(line) if ch in "|+") for line in lines[:-1]}
    assert len(bars) == 1  # column separators line up on every line
    assert lines[3].startswith("  ")  # numbers are right-aligned
    html = r._repr_html_()
    assert html.startswith("<table>") and "25 rows, 20 shown" in html


def test_format_table_and_values() -> None:
    table = pa.table(
        {
            "n": pa.array([1, None], pa.int32()),
            "s": ["a\nb", "x" * 100],
            "l": [[1, 2], None],
            "m": [{"k": 1}, {"k": 2}],
            "b": [True, False],
        }
    )
    text = format_table(table, max_rows=None)
    assert "NULL" in text
    assert "a\\nb" in text
    assert "..." in text
    assert "[1, 2]" in text
    assert "{k: 1}" in text
    assert "true" in text
    assert text.endswith("(2 rows)")
    assert format_value(float("nan")) == "NaN"
    assert format_value(b"\x01\x02") == "\\x0102"
    assert format_table(SAMPLE.slice(0, 1), row_count=True).endswith("(1 row)")


# ---------------------------------------------------------------------------------------------
# Error translation (pure functions)
# ---------------------------------------------------------------------------------------------


def test_split_and_parse_fields() -> None:
    assert split_qualified('"T1"."B c"') == ("T1", "B c")
    assert split_qualified("t.a") == ("t", "a")
    assert parse_field_list('t.a, t.b, t."Mixed", "count(*)", t.a') == [
        ("t", "a"),
        ("t", "b"),
        ("t", "Mixed"),
        ("count(*)",),
    ]


def test_find_identifier_respects_quotes_and_comments() -> None:
    text = "SELECT 'x', \"x\" -- x\n, X FROM t /* x */ WHERE t.x = 1"
    assert find_identifier(text, "x") == (12, 15)  # the quoted identifier, not the string
    text2 = "SELECT 'x' -- x\n, X FROM t /* x */ WHERE t.x = 1"
    start, end = find_identifier(text2, "x") or (0, 0)
    assert text2[start:end] == "X"
    start, end = find_identifier(text2, "t.x") or (0, 0)
    assert text2[start:end] == "t.x"
    assert find_identifier("SELECT xy FROM t", "x") is None
    assert find_identifier("SELECT $$ x $$ FROM t", "x") is None
    assert find_identifier("SELECT E'it\\'s x' FROM t", "x") is None
    assert find_text("SELECT $id + 1", "$id") == (7, 10)


def test_clean_message() -> None:
    assert clean_message("DataFusion error: Arrow error: Divide by zero error") == (
        "divide by zero error"
    )
    msg = (
        "DataFusion error: Optimizer rule 'simplify_expressions' failed\ncaused by\n"
        "Arrow error: Cast error: Cannot cast string 'x' to value of Int32 type"
    )
    assert clean_message(msg) == "cannot cast string 'x' to value of Int32 type"
    assert clean_message("Execution error: Table 't' already exists") == "table 't' already exists"
    assert clean_message("SQL error: ParserError(...)").startswith("SQL error")


SOURCE = "-- leading comment\nSELECT aa, x FROM t JOIN u ON t.a = u.a;\n"
STMT = (19, 19 + len("SELECT aa, x FROM t JOIN u ON t.a = u.a"))


def test_translate_unknown_column_with_suggestion() -> None:
    msg = "Schema error: No field named aa. Did you mean 't.a'?\nValid fields are t.a, t.b, u.c."
    d = translate_message(msg, SOURCE, STMT, file="q.popql")
    assert d.code == "N002"
    assert d.message == "unknown column 'aa'"
    assert d.file == "q.popql"
    assert d.span is not None and SOURCE[d.span.start : d.span.end] == "aa"
    assert (d.span.line, d.span.column) == (2, 8)
    assert d.hints[0] == "did you mean 'a'?"
    assert "q.popql:2:8" in render([d], SOURCE, "q.popql")


def test_translate_unknown_column_without_suggestion() -> None:
    msg = 'Schema error: No field named x.\nValid fields are t.a, t.b, t."Mixed".'
    d = translate_message(msg, SOURCE, STMT)
    assert d.code == "N002" and d.message == "unknown column 'x'"
    assert d.span is not None and SOURCE[d.span.start : d.span.end] == "x"
    assert d.hints == ('available columns: a, b, "Mixed"',)


def test_translate_unknown_qualified_and_case_sensitive_column() -> None:
    msg = "Schema error: No field named t.zz. Did you mean 't.a'?\nValid fields are t.a, u.a."
    src = "SELECT t.zz FROM t, u"
    d = translate_message(msg, src)
    assert d.message == "unknown column 't.zz'"
    assert d.span is not None and src[d.span.start : d.span.end] == "t.zz"
    assert d.hints[0] == "did you mean 't.a'?"
    msg = (
        "Schema error: No field named mixed. Did you mean 't.\"Mixed\"'?\n"
        "Column names are case sensitive. You can use double quotes to refer to the "
        't."Mixed" column or disable the datafusion.sql_parser.enable_ident_normalization '
        'configuration.\nValid fields are t.a, t."Mixed".'
    )
    d = translate_message(msg, "SELECT Mixed FROM t")
    assert d.hints[0] == "did you mean '\"Mixed\"'?"
    assert "case-sensitive" in d.hints[1]


def test_translate_unknown_table() -> None:
    src = "SELECT * FROM imags"
    d = translate_message(
        "Error during planning: table 'datafusion.public.imags' not found",
        src,
        table_names=["images", "labels"],
    )
    assert d.code == "N001" and d.message == "unknown table 'imags'"
    assert d.span is not None and src[d.span.start : d.span.end] == "imags"
    assert d.hints == ("did you mean 'images'?",)
    d = translate_message(
        "Error during planning: table 'datafusion.public.zzz' not found", "SELECT 1 FROM zzz"
    )
    assert d.hints == ("no tables are registered yet",)
    d = translate_message(
        "Error during planning: table 'datafusion.s.t' not found", "SELECT 1 FROM s.t"
    )
    assert d.message == "unknown table 's.t'"


def test_translate_unknown_function() -> None:
    src = "SELECT abz(a) FROM t"
    d = translate_message(
        "Error during planning: Invalid function 'abz'.\nDid you mean 'abs'?",
        src,
        function_names=["abs", "acos"],
    )
    assert d.code == "N003" and d.message == "unknown function 'abz'"
    assert d.span is not None and src[d.span.start : d.span.end] == "abz"
    assert d.hints == ("did you mean 'abs'?",)
    d = translate_message(
        "Error during planning: table function 'read_thing' not found",
        "SELECT * FROM read_thing('x')",
    )
    assert d.code == "N003"


def test_translate_ambiguous_and_placeholder() -> None:
    d = translate_message("Schema error: Ambiguous reference to unqualified field a", SOURCE, STMT)
    assert d.code == "N005"
    d = translate_message(
        "DataFusion error: Execution error: Placeholder '$lim' was not provided a value for "
        "execution.",
        "SELECT 1 LIMIT $lim",
    )
    assert d.code == "N007" and "$lim" in d.message
    assert d.span is not None and (d.span.start, d.span.end) == (15, 19)


def test_translate_other_errors() -> None:
    d = translate_message("DataFusion error: Arrow error: Divide by zero error", "SELECT 1/0")
    assert d.code == "E001" and d.message == "divide by zero error"
    assert d.span is not None and (d.span.start, d.span.end) == (0, 10)
    assert d.hints == ()
    long = (
        "Error during planning: Function 'abs' expects 1 arguments but received 2. No function "
        "matches the given name and argument types 'abs(Int64, Int64)'. You might need to add "
        "explicit type casts.\n\tCandidate functions:\n\tabs(Numeric(1))"
    )
    d = translate_message(long, "SELECT abs(1, 2)")
    assert d.message == "function 'abs' expects 1 arguments but received 2"
    assert d.hints and "Candidate functions" in d.hints[0] and "\n" not in d.hints[0]
    d = translate_message(
        'SQL error: ParserError("Expected: an expression, found: EOF")', "SELECT", sql="SELECT"
    )
    assert d.code == "I001"
    assert any("generated SQL: SELECT" in h for h in d.hints)
    pyerr = (
        "DataFusion error: Execution error: PyErr { type: <class 'ValueError'>, value: "
        "ValueError('bad'), traceback: Some(\"Traceback (most recent call last):\\n\") }"
    )
    d = translate_message(pyerr, "SELECT f(1)")
    assert d.code == "E003" and "ValueError('bad')" in d.message


def test_translate_file_error() -> None:
    d = translate_file_error(
        "DataFusion error: Error during planning: No files found at file:///x.parquet.", "x"
    )
    assert d.code == "F001"
    d = translate_file_error("DataFusion error: Parquet error: Parquet error: too short", "x")
    assert d.code == "F003" and "too short" in d.message


def test_read_source(tmp_path: Path) -> None:
    f = tmp_path / "a.popql"
    f.write_text("SELECT 1;\r\n", encoding="utf-8", newline="")
    assert read_source(f) == "SELECT 1;\r\n"
    with pytest.raises(PopQLError) as info:
        read_source(tmp_path / "missing.popql")
    assert info.value.code == "F001" and info.value.diagnostic.file is not None
    bad = tmp_path / "bad.popql"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PopQLError) as info:
        read_source(bad)
    assert info.value.code == "F001" and "UTF-8" in info.value.diagnostic.message
    with pytest.raises(PopQLError):
        read_source(tmp_path)


# ---------------------------------------------------------------------------------------------
# Running PopQL text (needs the front end)
# ---------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("front_end")
def test_sql_runs_statements_in_order() -> None:
    s = connect()
    r = s.sql(
        "CREATE TABLE t AS SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS v(id, name);\n"
        "INSERT INTO t VALUES (3, 'c');\n"
        "SELECT id, name FROM t ORDER BY id"
    )
    assert r.kind == "query"
    assert r.to_pylist() == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
        {"id": 3, "name": "c"},
    ]
    assert "t" in s.tables()
    assert s.sql("").num_rows == 0


@pytest.mark.usefixtures("front_end")
def test_execute_materialises_all_but_last() -> None:
    s = connect()
    s.register("t", SAMPLE)
    results = s.execute(
        "SELECT count(*) AS n FROM t; INSERT INTO t VALUES (4, 'eel'); SELECT count(*) AS n FROM t"
    )
    assert [r.kind for r in results] == ["query", "command", "query"]
    assert results[0].materialized
    assert results[0].to_pylist() == [{"n": 3}]  # it ran before the INSERT
    assert results[1].materialized
    assert not results[2].materialized
    assert results[2].to_pylist() == [{"n": 4}]


@pytest.mark.usefixtures("front_end")
def test_iterate_streams_results() -> None:
    s = connect()
    it = s.iterate("SELECT 1 AS a; SELECT 2 AS b")
    first = next(it)
    assert [b.num_rows for b in first] == [1]
    second = next(it)
    assert second.to_pylist() == [{"b": 2}]
    assert list(it) == []


@pytest.mark.usefixtures("front_end")
def test_params_are_bound() -> None:
    s = connect()
    s.register("t", SAMPLE)
    r = s.sql("SELECT label FROM t WHERE id = $id", params={"id": 2})
    assert r.to_pylist() == [{"label": "dog"}]
    r = s.sql("SELECT $name AS v", params={"$name": "x'); DROP TABLE t; --"})
    assert r.to_pylist() == [{"v": "x'); DROP TABLE t; --"}]
    assert "t" in s.tables()


@pytest.mark.usefixtures("front_end")
def test_errors_are_popql_errors_with_spans() -> None:
    s = connect()
    s.register("images", SAMPLE)
    text = "SELECT id FROM images;\nSELECT nope FROM images"
    with pytest.raises(PopQLError) as info:
        s.sql(text).to_arrow()
    err = info.value
    assert err.source == text
    d = err.diagnostic
    assert d.code in {"N002", "E001"}
    assert d.span is not None and d.span.line == 2
    with pytest.raises(PopQLError) as info:
        s.sql("SELECT 1 / 0 AS x").to_arrow()
    assert info.value.code == "E001"
    with pytest.raises(PopQLError) as info:
        s.sql("SELECT id FROM imagez")
    assert info.value.code == "N001"
    assert "images" in " ".join(info.value.diagnostic.hints)


@pytest.mark.usefixtures("front_end")
def test_unexpected_exception_is_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import popql.engine.lower as lower

    def broken(stmt: object, catalog: object) -> object:
        raise KeyError("oops")

    monkeypatch.setattr(lower, "compile_statement", broken)
    s = connect()
    with pytest.raises(PopQLError) as info:
        s.sql("SELECT 1")
    d = info.value.diagnostic
    assert d.code == "I001"
    assert "KeyError" in d.message
    assert any("SELECT 1" in h for h in d.hints)


@pytest.mark.usefixtures("front_end")
def test_run_file(tmp_path: Path) -> None:
    f = tmp_path / "script.popql"
    f.write_text("CREATE TABLE t AS SELECT 1 AS a;\nSELECT a + 1 AS b FROM t;\n")
    s = connect()
    results = s.run_file(f)
    assert results[-1].to_pylist() == [{"b": 2}]
    bad = tmp_path / "bad.popql"
    bad.write_text("SELECT 1 AS a;\n\nSELECT a FROM missing_table;\n")
    with pytest.raises(PopQLError) as info:
        s.run_file(bad)
    d = info.value.diagnostic
    assert d.code == "N001" and d.file == str(bad)
    assert d.span is not None and d.span.line == 3
    with pytest.raises(PopQLError) as info:
        s.run_file(tmp_path / "missing.popql")
    assert info.value.code == "F001"


@pytest.mark.usefixtures("front_end")
def test_check_knows_created_tables_and_runs_nothing(tmp_path: Path) -> None:
    s = connect()
    s.register("images", SAMPLE)
    s.check(
        "CREATE TABLE cats AS SELECT * FROM images WHERE label = 'cat';\n"
        "INSERT INTO images VALUES (9, 'new');\n"
        "SELECT count(*) FROM cats"
    )
    assert s.tables() == ["images"]  # nothing was created or inserted in the real session
    assert len(_rows(s, "images")) == 3
    with pytest.raises(PopQLError) as info:
        s.check("SELECT 1;\nSELECT nope FROM images;\nSELECT * FROM nowhere", file="x.popql")
    codes = info.value.codes
    assert len(codes) == 2
    assert codes[1] == "N001"
    assert all(d.file == "x.popql" for d in info.value.diagnostics)


def test_has_front_end_helper() -> None:
    assert _has("popql.diagnostics")
    assert not _has("popql.no_such_module_here")
