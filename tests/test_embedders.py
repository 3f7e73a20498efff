"""Embedders (popql.engine.embedders): specs, registry, identity, offline errors, plumbing.

The plumbing tests use a tiny open_clip model with random weights written to a temporary
folder; the trained test model is exercised in tests/test_fmnist_clip.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from popql.diagnostics import CODES, PopQLError
from popql.engine import embedders as E
from popql.engine.embedders import (
    DEFAULT_EMBEDDER,
    EmbedSpec,
    embedder_key,
    list_embedders,
    load_embedder,
    parse_spec,
    register_embedder,
    unregister_embedder,
)

ROOT = Path(__file__).resolve().parents[1]

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {
        "image_size": 16,
        "patch_size": 8,
        "width": 32,
        "head_width": 16,
        "layers": 1,
        "mlp_ratio": 1.0,
    },
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 49408,
        "width": 8,
        "heads": 1,
        "layers": 1,
        "mlp_ratio": 1.0,
    },
}
TINY_NAME = "popql-test-tiny"


# ---------------------------------------------------------------------------------------------
# Without torch: import, specs, keys, registry
# ---------------------------------------------------------------------------------------------


def test_import_does_not_import_torch() -> None:
    code = (
        "import sys, popql.engine.embedders as e\n"
        "heavy = ('torch', 'open_clip', 'torchvision', 'safetensors')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert e.DEFAULT_EMBEDDER == 'ViT-B-32:laion2b_s34b_b79k'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr


def test_m_codes_registered() -> None:
    assert CODES["M001"] == "model weights unavailable"
    for code in ("M001", "M002", "M003", "M004"):
        assert code in CODES


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "ViT-B-32:laion2b_s34b_b79k",
            EmbedSpec("", "open_clip", "ViT-B-32", pretrained="laion2b_s34b_b79k"),
        ),
        ("ViT-B-32", EmbedSpec("", "open_clip", "ViT-B-32")),
        (" RN50:openai ", EmbedSpec("", "open_clip", "RN50", pretrained="openai")),
        ("local-dir:/models/x", EmbedSpec("", "local_dir", "/models/x")),
        ("local-dir:models/fmnist-clip", EmbedSpec("", "local_dir", "models/fmnist-clip")),
        (
            "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            EmbedSpec("", "hf_hub", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
        ),
        (
            "/w/m.safetensors?model=ViT-B-32",
            EmbedSpec("", "file", "/w/m.safetensors", model="ViT-B-32"),
        ),
        ("ViT-B-32:/w/m.pt", EmbedSpec("", "file", "/w/m.pt", model="ViT-B-32")),
        ("ViT-B-32:./m.bin", EmbedSpec("", "file", "./m.bin", model="ViT-B-32")),
        ("clip", EmbedSpec("", "registry", "clip")),
        ("fmnist-clip?batch_size=8", EmbedSpec("", "registry", "fmnist-clip", batch_size=8)),
        (
            "ViT-B-32:openai?device=cpu&batch_size=4",
            EmbedSpec("", "open_clip", "ViT-B-32", pretrained="openai", batch_size=4, device="cpu"),
        ),
    ],
)
def test_parse_spec(spec: str, expected: EmbedSpec) -> None:
    expected.spec = spec
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "   ",
        "local-dir:",
        "hf-hub:",
        "hf-hub:noslash",
        "ViT-B-32:",
        ":openai",
        "/w/m.safetensors",
        "x?colour=red",
        "x?batch_size=0",
        "x?batch_size=two",
        "clip?model=RN50",
    ],
)
def test_parse_spec_errors(spec: str) -> None:
    with pytest.raises(PopQLError) as exc:
        parse_spec(spec)
    assert exc.value.code == "M002"


def test_embedder_key() -> None:
    assert embedder_key("ViT-B-32_laion2b_s34b_b79k") == "vit_b_32_laion2b_s34b_b79k"
    assert embedder_key("fmnist-clip") == "fmnist_clip"
    assert embedder_key("laion/CLIP-ViT-B-32") == "laion_clip_vit_b_32"
    assert embedder_key("2x model") == "e_2x_model"
    assert embedder_key("!!!") == "embedder"
    long = embedder_key("a" * 100)
    assert len(long) <= 64 and long != embedder_key("a" * 101)


class FakeEmbedder:
    """An embedder without torch: a fixed projection of image sizes and text lengths."""

    def __init__(self, spec: str = "fake", dim: int = 4) -> None:
        self.key = "fake"
        self.spec = spec
        self.identity = "fake@sha256:0"
        self.dim = dim
        self.batch_size = 2

    def _norm(self, rows):
        import numpy as np

        arr = np.asarray(rows, dtype=np.float32).reshape(len(rows), self.dim)
        return arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)

    def embed_images(self, images):
        return self._norm([[im.width, im.height, 1, 0] for im in images])

    def embed_texts(self, texts):
        return self._norm([[len(t), 1, 0, 1] for t in texts])


@pytest.fixture
def registry_name():
    name = "popql-test-fake"
    yield name
    unregister_embedder(name)


def test_registry_builtins() -> None:
    assert {"clip", "fmnist-clip"} <= set(list_embedders())


def test_register_and_load(registry_name: str) -> None:
    seen: dict[str, object] = {}

    def factory(spec, cache_dir=None):
        seen.update(spec=spec, cache_dir=cache_dir)
        return FakeEmbedder(spec)

    register_embedder(registry_name, factory)
    assert registry_name in list_embedders()
    emb = load_embedder(registry_name, cache_dir="/some/cache")
    assert isinstance(emb, E.Embedder)
    assert seen == {"spec": registry_name, "cache_dir": "/some/cache"}
    assert emb.embed_texts(["ab", "abc"]).shape == (2, 4)
    # options apply to registry entries too
    assert load_embedder(f"{registry_name}?batch_size=7").batch_size == 7
    assert parse_spec(registry_name).kind == "registry"
    unregister_embedder(registry_name)
    assert registry_name not in list_embedders()
    assert parse_spec(registry_name).kind == "open_clip"  # no longer a registry name


def test_register_factory_without_arguments(registry_name: str) -> None:
    register_embedder(registry_name, FakeEmbedder)  # a class: called with spec only
    assert load_embedder(registry_name).spec == registry_name
    register_embedder(registry_name, lambda: FakeEmbedder("x"))  # replaces the entry
    assert load_embedder(registry_name).spec == "x"


def test_register_bad_factory(registry_name: str) -> None:
    register_embedder(registry_name, lambda: object())
    with pytest.raises(PopQLError) as exc:
        load_embedder(registry_name)
    assert exc.value.code == "M003"
    assert "lacks key" in exc.value.diagnostic.message


@pytest.mark.parametrize("name", ["", "a:b", "a/b", "a b", "a?b"])
def test_register_invalid_name(name: str) -> None:
    with pytest.raises(ValueError):
        register_embedder(name, FakeEmbedder)


def test_register_not_callable() -> None:
    with pytest.raises(TypeError):
        register_embedder("popql-test-nc", 42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# With torch and open_clip
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oc():
    pytest.importorskip("torch")
    return pytest.importorskip("open_clip")


def write_tiny(folder: Path, seed: int = 0, cfg: dict | None = None) -> Path:
    """A random-weights tiny open_clip model in the local-dir layout."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg = cfg or TINY_CFG
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**json.loads(json.dumps(cfg)))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}),
        encoding="utf-8",
    )
    return folder


@pytest.fixture(scope="module")
def tiny_dir(oc, tmp_path_factory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("emb") / "tiny-rand")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_embedder(f"local-dir:{tiny_dir}")


def images():
    from PIL import Image

    return [
        Image.new("RGB", (40, 30), (200, 10, 10)),
        Image.new("L", (10, 12), 90),  # not RGB: converted
        Image.new("RGBA", (16, 16), (0, 0, 255, 128)),
        Image.radial_gradient("L").convert("RGB"),
    ]


def test_local_dir_embedder(tiny, tiny_dir: Path) -> None:
    import numpy as np

    from popql.engine.embedders import sha256_file

    assert tiny.key == "tiny_rand"
    assert tiny.dim == 16
    assert (
        tiny.identity == f"tiny-rand@sha256:{sha256_file(tiny_dir / 'open_clip_model.safetensors')}"
    )
    assert tiny.spec == f"local-dir:{tiny_dir}"
    v = tiny.embed_images(images())
    t = tiny.embed_texts(["a photo of a cat", "a dog", ""])
    for arr, n in ((v, 4), (t, 3)):
        assert arr.shape == (n, 16) and arr.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, rtol=1e-5)
    assert tiny.embed_images([]).shape == (0, 16)
    assert tiny.embed_texts([]).shape == (0, 16)


def test_batches_do_not_change_results(tiny) -> None:
    import numpy as np

    whole = tiny.embed_images(images())
    texts = ["one", "two two", "three three three"]
    whole_t = tiny.embed_texts(texts)
    old = tiny.batch_size
    try:
        tiny.batch_size = 1
        np.testing.assert_allclose(tiny.embed_images(images()), whole, atol=1e-5)
        np.testing.assert_allclose(tiny.embed_texts(texts), whole_t, atol=1e-5)
    finally:
        tiny.batch_size = old


def test_threads_respect_affinity(tiny) -> None:
    import torch

    assert torch.get_num_threads() <= len(os.sched_getaffinity(0))


def test_loaded_models_are_reused(tiny, tiny_dir: Path) -> None:
    assert load_embedder(f"local-dir:{tiny_dir}") is tiny
    again = load_embedder(f"local-dir:{tiny_dir}?batch_size=3")
    assert again is not tiny and again.batch_size == 3 and again.identity == tiny.identity


def test_identity_changes_with_weights(oc, tmp_path: Path) -> None:
    import numpy as np

    folder = write_tiny(tmp_path / "m", seed=1)
    first = load_embedder(f"local-dir:{folder}")
    same = write_tiny(tmp_path / "copy" / "m", seed=1)  # same bytes elsewhere: same identity
    assert load_embedder(f"local-dir:{same}").identity == first.identity
    v1 = first.embed_texts(["a cat"])
    time.sleep(0.01)
    write_tiny(folder, seed=2)  # new weights at the same path
    second = load_embedder(f"local-dir:{folder}")
    assert second is not first
    assert second.identity != first.identity
    assert second.identity.startswith("m@sha256:") and second.key == first.key
    assert not np.allclose(second.embed_texts(["a cat"]), v1)


def test_checkpoint_file_with_model_name(oc, tiny, tiny_dir: Path, tmp_path: Path) -> None:
    import numpy as np

    config = tmp_path / f"{TINY_NAME}.json"
    config.write_text(json.dumps(TINY_CFG), encoding="utf-8")
    oc.add_model_config(config)
    weights = tiny_dir / "open_clip_model.safetensors"
    a = load_embedder(f"{weights}?model={TINY_NAME}")
    b = load_embedder(f"{TINY_NAME}:{weights}")
    assert a.identity == b.identity == tiny.identity.replace("tiny-rand", TINY_NAME)
    assert a.key == "popql_test_tiny_open_clip_model"
    # same weights, same text tower: same text vectors (the image preprocessing differs:
    # a bare checkpoint gets open_clip's default normalisation)
    np.testing.assert_allclose(a.embed_texts(["x y"]), tiny.embed_texts(["x y"]), atol=1e-5)


def test_relative_local_dir(oc, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny_dir.parent)
    assert load_embedder(f"local-dir:{tiny_dir.name}").key == "tiny_rand"


def code_of(spec: str, **kwargs) -> PopQLError:
    with pytest.raises(PopQLError) as exc:
        load_embedder(spec, **kwargs)
    return exc.value


def test_missing_weights_are_m001(oc, tmp_path: Path) -> None:
    err = code_of(f"local-dir:{tmp_path / 'nowhere'}")
    assert err.code == "M001" and "text search is off" in err.diagnostic.message
    (tmp_path / "empty").mkdir()
    assert code_of(f"local-dir:{tmp_path / 'empty'}").code == "M001"
    (tmp_path / "empty" / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    assert "no weights file" in code_of(f"local-dir:{tmp_path / 'empty'}").diagnostic.message
    assert code_of(f"{tmp_path / 'w.pt'}?model=ViT-B-32").code == "M001"


def test_mismatched_checkpoint_is_m003(oc, tiny_dir: Path, tmp_path: Path) -> None:
    bigger = json.loads(json.dumps(TINY_CFG))
    bigger["vision_cfg"]["width"] = 64
    folder = tmp_path / "mismatch"
    folder.mkdir()
    (folder / "open_clip_model.safetensors").write_bytes(
        (tiny_dir / "open_clip_model.safetensors").read_bytes()
    )
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": bigger}))
    err = code_of(f"local-dir:{folder}")
    assert err.code == "M003"


def test_unknown_model_and_tag_are_m002(oc) -> None:
    err = code_of("ViT-B-23:laion2b_s34b_b79k")
    assert err.code == "M002" and "did you mean 'ViT-B-32'" in " ".join(err.diagnostic.hints)
    err = code_of("ViT-B-32:laion2b_s34b_b79")
    assert err.code == "M002" and "laion2b_s34b_b79k" in " ".join(err.diagnostic.hints)


@pytest.mark.parametrize(
    "spec",
    [DEFAULT_EMBEDDER, "clip", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "ViT-B-32:openai"],
)
def test_offline_is_m001_and_fast(oc, spec: str, tmp_path: Path, monkeypatch) -> None:
    """No network here (and none needed): a download that cannot happen is M001 at once."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    err = code_of(spec, cache_dir=str(tmp_path / "cache"))
    assert time.monotonic() - start < 10
    assert err.code == "M001"
    message = err.diagnostic.message
    assert message.startswith("CLIP weights unavailable: ") and message.endswith(
        "text search is off"
    )
    assert err.diagnostic.hints and "cache_dir" in err.diagnostic.hints[0]


def test_popql_offline_env(oc, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("POPQL_OFFLINE", "1")
    err = code_of(DEFAULT_EMBEDDER, cache_dir=str(tmp_path))
    assert err.code == "M001" and "offline mode" in err.diagnostic.message


def test_cached_weights_load_without_network(
    oc, tiny_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """A tag whose weights are in cache_dir loads offline, through open_clip's own code path."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    cfg_path = tmp_path / f"{TINY_NAME}-cached.json"
    cfg_path.write_text(json.dumps(TINY_CFG), encoding="utf-8")
    oc.add_model_config(cfg_path)
    name = f"{TINY_NAME}-cached"
    url_name = "tiny-weights.safetensors"
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / url_name).write_bytes((tiny_dir / "open_clip_model.safetensors").read_bytes())
    monkeypatch.setitem(
        oc.pretrained._PRETRAINED,
        name,
        {
            "cached": {
                "url": f"https://example.invalid/{url_name}",
                "hf_hub": "",
                "mean": (0.5,) * 3,
                "std": (0.25,) * 3,
            }
        },
    )
    emb = load_embedder(f"{name}:cached", cache_dir=str(cache))
    assert emb.key == "popql_test_tiny_cached_cached"
    assert emb.identity == f"{name}:cached@sha256:" + emb.identity.rsplit(":", 1)[1]
    assert (
        emb.identity.rsplit(":", 1)[1]
        == load_embedder(f"local-dir:{tiny_dir}").identity.rsplit(":", 1)[1]
    )


def fake_hub_cache(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """Lay files out as huggingface_hub caches them (refs/main -> snapshots/<commit>/)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def test_hf_hub_from_cache_without_network(oc, tiny_dir: Path, tmp_path: Path, monkeypatch):
    """hf-hub: with config and weights in cache_dir loads with no network (offline mode is not
    set by the user: PopQL keeps open_clip's second look-up off the network itself)."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    cache = tmp_path / "hub"
    fake_hub_cache(
        cache,
        "popql/tiny-rand",
        {
            "open_clip_config.json": (tiny_dir / "open_clip_config.json").read_bytes(),
            "open_clip_model.safetensors": (tiny_dir / "open_clip_model.safetensors").read_bytes(),
        },
    )
    start = time.monotonic()
    emb = load_embedder("hf-hub:popql/tiny-rand", cache_dir=str(cache))
    assert time.monotonic() - start < 30
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored
    tiny = load_embedder(f"local-dir:{tiny_dir}")
    assert emb.key == "popql_tiny_rand"
    assert emb.identity == "hf-hub:popql/tiny-rand@sha256:" + tiny.identity.rsplit(":", 1)[1]
    import numpy as np

    np.testing.assert_allclose(emb.embed_images(images()), tiny.embed_images(images()), atol=1e-6)
