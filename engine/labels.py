"""Label import: user labels and ground truth joined to a dataset's samples.

Accepted files (the format comes from the suffix; ``.json`` files are looked into):

* **CSV** (``.csv``, ``.tsv``), **Parquet** (``.parquet``), **JSON lines** (``.jsonl``,
  ``.ndjson``) and **JSON** (``.json``: a list of records, or an object mapping a path to a
  label or to a record) with one row per image and a key column: ``sample_id`` (the 16-hex
  sample id), or a path-like column ``uri``, ``path``, ``file_name``, ``filename``, ``file``,
  ``image`` or ``image_path`` (the first present, or the one named by ``key=``). Every other
  column is kept as is.
* **COCO instances** JSON (an object with ``images``, ``annotations`` and ``categories``):
  one row per image with ``file_name``, ``coco_image_id``, ``gt_detections``
  (``list<struct<label, box, area, iscrowd>>``: ``box`` is ``[x0, y0, x1, y1]`` normalised
  to the image's width and height, ``area`` the COCO area as a fraction of the image) and
  ``gt_labels`` (the sorted distinct category names).

A path key matches a sample when it is the sample's uri, the same file as an absolute path,
a path relative to one of the ingest sources' roots, or else the unique sample whose uri ends
with it on a ``/`` boundary (so ``cats/001.jpg`` or ``001.jpg`` work when unambiguous).

The result (:func:`match_labels`) is the dataset table ``labels``: ``sample_id``, ``uri``
(the sample's), then the file's columns (its own ``sample_id``/``uri`` columns excepted).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from popql.diagnostics import Diagnostic, PopQLError

from .images import is_url, read_bytes

__all__ = [
    "GT_DETECTION",
    "PATH_KEYS",
    "LabelFile",
    "LabelMatch",
    "load_labels",
    "match_labels",
    "read_coco",
    "read_labels",
]

#: Column names accepted as a path key, in order of preference.
PATH_KEYS: tuple[str, ...] = ("uri", "path", "file_name", "filename", "file", "image", "image_path")
ID_KEY = "sample_id"

#: One ground-truth object of a COCO image.
GT_DETECTION = pa.struct(
    [
        ("label", pa.string()),
        ("box", pa.list_(pa.float32(), 4)),
        ("area", pa.float32()),
        ("iscrowd", pa.bool_()),
    ]
)

COCO_SCHEMA = pa.schema(
    [
        ("file_name", pa.string()),
        ("coco_image_id", pa.int64()),
        ("gt_detections", pa.list_(GT_DETECTION)),
        ("gt_labels", pa.list_(pa.string())),
    ]
)

_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


@dataclass
class LabelFile:
    """A label file read into Arrow: ``table`` holds the key column ``key`` (strings) and the
    label columns; ``key_kind`` is ``"sample_id"`` or ``"path"``; ``format`` one of ``csv``,
    ``parquet``, ``json``, ``jsonl``, ``coco``."""

    source: str
    table: pa.Table
    key: str
    key_kind: str
    format: str


@dataclass
class LabelMatch:
    """Labels joined to samples: ``table`` is the ``labels`` table; ``unmatched`` the keys that
    name no sample, ``ambiguous`` the path keys that fit several."""

    table: pa.Table
    matched: int
    unmatched: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)

    @property
    def sample_ids(self) -> set[str]:
        return set(self.table.column(ID_KEY).to_pylist()) if self.table.num_rows else set()


def _error(code: str, message: str, source: str, *hints: str) -> PopQLError:
    return PopQLError(Diagnostic(code, message, hints=tuple(h for h in hints if h), file=source))


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_labels(
    source: str | os.PathLike[str],
    *,
    key: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> LabelFile:
    """Read a label file (see the module docstring). PopQLError F001 (missing, unreadable),
    F002 (unknown format) or F003 (invalid content, no key column)."""
    shown = os.fspath(source)
    suffix = Path(shown.split("?", 1)[0]).suffix.lower()
    fmt = _SUFFIXES.get(suffix)
    if fmt is None:
        raise _error(
            "F002",
            f"unsupported label file format: '{suffix or '(no suffix)'}' ({shown})",
            shown,
            "label files are CSV (.csv, .tsv), JSON (.json, .jsonl, COCO instances) or Parquet",
        )
    data = _read(shown, storage_options)
    try:
        if fmt == "csv":
            table = _read_csv(data, tab=suffix == ".tsv")
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(pa.BufferReader(data))
        elif fmt == "jsonl":
            rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
            table = _records(rows, shown)
        else:
            obj = json.loads(data.decode("utf-8"))
            if isinstance(obj, dict) and "images" in obj and "annotations" in obj:
                table = read_coco(obj, source=shown)
                return LabelFile(shown, table, "file_name", "path", "coco")
            table = _json_table(obj, shown)
    except PopQLError:
        raise
    except (ValueError, UnicodeDecodeError, pa.ArrowException) as exc:
        raise _error("F003", f"invalid label file {shown}: {exc}", shown) from exc
    name, kind = _key_column(table, key, shown)
    column = table.column(name)
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        column = column.cast(pa.string())
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return LabelFile(shown, table, name, kind, fmt)


def _read(shown: str, storage_options: Mapping[str, Any] | None) -> bytes:
    from .images import ImageError

    if not is_url(shown) and not Path(shown).is_file():
        what = "is a directory" if Path(shown).is_dir() else "not found"
        raise _error("F001", f"label file {what}: {shown}", shown)
    try:
        return read_bytes(shown, storage_options=storage_options)
    except ImageError as exc:
        raise _error("F001", f"cannot read label file {shown}: {exc.message}", shown) from exc
    except ValueError as exc:
        raise _error("F001", f"cannot read label file {shown}: {exc}", shown) from exc


def _read_csv(data: bytes, *, tab: bool) -> pa.Table:
    import pyarrow.csv as pacsv

    keys = {k: pa.string() for k in (ID_KEY, *PATH_KEYS)}
    return pacsv.read_csv(
        pa.BufferReader(data),
        parse_options=pacsv.ParseOptions(delimiter="\t" if tab else ","),
        convert_options=pacsv.ConvertOptions(column_types=keys, strings_can_be_null=True),
    )


def _records(rows: list[Any], shown: str) -> pa.Table:
    if not all(isinstance(r, dict) for r in rows):
        raise _error("F003", f"invalid label file {shown}: expected one JSON object per row", shown)
    if not rows:
        return pa.table({"path": pa.array([], pa.string())})
    for row in rows:  # keys are strings whatever the JSON had
        for k in (ID_KEY, *PATH_KEYS):
            if k in row and row[k] is not None and not isinstance(row[k], str):
                row[k] = str(row[k])
    return pa.Table.from_pylist(rows)


def _json_table(obj: Any, shown: str) -> pa.Table:
    if isinstance(obj, list):
        return _records(obj, shown)
    if isinstance(obj, dict):
        rows = []
        for path, value in obj.items():
            if isinstance(value, dict):
                rows.append({"path": path, **value})
            else:
                rows.append({"path": path, "label": value})
        return _records(rows, shown)
    raise _error(
        "F003",
        f"invalid label file {shown}: expected a list of records, an object mapping paths "
        "to labels, or COCO instances",
        shown,
    )


def _key_column(table: pa.Table, key: str | None, shown: str) -> tuple[str, str]:
    names = table.column_names
    if key is not None:
        if key not in names:
            raise _error(
                "F003",
                f"label file {shown} has no column '{key}'",
                shown,
                f"its columns: {', '.join(names)}",
            )
        return key, "sample_id" if key == ID_KEY else "path"
    if ID_KEY in names:
        return ID_KEY, "sample_id"
    for name in PATH_KEYS:
        if name in names:
            return name, "path"
    raise _error(
        "F003",
        f"label file {shown} has no key column",
        shown,
        f"name one column {ID_KEY} or one of {', '.join(PATH_KEYS)} (found: {', '.join(names)})",
    )


def read_coco(obj: Mapping[str, Any], *, source: str = "<coco>") -> pa.Table:
    """COCO instances (``images``, ``annotations``, ``categories``) to one row per image: see
    :data:`COCO_SCHEMA`. Boxes ``[x, y, w, h]`` in pixels become ``[x0, y0, x1, y1]`` divided
    by the image's width/height (clipped to [0, 1]); without a size the box is null."""
    try:
        categories = {c["id"]: str(c.get("name", c["id"])) for c in obj.get("categories") or []}
        images: dict[Any, dict[str, Any]] = {}
        order: list[Any] = []
        for img in obj.get("images") or []:
            images[img["id"]] = img
            order.append(img["id"])
        detections: dict[Any, list[dict[str, Any]]] = {i: [] for i in order}
        for ann in obj.get("annotations") or []:
            image_id = ann["image_id"]
            img = images.get(image_id)
            if img is None:
                continue
            w_img = float(img.get("width") or 0)
            h_img = float(img.get("height") or 0)
            box = None
            area = None
            bbox = ann.get("bbox")
            if bbox is not None and w_img > 0 and h_img > 0:
                x, y, w, h = (float(v) for v in bbox)
                box = [
                    _clip(x / w_img),
                    _clip(y / h_img),
                    _clip((x + w) / w_img),
                    _clip((y + h) / h_img),
                ]
                raw_area = ann.get("area")
                area = float(raw_area if raw_area is not None else w * h) / (w_img * h_img)
            category = ann.get("category_id")
            detections[image_id].append(
                {
                    "label": categories.get(category, None if category is None else str(category)),
                    "box": box,
                    "area": area,
                    "iscrowd": bool(ann.get("iscrowd", 0)),
                }
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise _error(
            "F003", f"invalid COCO annotations in {source}: {type(exc).__name__}: {exc}", source
        ) from exc
    rows = []
    for image_id in order:
        dets = detections[image_id]
        rows.append(
            {
                "file_name": str(images[image_id].get("file_name", image_id)),
                "coco_image_id": int(image_id) if isinstance(image_id, int) else None,
                "gt_detections": dets,
                "gt_labels": sorted({d["label"] for d in dets if d["label"] is not None}),
            }
        )
    return pa.Table.from_pylist(rows, schema=COCO_SCHEMA)


def _clip(v: float) -> float:
    return min(1.0, max(0.0, v))


# ---------------------------------------------------------------------------------------------
# Matching to samples
# ---------------------------------------------------------------------------------------------


def _norm(path: str) -> str:
    path = path.replace("\\", "/")
    if path.startswith("file://"):
        path = path[len("file://") :]
    while path.startswith("./"):
        path = path[2:]
    return path


class _PathIndex:
    """Resolves path keys to sample ids."""

    def __init__(self, paths: Mapping[str, str], roots: Iterable[str]) -> None:
        self.exact = {_norm(u): sid for u, sid in paths.items()}
        self.by_name: dict[str, list[str]] = {}
        for uri in self.exact:
            self.by_name.setdefault(uri.rsplit("/", 1)[-1], []).append(uri)
        self.roots = [_norm(r).rstrip("/") for r in roots]

    def resolve(self, key: str) -> tuple[str | None, bool]:
        """(sample_id or None, ambiguous)."""
        k = _norm(key)
        if k in self.exact:
            return self.exact[k], False
        if not is_url(k):
            absolute = _norm(os.path.abspath(k)) if os.path.isabs(k) else None
            if absolute and absolute in self.exact:
                return self.exact[absolute], False
            for root in self.roots:
                joined = f"{root}/{k}" if is_url(root) else _norm(os.path.normpath(f"{root}/{k}"))
                if joined in self.exact:
                    return self.exact[joined], False
        stripped = k.lstrip("/")
        candidates = [
            uri
            for uri in self.by_name.get(stripped.rsplit("/", 1)[-1], [])
            if uri == stripped or uri.endswith("/" + stripped)
        ]
        ids = {self.exact[c] for c in candidates}
        if len(ids) == 1:
            return ids.pop(), False
        return None, len(ids) > 1


def match_labels(
    labels: LabelFile,
    paths: Mapping[str, str],
    *,
    sample_ids: Iterable[str] | None = None,
    uris: Mapping[str, str] | None = None,
    roots: Iterable[str] = (),
) -> LabelMatch:
    """Join ``labels`` to samples. ``paths`` maps every known uri (sample uris and the other
    paths of identical files) to its sample id; ``sample_ids`` are the valid ids (default: the
    values of ``paths``); ``uris`` maps a sample id to its recorded uri; ``roots`` are the
    ingest sources' folders, for relative paths."""
    table = labels.table
    keys = table.column(labels.key).to_pylist()
    valid = set(sample_ids) if sample_ids is not None else set(paths.values())
    index = _PathIndex(paths, roots) if labels.key_kind == "path" else None
    resolved: list[str | None] = []
    unmatched: list[str] = []
    ambiguous: list[str] = []
    for k in keys:
        sid: str | None = None
        is_ambiguous = False
        if k is None:
            pass
        elif index is None:
            sid = k if k in valid else None
        else:
            sid, is_ambiguous = index.resolve(k)
        if is_ambiguous:
            ambiguous.append(k)
        elif sid is None and k is not None:
            unmatched.append(k)
        resolved.append(sid)
    mask = pa.array([s is not None for s in resolved])
    kept = table.filter(mask)
    ids = [s for s in resolved if s is not None]
    by_id = dict(uris) if uris is not None else {}
    if not by_id:
        for uri, sid in paths.items():
            by_id.setdefault(sid, uri)
    rest = [n for n in kept.column_names if n not in (ID_KEY, "uri")]
    out = pa.table(
        {
            ID_KEY: pa.array(ids, pa.string()),
            "uri": pa.array([by_id.get(s) for s in ids], pa.string()),
            **{n: kept.column(n) for n in rest},
        }
    )
    return LabelMatch(out, len(ids), unmatched, ambiguous)


def load_labels(
    source: str | os.PathLike[str],
    paths: Mapping[str, str],
    *,
    key: str | None = None,
    roots: Iterable[str] = (),
    uris: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> LabelMatch:
    """:func:`read_labels` then :func:`match_labels`."""
    file = read_labels(source, key=key, storage_options=storage_options)
    return match_labels(file, paths, uris=uris, roots=roots)
