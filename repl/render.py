"""How the PopQL shell shows results: aligned tables, CSV, JSON lines and Markdown, image
columns as paths, inline thumbnails in terminals with an image protocol, and a pager.

Everything here is a pure function of its arguments except :func:`page` (which runs the
pager) and :func:`thumbnail_png` (which reads an image file).

>>> import pyarrow as pa
>>> print(format_result(pa.table({"uri": ["a.jpg"], "n": [2]}), "markdown"))
| uri | n |
| --- | ---: |
| a.jpg | 2 |
<BLANKLINE>
(1 row)
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from popql.check import ColumnInfo, is_image_column

__all__ = [
    "MODES",
    "PATH_COLUMN_NAMES",
    "detect_image_protocol",
    "format_result",
    "image_columns",
    "inline_image",
    "iterm2_image",
    "kitty_image",
    "page",
    "should_page",
    "thumbnail_png",
]

#: Output modes of ``.mode``.
MODES = ("table", "csv", "json", "markdown")
#: String columns that hold the path or URL of an image (besides ``image`` columns).
PATH_COLUMN_NAMES = frozenset({"uri", "path", "image_path", "file_path", "filepath"})
#: Widest cell of table mode (image paths are shown relative to the working directory).
MAX_CELL_WIDTH = 60


def image_columns(schema: pa.Schema) -> list[str]:
    """Columns of ``schema`` whose values are images shown as paths: PopQL's image columns
    (:func:`popql.check.is_image_column`) and string columns named like a path (``uri``,
    ``path``...)."""
    out = []
    for f in schema:
        info = ColumnInfo("", f.name, str(f.type))
        is_text = (
            pa.types.is_string(f.type)
            or pa.types.is_large_string(f.type)
            or f.type == pa.string_view()
        )
        if is_text and (is_image_column(info) or f.name.lower() in PATH_COLUMN_NAMES):
            out.append(f.name)
    return out


def _display_path(value: str | None, cwd: str | None) -> str | None:
    if value is None or cwd is None or "://" in value:
        return value
    path = value[len("file://") :] if value.startswith("file://") else value
    if not os.path.isabs(path):
        return value
    try:
        rel = os.path.relpath(path, cwd)
    except ValueError:
        return value
    return rel if not rel.startswith("..") and len(rel) < len(path) else value


def _with_display_paths(table: pa.Table, cwd: str | None) -> pa.Table:
    for name in image_columns(table.schema):
        i = table.schema.get_field_index(name)
        values = [_display_path(v, cwd) for v in table.column(i).to_pylist()]
        field = pa.field(name, pa.string(), table.schema.field(i).nullable)
        table = table.set_column(i, field, pa.array(values, pa.string()))
    return table


def _markdown(table: pa.Table) -> str:
    from popql.engine.result import format_value

    def cell(v: Any) -> str:
        return format_value(v, None).replace("|", "\\|")

    names = table.schema.names
    numeric = [
        pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
        for f in table.schema
    ]
    lines = ["| " + " | ".join(n.replace("|", "\\|") for n in names) + " |"]
    lines.append("| " + " | ".join("---:" if n else "---" for n in numeric) + " |")
    for row in table.to_pylist():
        lines.append("| " + " | ".join(cell(row[n]) for n in names) + " |")
    return "\n".join(lines)


def _csv(table: pa.Table) -> str:
    from .cli import _csv_cell

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = table.schema.names
    writer.writerow(names)
    for row in table.to_pylist():
        writer.writerow([_csv_cell(row[n]) for n in names])
    return buf.getvalue().rstrip("\n")


def _json_lines(table: pa.Table) -> str:
    from .cli import _plain

    return "\n".join(
        json.dumps({k: _plain(v) for k, v in row.items()}, ensure_ascii=False)
        for row in table.to_pylist()
    )


def _row_count(n: int) -> str:
    return f"({n:,} row{'' if n == 1 else 's'})"


def format_result(
    table: pa.Table,
    mode: str = "table",
    *,
    cwd: str | None = None,
    max_rows: int | None = None,
) -> str:
    """``table`` as text in ``mode`` (one of :data:`MODES`).

    ``table`` mode is the aligned text table of :func:`popql.engine.result.format_table`
    (column names, Arrow types, numbers right-aligned, a row-count line); image path columns
    are shown relative to ``cwd`` when they lie below it. ``markdown`` adds the row count
    after a blank line. Both show at most ``max_rows`` rows (None: all) and say so in the row
    count. ``csv`` and ``json`` (one object per line) are every row and nothing else, as
    ``popql query --format`` writes them.
    """
    if mode == "csv":
        return _csv(table)
    if mode == "json":
        return _json_lines(table)
    if table.num_columns == 0:
        return "(no columns)"
    total = table.num_rows
    if mode == "markdown":
        head = table if max_rows is None or total <= max_rows else table.slice(0, max_rows)
        count = _row_count(total)
        if head.num_rows < total:
            count = f"({total:,} rows, {head.num_rows:,} shown)"
        return _markdown(_with_display_paths(head, cwd)) + "\n\n" + count
    table = _with_display_paths(table, cwd)
    if mode != "table":
        raise ValueError(f"unknown output mode {mode!r}; expected one of {', '.join(MODES)}")
    from popql.engine.result import format_table

    return format_table(table, max_rows=max_rows, max_width=MAX_CELL_WIDTH)


# ---------------------------------------------------------------------------------------------
# Paging
# ---------------------------------------------------------------------------------------------


def should_page(text: str, height: int | None, width: int | None = None) -> bool:
    """Whether ``text`` is too tall (or its lines too wide) for a terminal of ``height``
    rows and ``width`` columns, leaving two rows for the prompt."""
    if height is None:
        return False
    lines = text.split("\n")
    if len(lines) > max(1, height - 2):
        return True
    return width is not None and any(len(line) > width for line in lines[:2000])


def pager_command(env: Mapping[str, str]) -> str | None:
    """``$POPQL_PAGER``, else ``$PAGER``, else ``less -SRXF`` when installed; None: none
    (an empty value turns paging off)."""
    for key in ("POPQL_PAGER", "PAGER"):
        if key in env:
            return env[key].strip() or None
    less = shutil.which("less")
    return f"{shlex.quote(less)} -SRXF" if less else None


def page(text: str, command: str) -> bool:
    """Show ``text`` through the pager ``command`` (run by the shell, like git does); False
    when it could not be started."""
    try:
        proc = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE)
    except OSError:
        return False
    assert proc.stdin is not None
    try:
        proc.stdin.write(text.encode("utf-8", "replace"))
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    while True:
        try:
            proc.wait()
            break
        except KeyboardInterrupt:  # the pager handles Ctrl-C itself
            continue
    return True


# ---------------------------------------------------------------------------------------------
# Inline images
# ---------------------------------------------------------------------------------------------


def detect_image_protocol(env: Mapping[str, str]) -> str | None:
    """``"kitty"``, ``"iterm2"`` or None, from the terminal's environment variables.

    ``POPQL_IMAGES=kitty|iterm2|off`` decides when set. Otherwise kitty (``TERM=xterm-kitty``
    or ``KITTY_WINDOW_ID``; Ghostty speaks kitty's protocol too) and iTerm2's protocol
    (``TERM_PROGRAM=iTerm.app`` or ``WezTerm``, ``LC_TERMINAL=iTerm2``). Inside tmux or
    screen, whose panes do not pass images through by default, None.
    """
    forced = env.get("POPQL_IMAGES", "").strip().lower()
    if forced in ("kitty", "iterm2"):
        return forced
    if forced in ("off", "none", "0", "no"):
        return None
    if env.get("TMUX") or env.get("STY"):
        return None
    term = env.get("TERM", "")
    program = env.get("TERM_PROGRAM", "")
    if term == "xterm-kitty" or env.get("KITTY_WINDOW_ID") or program == "ghostty":
        return "kitty"
    if program in ("iTerm.app", "WezTerm") or env.get("LC_TERMINAL") == "iTerm2":
        return "iterm2"
    return None


def kitty_image(png: bytes, *, columns: int | None = None, chunk: int = 4096) -> str:
    """The kitty graphics protocol escape that shows the PNG image ``png`` at the cursor
    (``a=T`` transmit and display, ``f=100`` PNG), base64 in chunks of at most ``chunk``
    bytes; ``columns`` scales it to that many cells wide."""
    data = base64.standard_b64encode(png).decode("ascii")
    parts = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [""]
    out = []
    for i, part in enumerate(parts):
        more = 1 if i < len(parts) - 1 else 0
        if i == 0:
            keys = "a=T,f=100" + (f",c={columns}" if columns else "") + f",m={more}"
        else:
            keys = f"m={more}"
        out.append(f"\x1b_G{keys};{part}\x1b\\")
    return "".join(out)


def iterm2_image(data: bytes, *, name: str | None = None, width: str = "auto") -> str:
    """iTerm2's inline image escape (OSC 1337 ``File=``) for the image bytes ``data``."""
    args = [f"size={len(data)}", "inline=1", f"width={width}", "preserveAspectRatio=1"]
    if name:
        args.insert(0, "name=" + base64.standard_b64encode(name.encode("utf-8")).decode("ascii"))
    payload = base64.standard_b64encode(data).decode("ascii")
    return f"\x1b]1337;File={';'.join(args)}:{payload}\x07"


def inline_image(protocol: str, png: bytes, *, name: str | None = None, columns: int = 16) -> str:
    """The escape of ``protocol`` (``kitty``/``iterm2``) showing ``png``."""
    if protocol == "kitty":
        return kitty_image(png, columns=columns)
    if protocol == "iterm2":
        return iterm2_image(png, name=name, width=str(columns))
    raise ValueError(f"unknown image protocol {protocol!r}")


def thumbnail_png(
    uri: str,
    *,
    dataset: str | os.PathLike[str] | None = None,
    content_hash: str | None = None,
    size: int = 128,
) -> bytes | None:
    """A small PNG of the image at ``uri`` (a local path or ``file://`` URL): the dataset's
    stored thumbnail (``engine/images.py``) when ``dataset`` and ``content_hash`` name one,
    else the image itself, decoded safely and shrunk. None when it cannot be read."""
    from popql.engine.images import ImageError, open_image, thumbnail_path

    source: Path | None = None
    if dataset is not None and content_hash:
        stored = thumbnail_path(dataset, content_hash)
        if stored.is_file():
            source = stored
    if source is None:
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        if "://" in path or not os.path.isfile(path):
            return None
        source = Path(path)
    try:
        from PIL import Image

        image = open_image(source, max_side=max(size * 4, 512)).image
        image.thumbnail((size, size), Image.Resampling.BOX)
        out = io.BytesIO()
        image.convert("RGB").save(out, "PNG")
        return out.getvalue()
    except (ImageError, OSError, ImportError, ValueError):
        return None


def thumbnails_text(
    table: pa.Table,
    protocol: str,
    *,
    dataset: str | os.PathLike[str] | None = None,
    cwd: str | None = None,
    limit: int = 12,
) -> str:
    """Inline thumbnails of the first ``limit`` rows' images, each followed by its path."""
    columns = image_columns(table.schema)
    if not columns or table.num_rows == 0:
        return ""
    column = table.column(columns[0]).to_pylist()[:limit]
    hashes: Sequence[Any] = (
        table.column("content_hash").to_pylist()[:limit]
        if "content_hash" in table.schema.names
        else [None] * len(column)
    )
    lines = []
    for uri, digest in zip(column, hashes, strict=True):
        if not isinstance(uri, str):
            continue
        png = thumbnail_png(uri, dataset=dataset, content_hash=digest)
        if png is None:
            continue
        lines.append(
            inline_image(protocol, png, name=os.path.basename(uri))
            + " "
            + str(_display_path(uri, cwd))
        )
    return "\n".join(lines)
