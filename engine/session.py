"""Sessions: run PopQL text on an embedded Apache DataFusion engine.

>>> import popql.engine as pe
>>> s = pe.connect()                       # in memory
>>> s.register("images", "images.parquet")  # doctest: +SKIP
>>> s.sql("SELECT 1 AS one").to_pylist()
[{'one': 1}]

Every statement goes text -> ``popql.syntax.parse`` -> ``popql.engine.lower.compile_statement``
(checked against :attr:`Session.catalog`) -> ``SessionContext.sql`` -> :class:`Result`.

Statements run in order. A command (``CREATE``, ``INSERT``, ``DROP``, ``SET``...) runs to
completion as soon as it is reached. A query returns a lazy :class:`Result`; when a script has
more statements after it, that result is materialised before the next statement runs, so each
statement sees exactly the effects of the ones before it. The result of the *last* statement
stays lazy and can be streamed.

Errors are always :class:`popql.diagnostics.PopQLError` values: the front end's diagnostics,
DataFusion errors translated by :mod:`popql.engine.errors` (with spans into the text the user
gave), F001/F002/F003 for data files, and I001 (a bug) for any unexpected Python exception.

Datasets
--------
``connect(path)`` opens a *dataset directory*. Every Parquet file or folder of Parquet files in
``<path>/tables/`` is a table named after it::

    <path>/
      tables/
        images.parquet        -> table "images"
        labels/               -> table "labels" (every *.parquet file below it, hive-style
          part-0.parquet         partition folders such as year=2024/ included)

Names starting with ``.`` or ``_`` are ignored. A directory without ``manifest.json`` is created
(with ``tables/``) when missing.

A directory with ``manifest.json`` is a *versioned dataset* (:mod:`popql.engine.dataset`,
written by ``popql ingest``). The session reads one snapshot -- the current version, or
``connect(path, version=N)`` -- and registers, without reading any data (lazily scanned
``pyarrow.dataset`` tables):

* ``samples``: a view, the samples table LEFT JOINed on ``sample_id`` with each tagger's
  table (a column whose name is taken already is prefixed ``<tagger>_``), materialized in
  memory when the session runs its first statement (see :meth:`Session._materialize_samples`);
  ``Session.describe('samples')`` says which tagger and version produced each column;
* ``"data.samples"``: the samples table alone;
* every table of the snapshot under its own name: ``"tags.<tagger>@<version>"`` (so older
  tagger versions stay queryable), ``"embeddings.<key>"``, ``ingest_errors`` (empty when the
  dataset has none), ``labels``...;
* the files in ``tables/`` as above.

The session keeps that version until :meth:`Session.refresh` moves it to the latest one;
:meth:`Session.at_version` opens another session on an older version (time travel; the
grammar's ``FROM samples AS OF VERSION n`` will map to it). Tables created with SQL DDL live in
memory only; nothing is written back to the directory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datafusion
import pyarrow as pa

from popql.diagnostics import Diagnostic, PopQLError, did_you_mean_hint, internal_error

from .catalog import DataFusionCatalog, arrow_type_name
from .commands import CommandContext, handler_for
from .dataset import (
    INGEST_ERRORS_SCHEMA,
    SAMPLES_SCHEMA,
    Dataset,
    Snapshot,
    is_dataset,
    samples_view_columns,
)
from .errors import clean_message, message_of, translate_file_error, translate_message
from .result import Result

if TYPE_CHECKING:
    from popql.ast import Script

    from .ingest import IngestSummary

__all__ = [
    "ARROW_SUFFIXES",
    "CSV_SUFFIXES",
    "PARQUET_SUFFIXES",
    "Session",
    "connect",
    "quote_identifier",
    "read_source",
]

PARQUET_SUFFIXES = (".parquet",)
CSV_SUFFIXES = (".csv",)
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc", ".arrows")

_FORMATS: dict[str, str] = {
    **{s: "parquet" for s in PARQUET_SUFFIXES},
    **{s: "csv" for s in CSV_SUFFIXES},
    **{s: "arrow" for s in ARROW_SUFFIXES},
}

TABLES_DIR = "tables"
#: The registered name of a versioned dataset's samples table (``samples`` is the view).
SAMPLES_TABLE = "data.samples"

_DESCRIBE_SCHEMA = pa.schema(
    [
        ("column", pa.string()),
        ("type", pa.string()),
        ("source", pa.string()),
        ("tagger", pa.string()),
        ("tagger_version", pa.string()),
    ]
)


def connect(path: str | os.PathLike[str] | None = None, version: int | None = None) -> Session:
    """Open a session: in memory when ``path`` is None, else on a dataset directory.

    A directory with ``manifest.json`` is a versioned dataset, opened at its current version or
    at ``version`` (D006 when that version does not exist); see the module docstring for the
    tables it registers. Otherwise the directory (and its ``tables/`` folder) is created when
    missing, and every Parquet file or folder of Parquet files in ``tables/`` is registered as
    a table named after it.
    """
    return Session(path, version=version)


def quote_identifier(name: str) -> str:
    """``name`` as a double-quoted SQL identifier (``we"ird`` -> ``"we""ird"``)."""
    return '"' + name.replace('"', '""') + '"'


def read_source(path: str | os.PathLike[str]) -> str:
    """The text of a PopQL file, or a PopQLError F001 when it cannot be read."""
    shown = os.fspath(path)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return fh.read()
    except FileNotFoundError:
        message = f"file not found: {shown}"
    except IsADirectoryError:
        message = f"expected a file but found a directory: {shown}"
    except UnicodeDecodeError as exc:
        message = f"cannot read {shown}: not UTF-8 text ({exc.reason} at byte {exc.start})"
    except OSError as exc:
        message = f"cannot read {shown}: {exc.strerror or exc}"
    raise PopQLError(Diagnostic("F001", message, file=shown), file=shown)


def _statement_range(stmt: Any, text: str) -> tuple[int, int]:
    span = getattr(stmt, "span", None)
    if span is None:
        return (0, len(text))
    start = max(0, min(int(span.start), len(text)))
    end = max(start, min(int(span.end), len(text)))
    return (start, end)


def _with_context(err: PopQLError, source: str, file: str | None) -> PopQLError:
    """``err`` rendering against ``source``/``file`` (diagnostics get ``file`` when unset)."""
    if err.source == source and err.file == file and all(d.file == file for d in err.diagnostics):
        return err
    diags = tuple(
        d if d.file is not None or file is None else d.with_file(file) for d in err.diagnostics
    )
    new = PopQLError(diags, source=source if err.source is None else err.source, file=file)
    new.__cause__ = err.__cause__
    return new


def _is_pandas_frame(obj: object) -> bool:
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(obj, pandas.DataFrame)


class Session:
    """A PopQL session over one DataFusion :class:`~datafusion.SessionContext`.

    On a versioned dataset with taggers, the ``samples`` view is joined once and kept in
    memory when the session runs its first statement (datasets of up to
    :attr:`materialize_rows` samples; set it to 0 before the first statement to keep the lazy
    view).

    Attributes:
        ctx: the DataFusion context (information_schema enabled, ``target_partitions`` =
            ``os.cpu_count()``). Using it directly is fine; PopQL reads its catalog live.
        catalog: a :class:`DataFusionCatalog` over ``ctx`` (what the checker sees).
        path: the dataset directory, or None for an in-memory session.
        dataset: the :class:`~popql.engine.dataset.Dataset` when ``path`` is a versioned
            dataset (has ``manifest.json``), else None.
        snapshot: the :class:`~popql.engine.dataset.Snapshot` the session reads, or None.
    """

    #: Largest dataset (in samples) whose ``samples`` view is materialized in memory.
    materialize_rows: int = 2_000_000

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        config: datafusion.SessionConfig | None = None,
        version: int | None = None,
    ) -> None:
        if config is None:
            config = (
                datafusion.SessionConfig()
                .with_information_schema(True)
                .with_target_partitions(max(1, os.cpu_count() or 1))
            )
        self._config = config
        self.ctx: datafusion.SessionContext = datafusion.SessionContext(config)
        self.catalog: DataFusionCatalog = DataFusionCatalog(self.ctx)
        self.catalog.version_resolver = self._versioned_table
        self.catalog.population_resolver = self._population_query
        self._population_store: Any = None  # popql.engine.populations (created on first use)
        self._population_identity_check = True
        from .similarity import SimilarityService

        self.similarity = SimilarityService(self)
        self.catalog.similarity_search = self.similarity.search
        self.path: Path | None = None
        self.dataset: Dataset | None = None
        self.snapshot: Snapshot | None = None
        # names registered from the directory -> describe() rows (column -> source info)
        self._from_dir: dict[str, dict[str, tuple[str, str | None, str | None]]] = {}
        self._pending_samples: str | None = None  # the samples view's SQL, until materialized
        if path is not None:
            self.path = Path(path)
            self._open_dataset(self.path, version)
        elif version is not None:
            raise PopQLError(Diagnostic("D006", "an in-memory session has no dataset versions"))

    def __repr__(self) -> str:
        where = "memory" if self.path is None else str(self.path)
        if self.snapshot is not None:
            where += f" @ version {self.snapshot.version}"
        return f"<popql.Session {where}: {len(self.tables())} table(s)>"

    # -- dataset versions -----------------------------------------------------------------------

    @property
    def version(self) -> int | None:
        """The dataset version this session reads (None: not a versioned dataset)."""
        return None if self.snapshot is None else self.snapshot.version

    def refresh(self) -> int | None:
        """Move to the dataset's latest committed version; returns it.

        Re-registers the directory's tables (``samples``, tag tables, ``tables/``...) when
        the version changed (or, without a manifest, rescans ``tables/``); tables added with
        :meth:`register` or SQL under other names are kept. A session created with
        ``version=N`` is moved to the latest version too. In-memory sessions: None.
        """
        if self.path is None:
            return None
        if self.dataset is not None and is_dataset(self.path):
            latest = self.dataset.version()
            if self.snapshot is not None and latest == self.snapshot.version:
                return latest
        self._close_dataset()
        self._open_dataset(self.path, None)
        return self.version

    def at_version(self, version: int) -> Session:
        """A new session on the same dataset at ``version`` (time travel).

        ``session.at_version(3).sql("SELECT count(*) FROM samples")`` is what the grammar will
        spell ``FROM samples AS OF VERSION 3``. D006 when the version does not exist (or was
        removed by vacuum). Tables registered on this session are not carried over.
        """
        if self.path is None or self.dataset is None:
            raise PopQLError(
                Diagnostic(
                    "D006",
                    "this session has no dataset versions"
                    + ("" if self.path is None else f": {self.path} has no manifest.json"),
                )
            )
        return Session(self.path, config=self._config, version=version)

    def ingest(self, sources: Any, **kwargs: Any) -> IngestSummary:
        """Ingest images into this session's dataset directory (created when new), then move
        the session to the new version. ``popql.connect(DIR).ingest("photos/")``; keyword
        arguments are those of :func:`popql.engine.ingest.ingest` (taggers, embedder, labels,
        batch_size, progress, commit_every...). F001 for an in-memory session."""
        if self.path is None:
            raise PopQLError(
                Diagnostic(
                    "F001",
                    "ingest needs a dataset: this session is in memory",
                    hints=("open one with popql.connect('DIR'); it is created when missing",),
                )
            )
        from .ingest import ingest

        summary = ingest(self.path, sources, **kwargs)
        self.refresh()
        return summary

    # -- predictions (engine/predictions.py, docs/evaluation.md) ---------------------------------

    #: The model EXPECT uses when it names none (``popql test --model m``; ``m@version``).
    default_model: str | None = None
    #: The :class:`popql.engine.testing.Policy` EXPECT decides with (None: the defaults).
    test_policy: Any = None

    def log_predictions(
        self, model: str, version: str | int | None = None, data: Any = None
    ) -> int:
        """Store ``data`` (pandas, Arrow, a list of dicts) as version ``version`` (default
        ``"1"``) of ``model``'s predictions, queryable as ``"predictions.<model>"``; returns
        the number of rows. Re-logging a version replaces it atomically.

        >>> s.log_predictions(model="resnet", version="2", data=[        # doctest: +SKIP
        ...     {"sample_id": "3f2a...", "label": "cat", "score": 0.93}])
        """
        from .predictions import log_predictions

        if data is None:
            raise TypeError("log_predictions() needs data=: a DataFrame, Arrow table or list")
        return log_predictions(self, model, version, data)

    def model_names(self) -> list[str]:
        """Names of the models with logged predictions, sorted."""
        from .predictions import model_names

        return model_names(self)

    def describe(self, name: str) -> pa.Table:
        """The columns of table ``name``: ``column``, ``type`` (Arrow type, as the checker
        sees it), ``source`` (the dataset table a column comes from: ``samples``,
        ``tags.<tagger>@<version>``, ``embeddings.<key>``...; ``table`` for tables that are
        not part of a dataset), ``tagger`` and ``tagger_version`` (null unless a tagger
        produced the column). N001 for an unknown table.
        """
        schema = self.schema(name)
        info = self._from_dir.get(name) or self._from_dir.get(name.lower()) or {}
        rows: dict[str, list[Any]] = {
            "column": [],
            "type": [],
            "source": [],
            "tagger": [],
            "tagger_version": [],
        }
        for f in schema:
            source, tagger, tagger_version = info.get(f.name, ("table", None, None))
            rows["column"].append(f.name)
            rows["type"].append(arrow_type_name(f.type))
            rows["source"].append(source)
            rows["tagger"].append(tagger)
            rows["tagger_version"].append(tagger_version)
        return pa.table(rows, schema=_DESCRIBE_SCHEMA)

    # -- populations ----------------------------------------------------------------------------

    def population_names(self) -> list[str]:
        """Names of the populations defined in this session's dataset (or in memory), sorted.

        >>> import pyarrow as pa
        >>> s = connect()
        >>> s.register("samples", pa.table({"sample_id": ["a", "b"], "brightness": [0.1, 0.9]}))
        >>> _ = s.sql("CREATE POPULATION dark AS SELECT * FROM samples WHERE brightness < 0.5")
        >>> s.population_names()
        ['dark']
        """
        from .populations import store_of

        return sorted(store_of(self).read().populations)

    def population(self, name: str) -> Any:
        """Population ``name`` as data for training code (N004 when there is none):
        ``.to_arrow(split=...)``, ``.paths(split=...)``, ``.torch_dataset(split=...,
        transform=...)`` (see :class:`popql.engine.populations.Population`)."""
        from .populations import Population, require

        return Population(self, require(self, name))

    def _population_query(self, name: str, span: Any = None) -> Any:
        """The catalog's hook: the parsed query of population ``name`` (None: not one)."""
        from .populations import resolve_query

        return resolve_query(self, name, span, check_identity=self._population_identity_check)

    def _describe_dataset_table(self, stmt: Any) -> pa.Table | None:
        """``DESCRIBE samples`` on a dataset lists each column with the tagger and version that
        produced it (:meth:`describe`); elsewhere DESCRIBE is DataFusion's."""
        from popql import ast as A

        if self.dataset is None or not isinstance(stmt, A.Describe):
            return None
        if not isinstance(stmt.target, tuple) or len(stmt.target) != 1:
            return None
        ident = stmt.target[0]
        name = ident.value if ident.quote else ident.value.lower()
        if name not in self._from_dir:
            return None
        return self.describe(name)

    # -- running text -------------------------------------------------------------------------

    def sql(self, text: str, params: Mapping[str, Any] | None = None) -> Result:
        """Run every statement of ``text`` in order and return the result of the last one.

        ``params`` binds ``$name`` placeholders (values are converted with ``pyarrow.scalar``;
        a key may be written with or without the ``$``). Text without statements gives an
        empty result.
        """
        results = self.execute(text, params)
        return results[-1] if results else Result.empty()

    def execute(
        self,
        text: str,
        params: Mapping[str, Any] | None = None,
        *,
        file: str | None = None,
    ) -> list[Result]:
        """Run every statement of ``text`` in order; one :class:`Result` per statement.

        All results but the last are materialised (their rows are in memory); the last one is
        lazy. ``file`` names the text's origin in diagnostics.
        """
        return list(self.iterate(text, params, file=file))

    def iterate(
        self,
        text: str,
        params: Mapping[str, Any] | None = None,
        *,
        file: str | None = None,
    ) -> Iterator[Result]:
        """Run the statements of ``text`` one at a time, yielding each :class:`Result`.

        The next statement runs only when the iterator is advanced. A query result that was
        not streamed by then is materialised first, so statements always run in script order.
        Streaming each result before advancing keeps memory flat (the CLI does this).
        """
        if not isinstance(text, str):
            raise TypeError(f"PopQL text must be a str, not {type(text).__name__}")
        script = self._parse(text, file)
        self._materialize_samples()
        previous: Result | None = None
        for stmt in script.statements:
            if previous is not None and previous.kind == "query" and not previous.consumed:
                previous.materialize()
            previous = self._run_statement(stmt, text, file, params, execute=True)
            yield previous

    def run_file(
        self, path: str | os.PathLike[str], params: Mapping[str, Any] | None = None
    ) -> list[Result]:
        """Run a ``.popql`` file; diagnostics name the file and point into it."""
        text = read_source(path)
        return self.execute(text, params, file=os.fspath(path))

    def check(self, text: str, *, file: str | None = None) -> None:
        """Parse and check ``text`` against this session's tables without running it.

        Raises a PopQLError with every diagnostic found (none: returns None). Statements are
        checked in order in a scratch in-memory session holding *empty* copies of this
        session's tables, so ``CREATE TABLE``/``VIEW``/``DROP`` earlier in the text are
        visible to later statements. Only DDL is executed there (DataFusion runs it on
        planning, on empty data); queries, ``INSERT`` and ``COPY`` are planned, never run, and
        no data is read or written.
        """
        script = self._parse(text, file)
        scratch = self._scratch()
        diagnostics: list[Diagnostic] = []
        for stmt in script.statements:
            try:
                scratch._run_statement(stmt, text, file, None, execute=False)
            except PopQLError as err:
                diagnostics.extend(err.diagnostics)
        if diagnostics:
            raise PopQLError(diagnostics, source=text, file=file)

    # -- tables ---------------------------------------------------------------------------------

    def tables(self) -> list[str]:
        """Names of the tables and views in the session, sorted."""
        return self.catalog.table_names()

    def schema(self, name: str) -> pa.Schema:
        """The Arrow schema of table ``name`` (PopQLError N001 when there is no such table)."""
        schema = self.catalog.schema(name)
        if schema is None:
            hint = did_you_mean_hint(name, self.tables())
            raise PopQLError(
                Diagnostic("N001", f"unknown table '{name}'", hints=(hint,) if hint else ())
            )
        return schema

    def register(self, name: str, source: Any) -> None:
        """Make ``source`` queryable as table ``name`` (replacing a table of that name).

        ``source`` may be a :class:`pyarrow.Table`, ``RecordBatch``, ``RecordBatchReader``
        (read to the end now), ``pyarrow.dataset.Dataset`` (scanned lazily), a pandas
        DataFrame, a DataFusion DataFrame (registered as a view), any object exporting an Arrow
        stream (``__arrow_c_stream__``: polars, DuckDB...), or a path to a Parquet, CSV or
        Arrow IPC (``.arrow``/``.feather``/``.ipc``/``.arrows``) file or a folder of such files
        (the format comes from the suffix; others are F002). Files are read lazily at query
        time; only their schema is read now.

        ``name`` is used exactly as given, like a double-quoted SQL identifier: register
        lower-case names to refer to them unquoted.
        """
        if not isinstance(name, str) or not name:
            raise TypeError("a table name must be a non-empty str")
        qname = quote_identifier(name)
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            self._register_path(name, path)
            return
        supported = (
            isinstance(source, pa.Table | pa.RecordBatch | pa.RecordBatchReader)
            or _is_pandas_frame(source)
            or isinstance(source, datafusion.DataFrame)
            or _is_arrow_dataset(source)
            or hasattr(source, "__arrow_c_stream__")
        )
        if not supported:
            raise TypeError(
                f"cannot register a {type(source).__module__}.{type(source).__qualname__}: "
                "expected a pyarrow Table/RecordBatchReader/Dataset, a pandas DataFrame or "
                "a path to a Parquet, CSV or Arrow file or folder"
            )
        try:
            if isinstance(source, datafusion.DataFrame):
                self._replace(name)
                self.ctx.register_table(qname, source)
            elif _is_arrow_dataset(source):
                self._replace(name)
                self.ctx.register_dataset(qname, source)
            else:
                self._register_arrow(name, _to_arrow_table(source))
        except Exception as exc:
            # e.g. a pandas object column mixing ints and strings, a failing reader
            raise PopQLError(
                Diagnostic(
                    "E001",
                    f"cannot register table '{name}': {clean_message(message_of(exc))}",
                    hints=(f"{type(exc).__name__}: {exc}",),
                )
            ) from exc

    def deregister(self, name: str) -> None:
        """Remove table ``name`` (no error when it does not exist)."""
        self.ctx.deregister_table(quote_identifier(name))

    # -- internals: registration -----------------------------------------------------------------

    def _replace(self, name: str) -> None:
        if self.ctx.catalog().schema().table_exist(name):
            self.ctx.deregister_table(quote_identifier(name))

    def _register_arrow(self, name: str, table: pa.Table) -> None:
        batches = table.combine_chunks().to_batches() if table.num_rows else []
        if not batches:
            batches = [pa.RecordBatch.from_pylist([], schema=table.schema)]
        self._replace(name)
        self.ctx.register_record_batches(quote_identifier(name), [batches])

    def _register_path(self, name: str, path: Path) -> None:
        shown = os.fspath(path)
        if not path.exists():
            raise PopQLError(Diagnostic("F001", f"file not found: {shown}"))
        if path.is_dir():
            fmt, suffix = _folder_format(path)
        else:
            suffix = path.suffix
            fmt = _FORMATS.get(suffix.lower(), "")
            if not fmt:
                raise PopQLError(_unsupported(shown, suffix))
        location = str(path.resolve())
        qname = quote_identifier(name)
        self._replace(name)
        partitions = _hive_partitions(path, suffix) if path.is_dir() else []
        try:
            if fmt == "parquet":
                self.ctx.register_parquet(
                    qname, location, file_extension=suffix, table_partition_cols=partitions
                )
            elif fmt == "csv":
                self.ctx.register_csv(qname, location, file_extension=suffix)
            else:
                self.ctx.register_arrow(
                    qname, location, file_extension=suffix, table_partition_cols=partitions
                )
        except Exception as exc:
            raise PopQLError(translate_file_error(message_of(exc), shown)) from exc

    def _open_dataset(self, root: Path, version: int | None) -> None:
        shown = os.fspath(root)
        if root.exists() and not root.is_dir():
            raise PopQLError(
                Diagnostic("F001", f"not a dataset directory: {shown} is a file"),
            )
        if is_dataset(root):
            self._open_versioned(root, version)
            return
        if version is not None:
            raise PopQLError(
                Diagnostic(
                    "D006",
                    f"{shown} is not a versioned dataset (no manifest.json): "
                    f"it has no version {version}",
                    hints=("datasets get versions when `popql ingest` writes to them",),
                )
            )
        self._register_tables_dir(root, create=True, taken=set())

    def _open_versioned(self, root: Path, version: int | None) -> None:
        """Register one snapshot of the versioned dataset at ``root`` (nothing is read)."""
        dataset = Dataset.open(root)
        snapshot = dataset.snapshot(version)
        taggers_by_table: dict[str, tuple[str | None, str | None]] = {}
        for tagger, meta in snapshot.taggers.items():
            meta = meta if isinstance(meta, dict) else {}
            v = meta.get("version")
            table = meta.get("table") or f"tags.{tagger}@{v}"
            taggers_by_table[str(table)] = (tagger, None if v is None else str(v))
        names: dict[str, str] = {}  # registered name -> snapshot table
        for table in snapshot.table_names():
            names[SAMPLES_TABLE if table == "samples" else table] = table
        empty = {SAMPLES_TABLE: SAMPLES_SCHEMA, "ingest_errors": INGEST_ERRORS_SCHEMA}
        try:
            for reg, table in names.items():
                self._replace(reg)
                self.ctx.register_dataset(quote_identifier(reg), snapshot.dataset(table))
                producer = taggers_by_table.get(table, (None, None))
                source = "samples" if table == "samples" else table
                self._from_dir[reg] = {f.name: (source, *producer) for f in snapshot.schema(table)}
            for reg, schema in empty.items():
                if reg not in names:
                    self._register_arrow(reg, schema.empty_table())
                    self._from_dir[reg] = {f.name: (reg.split(".")[-1], None, None) for f in schema}
            self._register_samples_view(snapshot)
        except PopQLError:
            self._close_dataset()
            raise
        except Exception as exc:
            self._close_dataset()
            raise PopQLError(
                Diagnostic(
                    "E001",
                    f"cannot open version {snapshot.version} of dataset {root}: "
                    f"{clean_message(message_of(exc))}",
                )
            ) from exc
        self.dataset = dataset
        self.snapshot = snapshot
        taken = {n.lower() for n in self._from_dir}
        self._register_tables_dir(root, create=False, taken=taken)

    def _versioned_table(self, name: str, version: int, span: Any = None) -> str:
        """``FROM name AS OF VERSION n``: register that snapshot's ``name`` as ``name@vN``."""
        if self.dataset is None:
            raise PopQLError(
                Diagnostic(
                    "D006",
                    "AS OF VERSION needs a versioned dataset (popql.connect(DIR) on a directory"
                    " that `popql ingest` wrote)",
                    span,
                )
            )
        try:
            snapshot = self.dataset.snapshot(version)
        except PopQLError as err:
            diags = tuple(replace(d, span=d.span or span) for d in err.diagnostics)
            raise PopQLError(diags) from None
        suffix = f"@v{version}"
        registered = f"{name}{suffix}"
        if self.ctx.catalog().schema().table_exist(registered):
            return registered
        for table in snapshot.table_names():
            reg = (SAMPLES_TABLE if table == "samples" else table) + suffix
            self.ctx.register_dataset(quote_identifier(reg), snapshot.dataset(table))
        if name == "samples":
            self._register_samples_view(snapshot, suffix=suffix, track=False)
        elif name not in snapshot.table_names():
            raise PopQLError(
                Diagnostic(
                    "N001",
                    f"version {version} of the dataset has no table '{name}'",
                    span,
                    hints=(f"its tables: samples, {', '.join(snapshot.table_names())}",),
                )
            )
        return registered

    def _register_samples_view(
        self, snapshot: Snapshot, suffix: str = "", *, track: bool = True
    ) -> None:
        columns = samples_view_columns(snapshot)
        aliases: dict[str, str] = {"samples": "s"}
        for col in columns:
            if col.table not in aliases:
                aliases[col.table] = f"t{len(aliases)}"
        select = ", ".join(
            f"{aliases[c.table]}.{quote_identifier(c.column)} AS {quote_identifier(c.name)}"
            for c in columns
        )
        joins = "".join(
            f" LEFT JOIN {quote_identifier(table + suffix)} AS {alias}"
            f" ON {alias}.sample_id = s.sample_id"
            for table, alias in aliases.items()
            if table != "samples"
        )
        split_sql, split_joins = _split_column(snapshot, columns, suffix)
        if split_sql:
            select += f", {split_sql} AS split"
            joins += split_joins
        sql = f"SELECT {select} FROM {quote_identifier(SAMPLES_TABLE + suffix)} AS s{joins}"
        if not track:
            self.ctx.register_view(quote_identifier("samples" + suffix), self.ctx.sql(sql))
            return
        self._replace("samples")
        self.ctx.register_view(quote_identifier("samples"), self.ctx.sql(sql))
        self._pending_samples = None
        if joins and snapshot.num_rows("samples") <= self.materialize_rows:
            self._pending_samples = sql
        self._from_dir["samples"] = {
            c.name: (
                "samples" if c.table == "samples" else c.table,
                c.tagger,
                c.tagger_version,
            )
            for c in columns
        }
        if split_sql:
            self._from_dir["samples"]["split"] = (_split_source(snapshot), None, None)

    def _materialize_samples(self) -> None:
        """Replace the ``samples`` view by its rows in memory, once per opened version.

        The view LEFT JOINs the samples table with every tagger's table on ``sample_id``;
        DataFusion re-runs those hash joins on string keys in every query (about 25 ms per
        100,000 samples), and a similarity search runs two queries over the view. Joining
        once when the session first runs a statement (about 50 ms and 100 bytes of tags per
        sample at 100,000 samples) makes later queries scan memory (about 1.5 ms).
        Datasets above ``materialize_rows`` samples keep the lazy view.
        """
        sql = self._pending_samples
        if sql is None:
            return
        self._pending_samples = None
        try:
            table = self.ctx.sql(sql).to_arrow_table()
        except Exception:
            return  # the view stays; a query over it reports the problem with its context
        parts = max(1, min(os.cpu_count() or 1, table.num_rows // 65536 or 1))
        size = -(-table.num_rows // parts) if table.num_rows else 1
        batches = table.combine_chunks().to_batches(max_chunksize=size) or [
            pa.RecordBatch.from_pylist([], schema=table.schema)
        ]
        self._replace("samples")
        self.ctx.register_record_batches(quote_identifier("samples"), [[b] for b in batches])

    def _close_dataset(self) -> None:
        """Deregister every table registered from the directory."""
        self.similarity.clear_caches()
        for name in list(self._from_dir):
            self.ctx.deregister_table(quote_identifier(name))
        self._from_dir.clear()
        self.dataset = None
        self.snapshot = None

    def _register_tables_dir(self, root: Path, *, create: bool, taken: set[str]) -> None:
        """Register the files in ``root/tables/`` (created when ``create``)."""
        tables_dir = root / TABLES_DIR
        if not create and not tables_dir.is_dir():
            return
        try:
            tables_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PopQLError(
                Diagnostic("F004", f"cannot create dataset directory {tables_dir}: {exc.strerror}")
            ) from exc
        sources: dict[str, Path] = {}
        for entry in sorted(tables_dir.iterdir()):
            if entry.name.startswith((".", "_")):
                continue
            if entry.is_file() and entry.suffix.lower() == ".parquet":
                name = entry.name[: -len(entry.suffix)]
            elif entry.is_dir() and _has_files(entry, ".parquet"):
                name = entry.name
                if name.lower().endswith(".parquet"):
                    name = name[: -len(".parquet")]
            else:
                continue
            if name in sources:
                raise PopQLError(
                    Diagnostic(
                        "F001",
                        f"two sources for table '{name}' in {tables_dir}: "
                        f"{sources[name].name} and {entry.name}",
                        hints=("remove or rename one of them",),
                    )
                )
            if name.lower() in taken:
                raise PopQLError(
                    Diagnostic(
                        "F001",
                        f"table '{name}' in {tables_dir} has the name of a dataset table",
                        hints=(f"rename {entry.name}",),
                    )
                )
            sources[name] = entry
        for name, entry in sources.items():
            self._register_path(name, entry)
            self._from_dir[name] = {}

    def _scratch(self) -> Session:
        """An in-memory session with empty copies of this session's tables (for checking)."""
        scratch = Session()
        from .populations import MemoryStore, store_of

        scratch._population_store = MemoryStore(store_of(self).read().copy())
        scratch.similarity.source = self  # searches are checked against this dataset
        for name in self.tables():
            schema = self.catalog.schema(name)
            if schema is None:
                continue
            empty = pa.RecordBatch.from_pylist([], schema=schema)
            scratch.ctx.register_record_batches(quote_identifier(name), [[empty]])
        builtin = set(scratch.ctx.udfs())
        for fn in self.ctx.udfs():
            if fn not in builtin:
                try:
                    scratch.ctx.register_udf(self.ctx.udf(fn))
                except Exception:
                    continue
        return scratch

    # -- internals: statements -------------------------------------------------------------------

    def _parse(self, text: str, file: str | None) -> Script:
        from popql import syntax

        try:
            return syntax.parse(text, file=file)
        except PopQLError as err:
            raise _with_context(err, text, file) from err
        except RecursionError as exc:
            raise PopQLError(
                Diagnostic("E001", "statement nested too deeply to parse", file=file),
                source=text,
                file=file,
            ) from exc
        except Exception as exc:
            raise PopQLError(internal_error(exc, text, None, file), source=text, file=file) from exc

    def _run_statement(
        self,
        stmt: Any,
        text: str,
        file: str | None,
        params: Mapping[str, Any] | None,
        *,
        execute: bool,
    ) -> Result:

        start, end = _statement_range(stmt, text)
        stmt_text = text[start:end]
        span = getattr(stmt, "span", None)
        described = self._describe_dataset_table(stmt)
        if described is not None:
            return Result(described, kind="query", statement=stmt_text, sql=None)
        handler = handler_for(stmt)
        if handler is not None:
            context = CommandContext(text, stmt_text, file, params, execute)
            try:
                handled = handler(self, stmt, context)
            except PopQLError as err:
                raise _with_context(err, text, file) from err
            except Exception as exc:
                raise PopQLError(
                    internal_error(exc, stmt_text, span, file), source=text, file=file
                ) from exc
            if handled is not None:
                return handled
        self.similarity.begin(_search_mode(stmt, execute))
        try:
            return self._run_lowered(stmt, text, file, params, execute, (start, end))
        finally:
            self.similarity.end()

    def _run_lowered(
        self,
        stmt: Any,
        text: str,
        file: str | None,
        params: Mapping[str, Any] | None,
        execute: bool,
        where: tuple[int, int],
    ) -> Result:
        from popql.engine.lower import compile_statement

        start, end = where
        stmt_text = text[start:end]
        span = getattr(stmt, "span", None)
        try:
            lowered = compile_statement(stmt, self.catalog)
        except PopQLError as err:
            raise _with_context(err, text, file) from err
        except Exception as exc:
            raise PopQLError(
                internal_error(exc, stmt_text, span, file), source=text, file=file
            ) from exc

        sql: str = lowered.sql
        kind: str = getattr(lowered, "kind", "query")

        def translate(exc: BaseException) -> BaseException:
            if isinstance(exc, PopQLError):
                return exc
            return self._translate(exc, text, (start, end), file, sql)

        try:
            for udf in getattr(lowered, "udfs", ()) or ():
                self.ctx.register_udf(udf)
            values = _param_values(params, getattr(lowered, "params", None))
            # param_values binds $name placeholders as typed scalars after parsing; the
            # keyword form of ctx.sql pastes text into the query, so it is never used.
            df = self.ctx.sql(sql, param_values=values) if values else self.ctx.sql(sql)
            if kind != "query" and execute:
                schema = df.schema()
                batches = df.collect()
                table = pa.Table.from_batches(batches) if batches else schema.empty_table()
                return Result(table, kind=kind, statement=stmt_text, sql=sql)
            if self.similarity.notes and _is_explain(stmt) and execute:
                explained = _with_search_notes(df.to_arrow_table(), self.similarity.notes)
                return Result(explained, kind=kind, statement=stmt_text, sql=sql)
        except Exception as exc:
            raise translate(exc) from exc
        return Result(df, kind=kind, statement=stmt_text, sql=sql, on_error=translate)

    def _translate(
        self,
        exc: BaseException,
        text: str,
        statement: tuple[int, int],
        file: str | None,
        sql: str | None,
    ) -> PopQLError:
        try:
            tables = self.catalog.table_names()
            functions = self.catalog.function_names()
        except Exception:
            tables, functions = [], []
        diagnostic = translate_message(
            message_of(exc),
            text,
            statement,
            table_names=tables,
            function_names=functions,
            file=file,
            sql=sql,
        )
        return PopQLError(diagnostic, source=text, file=file)


def _split_column(snapshot: Snapshot, columns: list[Any], suffix: str) -> tuple[str, str]:
    """The ``split`` column of the samples view: the imported labels' ``split`` when the
    dataset has one, else the split a hold-out assigned (``popql.splits``), else 'train'.
    Returns (SQL expression, joins); ("", "") when a tag column is already named split."""
    from .populations import DEFAULT_SPLIT, SPLITS_TABLE

    if any(c.name.lower() == "split" for c in columns):
        return "", ""
    parts: list[str] = []
    joins = ""
    tables = snapshot.table_names()
    if "labels" in tables and "split" in snapshot.schema("labels").names:
        labels = quote_identifier("labels" + suffix)
        joins += (
            f" LEFT JOIN (SELECT sample_id, max(CAST(split AS VARCHAR)) AS split FROM {labels}"
            " GROUP BY sample_id) AS popql_lab ON popql_lab.sample_id = s.sample_id"
        )
        parts.append("popql_lab.split")
    if SPLITS_TABLE in tables:
        joins += (
            f" LEFT JOIN {quote_identifier(SPLITS_TABLE + suffix)} AS popql_sp"
            " ON popql_sp.sample_id = s.sample_id"
        )
        parts.append("popql_sp.split")
    parts.append(f"'{DEFAULT_SPLIT}'")
    return f"COALESCE({', '.join(parts)})", joins


def _split_source(snapshot: Snapshot) -> str:
    from .populations import SPLITS_TABLE

    tables = snapshot.table_names()
    if "labels" in tables and "split" in snapshot.schema("labels").names:
        return "labels"
    return SPLITS_TABLE if SPLITS_TABLE in tables else "split"


def _is_explain(stmt: Any) -> bool:
    from popql import ast as A

    return isinstance(stmt, A.Explain)


def _search_mode(stmt: Any, execute: bool) -> str:
    """How the statement's similarity searches run: planned only under EXPLAIN, run and
    reported under EXPLAIN ANALYZE, validated without data when checking."""
    if not execute:
        return "check"
    if _is_explain(stmt):
        return "analyze" if "ANALYZE" in (o.upper() for o in stmt.options) else "explain"
    return "run"


def _with_search_notes(table: pa.Table, notes: list[str]) -> pa.Table:
    """EXPLAIN output with a row per similarity search (strategy and why) before DataFusion's."""
    if table.num_columns < 2:
        return table
    rows: dict[str, list[str | None]] = {name: [None] * len(notes) for name in table.column_names}
    first, second = table.column_names[:2]
    rows[first] = ["popql_similarity_search"] * len(notes)
    rows[second] = list(notes)
    extra = pa.table(rows).cast(table.schema)
    return pa.concat_tables([extra, table])


def _param_values(
    user: Mapping[str, Any] | None, lowered: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    values: dict[str, Any] = {}
    for key, value in (user or {}).items():
        values[str(key).removeprefix("$")] = value
    # Parameters introduced by the lowering (e.g. literal image embeddings) take precedence.
    values.update(lowered or {})
    return values or None


def _to_arrow_table(source: Any) -> pa.Table:
    if isinstance(source, pa.Table):
        return source
    if isinstance(source, pa.RecordBatch):
        return pa.Table.from_batches([source])
    if isinstance(source, pa.RecordBatchReader):
        return source.read_all()
    if _is_pandas_frame(source):
        named_index = any(n is not None for n in source.index.names)
        return pa.Table.from_pandas(source, preserve_index=named_index)
    return pa.table(source)


def _is_arrow_dataset(obj: object) -> bool:
    ds = sys.modules.get("pyarrow.dataset")
    return ds is not None and isinstance(obj, ds.Dataset)


def _unsupported(shown: str, suffix: str) -> Diagnostic:
    known = ", ".join(sorted(_FORMATS))
    what = f"'{suffix}' files" if suffix else "files without a suffix"
    return Diagnostic(
        "F002",
        f"unsupported data format: {what} ({shown})",
        hints=(f"supported suffixes: {known}",),
    )


def _data_files(folder: Path) -> list[Path]:
    files = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).parts
        if any(part.startswith((".", "_")) for part in rel):
            continue
        if p.is_file():
            files.append(p)
    return files


def _has_files(folder: Path, suffix: str) -> bool:
    return any(p.suffix.lower() == suffix for p in _data_files(folder))


def _hive_partitions(folder: Path, suffix: str) -> list[tuple[str, str | pa.DataType]]:
    """Partition columns of a hive-style folder (``year=2024/month=1/x.parquet``).

    Every data file must sit under the same sequence of ``key=value`` folders; otherwise
    (or for a flat folder) there are none. Partition values are read as strings.
    """
    layouts = set()
    for p in _data_files(folder):
        if p.suffix != suffix:
            continue
        parents = p.relative_to(folder).parts[:-1]
        if not all("=" in part and not part.startswith("=") for part in parents):
            return []
        layouts.add(tuple(part.split("=", 1)[0] for part in parents))
    if len(layouts) != 1:
        return []
    return [(key, pa.string()) for key in layouts.pop()]


def _folder_format(folder: Path) -> tuple[str, str]:
    """(format, suffix) of the data files in ``folder``; F002 when none or mixed."""
    suffixes = {p.suffix for p in _data_files(folder)}
    known = {s for s in suffixes if s.lower() in _FORMATS}
    shown = os.fspath(folder)
    if not known:
        if suffixes:
            listed = ", ".join(sorted(s or "(none)" for s in suffixes))
            raise PopQLError(
                Diagnostic(
                    "F002",
                    f"unsupported data format: no Parquet, CSV or Arrow files in {shown}",
                    hints=(f"found suffixes: {listed}",),
                )
            )
        raise PopQLError(Diagnostic("F001", f"no data files in folder {shown}"))
    if len(known) > 1:
        raise PopQLError(
            Diagnostic(
                "F002",
                f"mixed data formats in folder {shown}: {', '.join(sorted(known))}",
                hints=("a folder table must hold files of one format",),
            )
        )
    suffix = known.pop()
    return _FORMATS[suffix.lower()], suffix
