"""Adapters that turn a user's detector or segmenter into a tagger.

:class:`DetectionTagger` wraps ``model(image) -> detections`` and produces

* ``detections`` (list<struct<label: string, score: float32, box: fixed_size_list<float32>[4]>>):
  every detection scoring at least ``min_score``, boxes ``[x0, y0, x1, y1]`` normalised to 0..1,
  best first -- query it with ``COUNT(detections WHERE label = 'car' AND score > 0.8)``;
* ``num_<class>`` (int32) for each declared class: detections of that label scoring at least
  ``score_threshold``.

The model may return (per image) any of:

* torchvision detection output: ``{"boxes": (N, 4), "labels": (N,), "scores": (N,)}`` tensors
  or arrays, labels as class ids mapped through ``categories``;
* an ultralytics ``Results`` object (``.boxes.xyxy``, ``.boxes.conf``, ``.boxes.cls``,
  ``.names``), or a one-element list of them;
* a list of dicts ``{"label", "score", "box"}`` (``"bbox"`` accepted) or of tuples
  ``(label, score, box)``.

Boxes are pixels of the image the model received unless ``normalized_boxes=True``.

:class:`SegmentationTagger` wraps ``model(image) -> mask`` where the mask is an (H, W) array of
class ids, (C, H, W) per-class scores (arg-maxed), or torchvision's ``{"out": (1, C, H, W)}``,
and produces ``<class>_pct`` (float32): the fraction of the (non-ignored) pixels of each class;
``labels_column`` optionally adds a list of the classes covering at least ``min_pct``.

With ``batched=True`` the model is called once per batch with a list of images and returns a
list of outputs. The tagger's ``version`` is yours to bump when the model changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from popql.diagnostics import Diagnostic, PopQLError

from . import ImageInput, _check_identity, _normalise_columns

DETECTION = pa.struct(
    [("label", pa.string()), ("score", pa.float32()), ("box", pa.list_(pa.float32(), 4))]
)


def column_slug(label: str) -> str:
    """A column-name fragment for a class label: ``"traffic light"`` -> ``traffic_light``."""
    slug = re.sub(r"[^0-9a-z]+", "_", str(label).lower()).strip("_")
    if not slug:
        raise PopQLError(Diagnostic("T005", f"class label {label!r} gives no column name"))
    return f"c_{slug}" if slug[0].isdigit() else slug


def _class_columns(classes: Sequence[str] | Mapping[str, str], pattern: str) -> dict[str, str]:
    """``{label: column}`` for declared classes (a mapping gives the column fragment)."""
    pairs = classes.items() if isinstance(classes, Mapping) else ((c, c) for c in classes)
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for label, fragment in pairs:
        col = pattern.format(column_slug(fragment))
        if col in seen:
            raise PopQLError(
                Diagnostic(
                    "N006",
                    f"classes {seen[col]!r} and {label!r} both give the column '{col}'",
                    hints=("pass a mapping {label: column_name_fragment} for `classes`",),
                )
            )
        seen[col] = label
        out[str(label)] = col
    return out


def _tolist(x: Any) -> Any:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    if hasattr(x, "tolist"):
        return x.tolist()
    return list(x)


def _run(model: Callable[..., Any], batch: list[ImageInput], batched: bool) -> list[Any]:
    if batched:
        outs = list(model([item.image for item in batch]))
        if len(outs) != len(batch):
            raise PopQLError(
                Diagnostic(
                    "E003",
                    f"batched model returned {len(outs)} outputs for {len(batch)} images",
                )
            )
        return outs
    return [model(item.image) for item in batch]


class DetectionTagger:
    """A tagger from an object detector (see the module docstring)."""

    def __init__(
        self,
        name: str,
        model: Callable[..., Any],
        *,
        classes: Sequence[str] | Mapping[str, str] = (),
        version: str = "1",
        score_threshold: float = 0.5,
        min_score: float = 0.05,
        categories: Sequence[str] | Mapping[int, str] | None = None,
        normalized_boxes: bool = False,
        batched: bool = False,
        batch_size: int = 8,
        detections_column: str = "detections",
    ) -> None:
        _check_identity(name, version)
        self.name = name
        self.version = version
        self.model = model
        self.score_threshold = float(score_threshold)
        self.min_score = float(min_score)
        self.categories = categories
        self.normalized_boxes = normalized_boxes
        self.batched = batched
        self.batch_size = batch_size
        self.detections_column = detections_column
        self.count_columns = _class_columns(classes, "num_{}")
        cols: dict[str, Any] = {detections_column: pa.list_(DETECTION)}
        cols.update({col: pa.int32() for col in self.count_columns.values()})
        self.columns = _normalise_columns(name, cols)

    def _label(self, label: Any) -> str:
        if isinstance(label, float) and label.is_integer():
            label = int(label)
        if isinstance(label, int) and self.categories is not None:
            try:
                return str(self.categories[label])
            except (IndexError, KeyError):
                return str(label)
        return str(label)

    def parse(self, out: Any, width: int, height: int) -> list[dict[str, Any]]:
        """Normalised detections (best first, at least ``min_score``) from one model output."""
        raw: list[tuple[Any, float, Sequence[float]]] = []
        if isinstance(out, list | tuple) and len(out) == 1 and hasattr(out[0], "boxes"):
            out = out[0]  # ultralytics: model(image) -> [Results]
        if hasattr(out, "boxes") and hasattr(out.boxes, "xyxy"):  # ultralytics Results
            names = getattr(out, "names", None)
            boxes = out.boxes
            for box, score, cls in zip(
                _tolist(boxes.xyxy), _tolist(boxes.conf), _tolist(boxes.cls), strict=True
            ):
                label: Any = int(cls)
                if names is not None and self.categories is None:
                    label = names[label]
                raw.append((label, float(score), box))
        elif isinstance(out, Mapping) and "boxes" in out:
            boxes_l = _tolist(out["boxes"])
            labels = _tolist(out["labels"]) if "labels" in out else [""] * len(boxes_l)
            scores = _tolist(out["scores"]) if "scores" in out else [1.0] * len(boxes_l)
            raw = list(zip(labels, (float(s) for s in scores), boxes_l, strict=True))
        elif out is None:
            raw = []
        else:
            for det in out:
                if isinstance(det, Mapping):
                    box = det["box"] if "box" in det else det["bbox"]
                    raw.append((det["label"], float(det.get("score", 1.0)), _tolist(box)))
                else:
                    label, score, box = det
                    raw.append((label, float(score), _tolist(box)))
        sx, sy = (1.0, 1.0) if self.normalized_boxes else (1.0 / width, 1.0 / height)
        dets: list[dict[str, Any]] = []
        for label, score, box in raw:
            if score < self.min_score:
                continue
            x0, y0, x1, y1 = (float(v) for v in box)
            norm = [
                min(1.0, max(0.0, x0 * sx)),
                min(1.0, max(0.0, y0 * sy)),
                min(1.0, max(0.0, x1 * sx)),
                min(1.0, max(0.0, y1 * sy)),
            ]
            dets.append({"label": self._label(label), "score": score, "box": norm})
        dets.sort(key=lambda d: -float(d["score"]))
        return dets

    def __call__(self, batch: list[ImageInput]) -> list[dict[str, Any]]:
        rows = []
        for item, out in zip(batch, _run(self.model, batch, self.batched), strict=True):
            dets = self.parse(out, item.width, item.height)
            row: dict[str, Any] = {self.detections_column: dets}
            for label, col in self.count_columns.items():
                row[col] = sum(
                    1 for d in dets if d["label"] == label and d["score"] >= self.score_threshold
                )
            rows.append(row)
        return rows

    def __repr__(self) -> str:
        return f"<detection tagger {self.name}@{self.version} counts={list(self.count_columns)}>"


class SegmentationTagger:
    """A tagger from a semantic segmenter (see the module docstring)."""

    def __init__(
        self,
        name: str,
        model: Callable[..., Any],
        *,
        classes: Sequence[str] | Mapping[int, str],
        version: str = "1",
        ignore_index: int | None = 255,
        labels_column: str | None = None,
        min_pct: float = 0.01,
        batched: bool = False,
        batch_size: int = 8,
    ) -> None:
        _check_identity(name, version)
        self.name = name
        self.version = version
        self.model = model
        self.ignore_index = ignore_index
        self.labels_column = labels_column
        self.min_pct = float(min_pct)
        self.batched = batched
        self.batch_size = batch_size
        ids = classes if isinstance(classes, Mapping) else dict(enumerate(classes))
        self.class_ids: dict[int, str] = {int(k): str(v) for k, v in ids.items()}
        by_label = _class_columns([*self.class_ids.values()], "{}_pct")
        self.pct_columns: dict[int, str] = {i: by_label[lab] for i, lab in self.class_ids.items()}
        cols: dict[str, Any] = {col: pa.float32() for col in self.pct_columns.values()}
        if labels_column:
            cols[labels_column] = pa.list_(pa.string())
        self.columns = _normalise_columns(name, cols)

    def mask_of(self, out: Any) -> Any:
        """The (H, W) integer class mask of one model output."""
        import numpy as np

        if isinstance(out, Mapping):
            out = out["out"] if "out" in out else next(iter(out.values()))
        if hasattr(out, "detach"):
            out = out.detach().cpu().numpy()
        arr = np.asarray(out)
        while arr.ndim > 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim == 3:
            if arr.shape[0] == 1 and np.issubdtype(arr.dtype, np.integer):
                arr = arr[0]
            else:
                arr = arr.argmax(axis=0)
        if arr.ndim != 2:
            raise PopQLError(
                Diagnostic(
                    "E003",
                    f"segmentation tagger '{self.name}': expected an (H, W) mask or (C, H, W) "
                    f"scores, got shape {arr.shape}",
                )
            )
        if arr.dtype == np.bool_:
            arr = arr.astype(np.int64)
        return arr

    def __call__(self, batch: list[ImageInput]) -> list[dict[str, Any]]:
        import numpy as np

        rows = []
        for out in _run(self.model, batch, self.batched):
            mask = self.mask_of(out)
            flat = mask.ravel()
            if self.ignore_index is not None:
                flat = flat[flat != self.ignore_index]
            total = flat.size
            ids = flat.astype(np.int64)
            counts: dict[int, int] = {}
            if total:
                values, n = np.unique(ids, return_counts=True)
                counts = dict(zip(values.tolist(), n.tolist(), strict=True))
            row: dict[str, Any] = {
                col: (counts.get(i, 0) / total if total else None)
                for i, col in self.pct_columns.items()
            }
            if self.labels_column:
                row[self.labels_column] = [
                    self.class_ids[i]
                    for i in sorted(self.class_ids, key=lambda i: -counts.get(i, 0))
                    if total and counts.get(i, 0) / total >= self.min_pct
                ]
            rows.append(row)
        return rows

    def __repr__(self) -> str:
        return f"<segmentation tagger {self.name}@{self.version} classes={len(self.class_ids)}>"
