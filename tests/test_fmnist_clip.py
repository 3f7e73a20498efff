"""The committed test embedder, models/fmnist-clip: loads, is what its README says, and works.

Accuracy and retrieval need the Fashion-MNIST test images: ``apt-get install
dataset-fashion-mnist`` (idx files in /usr/share/datasets/fashion-mnist) or
``FASHION_MNIST_DIR=DIR``; without them those tests are skipped.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")

import numpy as np
from fmnist_data import training_module
from PIL import Image

from popql.engine.embedders import (
    FMNIST_CLIP_DIR,
    TEST_EMBEDDER,
    load_embedder,
    sha256_file,
)

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "models" / "fmnist-clip"
N_TEST = 1000


T = training_module()


@pytest.fixture(scope="module")
def emb():
    return load_embedder("local-dir:models/fmnist-clip")


@pytest.fixture(scope="module")
def test_split():
    data = T.find_data()
    if data is None:
        pytest.skip(
            "Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist (idx files"
            f" in {T.DEBIAN_DIR}) or set FASHION_MNIST_DIR to a folder with the idx .gz files"
        )
    images, labels = T.load_split(data, "test")
    return images[:N_TEST], labels[:N_TEST]


@pytest.fixture(scope="module")
def png_images(test_split):
    """The test images as PopQL sees them: grayscale PNG files decoded to RGB."""
    out = []
    for a in test_split[0]:
        buf = io.BytesIO()
        Image.fromarray(a, mode="L").save(buf, format="PNG")
        buf.seek(0)
        out.append(Image.open(buf).convert("RGB"))
    return out


@pytest.fixture(scope="module")
def image_vectors(emb, png_images):
    return emb.embed_images(png_images)


# -- the checkpoint ---------------------------------------------------------------------------


def test_checkpoint_layout_and_readme() -> None:
    assert FMNIST_CLIP_DIR == CHECKPOINT
    weights = CHECKPOINT / "open_clip_model.safetensors"
    config = json.loads((CHECKPOINT / "open_clip_config.json").read_text(encoding="utf-8"))
    assert set(config) == {"model_cfg", "preprocess_cfg"}
    assert config["model_cfg"] == T.MODEL_CFG
    assert weights.stat().st_size < 10_000_000
    readme = (CHECKPOINT / "README.md").read_text(encoding="utf-8")
    recorded = re.search(r"sha256 `([0-9a-f]{64})`", readme)
    assert recorded and recorded.group(1) == sha256_file(weights)
    metrics = json.loads((CHECKPOINT / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["weights_sha256"] == recorded.group(1)
    assert metrics["float16_via_load_embedder"]["zero_shot_accuracy"] >= 0.70


def test_weights_are_float16() -> None:
    from safetensors import safe_open

    with safe_open(str(CHECKPOINT / "open_clip_model.safetensors"), framework="pt") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}  # noqa: SIM118
    assert dtypes == {"torch.float16"}


def test_loads_as_test_embedder(emb) -> None:
    assert emb.key == "fmnist_clip"
    assert emb.dim == T.MODEL_CFG["embed_dim"]
    digest = sha256_file(CHECKPOINT / "open_clip_model.safetensors")
    assert emb.identity == f"fmnist-clip@sha256:{digest}"
    for spec in (TEST_EMBEDDER, "fmnist-clip", f"local-dir:{CHECKPOINT}"):
        other = load_embedder(spec)
        assert other.identity == emb.identity and other.key == emb.key
    assert load_embedder("fmnist-clip").spec == "fmnist-clip"


def test_texts_are_normalised_and_distinct(emb) -> None:
    t = emb.embed_texts([T.caption("a photo of a {}", c) for c in T.CLASSES])
    assert t.shape == (10, emb.dim) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, rtol=1e-5)
    sim = t @ t.T
    assert (sim[~np.eye(10, dtype=bool)] < 0.99).all()


# -- with the Fashion-MNIST test images -------------------------------------------------------


def test_png_embeds_as_in_training(emb, test_split, png_images) -> None:
    """PNG -> RGB PIL -> open_clip transform equals the training script's tensor path."""
    import torch

    x = T.to_tensor(test_split[0][:64])
    with torch.inference_mode():
        direct = emb.model.encode_image(x.to(emb.device), normalize=True).float().cpu().numpy()
    np.testing.assert_allclose(emb.embed_images(png_images[:64]), direct, atol=1e-5)
    # and any size: an upscaled copy lands close to the original
    big = [im.resize((112, 112), Image.Resampling.NEAREST) for im in png_images[:64]]
    cos = (emb.embed_images(big) * direct).sum(1)
    assert np.median(cos) > 0.9


def test_zero_shot_accuracy(emb, test_split, image_vectors) -> None:
    labels = test_split[1]
    classifier = T.zero_shot_weights(emb.embed_texts)
    accuracy = float(((image_vectors @ classifier.T).argmax(1) == labels).mean())
    print(f"zero-shot accuracy on {N_TEST} test images: {accuracy:.1%}")
    assert accuracy >= 0.70


def test_sneaker_retrieval(emb, test_split, image_vectors) -> None:
    """The acceptance check for similarity search: 'a photo of a sneaker', top 50 of 1,000."""
    labels = test_split[1]
    q = emb.embed_texts(["a photo of a sneaker"])[0]
    top = np.argsort(-(image_vectors @ q), kind="stable")[:50]
    precision = float((labels[top] == T.CLASSES.index("sneaker")).mean())
    print(f"'a photo of a sneaker': {precision:.0%} of the top 50 are sneakers")
    assert precision >= 0.70
