"""The ``popql`` command line.

::

    popql query "SELECT ..." [--dataset DIR] [--format table|csv|json] [--register NAME=PATH ...]
    popql run FILE.popql     [--dataset DIR] [--format table|csv|json] [--register NAME=PATH ...]
    popql fmt FILE... [--check] [--diff]
    popql check FILE... [--dataset DIR] [--register NAME=PATH ...] [--format text|json]
    popql check-dataset --dataset DIR [--deep] [--format text|json]
    popql vacuum --dataset DIR [--keep N] [--format text|json]
    popql ingest SOURCE... --dataset DIR [--embedder SPEC|none] [--tagger NAME]... [--labels FILE]
                 [--json] [--commit-every N] [--batch-size N]
    popql test SUITE.popql... [--dataset DIR] [--model M] [--junit FILE] [--report FILE]
    popql repl [DATASET] [--register NAME=PATH ...]
    popql                    (on a terminal: the shell; otherwise this help)
    popql serve [DATASET] [--host H] [--port N] [--token T] [--allow-writes] [--suite FILE]...

Also ``python -m popql.repl``. See :data:`EPILOG` for exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import difflib
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from popql.diagnostics import Diagnostic, PopQLError, internal_error, render, to_json

if TYPE_CHECKING:
    from popql.engine import Result, Session

__all__ = ["EXIT_BUG", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130

EPILOG = """\
exit codes:
  0    success
  1    a user error (diagnostics are printed to stderr), or `fmt --check` found files
       that would be reformatted
  2    bad command-line usage
  3    internal error: a bug in PopQL (please report it)
  130  interrupted (Ctrl-C)

environment:
  NO_COLOR   set to disable coloured diagnostics (colour is used only when stderr is a
             terminal)
"""


class _UsageError(Exception):
    """Bad command-line usage detected after argparse (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="popql",
        description="PopQL: query, run, format and check PopQL (an SQL superset for "
        "populations of images, run on Apache DataFusion).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def data_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--dataset",
            metavar="DIR",
            help="dataset directory: a versioned dataset (DIR/manifest.json, at its current "
            "version) and/or a folder whose DIR/tables/ Parquet files and folders are tables",
        )
        p.add_argument(
            "--register",
            metavar="NAME=PATH",
            action="append",
            default=[],
            help="register a Parquet/CSV/Arrow file or folder as table NAME (repeatable)",
        )

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=description,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    q = command(
        "query",
        "run PopQL text given on the command line and print the result",
        "Run PopQL text (one or more statements; '-' reads stdin) and print the "
        "result of each statement that returns rows.",
    )
    q.add_argument("text", metavar="QUERY", help="PopQL text, or '-' to read it from stdin")
    data_options(q)
    q.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="output format (json: one JSON object per row; diagnostics as JSON)",
    )

    r = command(
        "run",
        "run a .popql file",
        "Run every statement of a .popql file in order and print the result of "
        "each statement that returns rows.",
    )
    r.add_argument("file", metavar="FILE", help="a .popql file")
    data_options(r)
    r.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="output format (json: one JSON object per row; diagnostics as JSON)",
    )

    f = command(
        "fmt",
        "format .popql files in place",
        "Rewrite .popql files in their canonical layout ('-' formats stdin to "
        "stdout). With --check or --diff nothing is written.",
    )
    f.add_argument("files", metavar="FILE", nargs="+", help=".popql files, or '-' for stdin")
    f.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if any file would be reformatted",
    )
    f.add_argument(
        "--diff", action="store_true", help="write nothing; print a unified diff of the changes"
    )

    c = command(
        "check",
        "parse and check .popql files without running them",
        "Parse and check .popql files against the tables of --dataset/--register "
        "(or none) without running any query. Statements are checked in order in a scratch "
        "in-memory session holding empty copies of the tables, where CREATE/DROP statements "
        "are executed, so tables a file creates are known to its later statements; nothing "
        "is read or written. Each file is checked on its own. Prints nothing when all is "
        "well; usable as a pre-commit hook.",
    )
    c.add_argument("files", metavar="FILE", nargs="+", help=".popql files")
    data_options(c)
    c.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="diagnostics as text on stderr, or as one JSON list on stdout",
    )

    cd = command(
        "check-dataset",
        "check the integrity of a versioned dataset",
        "Check a versioned dataset (a directory with manifest.json): the manifest, every "
        "snapshot in versions/, and that every data file they name exists, is readable "
        "Parquet and has the recorded rows and schema; duplicate sample ids in the current "
        "version. Files left by interrupted writers are listed as notes (vacuum removes "
        "them). Exit 0 when there is no error, 1 otherwise.",
    )
    cd.add_argument("--dataset", metavar="DIR", required=True, help="the dataset directory")
    cd.add_argument(
        "--deep", action="store_true", help="read every data file in full, not just its footer"
    )
    cd.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="diagnostics as text on stderr, or as one JSON list on stdout",
    )

    v = command(
        "vacuum",
        "delete old versions and unreferenced files of a dataset",
        "Delete the snapshots of all but the newest N versions of a versioned dataset and "
        "every data or index file that no kept version names (including what interrupted "
        "writers left). Takes the writers' lock; sessions still reading a removed version "
        "will fail.",
    )
    v.add_argument("--dataset", metavar="DIR", required=True, help="the dataset directory")
    v.add_argument(
        "--keep",
        metavar="N",
        type=_positive_int,
        default=1,
        help="how many of the newest versions to keep (default 1: the current one)",
    )
    v.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="the report as a line of text, or as a JSON object",
    )

    rp = command(
        "repl",
        "the interactive PopQL shell (also: popql with no arguments on a terminal)",
        "Open the interactive shell on DATASET (a dataset directory; default: an in-memory "
        "session): syntax highlighting, completion of tables, columns, tags and their values, "
        "populations, models and paths, multi-line statements ending with ';', history "
        "(Ctrl-R), Ctrl-C cancels a running query, Ctrl-D leaves. Type .help inside.",
    )
    rp.add_argument("dataset", metavar="DATASET", nargs="?", help="a dataset directory")
    rp.add_argument(
        "--register",
        metavar="NAME=PATH",
        action="append",
        default=[],
        help="register a Parquet/CSV/Arrow file or folder as table NAME (repeatable)",
    )

    # -- popql ingest (engine/ingest.py) --
    ing = command(
        "ingest",
        "add images to a dataset: hash, decode, tag, embed, index",
        "Add the images of SOURCEs to the dataset DIR (created when missing): files whose "
        "content is already a sample are skipped, new files are decoded, tagged and embedded, "
        "and a tagger or embedder new to the dataset runs only on the samples it has not seen. "
        "Bad files (corrupt, truncated, empty, not images, too large, unreadable) are recorded "
        "in the table ingest_errors and skipped; they do not change the exit status. Work is "
        "committed every --commit-every images, so an interrupted run can simply be run again. "
        "A progress line is shown on stderr when it is a terminal.",
    )
    ing.add_argument(
        "sources",
        metavar="SOURCE",
        nargs="+",
        help="a folder (recursive), an image file, a quoted glob, or a URL prefix such as "
        "s3://bucket/photos/ (S3-compatible stores: set AWS_ENDPOINT_URL)",
    )
    ing.add_argument("--dataset", metavar="DIR", required=True, help="the dataset directory")
    ing.add_argument(
        "--embedder",
        metavar="SPEC",
        default="default",
        help="image/text embedder for similarity search: an open_clip spec such as "
        "ViT-B-32:laion2b_s34b_b79k, local-dir:PATH, a registered name, or 'none' "
        "(default: the default CLIP; when its weights are unavailable offline, ingest goes on "
        "with tags only)",
    )
    ing.add_argument(
        "--tagger",
        metavar="NAME",
        action="append",
        dest="taggers",
        help="a tagger to run (repeatable; default: image_stats, faces, imagenet; 'none': no "
        "taggers)",
    )
    ing.add_argument(
        "--labels",
        metavar="FILE",
        help="labels to import: CSV/JSON/Parquet keyed by sample_id or path, or COCO "
        "instances JSON (stored as the table 'labels')",
    )
    ing.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="json",
        default="text",
        help="print a machine-readable summary (and diagnostics) as JSON on stdout",
    )
    ing.add_argument(
        "--commit-every",
        metavar="N",
        type=_positive_int,
        default=256,
        help="commit a new dataset version every N processed images (default 256)",
    )
    ing.add_argument(
        "--batch-size",
        metavar="N",
        type=_positive_int,
        default=64,
        help="decoded images handed to the models at once (default 64)",
    )
    # -- popql test (repl/test_command.py) --
    from .test_command import add_parser as _add_test_parser

    _add_test_parser(command, data_options)

    # -- popql serve (popql.web) --
    sv = command(
        "serve",
        "the web view: query, browse thumbnails, find similar images, populations and metrics",
        "Open DATASET in the browser: a PopQL editor with completion and diagnostics, a grid "
        "of thumbnails, 'more like this', saving populations, and a populations page with "
        "sizes, splits and a model's metrics. Binds to 127.0.0.1; on any other address a "
        "token is required (printed in the URL). Statements that change data are refused "
        "unless --allow-writes. Needs the web extra: pip install 'popql[web]'.",
    )
    sv.add_argument("dataset", metavar="DATASET", nargs="?", help="a dataset directory")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=_positive_int, default=8765, help="port (default 8765)")
    sv.add_argument(
        "--token",
        help="the access token (default: none on 127.0.0.1, a random one on other addresses)",
    )
    sv.add_argument(
        "--allow-writes",
        action="store_true",
        help="run statements that change data (CREATE POPULATION from the save button, "
        "INSERT, DROP, HOLD OUT...); refused otherwise",
    )
    sv.add_argument(
        "--suite",
        metavar="FILE",
        action="append",
        default=[],
        help="a .popql file whose EXPECT statements the populations page checks (repeatable)",
    )
    sv.add_argument(
        "--cache-dir", metavar="DIR", help="where missing thumbnails are generated"
    )
    sv.add_argument("--open", action="store_true", help="open the page in a browser")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (see :data:`EPILOG`)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help, or a usage error (argparse prints the message)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.version:
        print(f"popql {_version()}")
        return EXIT_OK
    if args.command is None:
        if _interactive():
            args = parser.parse_args(["repl"])
        else:
            parser.print_help()
            return EXIT_OK
    json_diagnostics = getattr(args, "format", None) == "json"
    try:
        if args.command == "serve":
            return _cmd_serve(args)
        if args.command == "query":
            return _cmd_query(args)
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "fmt":
            return _cmd_fmt(args)
        if args.command == "check":
            return _cmd_check(args)
        if args.command == "check-dataset":
            return _cmd_check_dataset(args)
        if args.command == "vacuum":
            return _cmd_vacuum(args)
        if args.command == "ingest":
            return _cmd_ingest(args)
        if args.command == "test":
            from .test_command import run as _run_tests

            return _run_tests(args, _open_session)
        if args.command == "repl":
            return _cmd_repl(args)
        raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover
    except KeyboardInterrupt:
        _flush_quietly()
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK
    except _UsageError as exc:
        print(f"popql {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PopQLError as err:
        _report(err, json_diagnostics)
        return _status_for(err.diagnostics)
    except Exception as exc:
        diag = internal_error(exc, None)
        _print_err(render([diag], None, color=_use_color()))
        traceback.print_exception(exc, file=sys.stderr)
        return EXIT_BUG


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("popql")
    except Exception:
        return "unknown"


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def _cmd_query(args: argparse.Namespace) -> int:
    text: str = args.text
    name = "<query>"
    if text == "-":
        text = sys.stdin.read()
        name = "<stdin>"
    session = _open_session(args)
    _print_results(session.iterate(text, file=name), args.format)
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from popql.engine.session import read_source

    text = read_source(args.file)
    session = _open_session(args)
    _print_results(session.iterate(text, file=args.file), args.format)
    return EXIT_OK


def _cmd_fmt(args: argparse.Namespace) -> int:
    from popql.engine.session import read_source
    from popql.format import format_script
    from popql.syntax import parse

    status = EXIT_OK
    would_change = 0
    for file in args.files:
        if file == "-":
            text = sys.stdin.read()
            try:
                formatted = format_script(parse(text, file="<stdin>"))
            except PopQLError as err:
                _report(_context(err, text, "<stdin>"), False)
                status = max(status, _status_for(err.diagnostics))
                continue
            if args.check or args.diff:
                if formatted != text:
                    would_change += 1
                    if args.diff:
                        _write_out(_diff(text, formatted, "<stdin>"))
                    if args.check:
                        _print_err("would reformat <stdin>")
            else:
                _write_out(formatted)
            continue
        try:
            text = read_source(file)
        except PopQLError as err:
            _report(err, False)
            status = max(status, _status_for(err.diagnostics))
            continue
        try:
            formatted = format_script(parse(text, file=file))
        except PopQLError as err:
            _report(_context(err, text, file), False)
            status = max(status, _status_for(err.diagnostics))
            continue
        if formatted == text:
            continue
        would_change += 1
        if args.diff:
            _write_out(_diff(text, formatted, file))
        if args.check:
            _print_err(f"would reformat {file}")
        elif not args.diff:
            _write_file(file, formatted)
            _print_err(f"reformatted {file}")
    if args.check and would_change and status == EXIT_OK:
        status = EXIT_ERROR
    return status


def _cmd_check(args: argparse.Namespace) -> int:
    from popql.engine.session import read_source

    session = _open_session(args)
    collected: list[Diagnostic] = []
    status = EXIT_OK
    as_json = args.format == "json"
    for file in args.files:
        try:
            text = read_source(file)
            session.check(text, file=file)
        except PopQLError as err:
            err = _context(err, err.source, file)
            status = max(status, _status_for(err.diagnostics))
            if as_json:
                collected.extend(err.diagnostics)
            else:
                _report(err, False)
    if as_json:
        _write_out(to_json(collected) + "\n")
    return status


def _interactive() -> bool:
    """Whether stdin and stdout are both terminals (``popql`` alone then opens the shell)."""
    try:
        return sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _cmd_repl(args: argparse.Namespace) -> int:
    from .shell import Shell

    return Shell(_open_session(args)).run()


def _versioned_dataset(path: str) -> Path:
    """The absolute path of the versioned dataset ``path`` (F001 when it is not one)."""
    root = Path(path)
    if not root.is_dir():
        raise PopQLError(
            Diagnostic(
                "F001",
                f"dataset directory not found: {path}",
                hints=("check the --dataset path",),
            )
        )
    if not (root / "manifest.json").is_file():
        raise PopQLError(
            Diagnostic(
                "F001",
                f"not a versioned dataset: {path} has no manifest.json",
                hints=("datasets get versions when `popql ingest` writes to them",),
            )
        )
    return root.absolute()


def _cmd_check_dataset(args: argparse.Namespace) -> int:
    from popql.engine.dataset import Dataset

    dataset = Dataset(_versioned_dataset(args.dataset))
    diagnostics = dataset.check(leftovers=True, deep=args.deep)
    errors = [d for d in diagnostics if d.severity == "error"]
    notes = len(diagnostics) - len(errors)
    if args.format == "json":
        _write_out(to_json(diagnostics) + "\n")
    else:
        if diagnostics:
            _print_err(render(diagnostics, None, color=_use_color()))
        try:
            where = f"version {dataset.version()}, {len(dataset.versions())} version(s) kept"
        except PopQLError:
            where = "unreadable manifest"
        verdict = f"{len(errors)} problem(s)" if errors else "ok"
        extra = f"; {notes} leftover file(s) (`popql vacuum` removes them)" if notes else ""
        _write_out(f"{args.dataset}: {where}: {verdict}{extra}\n")
    return EXIT_ERROR if errors else EXIT_OK


def _cmd_vacuum(args: argparse.Namespace) -> int:
    from popql.engine.dataset import Dataset

    dataset = Dataset.open(_versioned_dataset(args.dataset))
    report = dataset.vacuum(keep_versions=args.keep)
    if args.format == "json":
        _write_out(json.dumps(report.to_dict()) + "\n")
    else:
        _write_out(f"{args.dataset}: {report}\n")
    return EXIT_OK


def _cmd_ingest(args: argparse.Namespace) -> int:
    """``popql ingest``: progress and notes on stderr, the summary on stdout (text, or one
    JSON object with --json)."""
    from popql.engine.ingest import ingest

    taggers: list[str] | str = "default"
    if args.taggers:
        taggers = [t for t in args.taggers if t.lower() != "none"]
    as_json = args.format == "json"
    embedder = None if args.embedder.lower() == "none" else args.embedder
    try:
        summary = ingest(
            args.dataset,
            args.sources,
            taggers=taggers,
            embedder=embedder,
            labels=args.labels,
            batch_size=args.batch_size,
            commit_every=args.commit_every,
            json=as_json,
        )
    except KeyboardInterrupt:
        _print_err(
            "popql ingest: interrupted; what was committed is kept, run the same command "
            "again to finish"
        )
        raise
    if as_json:
        for note in summary.notes:
            _print_err(f"popql ingest: {note}")
        _write_out(summary.to_json() + "\n")
    else:
        _write_out(summary.text() + "\n")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# Sessions and output
# ---------------------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from popql.web.server import serve
    except ImportError as exc:
        raise _UsageError(
            f"the web view needs the web extra ({exc.name} is missing): "
            "pip install 'popql[web]'"
        ) from None
    if args.dataset is not None and not Path(args.dataset).is_dir():
        raise PopQLError(
            Diagnostic("F001", f"dataset directory not found: {args.dataset}")
        )
    for suite in args.suite:
        if not Path(suite).is_file():
            raise PopQLError(Diagnostic("F001", f"suite file not found: {suite}"))
    return serve(
        args.dataset,
        host=args.host,
        port=args.port,
        token=args.token,
        allow_writes=args.allow_writes,
        suites=args.suite,
        cache_dir=args.cache_dir,
        open_browser=args.open,
    )


def _open_session(args: argparse.Namespace) -> Session:
    from popql.engine import connect

    dataset = getattr(args, "dataset", None)
    if dataset is not None and not Path(dataset).is_dir():
        raise PopQLError(
            Diagnostic(
                "F001",
                f"dataset directory not found: {dataset}",
                hints=("create it, or check the --dataset path",),
            )
        )
    session = connect(dataset)
    for item in getattr(args, "register", None) or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise _UsageError(f"--register expects NAME=PATH, got {item!r}")
        session.register(name, path)
    return session


def _print_results(results: Iterable[Result], fmt: str) -> None:
    first = True
    for result in results:
        if result.kind != "query":
            continue
        separator = "" if first else "\n"
        if fmt == "table":
            text = _table_text(result)  # runs the query before anything is printed
            _write_out(separator + text + "\n")
        elif fmt == "csv":
            _write_csv(result, separator)
        else:
            _write_json_lines(result)
        first = False
        sys.stdout.flush()


def _table_text(result: Result) -> str:
    from popql.engine.result import format_table

    table = result.to_arrow()
    if table.num_columns == 0:
        return "(no columns)"
    return format_table(table, max_rows=None)


def _plain(value: Any) -> Any:
    """A JSON-ready version of an Arrow value (see :func:`popql.engine.result.json_value`)."""
    from popql.engine.result import json_value

    return json_value(value)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        return json.dumps(_plain(value), ensure_ascii=False)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return value


def _write_csv(result: Result, separator: str = "") -> None:
    """Stream ``result`` as CSV; the header is written with the first batch, so an error
    raised while starting the query leaves no partial output."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    names = result.schema.names
    started = False
    for batch in result:
        if not started:
            _write_out(separator)
            writer.writerow(names)
            started = True
        for row in batch.to_pylist():
            writer.writerow([_csv_cell(row[n]) for n in names])
    if not started:
        _write_out(separator)
        writer.writerow(names)


def _write_json_lines(result: Result) -> None:
    for batch in result:
        lines = [
            json.dumps({k: _plain(v) for k, v in row.items()}, ensure_ascii=False)
            for row in batch.to_pylist()
        ]
        if lines:
            _write_out("\n".join(lines) + "\n")


def _diff(old: str, new: str, name: str) -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"{name} (original)",
            tofile=f"{name} (formatted)",
        )
    )


def _write_file(path: str, text: str) -> None:
    """Replace ``path``'s content atomically, keeping its permissions."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
            with contextlib.suppress(OSError):
                os.chmod(tmp, target.stat().st_mode & 0o7777)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise PopQLError(
            Diagnostic("F004", f"cannot write {path}: {exc.strerror or exc}", file=path)
        ) from exc


# ---------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------


def _context(err: PopQLError, source: str | None, file: str | None) -> PopQLError:
    if err.source is not None or source is None:
        return err
    return PopQLError(err.diagnostics, source=source, file=err.file or file)


def _status_for(diagnostics: Iterable[Diagnostic]) -> int:
    codes = [d.code for d in diagnostics]
    return EXIT_BUG if "I001" in codes else EXIT_ERROR


def _use_color() -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _report(err: PopQLError, as_json: bool) -> None:
    if as_json:
        _print_err(to_json(err.diagnostics))
        return
    _print_err(render(err.diagnostics, err.source, err.file, color=_use_color()))
    if "I001" in err.codes and err.__cause__ is not None:
        _print_err("")
        traceback.print_exception(err.__cause__, file=sys.stderr)


def _print_err(text: str) -> None:
    print(text, file=sys.stderr)


def _write_out(text: str, stream: IO[str] | None = None) -> None:
    (stream or sys.stdout).write(text)


def _flush_quietly() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _silence_stdout() -> None:
    # Python flushes stdout at exit; after a broken pipe that would print another error.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
