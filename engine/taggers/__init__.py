"""Taggers: functions from decoded images to typed tag columns.

A *tagger* turns a batch of :class:`ImageInput` values into one dict of tag values per image.
It declares its output columns (Arrow types) up front, so a dataset stores its results as the
table ``tags.<name>@<version>`` (``sample_id`` plus the declared columns) before any image is
seen; see docs/datasets-design.md section 2 (the contract) and docs/taggers.md.

>>> import pyarrow as pa
>>> from popql.engine.taggers import tagger
>>> @tagger("is_wide", version="1", columns={"is_wide": pa.bool_()}, register=False)
... def is_wide(batch):
...     return [{"is_wide": im.width > 2 * im.height} for im in batch]

Built-in taggers (resolved lazily by :func:`get_tagger`; their modules import torch and OpenCV
only inside functions, so ``import popql.engine.taggers`` stays light):

==================  ======================================================================
``image_stats``     brightness, contrast, sharpness, colorfulness, entropy, dominant_color,
                    aspect_ratio, orientation, capture_time, time_of_day
``faces``           OpenCV Haar cascade: num_faces, face_boxes
``faces_mtcnn``     facenet-pytorch MTCNN: num_faces, face_boxes
``imagenet``        MobileNetV2: imagenet_label, imagenet_score, imagenet_top5, imagenet_group
``clip_zero_shot``  one column per user label set (needs a CLIP embedder)
==================  ======================================================================

:class:`~popql.engine.taggers.detection.DetectionTagger` and
:class:`~popql.engine.taggers.detection.SegmentationTagger` wrap user models;
:func:`tags_from_table` imports tags computed elsewhere.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pyarrow as pa

from popql.diagnostics import Diagnostic, PopQLError, did_you_mean_hint

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "DEFAULT_TAGGERS",
    "FunctionTagger",
    "ImageInput",
    "TableTagger",
    "Tagger",
    "get_tagger",
    "list_taggers",
    "param_version",
    "read_exif",
    "register_tagger",
    "register_tagger_factory",
    "run_tagger",
    "tag_schema",
    "tag_table_name",
    "tagger",
    "tagger_meta",
    "tags_from_table",
    "unregister_tagger",
]

#: Taggers that ``ingest`` runs when none are named.
DEFAULT_TAGGERS: list[str] = ["image_stats", "faces", "imagenet"]

#: Built-in taggers and the module (under this package) that registers each one on import.
_BUILTIN_MODULES: dict[str, str] = {
    "image_stats": "image_stats",
    "faces": "faces",
    "faces_mtcnn": "faces",
    "imagenet": "imagenet",
    "clip_zero_shot": "clip_zero_shot",
}

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: Short names accepted in ``columns`` besides ``pyarrow.DataType`` values.
_TYPE_ALIASES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "boolean": pa.bool_(),
    "int": pa.int32(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float": pa.float32(),
    "float32": pa.float32(),
    "double": pa.float64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "str": pa.string(),
    "timestamp": pa.timestamp("us"),
    "list<string>": pa.list_(pa.string()),
}


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclass
class ImageInput:
    """One decoded image, as taggers and embedders receive it (decoded once per image).

    ``image`` is an RGB ``PIL.Image.Image`` already rotated upright (EXIF orientation applied);
    ``exif`` maps EXIF tag names (``"DateTimeOriginal"``...) to plain Python values, see
    :func:`read_exif`; ``width``/``height`` are the upright image's size.
    """

    sample_id: str
    uri: str
    image: PILImage.Image
    exif: dict[str, Any] = field(default_factory=dict)
    width: int = 0
    height: int = 0

    def __post_init__(self) -> None:
        if not self.width or not self.height:
            self.width, self.height = self.image.size

    @classmethod
    def from_image(
        cls,
        image: PILImage.Image,
        *,
        sample_id: str | None = None,
        uri: str = "",
        exif: dict[str, Any] | None = None,
    ) -> ImageInput:
        """Wrap a PIL image: read its EXIF, rotate it upright, convert it to RGB.

        ``sample_id`` defaults to 16 hex digits of the sha256 of the pixels (files ingested by
        ``popql.engine.ingest`` use the sha256 of the file's bytes instead).
        """
        from PIL import ImageOps

        tags = read_exif(image) if exif is None else dict(exif)
        upright = ImageOps.exif_transpose(image)
        rgb = upright if upright.mode == "RGB" else upright.convert("RGB")
        if sample_id is None:
            sample_id = hashlib.sha256(rgb.tobytes()).hexdigest()[:16]
        return cls(sample_id, uri, rgb, tags, rgb.width, rgb.height)

    @classmethod
    def open(cls, path: str | Path, *, sample_id: str | None = None) -> ImageInput:
        """Read an image file (``sample_id`` = 16 hex digits of the sha256 of its bytes)."""
        import io

        from PIL import Image

        data = Path(path).read_bytes()
        if sample_id is None:
            sample_id = hashlib.sha256(data).hexdigest()[:16]
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return cls.from_image(im, sample_id=sample_id, uri=str(path))


def read_exif(image: PILImage.Image) -> dict[str, Any]:
    """EXIF of ``image`` as ``{tag name: value}`` (IFD0, the Exif IFD and the GPS IFD).

    Values are plain Python: rationals become floats, strings are stripped of NUL padding,
    byte strings (maker notes, thumbnails) are dropped. Unknown tags keep their number as
    the key (``"0xA500"``). An image without EXIF (or with unreadable EXIF) gives ``{}``.
    """
    from PIL import ExifTags

    try:
        exif = image.getexif()
    except Exception:  # corrupt EXIF must never fail decoding
        return {}
    out: dict[str, Any] = {}

    def put(tags: Mapping[int, Any], names: Mapping[int, str]) -> None:
        for key, value in tags.items():
            plain = _plain(value)
            if plain is not None:
                out[names.get(key, f"0x{key:04X}")] = plain

    put(exif, ExifTags.TAGS)
    for ifd, names in (
        (ExifTags.IFD.Exif, ExifTags.TAGS),
        (ExifTags.IFD.GPSInfo, ExifTags.GPSTAGS),
    ):
        try:
            sub = exif.get_ifd(ifd)
        except Exception:
            continue
        put(sub, names)
    for pointer in ("ExifOffset", "GPSInfo"):
        if isinstance(out.get(pointer), int):
            del out[pointer]
    return out


def _plain(value: Any) -> Any:
    """A JSON-friendly version of one EXIF value (None to drop it)."""
    if isinstance(value, bytes):
        return None
    if isinstance(value, str):
        return value.strip("\x00 ").strip() or None
    if isinstance(value, bool | int):
        return value
    if isinstance(value, tuple | list):
        items = [_plain(v) for v in value]
        return None if any(v is None for v in items) else tuple(items)
    try:
        number = float(value)  # IFDRational and friends
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) else None


def exif_value(exif: Mapping[Any, Any], name: str, tag_id: int) -> Any:
    """Look a tag up by name or by number (``exif`` dicts come from several readers)."""
    for key in (name, tag_id, str(tag_id), f"0x{tag_id:04X}"):
        if key in exif:
            return exif[key]
    for nested in ("Exif", "ExifIFD", 0x8769):
        sub = exif.get(nested)
        if isinstance(sub, Mapping):
            for key in (name, tag_id):
                if key in sub:
                    return sub[key]
    return None


# ---------------------------------------------------------------------------------------------
# The protocol and helpers around it
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class Tagger(Protocol):
    """What a tagger is: a name, a version, declared columns and a batch function."""

    name: str
    version: str
    columns: dict[str, pa.DataType]
    batch_size: int

    def __call__(self, batch: list[ImageInput]) -> list[dict[str, Any]]: ...


def _error(code: str, message: str, *hints: str | None) -> PopQLError:
    return PopQLError(Diagnostic(code, message, hints=tuple(h for h in hints if h)))


def _normalise_columns(name: str, columns: Mapping[str, Any]) -> dict[str, pa.DataType]:
    if not columns:
        raise _error("T005", f"tagger '{name}' declares no columns")
    out: dict[str, pa.DataType] = {}
    for col, typ in columns.items():
        if not isinstance(col, str) or not _COLUMN_RE.match(col) or col == "sample_id":
            raise _error(
                "T005",
                f"tagger '{name}': invalid column name {col!r}",
                "column names are identifiers (letters, digits, '_') other than 'sample_id'",
            )
        if isinstance(typ, str):
            if typ not in _TYPE_ALIASES:
                raise _error(
                    "T005",
                    f"tagger '{name}': unknown type name {typ!r} for column '{col}'",
                    f"use a pyarrow.DataType or one of {', '.join(sorted(_TYPE_ALIASES))}",
                )
            typ = _TYPE_ALIASES[typ]
        if not isinstance(typ, pa.DataType):
            raise _error("T005", f"tagger '{name}': column '{col}' needs a pyarrow.DataType")
        out[col] = typ
    return out


def _check_identity(name: str, version: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _error(
            "T005",
            f"invalid tagger name {name!r}",
            "tagger names are lower-case identifiers: a letter, then letters, digits or '_'",
        )
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise _error(
            "T005",
            f"tagger '{name}': invalid version {version!r}",
            "versions are strings of letters, digits, '.', '_' and '-' such as \"1\" or \"2.1\"",
        )


def param_version(base: str, params: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """``base`` when ``params`` equal ``defaults``, else ``base-<8 hex of the params>``.

    Built-in taggers use it so that a tagger run with other settings (a lower threshold, other
    label sets) writes to its own ``tags.<name>@<version>`` table instead of mixing results.
    """
    changed = {k: v for k, v in params.items() if defaults.get(k, object()) != v}
    if not changed:
        return base
    blob = json.dumps(dict(sorted(params.items())), sort_keys=True, default=str)
    return f"{base}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def tag_table_name(t: Tagger) -> str:
    """The dataset table of a tagger's results: ``tags.<name>@<version>``."""
    return f"tags.{t.name}@{t.version}"


def tag_schema(t: Tagger) -> pa.Schema:
    """``sample_id`` (string) followed by the declared columns, all nullable."""
    return pa.schema(
        [pa.field("sample_id", pa.string(), nullable=False)]
        + [pa.field(col, typ) for col, typ in t.columns.items()]
    )


def tagger_meta(t: Tagger) -> dict[str, Any]:
    """The snapshot entry for a tagger (``{"version", "table", "columns"}``, types as text)."""
    return {
        "version": t.version,
        "table": tag_table_name(t),
        "columns": {col: str(typ) for col, typ in t.columns.items()},
    }


def run_tagger(t: Tagger, inputs: Sequence[ImageInput]) -> pa.Table:
    """Run ``t`` over ``inputs`` in batches of ``t.batch_size``; an Arrow table of its schema.

    Missing keys become NULL. A tagger that raises, returns the wrong number of rows, or
    returns undeclared keys or values of the wrong type raises ``PopQLError`` E003 naming the
    tagger and the first image of the batch.
    """
    schema = tag_schema(t)
    size = max(1, int(getattr(t, "batch_size", 32) or 32))
    rows: list[dict[str, Any]] = []
    for start in range(0, len(inputs), size):
        batch = list(inputs[start : start + size])
        where = f"tagger '{t.name}' on '{batch[0].uri or batch[0].sample_id}'"
        try:
            out = t(batch)
        except PopQLError:
            raise
        except Exception as exc:
            raise _error("E003", f"{where} (batch of {len(batch)}) failed: {exc}") from exc
        if not isinstance(out, list) or len(out) != len(batch):
            got = len(out) if isinstance(out, list) else type(out).__name__
            raise _error("E003", f"{where}: returned {got} rows for {len(batch)} images")
        for image, row in zip(batch, out, strict=True):
            extra = set(row) - set(t.columns)
            if extra:
                raise _error(
                    "E003",
                    f"{where}: undeclared column(s) {', '.join(sorted(extra))}",
                    "declare every output column in the tagger's `columns`",
                )
            rows.append({"sample_id": image.sample_id, **{c: row.get(c) for c in t.columns}})
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
        raise _error("E003", f"tagger '{t.name}' returned values of the wrong type: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Function taggers and the registry
# ---------------------------------------------------------------------------------------------


class FunctionTagger:
    """A tagger made from a batch function (what :func:`tagger` returns)."""

    def __init__(
        self,
        fn: Callable[[list[ImageInput]], list[dict[str, Any]]],
        name: str,
        version: str,
        columns: Mapping[str, Any],
        batch_size: int = 32,
    ) -> None:
        _check_identity(name, version)
        self.fn = fn
        self.name = name
        self.version = version
        self.columns = _normalise_columns(name, columns)
        self.batch_size = int(batch_size)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, batch: list[ImageInput]) -> list[dict[str, Any]]:
        return self.fn(batch)

    def __repr__(self) -> str:
        return f"<tagger {self.name}@{self.version} columns={list(self.columns)}>"


_LOCK = threading.RLock()
_REGISTRY: dict[str, Tagger] = {}
_FACTORIES: dict[str, Callable[..., Tagger]] = {}


def _origin(t: Any) -> tuple[str, str]:
    fn = getattr(t, "fn", t)
    return (getattr(fn, "__module__", "") or "", getattr(fn, "__qualname__", type(fn).__qualname__))


def register_tagger(t: Tagger, *, replace: bool = False) -> None:
    """Make ``t`` available to :func:`get_tagger` under ``t.name``.

    Registering another tagger under a taken name raises N006 unless ``replace=True``;
    re-running the same definition (same module and function name, e.g. a notebook cell)
    replaces the old one silently.
    """
    if not isinstance(t, Tagger):
        raise _error("T005", f"{t!r} is not a tagger (needs name, version, columns, batch_size)")
    _check_identity(t.name, t.version)
    t.columns = _normalise_columns(t.name, t.columns)
    with _LOCK:
        old = _REGISTRY.get(t.name)
        if old is not None and old is not t and not replace and _origin(old) != _origin(t):
            raise _error(
                "N006",
                f"a tagger named '{t.name}' is already registered ({old!r})",
                "pick another name, or pass replace=True to register_tagger",
            )
        _REGISTRY[t.name] = t


def register_tagger_factory(name: str, factory: Callable[..., Tagger]) -> None:
    """Let ``get_tagger(name, **options)`` build a configured tagger with ``factory(**options)``."""
    with _LOCK:
        _FACTORIES[name] = factory


def unregister_tagger(name: str) -> None:
    """Remove a registered tagger (built-ins come back on the next lookup)."""
    with _LOCK:
        _REGISTRY.pop(name, None)
        if name not in _BUILTIN_MODULES:
            _FACTORIES.pop(name, None)


def tagger(
    name: str,
    *,
    version: str,
    columns: Mapping[str, Any],
    batch_size: int = 32,
    register: bool = True,
) -> Callable[[Callable[[list[ImageInput]], list[dict[str, Any]]]], FunctionTagger]:
    """Decorator: turn ``fn(batch: list[ImageInput]) -> list[dict]`` into a registered tagger.

    ``columns`` maps each output column to a ``pyarrow.DataType`` (or a short name such as
    ``"float"``, ``"string"``, ``"list<string>"``). ``register=False`` only builds it.
    """

    def wrap(fn: Callable[[list[ImageInput]], list[dict[str, Any]]]) -> FunctionTagger:
        t = FunctionTagger(fn, name, version, columns, batch_size)
        if register:
            register_tagger(t)
        return t

    return wrap


def _load_builtin(name: str) -> None:
    module = _BUILTIN_MODULES.get(name)
    if module is not None:
        importlib.import_module(f"{__name__}.{module}")


def get_tagger(name: str, **options: Any) -> Tagger:
    """The tagger registered as ``name``; with ``options``, a configured one from its factory.

    ``get_tagger("faces", min_neighbors=3)`` or ``get_tagger("clip_zero_shot", embedder=e,
    label_sets={...})`` build a new tagger (its version records non-default options). An
    unknown name raises ``PopQLError`` N008 with a did-you-mean hint.
    """
    with _LOCK:
        if name not in _REGISTRY:
            _load_builtin(name)
        if options:
            factory = _FACTORIES.get(name)
            if factory is None:
                if name in _REGISTRY:
                    raise _error(
                        "T005",
                        f"tagger '{name}' takes no options (got {', '.join(sorted(options))})",
                    )
            else:
                return factory(**options)
        found = _REGISTRY.get(name)
    if found is None:
        known = sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))
        raise _error(
            "N008",
            f"unknown tagger '{name}'",
            did_you_mean_hint(name, known),
            f"known taggers: {', '.join(known)}",
        )
    return found


def list_taggers() -> list[Tagger]:
    """Every registered tagger (built-ins included), sorted by name."""
    with _LOCK:
        for name in _BUILTIN_MODULES:
            if name not in _REGISTRY:
                _load_builtin(name)
        return [_REGISTRY[n] for n in sorted(_REGISTRY)]


# ---------------------------------------------------------------------------------------------
# Tags computed elsewhere
# ---------------------------------------------------------------------------------------------


class TableTagger:
    """A tagger that looks tags up in a table instead of computing them.

    Rows are matched on ``sample_id`` when the table has that column, else on ``uri``
    (exactly, then by resolved local path). Images without a row get NULLs; ``missing``
    counts them.
    """

    def __init__(self, name: str, version: str, table: pa.Table, *, batch_size: int = 1024) -> None:
        _check_identity(name, version)
        if "sample_id" in table.column_names:
            key = "sample_id"
        elif "uri" in table.column_names:
            key = "uri"
        else:
            raise _error(
                "F003",
                f"tags for '{name}': the table has neither a 'sample_id' nor a 'uri' column",
                f"columns: {', '.join(table.column_names) or '(none)'}",
            )
        drop = {"sample_id", "uri"}
        cols = {f.name: f.type for f in table.schema if f.name not in drop}
        self.name = name
        self.version = version
        self.key = key
        self.columns = _normalise_columns(name, cols)
        self.batch_size = batch_size
        self.missing = 0
        self.table = table
        keys = table.column(key).to_pylist()
        if any(k is None for k in keys):
            raise _error("F003", f"tags for '{name}': NULL values in the key column '{key}'")
        if len(set(keys)) != len(keys):
            dup = next(k for k, n in Counter(keys).items() if n > 1)
            raise _error("F003", f"tags for '{name}': duplicate {key} {dup!r}")
        rows = table.select(list(self.columns)).to_pylist()
        self._rows: dict[str, dict[str, Any]] = dict(zip(keys, rows, strict=True))
        self._by_path: dict[str, dict[str, Any]] | None = None

    def _path_index(self) -> dict[str, dict[str, Any]]:
        if self._by_path is None:
            self._by_path = {}
            for k, row in self._rows.items():
                norm = _norm_uri(k)
                if norm is not None:
                    self._by_path.setdefault(norm, row)
        return self._by_path

    def lookup(self, image: ImageInput) -> dict[str, Any] | None:
        """The row for ``image`` (None when the table has none)."""
        if self.key == "sample_id":
            return self._rows.get(image.sample_id)
        row = self._rows.get(image.uri)
        if row is None:
            norm = _norm_uri(image.uri)
            row = self._path_index().get(norm) if norm is not None else None
        return row

    def __call__(self, batch: list[ImageInput]) -> list[dict[str, Any]]:
        out = []
        for image in batch:
            row = self.lookup(image)
            if row is None:
                self.missing += 1
                row = dict.fromkeys(self.columns)
            out.append(dict(row))
        return out

    def __repr__(self) -> str:
        return f"<imported tags {self.name}@{self.version} ({len(self._rows)} rows by {self.key})>"


def _norm_uri(uri: str) -> str | None:
    if not uri or ("://" in uri and not uri.startswith("file://")):
        return None
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    try:
        return str(Path(path).expanduser().resolve())
    except (OSError, RuntimeError):
        return None


def tags_from_table(
    name: str,
    version: str,
    table: Any,
    *,
    register: bool = False,
    batch_size: int = 1024,
) -> TableTagger:
    """Import externally computed tags as a tagger.

    ``table`` is a ``pyarrow.Table``, a pandas DataFrame, anything with ``__arrow_c_stream__``
    or a path to a ``.parquet``/``.csv``/``.json`` (JSON lines) file, with a ``sample_id`` or a
    ``uri`` column plus one column per tag. The result is a :class:`TableTagger` whose
    ``columns`` are the table's other columns; pass it to ingest like any tagger (or
    ``register=True`` to make it available by name).
    """
    data = _as_table(name, table)
    t = TableTagger(name, version, data, batch_size=batch_size)
    if register:
        register_tagger(t, replace=True)
    return t


def _as_table(name: str, table: Any) -> pa.Table:
    if isinstance(table, pa.Table):
        return table
    if isinstance(table, pa.RecordBatch):
        return pa.Table.from_batches([table])
    if isinstance(table, str | Path):
        path = Path(table)
        if not path.is_file():
            raise _error("F001", f"tags for '{name}': cannot read '{path}'")
        suffix = path.suffix.lower()
        try:
            if suffix == ".parquet":
                import pyarrow.parquet as pq

                return pq.read_table(path)
            if suffix == ".csv":
                import pyarrow.csv as pcsv

                return pcsv.read_csv(path)
            if suffix in (".json", ".jsonl", ".ndjson"):
                import pyarrow.json as pjson

                return pjson.read_json(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _error("F003", f"tags for '{name}': cannot read '{path}': {exc}") from exc
        raise _error(
            "F002",
            f"tags for '{name}': unsupported file type '{suffix or path.name}'",
            "use .parquet, .csv or .json (JSON lines)",
        )
    if hasattr(table, "__arrow_c_stream__"):
        return pa.table(table)
    if type(table).__module__.startswith("pandas"):
        return pa.Table.from_pandas(table, preserve_index=False)
    if isinstance(table, Iterable) and not isinstance(table, str | bytes):
        return pa.Table.from_pylist(list(table))
    raise _error("F002", f"tags for '{name}': cannot read a {type(table).__name__} as a table")
