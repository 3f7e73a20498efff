"""The real shell in a real terminal: ``popql repl`` runs in tmux, keys are sent with
send-keys and the screen is read with capture-pane.

Covers what only a terminal shows: the caret under a typo in a multi-line statement (in
colour), Tab completion (tables, tag values), a tag query, a similarity query, Ctrl-C
cancelling a long query without leaving, Ctrl-D leaving, long results in the pager, and the
history found again (Up, Ctrl-R) by the next session, which ``popql`` alone opens.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)"
)

ROOT = Path(__file__).resolve().parents[1]
TAGS = ROOT / "examples" / "tags"
LONG_QUERY = (
    "SELECT count(*) FROM generate_series(1, 100000) a CROSS JOIN generate_series(1, 100000) b "
    "WHERE (a.value * b.value) % 7 = 3;"
)


class Terminal:
    """One tmux server (its own socket) running one command in a 120x40 pane."""

    def __init__(self, command: str, env: dict[str, str], cwd: Path = ROOT) -> None:
        self.socket = f"popql-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        full_env = {**os.environ, **env, "TERM": "xterm-256color"}
        full_env.pop("TMUX", None)
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        script = f"cd {shlex.quote(str(cwd))} && env {exports} {command}; echo EXITED:$?; sleep 600"
        self._tmux("new-session", "-d", "-s", "t", "-x", "120", "-y", "40", script, env=full_env)

    def _tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=True,
        )
        return done.stdout

    def type(self, text: str) -> None:
        if text.endswith(";"):  # tmux reads a trailing ';' as its command separator
            text = text[:-1] + "\\;"
        self._tmux("send-keys", "-t", "t", "-l", text)

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def screen(self, escapes: bool = False) -> str:
        flags = ["-e"] if escapes else []
        return self._tmux("capture-pane", "-p", "-J", "-t", "t", "-S", "-2000", *flags)

    def wait_for(self, what: str | Callable[[str], bool], timeout: float = 90.0) -> str:
        test = (lambda s: what in s) if isinstance(what, str) else what
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if test(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what!r}; the screen:\n{screen}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def popql_command(*args: str) -> str:
    return " ".join(shlex.quote(a) for a in (sys.executable, "-m", "popql.repl", *args))


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for t in opened:
        t.close()


def prompts(screen: str, prompt: str) -> int:
    # capture-pane drops the space after an empty prompt
    return len(re.findall(rf"^{re.escape(prompt.rstrip())}", screen, re.M))


def test_shell_in_a_terminal(tmp_path: Path, terminals: list[Terminal]) -> None:
    env = {"POPQL_HISTORY": str(tmp_path / "history"), "PAGER": "less -SRXF"}
    term = Terminal(popql_command("repl", str(TAGS)), env)
    terminals.append(term)
    term.wait_for(lambda s: prompts(s, "tags> ") == 1)

    # a multi-line statement with a typo on its second line: the caret is under it
    term.type("SELECT uri,")
    term.keys("Enter")
    term.type("       brightnes")
    term.keys("Enter")
    term.type("FROM samples;")
    term.keys("Enter")
    screen = term.wait_for("--> <repl>:2:8")
    lines = screen.splitlines()
    i = lines.index("2 |        brightnes")
    assert lines[i + 1] == "  |        ^^^^^^^^^"
    assert "= hint: did you mean 'brightness'?" in screen
    coloured = next(x for x in term.screen(escapes=True).splitlines() if "N002" in x)
    assert "\x1b[" in coloured  # diagnostics in colour on a terminal

    # completion: a table name, then a tag value read from the data
    term.type("SELECT count(*) AS n FROM sam")
    term.wait_for("samples  table")
    term.keys("Tab")
    term.wait_for("FROM samples")
    term.keys("Enter")  # accepts the completion; the statement has no ';' yet
    term.type(" WHERE labels TAGGED 'nig")
    term.wait_for("night  labels")  # tag values, read in the background
    term.keys("Tab")
    term.wait_for("TAGGED 'night'")
    term.keys("Enter")
    term.type(";")
    term.keys("Enter")
    screen = term.wait_for(lambda s: re.search(r"^\s+23\s*$", s, re.M) is not None)
    assert "(1 row)" in screen and "Time: " in screen

    # Ctrl-C cancels a long query and the shell goes on
    before = prompts(term.screen(), "tags> ")
    term.type(LONG_QUERY)
    term.keys("Enter")
    time.sleep(1.5)
    assert "E002" not in term.screen()
    start = time.monotonic()
    term.keys("C-c")
    screen = term.wait_for("error[E002]: query cancelled (Ctrl-C)")
    cancel_latency = time.monotonic() - start
    term.wait_for(lambda s: prompts(s, "tags> ") == before + 1)
    print(f"Ctrl-C to E002: {cancel_latency:.2f} s")
    assert cancel_latency < 60  # datafusion checks signals once a second; slower under load
    term.type("SELECT 41 + 1 AS answer;")
    term.keys("Enter")
    term.wait_for(lambda s: re.search(r"^\s+42\s*$", s, re.M) is not None)

    # a result taller than the terminal goes through the pager
    if shutil.which("less") is not None:
        term.type("SELECT value FROM generate_series(1, 300) ORDER BY value;")
        term.keys("Enter")
        screen = term.wait_for(lambda s: s.rstrip().endswith(":"))
        assert re.search(r"^\s+30\s*$", screen, re.M)
        assert not re.search(r"^\s+299\s*$", screen, re.M)
        term.keys("q")
        term.wait_for(lambda s: s.rstrip().endswith("tags>"))

    # Ctrl-D leaves
    term.keys("C-d")
    term.wait_for("EXITED:0")

    # the next session (`popql` alone on a terminal opens the shell) finds the history
    term2 = Terminal(popql_command(), env)
    terminals.append(term2)
    term2.wait_for(lambda s: prompts(s, "popql> ") == 1)
    term2.keys("Up", "Up")
    term2.wait_for("popql> SELECT 41 + 1 AS answer;")
    term2.keys("C-c")  # clear the line, then search the history backwards
    term2.wait_for(lambda s: s.rstrip().endswith("popql>"))
    term2.keys("C-r")
    term2.type("brightnes")
    term2.wait_for("I-search backward: brightnes")
    term2.keys("Enter")  # accept the search result: the multi-line statement is back
    term2.wait_for(lambda s: "I-search" not in s and "...>        brightnes" in s)
    term2.keys("Enter")  # run it: in memory there is no table samples
    term2.wait_for("error[N001]: unknown table 'samples'")
    term2.keys("C-d")
    term2.wait_for("EXITED:0")
    history = (tmp_path / "history").read_text()
    assert "+SELECT uri,\n+       brightnes\n+FROM samples;" in history


def test_similarity_query_in_a_terminal(tmp_path: Path, terminals: list[Terminal]) -> None:
    from fmnist_data import build

    dataset = build(tmp_path, 60)
    env = {"POPQL_HISTORY": str(tmp_path / "history"), "POPQL_PAGER": ""}
    term = Terminal(popql_command("repl", str(dataset)), env)
    terminals.append(term)
    term.wait_for(lambda s: prompts(s, "ds> ") == 1)
    term.type("SELECT label, count(*) AS n FROM samples")
    term.keys("Enter")
    term.type("WHERE image SIMILAR TO 'a photo of a sneaker' TOP 5 USING fm")
    term.wait_for("fmnist_clip  embedder")  # the menu, while typing: embedders of the dataset
    term.keys("Tab")
    term.wait_for("USING fmnist_clip")
    term.keys("Enter")  # closes the menu
    term.keys("Enter")  # a new line
    term.type("GROUP BY label ORDER BY n DESC;")
    term.keys("Enter")
    screen = term.wait_for("row")
    assert "error" not in screen, screen
    rows = dict(re.findall(r"^ (\w[\w /-]*?)\s+\|\s+(\d+)\s*$", screen, re.M))
    assert sum(int(v) for v in rows.values()) == 5
    assert int(rows.get("sneaker", 0)) >= 3, screen
    # a tag value completed from the labels the dataset holds
    term.type("SELECT count(*) AS n FROM samples WHERE label = 'sne")
    term.wait_for("sneaker  label")  # values of the label column
    term.keys("Tab")
    term.wait_for("label = 'sneaker'")
    term.keys("Enter")
    term.type(";")
    term.keys("Enter")
    term.wait_for(lambda s: s.count("(1 row)") >= 1)
    term.keys("C-d")
    term.wait_for("EXITED:0")
