"""Completion in the shell as pure functions over strings (repl/completion.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

import popql.engine as pe
from popql.repl.completion import (
    ColumnMeta,
    Metadata,
    PopQLCompleter,
    complete,
    load_metadata,
    load_tag_values,
    split_statements,
    statement_complete,
    tokenize,
)
from popql.repl.meta import META_COMMANDS
from popql.repl.shell import should_submit


class FakeCatalog:
    """A catalog as a session will offer it, with the two methods other work adds."""

    def table_names(self) -> list[str]:
        return ["samples", "preds", "tags.image_stats@1"]

    def columns(self, table: str) -> list[tuple[str, str]] | None:
        return {
            "samples": [
                ("sample_id", "string"),
                ("uri", "string"),
                ("weather", "string"),
                ("num_people", "int64"),
                ("labels", "list<item: string>"),
                ("Brightness", "float"),
            ],
            "preds": [("sample_id", "string"), ("score", "double"), ("predicted", "string")],
            "tags.image_stats@1": [("sample_id", "string"), ("brightness", "float")],
        }.get(table)

    def function_names(self) -> list[str]:
        return ["abs", "avg", "count", "array_has", "similarity_fn"]

    def population_names(self) -> list[str]:
        return ["dark_streets", "night_beach"]

    def model_names(self) -> list[str]:
        return ["resnet", "resnet_v2"]

    def embedder_names(self) -> list[str]:
        return ["clip", "fmnist-clip"]


@pytest.fixture
def meta() -> Metadata:
    m = load_metadata(FakeCatalog())
    m.meta_commands = tuple(META_COMMANDS)
    m.tag_values[("samples", "weather")] = ("foggy", "rainy", "sunny")
    m.tag_values[("samples", "labels")] = ("beach", "night", "street", "it's")
    return m


def texts(text: str, meta: Metadata, cursor: int | None = None, **kw: object) -> list[str]:
    return [s.text for s in complete(text, cursor, meta, **kw)]  # type: ignore[arg-type]


def test_load_metadata_reads_the_fake_catalog(meta: Metadata) -> None:
    assert list(meta.tables) == ["samples", "preds", "tags.image_stats@1"]
    assert meta.populations == ["dark_streets", "night_beach"]
    assert meta.models == ["resnet", "resnet_v2"]
    assert meta.embedders == ["clip", "fmnist-clip"]
    assert "avg" in meta.functions


def test_load_metadata_without_the_optional_methods() -> None:
    class Plain:
        def table_names(self) -> list[str]:
            return ["t"]

        def columns(self, table: str) -> list[tuple[str, str]]:
            return [("a", "int64")]

        def function_names(self) -> list[str]:
            return []

    m = load_metadata(Plain())
    assert m.populations == [] and m.models == [] and m.embedders == []
    assert m.columns_of("T") == (ColumnMeta("a", "int64"),)


def test_statement_start(meta: Metadata) -> None:
    assert texts("", meta)[: len(META_COMMANDS)] == list(META_COMMANDS)
    assert texts("SEL", meta) == ["SELECT"]
    assert texts("sel", meta) == ["select"]  # the case the user types
    assert "HOLD OUT" in texts("HO", meta)
    assert texts("CREATE POP", meta)[0] == "POPULATION"
    assert texts("FIND ", meta)[0] == "FAILURES FOR MODEL"
    # after a ';' a new statement starts; meta-commands only at the start of the input
    assert texts("SELECT 1; SEL", meta) == ["SELECT"]
    assert not any(t.startswith(".") for t in texts("SELECT 1; ", meta))


def test_replacement_span(meta: Metadata) -> None:
    [s] = complete("SELECT * FROM sam", None, meta)
    assert (s.text, s.start, s.kind, s.meta) == ("samples", -3, "table", "table")


def test_tables_after_from_join_and_quoting(meta: Metadata) -> None:
    assert texts("SELECT * FROM ", meta) == [
        "samples",
        "preds",
        '"tags.image_stats@1"',
        "dark_streets",  # populations are queried like tables
        "night_beach",
    ]
    assert texts("INSERT INTO ", meta) == ["samples", "preds", '"tags.image_stats@1"']
    assert texts("SELECT * FROM samples s JOIN pr", meta) == ["preds"]
    assert texts("DESCRIBE ta", meta) == ['"tags.image_stats@1"']
    # substring matches come after prefix matches
    assert texts("SELECT * FROM s", meta) == [
        "samples",
        "preds",
        '"tags.image_stats@1"',
        "dark_streets",
    ]


def test_columns_of_the_statement_tables(meta: Metadata) -> None:
    got = texts("SELECT  FROM preds", meta, cursor=7)
    assert got[:3] == ["sample_id", "score", "predicted"]
    assert "weather" not in got
    # tag columns first, quoted when needed
    got = texts("SELECT * FROM samples WHERE ", meta)
    assert got[:2] == ["weather", "labels"]
    assert '"Brightness"' in got
    assert texts("SELECT * FROM samples WHERE num", meta)[0] == "num_people"


def test_columns_after_an_alias(meta: Metadata) -> None:
    text = "SELECT p.sc FROM samples AS s JOIN preds p ON s.sample_id = p.sample_id"
    assert texts(text, meta, cursor=len("SELECT p.sc")) == ["score"]
    assert texts("SELECT s. FROM samples s", meta, cursor=9)[:2] == ["sample_id", "uri"]
    assert texts("SELECT zz. FROM samples s", meta, cursor=10) == []


def test_columns_of_all_tables_without_from(meta: Metadata) -> None:
    got = complete("SELECT wea", None, meta)
    assert (got[0].text, got[0].meta) == ("weather", "samples.weather")


def test_keywords_and_functions(meta: Metadata) -> None:
    assert "avg" in texts("SELECT av", meta)
    assert texts("SELECT * FROM samples WHERE num_people > 2 OR", meta)[0] == "ORDER BY"
    got = texts("SELECT * FROM samples WHERE num_people > 2 ", meta)
    assert got[:2] == ["FROM", "WHERE"]
    assert "SIMILAR TO" in got and "TAGGED" in got


def test_populations_models_and_embedders(meta: Metadata) -> None:
    pops = ["dark_streets", "night_beach"]
    assert texts("HOLD OUT 10 PERCENT OF ", meta) == pops
    assert texts("EVALUATE resnet ON ", meta) == pops
    assert texts("EVALUATE resnet ON dark_streets, n", meta) == ["night_beach"]
    assert texts("EXPECT accuracy >= 0.9 ON d", meta) == ["dark_streets"]
    assert texts("DROP POPULATION ", meta) == pops
    assert texts("FREEZE POPULATION ni", meta) == ["night_beach"]
    assert texts("EVALUATE ", meta) == ["resnet", "resnet_v2"]
    assert texts("FIND FAILURES FOR MODEL res", meta) == ["resnet", "resnet_v2"]
    assert texts("COMPARE resnet WITH r", meta) == ["resnet", "resnet_v2"]
    similar = "SELECT uri FROM samples WHERE image SIMILAR TO 'a dog' THRESHOLD 0.2 USING "
    assert texts(similar, meta) == ["clip", '"fmnist-clip"']
    assert texts("SELECT uri FROM samples WHERE NEAR IMAGE 'a.jpg' USING f", meta) == [
        '"fmnist-clip"'
    ]
    # a join's USING is not an embedder
    assert "clip" not in texts("SELECT * FROM samples JOIN preds USING ", meta)


def test_tag_values_inside_strings(meta: Metadata) -> None:
    [s] = complete("SELECT * FROM samples WHERE weather = 'su", None, meta)
    assert (s.text, s.start, s.kind) == ("sunny'", -2, "value")
    assert texts("SELECT * FROM samples WHERE weather IN ('rainy', '", meta) == [
        "foggy'",
        "rainy'",
        "sunny'",
    ]
    assert texts("SELECT * FROM samples s WHERE s.weather <> 'r", meta) == ["rainy'"]
    assert texts("SELECT * FROM samples WHERE labels TAGGED 'n", meta) == ["night'"]
    got = texts("SELECT * FROM samples WHERE labels TAGGED ALL ('beach', 's", meta)
    assert got == ["street'", "it''s'"]  # prefix matches, then substring matches
    # TAGGED without a column: the default labels column; quotes are doubled
    assert texts("SELECT * FROM samples WHERE TAGGED 'it", meta) == ["it''s'"]
    # free text is not completed
    assert texts("SELECT * FROM samples WHERE image SIMILAR TO 'a s", meta) == []
    assert texts("SELECT * FROM samples WHERE uri = 'a", meta) == []


def test_no_completion_in_comments_or_numbers(meta: Metadata) -> None:
    assert texts("SELECT * FROM samples -- sam", meta) == []
    assert texts("SELECT * /* FROM sam", meta) == []
    assert texts("SELECT 12", meta) == []


def test_file_paths_inside_near_image(tmp_path: Path, meta: Metadata) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    (tmp_path / "photos" / "cow.PNG").write_bytes(b"x")
    (tmp_path / "photos" / "notes.txt").write_text("x")
    (tmp_path / "photos" / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "photos" / "more").mkdir()
    got = complete("SELECT uri FROM samples WHERE NEAR IMAGE 'photos/c", None, meta, cwd=tmp_path)
    assert [(s.text, s.start) for s in got] == [("cat.jpg", -1), ("cow.PNG", -1)]
    got = texts("SELECT uri FROM samples WHERE NEAR IMAGE 'photos/", meta, cwd=tmp_path)
    assert got == ["cat.jpg", "cow.PNG", "more/"]
    absolute = f"SELECT uri FROM samples WHERE NEAR IMAGE '{tmp_path}/ph"
    assert texts(absolute, meta) == ["photos/"]
    assert texts("IMPORT PREDICTIONS FOR MODEL m FROM 'photos/n", meta, cwd=tmp_path) == [
        "notes.txt"
    ]
    assert texts("SELECT uri FROM samples WHERE NEAR IMAGE 'nowhere/", meta, cwd=tmp_path) == []


def test_meta_commands(tmp_path: Path, meta: Metadata) -> None:
    assert texts(".ta", meta) == [".tables", ".tags"]
    assert texts(".schema s", meta) == ["samples", "preds", "tags.image_stats@1"]
    assert texts(".timer o", meta) == ["on", "off"]
    assert texts(".mode m", meta) == ["markdown"]
    (tmp_path / "suite.popql").write_text("SELECT 1;")
    (tmp_path / "data.csv").write_text("a")
    (tmp_path / "ds").mkdir()
    assert texts(".read ", meta, cwd=tmp_path) == ["ds/", "suite.popql"]
    assert texts(".open ", meta, cwd=tmp_path) == ["ds/"]
    assert texts(".output d", meta, cwd=tmp_path) == ["data.csv", "ds/"]
    assert texts(".explain SELECT * FROM sa", meta) == ["samples"]


def test_tokenize_and_statement_ends() -> None:
    kinds = [t.kind for t in tokenize("SELECT 'a;b' -- x;\n\"q\" 'open")]
    assert kinds == ["word", "ws", "string", "ws", "comment", "ws", "qname", "ws", "ustring"]
    assert statement_complete("SELECT 1;")
    assert statement_complete("SELECT 1; -- done\n")
    assert not statement_complete("SELECT ';'")
    assert not statement_complete("SELECT 1 -- ;")
    assert not statement_complete("SELECT 1 /* ; */")
    assert split_statements("a; 'b;c'; d") == [(0, 1), (2, 8), (9, 11)]
    assert should_submit("") and should_submit(".tables") and should_submit("SELECT\n1;")
    assert not should_submit("SELECT\n1")


def test_tag_values_from_a_session() -> None:
    session = pe.connect()
    session.register(
        "samples",
        pa.table(
            {
                "sample_id": [f"s{i}" for i in range(100)],
                "weather": ["sunny", "rainy", None, "foggy"] * 25,
                "caption": [f"caption {i}" for i in range(100)],  # too many values
                "labels": [["night", "street"], [], None, ["beach"]] * 25,
            }
        ),
    )
    m = load_metadata(session)
    assert load_tag_values(session, m) == 3  # weather, caption, labels (not sample_id)
    assert m.tag_values[("samples", "weather")] == ("foggy", "rainy", "sunny")
    assert m.tag_values[("samples", "labels")] == ("beach", "night", "street")
    assert m.tag_values[("samples", "caption")] == ()
    assert texts("SELECT * FROM samples WHERE weather = '", m) == ["foggy'", "rainy'", "sunny'"]
    # a second load keeps what is known and reads nothing new
    assert load_tag_values(session, load_metadata(session, previous=m)) == 0


def test_prompt_toolkit_adapter(meta: Metadata) -> None:
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    completer = PopQLCompleter(lambda: meta)
    got = list(completer.get_completions(Document("SELECT * FROM sa"), CompleteEvent()))
    assert [(c.text, c.start_position, c.display_meta_text) for c in got] == [
        ("samples", -2, "table")
    ]
