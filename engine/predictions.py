"""Model predictions: logging, storage and lookup.

``session.log_predictions(model="resnet", version="2", data=frame)`` (or the statement
``IMPORT PREDICTIONS FOR MODEL resnet VERSION '2' FROM 'preds.parquet'``) stores one row per
sample in the table ``predictions.<model>`` (query it as ``"predictions.resnet"``), with
columns:

==============  =====================================  =========================================
column          type                                   meaning
==============  =====================================  =========================================
sample_id       string                                 joins to ``samples.sample_id``
model           string                                 the model's name
version         string                                 the version it was logged as
logged_at       timestamp[us, UTC]                     when that version was logged
label           string                                 classification: predicted class
score           double                                 confidence of ``label`` / a per-sample score
scores          list<struct<label, score>>             classification: per-class scores
detections      list<struct<label, score, box>>        detection: ``box`` = ``[x0, y0, x1, y1]``
class_iou       list<struct<label, iou>>               segmentation: per-sample, per-class IoU
mask            list<int32>                            segmentation: class index per pixel
value           double                                 regression: predicted value
(any other)     as given                               per-sample scores (``mean(loss)``)
==============  =====================================  =========================================

Only ``sample_id`` is required. Input columns are converted: a dict column (``{"cat": 0.9,
"dog": 0.1}``) becomes ``scores``; ``pred``/``prediction``/``predicted`` are accepted for
``label``. Re-logging a version replaces that version's rows in one transaction (atomic: a
reader sees the old rows or the new ones, never a mix).

Where the predictions live: in a versioned dataset (``popql.connect(DIR)`` on a directory that
``popql ingest`` wrote) the table is a dataset table, written by a
:meth:`~popql.engine.dataset.Dataset.transaction` (writer lock, new version); in a plain
directory it is ``DIR/tables/predictions.<model>.parquet`` (written to a temporary file, then
renamed); in an in-memory session it is kept in memory.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from popql.diagnostics import Diagnostic, PopQLError, did_you_mean_hint

if TYPE_CHECKING:
    from popql import ast as A

    from .commands import CommandContext
    from .result import Result
    from .session import Session

__all__ = [
    "DETECTION",
    "PREFIX",
    "Predictions",
    "import_predictions",
    "load_predictions",
    "log_predictions",
    "model_names",
    "table_name",
]

#: Tables holding predictions are named ``PREFIX + model``.
PREFIX = "predictions."

DETECTION = pa.struct(
    [("label", pa.string()), ("score", pa.float64()), ("box", pa.list_(pa.float64()))]
)
CLASS_SCORE = pa.struct([("label", pa.string()), ("score", pa.float64())])
CLASS_IOU = pa.struct([("label", pa.string()), ("iou", pa.float64())])

_KNOWN: dict[str, pa.DataType] = {
    "sample_id": pa.string(),
    "model": pa.string(),
    "version": pa.string(),
    "logged_at": pa.timestamp("us", tz="UTC"),
    "label": pa.string(),
    "score": pa.float64(),
    "scores": pa.list_(CLASS_SCORE),
    "detections": pa.list_(DETECTION),
    "class_iou": pa.list_(CLASS_IOU),
    "mask": pa.list_(pa.int32()),
    "value": pa.float64(),
}
_LABEL_ALIASES = ("pred", "prediction", "predicted", "predicted_label", "pred_label")
_META = ("sample_id", "model", "version", "logged_at")


def plain_types(table: pa.Table) -> pa.Table:
    """``table`` with DataFusion's view types (``string_view``, ``binary_view``) cast to the
    plain Arrow types, nested ones included."""

    def fix(t: pa.DataType) -> pa.DataType:
        if t == pa.string_view():
            return pa.string()
        if t == pa.binary_view():
            return pa.binary()
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return pa.list_(fix(t.value_type))
        if pa.types.is_fixed_size_list(t):
            return pa.list_(fix(t.value_type), t.list_size)
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, fix(f.type), f.nullable) for f in t])
        return t

    schema = pa.schema([pa.field(f.name, fix(f.type), f.nullable) for f in table.schema])
    return table if schema == table.schema else table.cast(schema)


def table_name(model: str) -> str:
    """The table holding ``model``'s predictions: ``predictions.<model>``."""
    return PREFIX + model


@dataclass(frozen=True)
class Predictions:
    """One logged version of a model's predictions (one row per sample)."""

    model: str
    version: str
    table: pa.Table

    @property
    def task(self) -> str:
        """``detection``, ``segmentation``, ``classification``, ``regression`` or ``score``."""
        names = set(self.table.column_names)
        if "detections" in names:
            return "detection"
        if names & {"class_iou", "mask"}:
            return "segmentation"
        if "label" in names:
            return "classification"
        if "value" in names:
            return "regression"
        return "score"


def _error(code: str, message: str, *hints: str, span: Any = None) -> PopQLError:
    return PopQLError(Diagnostic(code, message, span, hints=tuple(hints)))


# ---------------------------------------------------------------------------------------------
# Input conversion
# ---------------------------------------------------------------------------------------------


def to_table(data: Any) -> pa.Table:
    """``data`` (pandas, Arrow, a list of dicts, a Result, an Arrow stream) as a pa.Table."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pa.RecordBatchReader):
        return data.read_all()
    if isinstance(data, list | tuple):
        if not data:
            return pa.table({"sample_id": pa.array([], pa.string())})
        rows = [dict(r) for r in data]
        for row in rows:
            for key, value in list(row.items()):
                if isinstance(value, Mapping):  # {"cat": 0.9, "dog": 0.1}: per-class values
                    field = "iou" if key == "class_iou" else "score"
                    row[key] = [
                        {"label": str(k), field: float(v)}
                        for k, v in value.items()
                        if v is not None
                    ]
        return pa.Table.from_pylist(rows)
    if type(data).__module__.startswith("pandas") and hasattr(data, "columns"):
        frame = data.copy()
        for col in frame.columns:
            if (
                frame[col].dtype == object
                and len(frame)
                and isinstance(
                    frame[col].dropna().iloc[0] if frame[col].notna().any() else None, Mapping
                )
            ):
                frame[col] = [
                    None
                    if v is None or (isinstance(v, float) and v != v)
                    else [{"label": str(k), "score": float(s)} for k, s in v.items()]
                    for v in frame[col]
                ]
        return pa.Table.from_pandas(frame, preserve_index=False)
    if hasattr(data, "to_arrow"):
        return data.to_arrow()  # type: ignore[no-any-return]
    if hasattr(data, "__arrow_c_stream__"):
        return pa.table(data)
    raise TypeError(
        f"cannot log predictions from a {type(data).__module__}.{type(data).__qualname__}: "
        "expected a pandas DataFrame, a pyarrow Table/RecordBatch or a list of dicts"
    )


def normalise(data: Any, model: str, version: str, logged_at: _dt.datetime) -> pa.Table:
    """Predictions in the stored layout (see the module docstring); V001 when invalid."""
    try:
        table = to_table(data)
    except (pa.ArrowException, ValueError) as exc:
        raise _error("V001", f"cannot read the predictions of model '{model}': {exc}") from exc
    table = table.replace_schema_metadata(None)
    names = table.column_names
    if "sample_id" not in names:
        raise _error(
            "V001",
            f"the predictions of model '{model}' have no sample_id column",
            f"their columns: {', '.join(names) or '(none)'}",
            "add the sample id of each row (samples.sample_id)",
        )
    if "label" not in names:
        alias = next((a for a in _LABEL_ALIASES if a in names), None)
        if alias is not None:
            table = table.rename_columns(["label" if n == alias else n for n in names])
    for drop in ("model", "version", "logged_at"):
        if drop in table.column_names:
            table = table.drop_columns([drop])
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    for name in table.column_names:
        col = table.column(name)
        want = _KNOWN.get(name)
        if want is not None and col.type != want:
            try:
                col = _cast(col, want, name)
            except (pa.ArrowException, ValueError, TypeError) as exc:
                raise _error(
                    "V001",
                    f"the predictions of model '{model}': column '{name}' is {col.type}, "
                    f"expected {want}",
                    f"{type(exc).__name__}: {exc}",
                ) from exc
        columns[name] = col
    ids = columns["sample_id"]
    if ids.null_count:
        raise _error("V001", f"the predictions of model '{model}' have rows without a sample_id")
    if len(pc.unique(ids)) != len(ids):
        counts = pc.value_counts(ids)
        dup = [v["values"] for v in counts.to_pylist() if v["counts"] > 1][:3]
        raise _error(
            "V001",
            f"the predictions of model '{model}' have several rows for one sample_id: "
            + ", ".join(map(str, dup)),
            "log one row per sample",
        )
    n = table.num_rows
    out = {
        "sample_id": columns.pop("sample_id"),
        "model": pa.array([model] * n, pa.string()),
        "version": pa.array([version] * n, pa.string()),
        "logged_at": pa.array([logged_at] * n, pa.timestamp("us", tz="UTC")),
    }
    out.update(columns)
    return pa.table(out)


def _cast(col: pa.ChunkedArray, want: pa.DataType, name: str) -> pa.ChunkedArray:
    if name in ("detections", "class_iou", "scores"):
        rows = col.to_pylist()
        fixed: list[list[dict[str, Any]] | None] = []
        for row in rows:
            if row is None:
                fixed.append(None)
                continue
            if isinstance(row, Mapping):  # {"cat": 0.9} per-class form
                key = "iou" if name == "class_iou" else "score"
                row = [{"label": str(k), key: float(v)} for k, v in row.items() if v is not None]
            items = []
            for item in row:
                item = dict(item)
                if "label" in item and item["label"] is not None:
                    item["label"] = str(item["label"])
                if name == "detections" and item.get("box") is not None:
                    item["box"] = [float(v) for v in item["box"]]
                    if len(item["box"]) != 4:
                        raise ValueError("a detection box has 4 numbers [x0, y0, x1, y1]")
                items.append(item)
            fixed.append(items)
        return pa.chunked_array([pa.array(fixed, want)], type=want)
    return col.cast(want)


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------


def _memory(session: Session) -> dict[str, pa.Table]:
    store: dict[str, pa.Table] | None = getattr(session, "_predictions", None)
    if store is None:
        store = {}
        session._predictions = store  # type: ignore[attr-defined]
    return store


def _merge(old: pa.Table | None, new: pa.Table, version: str) -> pa.Table:
    if old is None or not old.num_rows:
        return new
    keep = pc.invert(pc.equal(old.column("version"), pa.scalar(version)))
    rest = old.filter(pc.fill_null(keep, True))
    if not rest.num_rows:
        return new
    try:
        return pa.concat_tables([rest, new], promote_options="permissive")
    except (pa.ArrowException, TypeError) as exc:
        raise _error(
            "V001",
            f"the new predictions' columns do not fit those logged before: {exc}",
            "use the same column types for every version of a model",
        ) from exc


def log_predictions(
    session: Session,
    model: str,
    version: str | int | None,
    data: Any,
    *,
    check_samples: bool = False,
) -> int:
    """Store ``data`` as version ``version`` of ``model``'s predictions; returns the row count.

    ``version`` defaults to ``"1"``. Logging a version that exists replaces its rows atomically.
    See the module docstring for the accepted columns.

    >>> import popql                                                      # doctest: +SKIP
    >>> s = popql.connect()                                               # doctest: +SKIP
    >>> s.log_predictions("resnet", "1", [{"sample_id": "a1", "label": "cat", "score": 0.9}])
    1
    """
    if not isinstance(model, str) or not model or not _valid_model(model):
        raise _error(
            "V001",
            f"invalid model name {model!r}",
            "model names use letters, digits and _ (they name the table predictions.<model>)",
        )
    version = "1" if version is None else str(version)
    now = _dt.datetime.now(_dt.UTC)
    table = normalise(data, model, version, now)
    name = table_name(model)
    if session.dataset is not None:
        from .dataset import Dataset

        dataset: Dataset = session.dataset
        with dataset.transaction(f"predictions of {model} version {version}") as tx:
            old = tx.table(name) if name in tx.table_names() else None
            tx.replace(name, _merge(old, table, version))
            tx.commit()
        session.refresh()
    elif session.path is not None:
        folder = session.path / "tables"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{name}.parquet"
        old = pq.read_table(target) if target.exists() else None
        merged = _merge(old, table, version)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".predictions-", suffix=".tmp")
        os.close(fd)
        try:
            pq.write_table(merged, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        session._register_path(name, target)
        session._from_dir.setdefault(name, {})
    else:
        store = _memory(session)
        store[name] = _merge(store.get(name), table, version)
        session._register_arrow(name, store[name])
    return table.num_rows


def _valid_model(name: str) -> bool:
    return all(c.isalnum() or c in "_-" for c in name) and not name.startswith("-")


def model_names(session: Session) -> list[str]:
    """Names of the models with logged predictions, sorted."""
    out = set()
    for name in session.tables():
        if name.startswith(PREFIX) and len(name) > len(PREFIX):
            out.add(name[len(PREFIX) :])
    return sorted(out)


def versions(session: Session, model: str) -> list[str]:
    """The logged versions of ``model``, oldest first."""
    table = _read_all(session, model, None)
    last: dict[str, int] = {}
    for v, t in zip(table.column("version").to_pylist(), _stamps(table).tolist(), strict=True):
        last[str(v)] = max(t, last.get(str(v), t))
    return sorted(last, key=lambda v: (last[v], v))


def _stamps(table: pa.Table) -> np.ndarray:
    """``logged_at`` as int64 microseconds (plain numbers: no time-zone conversion)."""
    col = table.column("logged_at").combine_chunks()
    return np.asarray(col.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False))


def _latest_version(table: pa.Table) -> str:
    """The version logged last (the greatest name among those logged at that instant)."""
    stamps = _stamps(table)
    versions = np.asarray(table.column("version").to_pylist(), dtype=object)
    return str(max(versions[stamps == stamps.max()]))


def _read_all(session: Session, model: str, span: Any) -> pa.Table:
    name = table_name(model)
    if name not in session.tables():
        known = model_names(session)
        hint = did_you_mean_hint(model, known)
        hints = [hint] if hint else []
        hints.append(
            f"models with predictions: {', '.join(known)}"
            if known
            else "log predictions first: session.log_predictions(model=..., data=...) or "
            "IMPORT PREDICTIONS FOR MODEL m FROM 'preds.parquet'"
        )
        raise _error("M002", f"no predictions logged for model '{model}'", *hints, span=span)
    from .session import quote_identifier

    return plain_types(session.ctx.sql(f"SELECT * FROM {quote_identifier(name)}").to_arrow_table())


def load_predictions(
    session: Session, model: str, version: str | None = None, *, span: Any = None
) -> Predictions:
    """One version of ``model``'s predictions (the latest logged when ``version`` is None)."""
    table = _read_all(session, model, span)
    if not table.num_rows:
        raise _error("M002", f"no predictions logged for model '{model}'", span=span)
    if version is None:
        version = _latest_version(table)
    rows = table.filter(pc.equal(table.column("version"), pa.scalar(str(version))))
    if not rows.num_rows:
        known = sorted({str(v) for v in table.column("version").to_pylist()})
        raise _error(
            "M002",
            f"model '{model}' has no version '{version}'",
            f"its versions: {', '.join(known)}",
            span=span,
        )
    # drop the columns that are null throughout (added for another version's layout)
    keep = [n for n in rows.column_names if n in _META or rows.column(n).null_count < rows.num_rows]
    return Predictions(model, str(version), rows.select(keep))


def model_ref(ref: A.ModelRef) -> tuple[str, str | None]:
    """(name, version) of a ``model [VERSION v]`` reference."""
    from popql import ast as A

    version: str | None = None
    if isinstance(ref.version, A.String):
        version = ref.version.value.replace("''", "'")
    elif isinstance(ref.version, A.Number):
        version = ref.version.text
    return ref.name.value, version


# ---------------------------------------------------------------------------------------------
# IMPORT PREDICTIONS
# ---------------------------------------------------------------------------------------------


def import_predictions(session: Session, stmt: A.ImportPredictions, ctx: CommandContext) -> Result:
    """``IMPORT PREDICTIONS FOR MODEL m [VERSION v] FROM 'file'`` (Parquet, CSV, Arrow, JSON
    lines). Returns one row: model, version, rows."""
    from .result import Result

    model, version = model_ref(stmt.model)
    raw = stmt.path.value.replace("''", "'")
    path = Path(raw)
    if ctx.file is not None and not path.is_absolute() and not path.exists():
        beside = Path(ctx.file).parent / path
        if beside.exists():
            path = beside
    if not path.exists():
        raise _error("F001", f"file not found: {raw}", span=stmt.path.span or stmt.span)
    if not ctx.execute:
        return Result.empty()
    data = _read_file(path, stmt.path.span or stmt.span)
    n = log_predictions(session, model, version, data)
    return Result(
        pa.table(
            {
                "model": [model],
                "version": [version or "1"],
                "rows": pa.array([n], pa.int64()),
            }
        ),
        kind="command",
        statement=ctx.statement,
    )


def _read_file(path: Path, span: Any) -> pa.Table:
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pq.read_table(path)
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pcsv

            opts = pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            return pcsv.read_csv(path, parse_options=opts)
        if suffix in (".arrow", ".feather", ".ipc"):
            import pyarrow.feather as feather

            return feather.read_table(path)
        if suffix in (".jsonl", ".ndjson"):
            import pyarrow.json as pjson

            return pjson.read_json(path)
    except (pa.ArrowException, OSError) as exc:
        raise _error("F003", f"cannot read predictions from {path}: {exc}", span=span) from exc
    raise _error(
        "F002",
        f"unsupported predictions file {path}",
        "use Parquet, CSV/TSV, Arrow IPC (.arrow/.feather) or JSON lines (.jsonl)",
        span=span,
    )
