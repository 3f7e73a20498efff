"""Query results: a stream of Arrow record batches with convenient conversions.

A :class:`Result` wraps either a lazy :class:`datafusion.DataFrame` (a query that has been
planned but not run) or an already materialised :class:`pyarrow.Table` (a command such as
``CREATE TABLE``, which runs as soon as it is submitted).

* ``for batch in result`` streams :class:`pyarrow.RecordBatch` values straight from
  DataFusion (``DataFrame.execute_stream()``) without holding the whole result in memory.
  A lazy result can be streamed **once**; afterwards it is *consumed*.
* :meth:`Result.to_arrow` runs the query to completion and caches the table, so it (and
  :meth:`to_pylist`, :meth:`to_pandas`, :attr:`num_rows`, ``repr``, iterating again) can be
  called any number of times and always sees the same rows.
* Calling :meth:`to_arrow` on a consumed result raises :class:`ResultConsumedError` rather
  than silently running the query a second time.

Errors DataFusion raises while executing are translated into a
:class:`popql.diagnostics.PopQLError` by the callback the session passes in.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import html
import importlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    import datafusion
    import pandas

__all__ = ["ErrorHandler", "Result", "ResultConsumedError", "format_table", "format_value"]

#: Turns an exception raised by DataFusion into the exception to raise instead.
ErrorHandler = Callable[[BaseException], BaseException]

#: Rows shown by ``repr(result)`` and ``_repr_html_``.
REPR_ROWS = 20
#: Longest cell shown by :func:`format_table` before it is cut with ``...``.
MAX_CELL_WIDTH = 40


class ResultConsumedError(RuntimeError):
    """A lazy :class:`Result` was already streamed and cannot be read again."""


class Result:
    """The rows of one statement.

    Build one from a :class:`datafusion.DataFrame` (lazy) or a :class:`pyarrow.Table`
    (materialised). ``kind`` is ``"query"`` for statements that return rows and
    ``"command"`` otherwise. ``statement`` is the PopQL text of the statement and ``sql`` the
    DataFusion SQL it was lowered to (both may be None).
    """

    __slots__ = ("_consumed", "_df", "_on_error", "_table", "kind", "sql", "statement")

    def __init__(
        self,
        data: datafusion.DataFrame | pa.Table | None = None,
        *,
        kind: str = "query",
        statement: str | None = None,
        sql: str | None = None,
        on_error: ErrorHandler | None = None,
    ) -> None:
        self._df: datafusion.DataFrame | None = None
        self._table: pa.Table | None = None
        if data is None:
            self._table = pa.table({})
        elif isinstance(data, pa.Table):
            self._table = data
        else:
            self._df = data
        self._consumed = False
        self._on_error = on_error
        self.kind = kind
        self.statement = statement
        self.sql = sql

    @classmethod
    def empty(cls, kind: str = "command") -> Result:
        """A result with no columns and no rows."""
        return cls(pa.table({}), kind=kind)

    # -- state ------------------------------------------------------------------------------

    @property
    def materialized(self) -> bool:
        """True when the rows are held in memory (``to_arrow`` is free)."""
        return self._table is not None

    @property
    def consumed(self) -> bool:
        """True when a lazy result has been streamed and its rows are gone."""
        return self._consumed and self._table is None

    def _error(self, exc: BaseException) -> BaseException:
        if self._on_error is None:
            return exc
        return self._on_error(exc)

    def _check_not_consumed(self) -> None:
        if self.consumed:
            raise ResultConsumedError(
                "this result was already streamed (iterated) and its rows are gone; "
                "call to_arrow() before iterating to keep them, or run the query again"
            )

    # -- schema -----------------------------------------------------------------------------

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of the rows (known without running the query)."""
        if self._table is not None:
            return self._table.schema
        assert self._df is not None
        try:
            schema = self._df.schema()
        except Exception as exc:
            raise self._error(exc) from exc
        return schema if isinstance(schema, pa.Schema) else pa.schema(schema)

    @property
    def columns(self) -> list[str]:
        """Column names."""
        return list(self.schema.names)

    # -- streaming --------------------------------------------------------------------------

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        """Record batches, streamed from the engine (or from the cached table)."""
        if self._table is not None:
            return iter(self._table.to_batches())
        self._check_not_consumed()
        self._consumed = True
        return self._stream()

    def _stream(self) -> Iterator[pa.RecordBatch]:
        assert self._df is not None
        try:
            stream = self._df.execute_stream()
        except Exception as exc:
            raise self._error(exc) from exc
        while True:
            try:
                batch = next(stream)
            except StopIteration:
                return
            except Exception as exc:
                raise self._error(exc) from exc
            yield _to_pyarrow_batch(batch)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Same as ``iter(result)``."""
        return iter(self)

    def to_reader(self) -> pa.RecordBatchReader:
        """A :class:`pyarrow.RecordBatchReader` over the rows.

        For a lazy result the rows are streamed, so this consumes it; engine errors then
        surface from the reader as ``pyarrow.ArrowInvalid`` wrapping the translated message.
        """
        schema = self.schema
        return pa.RecordBatchReader.from_batches(schema, iter(self))

    # -- materialising ----------------------------------------------------------------------

    def to_arrow(self) -> pa.Table:
        """All rows as a :class:`pyarrow.Table` (runs the query once, then cached)."""
        if self._table is not None:
            return self._table
        self._check_not_consumed()
        assert self._df is not None
        try:
            schema = self._df.schema()
            batches = [_to_pyarrow_batch(b) for b in self._df.collect()]
        except Exception as exc:
            raise self._error(exc) from exc
        if batches:
            table = pa.Table.from_batches(batches)
        else:
            table = (schema if isinstance(schema, pa.Schema) else pa.schema(schema)).empty_table()
        self._table = table
        self._df = None
        return table

    def materialize(self) -> Result:
        """Run the query now and keep its rows (returns ``self``)."""
        self.to_arrow()
        return self

    def to_pylist(self) -> list[dict[str, Any]]:
        """All rows as a list of ``{column: value}`` dicts."""
        return self.to_arrow().to_pylist()

    def to_pydict(self) -> dict[str, list[Any]]:
        """All rows as ``{column: [values]}``."""
        return self.to_arrow().to_pydict()

    def to_pandas(self) -> pandas.DataFrame:
        """All rows as a :class:`pandas.DataFrame` (needs the optional pandas dependency)."""
        try:
            importlib.import_module("pandas")
        except ImportError as exc:
            raise ImportError(
                "Result.to_pandas() needs pandas, which is not installed; "
                "install it with: pip install 'popql[pandas]'"
            ) from exc
        return self.to_arrow().to_pandas()

    def scalar(self) -> Any:
        """The single value of a one-row, one-column result (None when there are no rows)."""
        table = self.to_arrow()
        if table.num_columns != 1 or table.num_rows > 1:
            raise ValueError(
                f"scalar() needs one column and at most one row, got "
                f"{table.num_columns} column(s) and {table.num_rows} row(s)"
            )
        return table.column(0)[0].as_py() if table.num_rows else None

    @property
    def num_rows(self) -> int:
        """Number of rows (runs and caches the query)."""
        return self.to_arrow().num_rows

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        """Arrow PyCapsule stream export (``pyarrow.table(result)``, polars, DuckDB...).

        Materialises the result first so that engine errors are raised as
        :class:`PopQLError` here rather than deep inside the consumer.
        """
        return self.to_arrow().__arrow_c_stream__(requested_schema)

    # -- display ----------------------------------------------------------------------------

    def __repr__(self) -> str:
        if self.consumed:
            return f"<popql.Result {self.kind}: consumed by streaming>"
        table = self.to_arrow()
        if table.num_columns == 0:
            return "OK" if self.kind == "command" else "(no columns)"
        return format_table(table, max_rows=REPR_ROWS)

    def _repr_html_(self) -> str:
        if self.consumed:
            return html.escape(repr(self))
        table = self.to_arrow()
        head = table.slice(0, REPR_ROWS)
        rows = head.to_pylist()
        parts = ["<table>", "<thead><tr>"]
        for field in table.schema:
            parts.append(
                f"<th>{html.escape(field.name)}<br><small>{html.escape(str(field.type))}"
                "</small></th>"
            )
        parts.append("</tr></thead><tbody>")
        for row in rows:
            parts.append("<tr>")
            for field in table.schema:
                cell = format_value(row[field.name], max_width=200)
                parts.append(f"<td>{html.escape(cell)}</td>")
            parts.append("</tr>")
        parts.append("</tbody></table>")
        parts.append(f"<p>{html.escape(_row_count_line(table.num_rows, len(rows)))}</p>")
        return "".join(parts)


def _to_pyarrow_batch(batch: Any) -> pa.RecordBatch:
    if isinstance(batch, pa.RecordBatch):
        return batch
    to_pyarrow = getattr(batch, "to_pyarrow", None)
    if to_pyarrow is not None:
        converted = to_pyarrow()
        if isinstance(converted, pa.RecordBatch):
            return converted
    return pa.record_batch(batch)


# ---------------------------------------------------------------------------------------------
# Text tables
# ---------------------------------------------------------------------------------------------


def _is_numeric(data_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(data_type)
        or pa.types.is_floating(data_type)
        or pa.types.is_decimal(data_type)
    )


def _cut(text: str, max_width: int | None) -> str:
    if max_width is not None and len(text) > max_width:
        return text[: max(1, max_width - 3)] + "..."
    return text


def _column_cells(column: pa.ChunkedArray, max_width: int | None) -> list[str]:
    # float16/float32 values widen to Python floats with spurious digits (0.023 becomes
    # 0.023000000044703484); Arrow's own cast to text prints the shortest exact form.
    if pa.types.is_float16(column.type) or pa.types.is_float32(column.type):
        texts = column.cast(pa.string()).to_pylist()
        return [_cut("NULL" if t is None else t, max_width) for t in texts]
    return [format_value(v, max_width) for v in column.to_pylist()]


def format_value(value: Any, max_width: int | None = MAX_CELL_WIDTH, nested: bool = False) -> str:
    """One cell as text: ``NULL``, ``true``, ISO dates, ``[1, 2]``, ``{k: v}``..."""
    if value is None:
        text = "NULL"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        if math.isnan(value):
            text = "NaN"
        elif math.isinf(value):
            text = "inf" if value > 0 else "-inf"
        else:
            text = repr(value)
    elif isinstance(value, int | decimal.Decimal):
        text = str(value)
    elif isinstance(value, str):
        text = repr(value) if nested else value
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        text = "\\x" + raw[:32].hex() + ("..." if len(raw) > 32 else "")
    elif isinstance(value, _dt.datetime):
        text = value.isoformat(sep=" ")
    elif isinstance(value, _dt.date | _dt.time):
        text = value.isoformat()
    elif isinstance(value, _dt.timedelta):
        text = str(value)
    elif isinstance(value, dict):
        inner = ", ".join(f"{k}: {format_value(v, None, nested=True)}" for k, v in value.items())
        text = "{" + inner + "}"
    elif isinstance(value, list | tuple):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            # An Arrow map arrives as a list of (key, value) pairs.
            inner = ", ".join(
                f"{format_value(k, None, nested=True)}: {format_value(v, None, nested=True)}"
                for k, v in value
            )
            text = "{" + inner + "}"
        else:
            text = "[" + ", ".join(format_value(v, None, nested=True) for v in value) + "]"
    else:
        text = str(value)
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return _cut(text, max_width)


def _row_count_line(total: int, shown: int) -> str:
    noun = "row" if total == 1 else "rows"
    if shown < total:
        return f"({total:,} {noun}, {shown:,} shown)"
    return f"({total:,} {noun})"


def format_table(
    table: pa.Table,
    max_rows: int | None = REPR_ROWS,
    max_width: int | None = MAX_CELL_WIDTH,
    show_types: bool = True,
    row_count: bool = True,
) -> str:
    """An aligned text table of ``table`` (like ``psql``/DuckDB's shell).

    Shows at most ``max_rows`` rows (all when None), a header with column names and (when
    ``show_types``) Arrow types, numbers right-aligned, and a row-count line.
    """
    total = table.num_rows
    head = table if max_rows is None or total <= max_rows else table.slice(0, max_rows)
    fields: Sequence[pa.Field] = list(table.schema)
    columns = [_column_cells(head.column(i), max_width) for i in range(len(fields))]
    names = [_cut(f.name, max_width) for f in fields]
    types = [str(f.type) for f in fields]
    widths = []
    for i, name in enumerate(names):
        cells = columns[i]
        width = max([len(name), len(types[i]) if show_types else 0, *(len(c) for c in cells)])
        widths.append(width)
    numeric = [_is_numeric(f.type) for f in fields]

    def line(cells: Sequence[str], align_numbers: bool) -> str:
        padded = []
        for i, cell in enumerate(cells):
            if align_numbers and numeric[i]:
                padded.append(cell.rjust(widths[i]))
            else:
                padded.append(cell.ljust(widths[i]))
        return (" " + " | ".join(padded)).rstrip()

    out = [line(names, False)]
    if show_types:
        out.append(line(types, False))
    out.append("-" + "-+-".join("-" * w for w in widths) + "-")
    shown = head.num_rows
    for r in range(shown):
        out.append(line([columns[i][r] for i in range(len(fields))], True))
    if row_count:
        out.append(_row_count_line(total, shown))
    return "\n".join(out)


def json_value(value: Any) -> Any:
    """A JSON-ready version of a Python value read from Arrow (``to_pylist``): NaN and
    infinities become None, decimals strings, dates ISO text, durations seconds, bytes hex, and
    a map (a list of key/value pairs) an object. Used by the CLI's JSON output, the REPL and
    the web view."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return {str(k): json_value(v) for k, v in value}
        return [json_value(v) for v in value]
    return str(value)
