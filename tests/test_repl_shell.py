"""The shell's prompt driven through prompt_toolkit's pipe input (in process): multi-line
editing, Enter accepting a completion, Ctrl-C at the prompt, Ctrl-D, the history file."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

import popql.engine as pe
from popql.repl.shell import Shell

ROOT = Path(__file__).resolve().parents[1]
TAGS = ROOT / "examples" / "tags"


def _wait(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the shell did not get there in time")
        time.sleep(0.02)


def drive(
    tmp_path: Path, script: Callable[[Callable[[str], None], object], None]
) -> tuple[str, str, Shell]:
    out, err = io.StringIO(), io.StringIO()
    with create_pipe_input() as pipe:
        shell = Shell(
            pe.connect(str(TAGS)),
            stdout=out,
            stderr=err,
            env={},
            pt_input=pipe,
            pt_output=DummyOutput(),
            history_path=tmp_path / "history",
            load_values=False,
        )
        shell.settings.timer = False
        prompt = shell.prompt_session()
        shell.prompt_session = lambda: prompt  # type: ignore[method-assign]
        failure: list[BaseException] = []

        def feed() -> None:
            try:
                script(pipe.send_text, prompt.default_buffer)
            except BaseException as exc:  # reported by the test below
                failure.append(exc)
                pipe.send_text("\x03\x04")

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        assert shell.run() == 0
        feeder.join(10)
        if failure:
            raise failure[0]
    return out.getvalue(), err.getvalue(), shell


def test_multiline_completion_ctrl_c_and_ctrl_d(tmp_path: Path) -> None:
    def script(send: Callable[[str], None], buffer: object) -> None:
        text = lambda: buffer.text  # type: ignore[attr-defined]  # noqa: E731
        state = lambda: buffer.complete_state  # type: ignore[attr-defined]  # noqa: E731
        send("SELECT count(*) AS n\r")  # no ';' yet: a new line
        _wait(lambda: text() == "SELECT count(*) AS n\n")
        send("FROM sam")
        _wait(lambda: state() is not None and len(state().completions) == 1)  # while typing
        send("\t")  # Tab selects it
        _wait(lambda: text().endswith("FROM samples"))
        send("\r")  # Enter accepts the completion, and does not run yet
        _wait(lambda: state() is None or state().current_completion is None)
        assert text().endswith("FROM samples")
        send("\rWHERE labels TAGGED 'night';\r")
        _wait(lambda: text() == "")
        send("SELECT 'abandoned'")
        _wait(lambda: text() == "SELECT 'abandoned'")
        send("\x03")  # Ctrl-C clears the buffer, the shell stays
        _wait(lambda: text() == "")
        send(".tables\r")
        _wait(lambda: text() == "")
        send("\x04")  # Ctrl-D on an empty line leaves

    out, err, _ = drive(tmp_path, script)
    assert not err
    assert out.split("\n")[:5] == [" n", " int64", "-------", "    23", "(1 row)"]
    assert "abandoned" not in out
    assert " samples | " in out  # .tables ran after the Ctrl-C
    history = (tmp_path / "history").read_text()
    assert "+SELECT count(*) AS n\n+FROM samples\n+WHERE labels TAGGED 'night';" in history
    assert "abandoned" not in history


def test_history_is_read_by_the_next_session(tmp_path: Path) -> None:
    def first(send: Callable[[str], None], buffer: object) -> None:
        send("SELECT 41 + 1 AS answer;\r")
        _wait(lambda: buffer.text == "")  # type: ignore[attr-defined]
        send("\x04")

    drive(tmp_path, first)

    def second(send: Callable[[str], None], buffer: object) -> None:
        send("\x1b[A")  # Up: the previous session's statement
        _wait(lambda: buffer.text == "SELECT 41 + 1 AS answer;")  # type: ignore[attr-defined]
        send("\r")
        _wait(lambda: buffer.text == "")  # type: ignore[attr-defined]
        send("\x04")

    out, err, _ = drive(tmp_path, second)
    assert "42" in out and not err


@pytest.mark.parametrize("line", [".quit", ".exit"])
def test_quit(tmp_path: Path, line: str) -> None:
    def script(send: Callable[[str], None], buffer: object) -> None:
        send(line + "\r")

    out, err, _ = drive(tmp_path, script)
    assert not out and not err
