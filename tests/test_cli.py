"""Tests for the ``popql`` command line (popql.repl.cli), driven through ``main([...])``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from popql.repl import cli
from popql.repl.cli import main

SAMPLE = pa.table({"id": [1, 2, 3], "label": ["cat", "dog", None]})


@pytest.fixture
def front_end() -> None:
    """Skip unless the parser and the lowering exist."""
    pytest.importorskip("popql.syntax")
    pytest.importorskip("popql.engine.lower")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    path = tmp_path / "images.parquet"
    pq.write_table(SAMPLE, path)
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    (root / "tables").mkdir(parents=True)
    pq.write_table(SAMPLE, root / "tables" / "images.parquet")
    return root


# ---------------------------------------------------------------------------------------------
# usage, help, exit codes that need no front end
# ---------------------------------------------------------------------------------------------


def test_no_arguments_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: popql" in out
    for command in ("query", "run", "fmt", "check"):
        assert command in out
    assert "exit codes" in out


def test_help_epilog_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "130"):
        assert f"  {code}" in out
    assert main(["check", "--help"]) == 0
    assert "exit codes" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("popql ")


@pytest.mark.parametrize(
    "argv",
    [
        ["bogus"],
        ["query"],
        ["query", "SELECT 1", "--format", "xml"],
        ["fmt"],
        ["check", "--format", "table", "x.popql"],
        ["query", "SELECT 1", "--register", "no-equals-sign"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "error" in captured.err
    assert "Traceback" not in captured.err


def test_missing_file_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.popql")
    assert main(["run", missing]) == 1
    err = capsys.readouterr().err
    assert "F001" in err and "nope.popql" in err
    assert "Traceback" not in err


def test_missing_dataset_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["query", "SELECT 1", "--dataset", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "F001" in err and "dataset" in err
    assert not (tmp_path / "nope").exists()  # not created by a typo


def test_missing_registered_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "SELECT 1", "--register", f"t={tmp_path / 'x.parquet'}"]) == 1
    err = capsys.readouterr().err
    assert "F001" in err and "Traceback" not in err


def test_keyboard_interrupt_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_query", interrupted)
    assert main(["query", "SELECT 1"]) == 130
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_unexpected_exception_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: object) -> int:
        raise ValueError("boom")

    monkeypatch.setattr(cli, "_cmd_run", broken)
    assert main(["run", "x.popql"]) == 3
    err = capsys.readouterr().err
    assert "I001" in err and "ValueError: boom" in err


def test_colour_only_for_terminals(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert cli._use_color()
    monkeypatch.setenv("NO_COLOR", "1")
    assert not cli._use_color()


def test_python_dash_m(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "popql.repl", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: popql" in proc.stdout


# ---------------------------------------------------------------------------------------------
# query / run (need the front end)
# ---------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("front_end")
def test_query_table_output(images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["query", "SELECT id, label FROM t ORDER BY id", "--register", f"t={images}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0].split() == ["id", "|", "label"]
    assert "NULL" in captured.out
    assert lines[-1] == "(3 rows)"


@pytest.mark.usefixtures("front_end")
def test_query_csv_and_json(images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT id, label FROM t ORDER BY id"
    assert main(["query", sql, "--register", f"t={images}", "--format", "csv"]) == 0
    assert capsys.readouterr().out == "id,label\n1,cat\n2,dog\n3,\n"
    assert main(["query", sql, "--register", f"t={images}", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == SAMPLE.to_pylist()


@pytest.mark.usefixtures("front_end")
def test_query_with_dataset(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT count(*) AS n FROM images"
    assert main(["query", sql, "--dataset", str(dataset), "--format", "csv"]) == 0
    assert capsys.readouterr().out == "n\n3\n"


@pytest.mark.usefixtures("front_end")
def test_query_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("SELECT 41 + 1 AS answer"))
    assert main(["query", "-", "--format", "csv"]) == 0
    assert capsys.readouterr().out == "answer\n42\n"


@pytest.mark.usefixtures("front_end")
def test_query_error_is_rendered(images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["query", "SELECT nope FROM t", "--register", f"t={images}"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert "<query>:1:8" in captured.err
    assert "^^^^" in captured.err
    assert "Traceback" not in captured.err
    assert "\x1b[" not in captured.err  # no colour when stderr is not a terminal


@pytest.mark.usefixtures("front_end")
def test_query_error_as_json(images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["query", "SELECT * FROM nowhere", "--format", "json"])
    captured = capsys.readouterr()
    assert code == 1
    diags = json.loads(captured.err)
    assert diags[0]["code"] == "N001"
    assert diags[0]["span"]["column"] == 15


@pytest.mark.usefixtures("front_end")
def test_run_prints_each_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "s.popql"
    script.write_text(
        "CREATE TABLE t AS SELECT 1 AS a;\n"
        "SELECT a FROM t;\n"
        "INSERT INTO t VALUES (2);\n"
        "SELECT count(*) AS n FROM t;\n"
    )
    assert main(["run", str(script), "--format", "csv"]) == 0
    assert capsys.readouterr().out == "a\n1\n\nn\n2\n"


@pytest.mark.usefixtures("front_end")
def test_run_error_points_into_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "s.popql"
    script.write_text("SELECT 1 AS a;\n\nSELECT 1 / 0 AS boom;\n")
    assert main(["run", str(script), "--format", "csv"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "a\n1\n"  # the first statement's result was printed
    assert f"{script}:3:1" in captured.err
    assert "E001" in captured.err


@pytest.mark.usefixtures("front_end")
def test_internal_error_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import popql.engine.lower as lower

    def broken(stmt: object, catalog: object) -> object:
        raise AttributeError("bug")

    monkeypatch.setattr(lower, "compile_statement", broken)
    assert main(["query", "SELECT 1"]) == 3
    err = capsys.readouterr().err
    assert "I001" in err and "AttributeError" in err


# ---------------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("front_end")
def test_check_ok_and_created_tables(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.popql"
    good.write_text(
        "CREATE TABLE cats AS SELECT * FROM images WHERE label = 'cat';\n"
        "SELECT count(*) FROM cats;\n"
    )
    assert main(["check", str(good), "--dataset", str(dataset)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    # nothing was written to the dataset
    assert sorted(p.name for p in (dataset / "tables").iterdir()) == ["images.parquet"]


@pytest.mark.usefixtures("front_end")
def test_check_reports_errors(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.popql"
    bad.write_text("SELECT id FROM images;\nSELECT idd FROM images;\n")
    unknown = tmp_path / "unknown.popql"
    unknown.write_text("SELECT * FROM images_v2;\n")
    assert main(["check", str(bad), str(unknown), "--dataset", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2:8" in err
    assert f"{unknown}:1:15" in err
    assert "did you mean 'id'?" in err

    assert main(["check", str(bad), "--dataset", str(dataset), "--format", "json"]) == 1
    diags = json.loads(capsys.readouterr().out)
    assert [d["code"] for d in diags] == ["N002"]
    assert diags[0]["file"] == str(bad)


@pytest.mark.usefixtures("front_end")
def test_check_without_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "a.popql"
    f.write_text("CREATE TABLE t AS SELECT 1 AS a;\nSELECT a FROM t;\n")
    assert main(["check", str(f)]) == 0
    f.write_text("SELECT a FROM t;\n")
    assert main(["check", str(f)]) == 1
    assert "N001" in capsys.readouterr().err


@pytest.mark.usefixtures("front_end")
def test_check_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "a.popql"
    f.write_text("SELECT FROM WHERE;\n")
    assert main(["check", str(f), "--format", "json"]) == 1
    diags = json.loads(capsys.readouterr().out)
    assert diags and diags[0]["code"].startswith("P")


# ---------------------------------------------------------------------------------------------
# fmt
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def formatter() -> None:
    pytest.importorskip("popql.syntax")
    pytest.importorskip("popql.format")


def _canonical(text: str) -> str:
    from popql.format import format_script
    from popql.syntax import parse

    return format_script(parse(text))


@pytest.mark.usefixtures("formatter")
def test_fmt_rewrites_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    messy = "select   1 as a;\nselect *    from t where x>1\n"
    f = tmp_path / "a.popql"
    f.write_text(messy)
    expected = _canonical(messy)
    assert expected != messy

    assert main(["fmt", "--check", str(f)]) == 1
    assert "would reformat" in capsys.readouterr().err
    assert f.read_text() == messy

    assert main(["fmt", "--diff", str(f)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("---") and "+++" in out
    assert f.read_text() == messy

    assert main(["fmt", str(f)]) == 0
    assert "reformatted" in capsys.readouterr().err
    assert f.read_text() == expected

    assert main(["fmt", "--check", str(f)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


@pytest.mark.usefixtures("formatter")
def test_fmt_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.popql"
    broken.write_text("SELECT (1;\n")
    assert main(["fmt", str(broken), str(tmp_path / "missing.popql")]) == 1
    err = capsys.readouterr().err
    assert f"{broken}:1:" in err
    assert "F001" in err
    assert "Traceback" not in err
    assert broken.read_text() == "SELECT (1;\n"


@pytest.mark.usefixtures("formatter")
def test_fmt_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("select 1"))
    assert main(["fmt", "-"]) == 0
    assert capsys.readouterr().out == _canonical("select 1")
