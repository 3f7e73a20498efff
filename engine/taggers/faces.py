"""Face taggers: ``faces`` (OpenCV Haar cascade) and ``faces_mtcnn`` (facenet-pytorch MTCNN).

Both give the same columns, so either can stand in for the other:

* ``num_faces`` (int32): faces found;
* ``face_boxes`` (list<struct<x0, y0, x1, y1, score>>, float32): boxes normalised to 0..1 of
  the image's width and height, best score first.

``faces`` uses OpenCV's bundled ``haarcascade_frontalface_alt2.xml`` (``cv2.data.haarcascades``)
on the grey image scaled down to at most :attr:`HaarFaceTagger.max_side` pixels. The defaults
(``scale_factor=1.1``, ``min_neighbors=5``, ``min_size=20``) were chosen on the Solvay 1927
photograph (29 faces, ViSP test data), from a plateau: every ``min_neighbors`` from 4 to 8 at
scale factor 1.1 gives the same 29/29 there. Haar gives no probability; ``score`` is
``1 - exp(-n / 10)`` for ``n`` merged raw detections (0.39 at the 5-neighbour minimum, 0.95 at
30): a confidence rank, not a calibrated probability.

``faces_mtcnn`` runs facenet-pytorch's MTCNN (weights ship inside the package) and keeps faces
whose probability is at least ``threshold`` (0.9); ``score`` is that probability. Slower
(seconds per large image on CPU) but finds turned and smaller faces.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from . import ImageInput, param_version, register_tagger, register_tagger_factory

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image as PILImage

FACE_BOX = pa.struct(
    [
        ("x0", pa.float32()),
        ("y0", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("score", pa.float32()),
    ]
)

COLUMNS: dict[str, pa.DataType] = {"num_faces": pa.int32(), "face_boxes": pa.list_(FACE_BOX)}


def _need(module: str) -> Any:
    """Import an optional model package, or raise M004 saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        from popql.diagnostics import Diagnostic, PopQLError

        extra = (
            "pip install --no-deps facenet-pytorch"
            if module.startswith("facenet")
            else 'pip install -e ".[models]"'
        )
        raise PopQLError(
            Diagnostic("M004", f"face tagger needs the '{module}' package: {exc}", hints=(extra,))
        ) from exc


def _scaled(image: PILImage.Image, max_side: int) -> tuple[PILImage.Image, float]:
    """``image`` scaled so its longer side is at most ``max_side`` (and the scale used)."""
    from PIL import Image

    w, h = image.size
    scale = min(1.0, max_side / max(w, h)) if max_side else 1.0
    if scale < 1.0:
        image = image.resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR
        )
    return image, scale


def _box(x0: float, y0: float, x1: float, y1: float, score: float, w: int, h: int) -> dict:
    """A face box normalised to 0..1 and clipped to the image."""

    def clip(v: float) -> float:
        return min(1.0, max(0.0, float(v)))

    return {
        "x0": clip(x0 / w),
        "y0": clip(y0 / h),
        "x1": clip(x1 / w),
        "y1": clip(y1 / h),
        "score": float(score),
    }


def _row(boxes: list[dict]) -> dict[str, Any]:
    boxes.sort(key=lambda b: (-b["score"], b["y0"], b["x0"]))
    return {"num_faces": len(boxes), "face_boxes": boxes}


class HaarFaceTagger:
    """``faces``: OpenCV Haar cascade face detection (see the module docstring)."""

    DEFAULTS: dict[str, Any] = {
        "cascade": "haarcascade_frontalface_alt2.xml",
        "scale_factor": 1.1,
        "min_neighbors": 5,
        "min_size": 20,
        "max_side": 1280,
    }

    def __init__(
        self,
        *,
        name: str = "faces",
        cascade: str = "haarcascade_frontalface_alt2.xml",
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 20,
        max_side: int = 1280,
        batch_size: int = 16,
    ) -> None:
        self.cascade = cascade
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = int(min_size)
        self.max_side = int(max_side)
        params = {
            "cascade": cascade,
            "scale_factor": self.scale_factor,
            "min_neighbors": self.min_neighbors,
            "min_size": self.min_size,
            "max_side": self.max_side,
        }
        self.name = name
        self.version = param_version("1", params, self.DEFAULTS)
        self.columns = dict(COLUMNS)
        self.batch_size = batch_size
        self._local = threading.local()  # CascadeClassifier is not thread-safe

    def _classifier(self) -> Any:
        clf = getattr(self._local, "clf", None)
        if clf is None:
            import os

            cv2 = _need("cv2")
            path = self.cascade
            if not os.path.isabs(path):
                path = os.path.join(cv2.data.haarcascades, path)
            clf = cv2.CascadeClassifier(path) if os.path.isfile(path) else None
            if clf is None or clf.empty():
                from popql.diagnostics import Diagnostic, PopQLError

                raise PopQLError(
                    Diagnostic(
                        "M001",
                        f"cannot load the Haar cascade '{path}'",
                        hints=("name a file of cv2.data.haarcascades or an absolute path",),
                    )
                )
            self._local.clf = clf
        return clf

    def detect(self, image: PILImage.Image) -> list[dict]:
        """Normalised face boxes of one image."""
        import numpy as np

        clf = self._classifier()
        small, _ = _scaled(image.convert("L"), self.max_side)
        gray = np.asarray(small, dtype=np.uint8)
        rects, neighbours = clf.detectMultiScale2(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        sw, sh = small.size
        return [
            _box(x, y, x + bw, y + bh, 1.0 - math.exp(-float(n) / 10.0), sw, sh)
            for (x, y, bw, bh), n in zip(
                np.asarray(rects).reshape(-1, 4), np.ravel(neighbours), strict=True
            )
        ]

    def __call__(self, batch: list[ImageInput]) -> list[dict[str, Any]]:
        return [_row(self.detect(item.image)) for item in batch]

    def __repr__(self) -> str:
        return f"<tagger {self.name}@{self.version} (Haar {self.cascade})>"


_MTCNN_LOCK = threading.Lock()
_MTCNN_CACHE: dict[tuple, Any] = {}


class MtcnnFaceTagger:
    """``faces_mtcnn``: facenet-pytorch MTCNN face detection (see the module docstring)."""

    DEFAULTS: dict[str, Any] = {"threshold": 0.9, "min_face_size": 20, "max_side": 1280}

    def __init__(
        self,
        *,
        name: str = "faces_mtcnn",
        threshold: float = 0.9,
        min_face_size: int = 20,
        max_side: int = 1280,
        device: str = "cpu",
        batch_size: int = 8,
    ) -> None:
        self.threshold = float(threshold)
        self.min_face_size = int(min_face_size)
        self.max_side = int(max_side)
        self.device = device
        params = {
            "threshold": self.threshold,
            "min_face_size": self.min_face_size,
            "max_side": self.max_side,
        }
        self.name = name
        self.version = param_version("1", params, self.DEFAULTS)
        self.columns = dict(COLUMNS)
        self.batch_size = batch_size

    def _model(self) -> Any:
        key = (self.min_face_size, self.device)
        with _MTCNN_LOCK:
            model = _MTCNN_CACHE.get(key)
            if model is None:
                _need("torch")
                facenet = _need("facenet_pytorch")
                model = facenet.MTCNN(
                    keep_all=True, device=self.device, min_face_size=self.min_face_size
                )
                _MTCNN_CACHE[key] = model
        return model

    def detect(self, image: PILImage.Image) -> list[dict]:
        """Normalised face boxes of one image."""
        import torch

        model = self._model()
        small, _ = _scaled(image.convert("RGB"), self.max_side)
        with torch.inference_mode():
            boxes, probs = model.detect(small)
        if boxes is None:
            return []
        arr: np.ndarray = _as_float_array(boxes).reshape(-1, 4)
        p = _as_float_array(probs).reshape(-1)
        sw, sh = small.size
        return [
            _box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(s), sw, sh)
            for b, s in zip(arr, p, strict=True)
            if s >= self.threshold
        ]

    def __call__(self, batch: list[ImageInput]) -> list[dict[str, Any]]:
        return [_row(self.detect(item.image)) for item in batch]

    def __repr__(self) -> str:
        return f"<tagger {self.name}@{self.version} (MTCNN)>"


def _as_float_array(values: Any) -> np.ndarray:
    """facenet-pytorch returns object arrays for a single image with keep_all=True."""
    import numpy as np

    return np.asarray(np.asarray(values).tolist(), dtype=np.float64)


register_tagger(HaarFaceTagger())
register_tagger(MtcnnFaceTagger())
register_tagger_factory("faces", HaarFaceTagger)
register_tagger_factory("faces_mtcnn", MtcnnFaceTagger)


# ---------------------------------------------------------------------------------------------
# Evaluation helpers
# ---------------------------------------------------------------------------------------------


def iou_matrix(a: Any, b: Any) -> np.ndarray:
    """Intersection over union of every box of ``a`` (n, 4) with every box of ``b`` (m, 4)."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_boxes(pred: Any, truth: Any, min_iou: float = 0.3) -> tuple[int, float, float]:
    """Greedy one-to-one matching (highest IoU first): ``(true positives, precision, recall)``.

    Precision is 1.0 with no predictions and recall 1.0 with no true boxes.
    """
    import numpy as np

    m = iou_matrix(pred, truth)
    n_pred, n_true = m.shape
    tp = 0
    if m.size:
        order = np.dstack(np.unravel_index(np.argsort(-m, axis=None), m.shape))[0]
        used_p: set[int] = set()
        used_t: set[int] = set()
        for i, j in order:
            if m[i, j] < min_iou:
                break
            if i in used_p or j in used_t:
                continue
            used_p.add(int(i))
            used_t.add(int(j))
            tp += 1
    precision = tp / n_pred if n_pred else 1.0
    recall = tp / n_true if n_true else 1.0
    return tp, precision, recall
