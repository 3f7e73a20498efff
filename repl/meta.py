"""The shell's meta-commands: lines starting with ``.`` (``.tables``, ``.schema samples``...).

:data:`META_COMMANDS` maps each name to its handler and help; a handler takes the shell and the
rest of the line and prints through the shell. Errors are PopQL diagnostics, shown like those
of statements.

=========================  =================================================================
``.help``                   the commands, keys and settings
``.tables``                 tables and views, with their column counts
``.schema [TABLE]``         columns of TABLE (type, and the tagger that produced a tag)
``.populations``            named populations
``.tags``                   tag columns (tagger) and their values when there are few: columns
                            a tagger produced, ``labels``/``tags`` lists, and string columns
                            with at most 50 distinct values
``.open DATASET``           open another dataset directory (``.open`` alone: in memory)
``.timer on|off``           show how long each statement took
``.mode MODE``              table, csv, json or markdown
``.output [FILE]``          write results to FILE (appending); alone: back to the terminal
``.read FILE``              run the statements of a .popql file
``.explain [on|off|STMT]``  STMT's DataFusion SQL and plan; on: show the SQL of each query
``.pager on|off``           page results taller than the terminal
``.thumbnails on|off``      inline thumbnails of image columns (kitty/iTerm2 terminals)
``.quit`` / ``.exit``       leave (so does Ctrl-D)
=========================  =================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from popql.diagnostics import Diagnostic, PopQLError

from .render import MODES

if TYPE_CHECKING:
    from .shell import Shell

__all__ = ["META_COMMANDS", "MetaCommand", "run_meta"]


@dataclass(frozen=True)
class MetaCommand:
    name: str
    usage: str
    help: str
    handler: Callable[[Shell, str], None]


def _usage(command: str, message: str, hint: str | None = None) -> PopQLError:
    return PopQLError(Diagnostic("R001", f"{command}: {message}", hints=(hint,) if hint else ()))


def _on_off(shell: Shell, command: str, arg: str, attr: str, label: str) -> None:
    value = arg.strip().lower()
    if value in ("", "status"):
        shell.say(f"{label} is {'on' if getattr(shell.settings, attr) else 'off'}")
        return
    if value not in ("on", "off"):
        raise _usage(command, f"expected on or off, got {arg.strip()!r}", f"{command} on")
    setattr(shell.settings, attr, value == "on")
    shell.say(f"{label} {value}")


def _help(shell: Shell, arg: str) -> None:
    width = max(len(c.usage) for c in META_COMMANDS.values())
    lines = ["Statements end with ';' and may span lines. Meta-commands:", ""]
    for c in META_COMMANDS.values():
        lines.append(f"  {c.usage.ljust(width)}  {c.help}")
    lines += [
        "",
        "Keys: Tab completes (tables, columns, tags and their values, populations, models,",
        "embedders, paths in NEAR IMAGE '...'); Ctrl-R searches the history; Alt-Enter runs",
        "the buffer as it is; Ctrl-C clears the line or cancels a running query; Ctrl-D leaves.",
    ]
    shell.say("\n".join(lines))


def _tables(shell: Shell, arg: str) -> None:
    meta = shell.metadata
    if not meta.tables:
        shell.say("no tables (open a dataset with .open DIR)")
        return
    names = sorted(meta.tables)
    table = pa.table(
        {
            "table": names,
            "columns": [len(meta.tables[n]) for n in names],
        }
    )
    shell.show_table(table)


def _schema(shell: Shell, arg: str) -> None:
    names = [arg.strip()] if arg.strip() else sorted(shell.metadata.tables)
    for i, name in enumerate(names):
        name = _unquote(name)
        described = shell.session.describe(name)
        keep = ["column", "type"]
        if any(v is not None for v in described.column("tagger").to_pylist()):
            keep += ["tagger", "tagger_version"]
        if any(v not in (None, "table") for v in described.column("source").to_pylist()):
            keep.insert(2, "source")
        if len(names) > 1:
            shell.say(("\n" if i else "") + name)
        shell.show_table(described.select(keep))


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1].replace('""', '"')
    return name


def _populations(shell: Shell, arg: str) -> None:
    method = getattr(shell.session, "population_names", None)
    if method is None:
        shell.say("populations are not available in this version of PopQL's engine")
        return
    names = list(method())
    if not names:
        shell.say("no populations yet: CREATE POPULATION name AS SELECT ...;")
        return
    shell.show_table(pa.table({"population": names}))


def _tags(shell: Shell, arg: str) -> None:
    rows: dict[str, list[object]] = {
        "table": [], "column": [], "type": [], "tagger": [], "values": []
    }  # fmt: skip
    meta = shell.metadata
    for table, cols in sorted(meta.tables.items()):
        for c in cols:
            values = meta.tag_values.get((table.lower(), c.name.lower()))
            if not c.is_tag and not values:
                continue
            shown = ""
            if values:
                shown = ", ".join(values[:8]) + (
                    f", ... ({len(values)})" if len(values) > 8 else ""
                )
            rows["table"].append(table)
            rows["column"].append(c.name)
            rows["type"].append(c.type)
            rows["tagger"].append(c.tagger)
            rows["values"].append(shown)
    if not rows["column"]:
        shell.say(
            "no tag columns: tags are the columns taggers add at ingest (popql ingest DIR "
            "--dataset DS), and label lists named labels or tags"
        )
        return
    if all(t is None for t in rows["tagger"]):
        del rows["tagger"]
    shell.show_table(pa.table(rows), max_width=80)


def _open(shell: Shell, arg: str) -> None:
    path = arg.strip() or None
    shell.open(path)
    where = "an in-memory session" if path is None else path
    shell.say(f"opened {where}: {len(shell.metadata.tables)} table(s)")


def _timer(shell: Shell, arg: str) -> None:
    _on_off(shell, ".timer", arg, "timer", "timer")


def _pager(shell: Shell, arg: str) -> None:
    _on_off(shell, ".pager", arg, "pager", "pager")


def _thumbnails(shell: Shell, arg: str) -> None:
    _on_off(shell, ".thumbnails", arg, "thumbnails", "thumbnails")


def _mode(shell: Shell, arg: str) -> None:
    mode = arg.strip().lower()
    if not mode:
        shell.say(f"mode is {shell.settings.mode}")
        return
    if mode not in MODES:
        raise _usage(".mode", f"unknown mode {arg.strip()!r}", "one of " + ", ".join(MODES))
    shell.settings.mode = mode
    shell.say(f"mode {mode}")


def _output(shell: Shell, arg: str) -> None:
    target = arg.strip()
    shell.set_output(target or None)
    shell.say(f"results go to {target}" if target else "results go to the terminal")


def _read(shell: Shell, arg: str) -> None:
    path = arg.strip()
    if not path:
        raise _usage(".read", "expected a file", ".read queries.popql")
    from popql.engine.session import read_source

    text = read_source(str(Path(path).expanduser()))
    shell.run_text(text, file=path)


def _explain(shell: Shell, arg: str) -> None:
    text = arg.strip()
    if text.lower() in ("", "on", "off", "status"):
        _on_off(shell, ".explain", text, "explain", "explain")
        return
    shell.explain(text)


def _quit(shell: Shell, arg: str) -> None:
    shell.stop()


META_COMMANDS: dict[str, MetaCommand] = {
    c.name: c
    for c in (
        MetaCommand(".help", ".help", "this help", _help),
        MetaCommand(".tables", ".tables", "tables and views", _tables),
        MetaCommand(".schema", ".schema [TABLE]", "columns, types and taggers", _schema),
        MetaCommand(".populations", ".populations", "named populations", _populations),
        MetaCommand(".tags", ".tags", "tag columns, their taggers and values", _tags),
        MetaCommand(".open", ".open [DATASET]", "open a dataset directory", _open),
        MetaCommand(".timer", ".timer on|off", "show the time each statement takes", _timer),
        MetaCommand(".mode", ".mode " + "|".join(MODES), "how results are printed", _mode),
        MetaCommand(".output", ".output [FILE]", "results to FILE; alone: to the screen", _output),
        MetaCommand(".read", ".read FILE", "run a .popql file", _read),
        MetaCommand(
            ".explain",
            ".explain [on|off|STMT]",
            "DataFusion SQL and plan of STMT; on: SQL of each query",
            _explain,
        ),
        MetaCommand(".pager", ".pager on|off", "page results taller than the screen", _pager),
        MetaCommand(
            ".thumbnails", ".thumbnails on|off", "inline images (kitty, iTerm2)", _thumbnails
        ),
        MetaCommand(".quit", ".quit", "leave the shell (or Ctrl-D)", _quit),
        MetaCommand(".exit", ".exit", "leave the shell", _quit),
    )
}


def run_meta(shell: Shell, line: str) -> None:
    """Run the meta-command ``line`` (starting with ``.``); R001 for an unknown one."""
    from popql.diagnostics import did_you_mean_hint

    name, _, arg = line.strip().partition(" ")
    command = META_COMMANDS.get(name.lower())
    if command is None:
        hint = did_you_mean_hint(name, META_COMMANDS) or "type .help for the list"
        raise _usage(name, "unknown meta-command", hint)
    command.handler(shell, arg)
