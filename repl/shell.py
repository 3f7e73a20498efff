"""The interactive PopQL shell: ``popql`` (on a terminal) or ``popql repl [DATASET]``.

A prompt_toolkit application over the same :class:`popql.engine.Session` as the CLI and the
Python API, so statements behave and fail exactly as they do there:

* syntax highlighting with :class:`popql.repl.highlight.PopQLLexer` (keywords from the
  grammar);
* completion from :mod:`popql.repl.completion` over a snapshot of the live catalog, refreshed
  after every statement (tag values are read in a background thread);
* a statement ends at ``;`` (Enter inserts a new line until then; Alt-Enter runs the buffer
  as it is); meta-commands (:mod:`popql.repl.meta`) are one line starting with ``.``;
* history in ``$POPQL_HISTORY`` (default ``$XDG_STATE_HOME/popql/history``, i.e.
  ``~/.local/state/popql/history``), Ctrl-R searches it, Up/Down walk it, and a grey
  suggestion from it can be taken with the right arrow;
* Ctrl-C at the prompt clears the buffer; while a query runs it cancels it (E002) and the
  shell goes on; Ctrl-D on an empty line leaves;
* results in the mode of ``.mode`` with a row count and, with ``.timer on`` (the default), the
  time taken; output taller than the terminal goes through ``$POPQL_PAGER``/``$PAGER`` (default
  ``less -SRXF``); image columns are shown as paths, and as inline thumbnails in kitty and
  iTerm2-compatible terminals;
* diagnostics rendered by :func:`popql.repl.cli._report`, in colour on a terminal, with the
  caret under the offending token of a multi-line statement.

Cancelling: datafusion-python 55 checks for signals while it waits on the engine, so Ctrl-C
(SIGINT) raises KeyboardInterrupt in the main thread while a query's batches are being
streamed; the shell streams every result (``iter(result)``), and dropping the stream stops the
engine's work at once (measured: no CPU used after the interrupt, whereas an interrupted
``collect()`` lets the partitions run on for a few seconds).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa

from popql.diagnostics import Diagnostic, PopQLError, internal_error, render

from .completion import Metadata, PopQLCompleter, load_metadata, load_tag_values, statement_complete
from .meta import META_COMMANDS, run_meta
from .render import (
    detect_image_protocol,
    format_result,
    page,
    pager_command,
    should_page,
    thumbnails_text,
)

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession

    from popql.engine import Result, Session

__all__ = ["Settings", "Shell", "default_history_path", "run_shell"]

REPL_FILE = "<repl>"


def default_history_path(env: Mapping[str, str] | None = None) -> Path:
    """``$POPQL_HISTORY``, else ``$XDG_STATE_HOME/popql/history`` (``~/.local/state``)."""
    env = os.environ if env is None else env
    if env.get("POPQL_HISTORY"):
        return Path(env["POPQL_HISTORY"]).expanduser()
    state = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "popql" / "history"


def should_submit(text: str) -> bool:
    """Whether Enter runs the buffer ``text``: it is empty, a meta-command, or its last
    statement ends with ``;``."""
    stripped = text.strip()
    if not stripped or stripped.startswith("."):
        return True
    return statement_complete(text)


@dataclass
class Settings:
    """What the meta-commands set."""

    timer: bool = True
    mode: str = "table"
    explain: bool = False
    pager: bool = True
    thumbnails: bool = True
    #: rows shown in table and markdown modes (the row count says how many there are)
    max_rows: int | None = 1000


class Shell:
    """The PopQL shell over ``session``.

    ``stdout``/``stderr`` receive results and diagnostics (default: the process's);
    ``pt_input``/``pt_output`` are prompt_toolkit's input and output (tests pass a pipe input
    and a dummy output); ``env`` is the environment read for the pager, image protocol and
    history path.

    >>> import io, popql.engine as pe
    >>> out = io.StringIO()
    >>> shell = Shell(pe.connect(), stdout=out, stderr=out, load_values=False)
    >>> shell.settings.timer = False
    >>> shell.handle("SELECT 1 AS one;")
    >>> print(out.getvalue().strip())
    one
     int64
    -------
       1
    (1 row)
    """

    def __init__(
        self,
        session: Session,
        *,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
        env: Mapping[str, str] | None = None,
        history_path: str | os.PathLike[str] | None = None,
        pt_input: Any = None,
        pt_output: Any = None,
        load_values: bool = True,
    ) -> None:
        self.session = session
        self.stdout: IO[str] = stdout if stdout is not None else sys.stdout
        self.stderr: IO[str] = stderr if stderr is not None else sys.stderr
        self.env: Mapping[str, str] = os.environ if env is None else env
        self.history_path = (
            Path(history_path) if history_path is not None else default_history_path(self.env)
        )
        self.settings = Settings()
        self.output_path: Path | None = None
        self._pt_input = pt_input
        self._pt_output = pt_output
        self._load_values = load_values
        self._stopped = False
        self._values_thread: threading.Thread | None = None
        self._values_stop = threading.Event()
        self.metadata: Metadata = Metadata()
        self.image_protocol = detect_image_protocol(self.env)
        self.refresh_metadata()

    # -- catalog --------------------------------------------------------------------------------

    def refresh_metadata(self) -> None:
        """Re-read the catalog for completion (cheap); start reading tag values that are not
        known yet in a background thread."""
        meta = load_metadata(self.session, previous=self.metadata)
        meta.meta_commands = tuple(META_COMMANDS)
        self.metadata = meta
        if self._load_values and (
            self._values_thread is None or not self._values_thread.is_alive()
        ):
            stop = self._values_stop
            session = self.session
            self._values_thread = threading.Thread(
                target=self._read_values,
                args=(session, meta, stop),
                daemon=True,
                name="popql-tag-values",
            )
            self._values_thread.start()

    @staticmethod
    def _read_values(session: Session, meta: Metadata, stop: threading.Event) -> None:
        with contextlib.suppress(Exception):
            load_tag_values(session, meta, stop=stop)

    def wait_for_values(self, timeout: float = 30.0) -> None:
        """Wait until the background read of tag values is done (tests)."""
        if self._values_thread is not None:
            self._values_thread.join(timeout)

    def open(self, path: str | None) -> None:
        """Switch to the dataset ``path`` (None: a new in-memory session), as ``--dataset``
        opens it (F001 when the directory does not exist)."""
        import argparse

        from .cli import _open_session

        session = _open_session(argparse.Namespace(dataset=path, register=[]))
        self._values_stop.set()
        self._values_stop = threading.Event()
        self.session = session
        self.metadata = Metadata()
        self._values_thread = None
        self.refresh_metadata()

    # -- output ---------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """A message for the user (always on the terminal)."""
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def _is_terminal(self) -> bool:
        try:
            return self.output_path is None and self.stdout.isatty()
        except (AttributeError, ValueError):
            return False

    def emit(self, text: str) -> None:
        """Result text: to the ``.output`` file, or through the pager when it is taller than
        the terminal, or to stdout."""
        if self.output_path is not None:
            with self.output_path.open("a", encoding="utf-8") as fh:
                fh.write(text + "\n")
            return
        if self.settings.pager and self._is_terminal():
            size = _terminal_size(self.stdout)
            command = pager_command(self.env)
            if command and size is not None and should_page(text, size[1], size[0]):
                self.stdout.flush()
                if page(text + "\n", command):
                    return
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def show_table(self, table: pa.Table, *, max_width: int | None = None) -> None:
        """Show a small table of the shell's own (``.tables``, ``.schema``) on the terminal."""
        from popql.engine.result import format_table

        self.say(
            format_table(
                table, max_rows=None, max_width=max_width, show_types=False, row_count=False
            )
        )

    def set_output(self, path: str | None) -> None:
        if path is None:
            self.output_path = None
            return
        target = Path(path).expanduser()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.open("a", encoding="utf-8").close()
        except OSError as exc:
            raise PopQLError(
                Diagnostic("F004", f"cannot write {path}: {exc.strerror or exc}", file=path)
            ) from exc
        self.output_path = target

    def report(self, err: PopQLError) -> None:
        """Render ``err`` as the CLI does (colour when stderr is a terminal)."""
        from .cli import _report

        self.stdout.flush()
        with contextlib.redirect_stderr(self.stderr):  # type: ignore[type-var]
            _report(err, False)
        self.stderr.flush()

    def _report_bug(self, exc: BaseException, source: str | None) -> None:
        from .cli import _use_color

        with contextlib.redirect_stderr(self.stderr):  # type: ignore[type-var]
            color = _use_color()
        self.stderr.write(render([internal_error(exc, source)], source, color=color) + "\n")
        traceback.print_exception(exc, file=self.stderr)
        self.stderr.flush()

    # -- running --------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopped = True

    def handle(self, text: str) -> None:
        """Run one accepted buffer: a meta-command or PopQL statements."""
        stripped = text.strip()
        if not stripped:
            return
        if stripped.startswith("."):
            try:
                run_meta(self, stripped)
            except PopQLError as err:
                self.report(err)
            except KeyboardInterrupt:
                self.report(_cancelled())
            except Exception as exc:
                self._report_bug(exc, stripped)
            return
        self.run_text(text, file=REPL_FILE)

    def run_text(self, text: str, *, file: str | None = REPL_FILE) -> None:
        """Run the statements of ``text``, showing each result as it comes."""
        try:
            statements = self.session.iterate(text, file=file)
            while True:
                start = time.perf_counter()
                try:
                    result = next(statements)
                except StopIteration:
                    break
                self._show(result, start)
        except PopQLError as err:
            self.report(err)
        except KeyboardInterrupt:
            self.report(_cancelled())
        except Exception as exc:
            self._report_bug(exc, text)
        finally:
            self.refresh_metadata()

    def _show(self, result: Result, start: float) -> None:
        if self.settings.explain and result.sql:
            self.say("-- DataFusion SQL:\n" + result.sql)
        if result.kind != "query":
            table = result.to_arrow()
            if table.num_columns:
                self.emit(format_result(table, self.settings.mode, cwd=os.getcwd()))
            else:
                self.say("OK")
            self._timer(start)
            return
        schema = result.schema
        batches = list(_batches(result))  # streamed, so Ctrl-C cancels promptly
        table = pa.Table.from_batches(batches, schema=schema) if batches else schema.empty_table()
        elapsed = time.perf_counter() - start
        self.emit(
            format_result(
                table, self.settings.mode, cwd=os.getcwd(), max_rows=self.settings.max_rows
            )
        )
        if (
            self.image_protocol
            and self.settings.thumbnails
            and self.settings.mode == "table"
            and self._is_terminal()
        ):
            images = thumbnails_text(
                table, self.image_protocol, dataset=self.session.path, cwd=os.getcwd()
            )
            if images:
                self.stdout.write(images + "\n")
        self._timer(start, elapsed)

    def _timer(self, start: float, elapsed: float | None = None) -> None:
        if self.settings.timer:
            took = time.perf_counter() - start if elapsed is None else elapsed
            self.say(f"Time: {_seconds(took)}")

    def explain(self, text: str) -> None:
        """``.explain STMT``: the DataFusion SQL PopQL lowers STMT to, and DataFusion's plan."""
        from popql.engine.lower import compile_statement
        from popql.syntax import parse

        try:
            script = parse(text, file=REPL_FILE)
            for stmt in script.statements:
                lowered = compile_statement(stmt, self.session.catalog)
                self.say("-- DataFusion SQL:\n" + lowered.sql)
            body = text.strip().rstrip(";")
            plan = self.session.sql(f"EXPLAIN {body}").to_arrow().to_pylist()
            for row in plan:
                values = list(row.values())
                self.say(f"-- {values[0]}:\n{values[-1]}")
        except PopQLError as err:
            self.report(err if err.source is not None else err.with_context(text, REPL_FILE))

    # -- the prompt -----------------------------------------------------------------------------

    def prompt_text(self) -> str:
        path = getattr(self.session, "path", None)
        return f"{Path(path).name}> " if path is not None else "popql> "

    def prompt_session(self) -> PromptSession[str]:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
        from prompt_toolkit.filters import is_searching
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings
        from prompt_toolkit.lexers import PygmentsLexer

        from .highlight import PopQLLexer

        bindings = KeyBindings()

        # not while searching the history: Enter then accepts the search (Ctrl-R)
        @bindings.add("enter", filter=~is_searching)
        def _enter(event: Any) -> None:
            buffer = event.current_buffer
            state = buffer.complete_state
            if state is not None and state.current_completion is not None:
                buffer.apply_completion(state.current_completion)
                return
            if should_submit(buffer.text):
                buffer.validate_and_handle()
            else:
                buffer.insert_text("\n")

        history: Any
        try:
            self.history_path.parent.mkdir(parents=True, exist_ok=True)
            history = FileHistory(str(self.history_path))
        except OSError:
            history = InMemoryHistory()
        width = len(self.prompt_text())
        return PromptSession(
            lexer=PygmentsLexer(PopQLLexer),
            completer=PopQLCompleter(lambda: self.metadata, os.getcwd),
            complete_while_typing=True,
            history=history,
            auto_suggest=AutoSuggestFromHistory(),
            multiline=True,
            key_bindings=bindings,
            prompt_continuation=lambda w, n, soft: "...> ".rjust(width),
            style=_style(),
            include_default_pygments_style=False,
            enable_history_search=False,
            input=self._pt_input,
            output=self._pt_output,
        )

    def run(self) -> int:
        """Read, run, repeat until Ctrl-D or ``.quit``; returns the exit status (0)."""
        prompt = self.prompt_session()
        if self._pt_input is None:
            self.say("PopQL shell: statements end with ';'. .help for help, Ctrl-D to leave.")
        while not self._stopped:
            try:
                text = prompt.prompt(self.prompt_text())
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            self.handle(text)
        self._values_stop.set()
        return 0


def _batches(result: Result) -> Iterator[pa.RecordBatch]:
    yield from result


def _cancelled() -> PopQLError:
    return PopQLError(
        Diagnostic(
            "E002",
            "query cancelled (Ctrl-C)",
            hints=("nothing was changed; run it again, perhaps with a LIMIT",),
        )
    )


def _seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.3f} s"


def _terminal_size(stream: IO[str]) -> tuple[int, int] | None:
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return size.columns, size.lines


def _style() -> Any:
    from prompt_toolkit.styles import Style, merge_styles, style_from_pygments_dict
    from pygments.token import Comment, Keyword, Name, Number, Operator, String

    return merge_styles(
        [
            style_from_pygments_dict(
                {
                    Keyword: "bold #5f87d7",
                    Keyword.Pseudo: "bold #af5fd7",
                    String: "#5faf5f",
                    Number: "#d7875f",
                    Comment: "italic #8a8a8a",
                    Name.Function: "#00afaf",
                    Name.Quoted: "#d7af5f",
                    Name.Variable: "#d7af5f",
                    Operator: "#9e9e9e",
                }
            ),
            Style.from_dict(
                {
                    "completion-menu.completion": "bg:#303030 #d0d0d0",
                    "completion-menu.completion.current": "bg:#5f87d7 #ffffff",
                    "completion-menu.meta.completion": "bg:#262626 #8a8a8a",
                    "completion-menu.meta.completion.current": "bg:#5f87af #ffffff",
                    "auto-suggestion": "#6c6c6c",
                }
            ),
        ]
    )


def run_shell(dataset: str | None = None, *, register: list[str] | None = None) -> int:
    """Open ``dataset`` (None: in memory) and run the shell on the terminal."""
    import argparse

    from .cli import _open_session

    session = _open_session(argparse.Namespace(dataset=dataset, register=register or []))
    return Shell(session).run()
