"""A small real dataset for tests: Fashion-MNIST test images ingested with the offline test
CLIP (models/fmnist-clip), the image_stats tagger and the class names as labels.

``build(folder, n)`` writes the first ``n`` test images as PNG files with a labels.csv, ingests
them into ``folder/ds`` and returns that path. Tests skip when Fashion-MNIST (Debian's
dataset-fashion-mnist) or the model packages are missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def training_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "train_fmnist_clip", ROOT / "models" / "train_fmnist_clip.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_test_split(n: int) -> tuple[object, list[str]]:
    """The first ``n`` Fashion-MNIST test images (uint8, 28x28) and their class names."""
    T = training_module()
    data = T.find_data()
    if data is None:
        pytest.skip(
            "Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist (idx files in"
            f" {T.DEBIAN_DIR}) or set FASHION_MNIST_DIR"
        )
    images, labels = T.load_split(data, "test")
    return images[:n], [T.CLASSES[int(i)] for i in labels[:n]]


def build(folder: Path, n: int = 1000, *, embedder: str = "fmnist-clip") -> Path:
    pytest.importorskip("open_clip")
    pytest.importorskip("usearch")
    from PIL import Image

    import popql

    images, names = load_test_split(n)
    img_dir = folder / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = ["path,label"]
    for i, (a, name) in enumerate(zip(images, names, strict=True)):  # type: ignore[call-overload]
        Image.fromarray(a, mode="L").save(img_dir / f"{i:05d}.png")
        rows.append(f"{i:05d}.png,{name}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    ds = folder / "ds"
    popql.connect(ds).ingest(
        img_dir,
        taggers=["image_stats"],
        embedder=embedder,
        labels=folder / "labels.csv",
        progress=False,
    )
    return ds
