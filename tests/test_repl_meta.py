"""The shell's meta-commands and statement handling, driven in process (repl/meta.py,
repl/shell.py) on the example tag table."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import popql.engine as pe
from popql.repl.meta import META_COMMANDS
from popql.repl.shell import Shell, default_history_path

ROOT = Path(__file__).resolve().parents[1]
TAGS = ROOT / "examples" / "tags"


class Run:
    def __init__(self, dataset: Path | None = TAGS, values: bool = False) -> None:
        self.out = io.StringIO()
        self.err = io.StringIO()
        session = pe.connect(str(dataset)) if dataset is not None else pe.connect()
        self.shell = Shell(session, stdout=self.out, stderr=self.err, env={}, load_values=values)
        self.shell.settings.timer = False

    def __call__(self, text: str) -> tuple[str, str]:
        o, e = len(self.out.getvalue()), len(self.err.getvalue())
        self.shell.handle(text)
        return self.out.getvalue()[o:], self.err.getvalue()[e:]


@pytest.fixture
def run() -> Run:
    return Run()


def test_help_lists_every_command(run: Run) -> None:
    out, err = run(".help")
    assert not err
    for name in META_COMMANDS:
        assert name in out
    assert "Ctrl-R" in out and "Ctrl-C" in out


def test_tables_and_schema(run: Run) -> None:
    out, _ = run(".tables")
    assert "samples" in out and "14" in out
    out, _ = run(".schema samples")
    assert "num_people" in out and "int32" in out and "detections" in out
    out, err = run(".schema nope")
    assert "error[N001]: unknown table 'nope'" in err


def test_tags_lists_low_cardinality_values() -> None:
    run = Run(values=True)
    run.shell.wait_for_values()
    out, _ = run(".tags")
    assert "weather" in out and "foggy, night, rainy, snowy, sunny" in out
    assert "labels" in out and "beach" in out
    assert "uri" not in out


def test_populations_duck_typed(run: Run) -> None:
    out, _ = run(".populations")
    if hasattr(run.shell.session, "population_names"):
        assert "population" in out or "no populations" in out
    else:
        assert "not available" in out

    class WithPopulations:
        def __init__(self, session: pe.Session) -> None:
            self._s = session

        def population_names(self) -> list[str]:
            return ["dark_streets"]

        def __getattr__(self, name: str) -> object:
            return getattr(self._s, name)

    run.shell.session = WithPopulations(run.shell.session)  # type: ignore[assignment]
    out, _ = run(".populations")
    assert "dark_streets" in out


def test_modes_timer_and_output(run: Run, tmp_path: Path) -> None:
    query = "SELECT weather, count(*) AS n FROM samples GROUP BY weather ORDER BY weather;"
    out, _ = run(query)
    assert out.splitlines()[0].split() == ["weather", "|", "n"]
    assert out.rstrip().endswith("(6 rows)")
    run(".mode csv")
    out, _ = run(query)
    assert out.splitlines()[:2] == ["weather,n", "foggy,31"]
    run(".mode json")
    out, _ = run(query)
    assert json.loads(out.splitlines()[0]) == {"weather": "foggy", "n": 31}
    run(".mode markdown")
    out, _ = run(query)
    assert out.startswith("| weather | n |\n| --- | ---: |")
    out, err = run(".mode xml")
    assert "error[R001]: .mode: unknown mode 'xml'" in err
    out, _ = run(".timer on")
    assert out == "timer on\n"
    out, _ = run("SELECT 1 AS one;")
    assert out.splitlines()[-1].startswith("Time: ") and out.rstrip().endswith("ms")
    _, err = run(".timer maybe")
    assert "expected on or off" in err
    target = tmp_path / "out" / "results.md"
    run(f".output {target}")
    out, _ = run("SELECT 2 AS two;")
    assert "two" not in out and "Time:" in out  # results go to the file, timing to the screen
    run(".output")
    run("SELECT 3 AS three;")
    assert target.read_text().startswith("| two |")
    assert "three" not in target.read_text()


def test_read_a_file(run: Run, tmp_path: Path) -> None:
    suite = tmp_path / "suite.popql"
    suite.write_text("SELECT 1 AS a;\n-- comment\nSELECT nope FROM samples;\n")
    out, err = run(f".read {suite}")
    assert " a" in out
    assert "error[N002]: unknown column 'nope'" in err
    assert f"--> {suite}:3:8" in err
    _, err = run(".read")
    assert "error[R001]: .read: expected a file" in err
    _, err = run(f".read {tmp_path / 'missing.popql'}")
    assert "error[F001]" in err


def test_open_switches_dataset(run: Run, tmp_path: Path) -> None:
    out, _ = run(".open")
    assert "opened an in-memory session: 0 table(s)" in out
    assert run.shell.prompt_text() == "popql> "
    out, err = run(f".open {tmp_path / 'missing'}")
    assert "error[F001]: dataset directory not found" in err
    out, _ = run(f".open {TAGS}")
    assert "1 table(s)" in out and run.shell.prompt_text() == "tags> "


def test_explain(run: Run) -> None:
    out, _ = run(".explain SELECT uri FROM samples WHERE labels TAGGED 'night'")
    assert "array_has(labels, 'night')" in out
    assert "-- logical_plan:" in out and "-- physical_plan:" in out
    run(".explain on")
    out, _ = run("SELECT count(*) AS n FROM samples WHERE labels TAGGED ALL ('night', 'street');")
    assert "array_has_all(labels, make_array('night', 'street'))" in out
    _, err = run(".explain SELECT brightnes FROM samples")
    assert "error[N002]" in err and "^^^^^^^^^" in err


def test_unknown_meta_command_snapshot(run: Run) -> None:
    _, err = run(".tabels")
    assert err == (
        "error[R001]: .tabels: unknown meta-command\n  = hint: did you mean '.tables' or '.tags'?\n"
    )


def test_multiline_error_caret_under_the_token(run: Run) -> None:
    _, err = run("SELECT uri,\n       brightnes\nFROM samples;")
    assert err == (
        "error[N002]: unknown column 'brightnes'\n"
        " --> <repl>:2:8\n"
        "  |\n"
        "2 |        brightnes\n"
        "  |        ^^^^^^^^^\n"
        "  = hint: did you mean 'brightness'?\n"
    )


def test_commands_and_several_statements(run: Run) -> None:
    out, err = run("CREATE TABLE t AS SELECT 1 AS x; SELECT x + 1 AS y FROM t;")
    assert not err
    assert out.startswith("OK\n") and " y" in out
    assert "t" in run.shell.metadata.tables  # the catalog snapshot is refreshed


def test_ctrl_c_cancels_a_running_query(run: Run) -> None:
    """SIGINT while a long query streams: E002, the shell goes on, and the next query runs."""
    long_query = (
        "SELECT count(*) FROM generate_series(1, 100000) a CROSS JOIN generate_series(1, 100000)"
        " b WHERE (a.value * b.value) % 7 = 3;"
    )
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    start = time.perf_counter()
    timer.start()
    try:
        _, err = run(long_query)
    finally:
        timer.cancel()
    took = time.perf_counter() - start
    assert "error[E002]: query cancelled (Ctrl-C)" in err
    assert took < 30
    out, err = run("SELECT 42 AS answer;")
    assert "42" in out and not err


def test_history_path(tmp_path: Path) -> None:
    assert default_history_path({"POPQL_HISTORY": str(tmp_path / "h")}) == tmp_path / "h"
    assert default_history_path({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "popql" / "history"


def test_cli_repl_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from popql.repl.cli import main

    assert main(["repl", "--help"]) == 0
    assert "usage: popql repl [-h] [--register NAME=PATH] [DATASET]" in capsys.readouterr().out
    assert main(["repl", str(tmp_path / "missing")]) == 1
    assert "error[F001]: dataset directory not found" in capsys.readouterr().err
    # without a terminal, `popql` alone prints the help (tests/test_repl_tmux.py opens the
    # shell on a terminal)
    assert main([]) == 0
    assert "repl" in capsys.readouterr().out
