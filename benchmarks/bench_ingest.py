#!/usr/bin/env python
"""Ingest benchmark (a benchmark script, not a test; always exits 0).

    python benchmarks/bench_ingest.py                 # 1,000 images, both parts
    python benchmarks/bench_ingest.py --quick         # 200 images
    python benchmarks/bench_ingest.py --only throughput --model imagenet

Two measurements, each against a baseline taken in the same run on the same machine:

(a) **Re-ingest of an unchanged folder.** ``ingest`` a folder of N JPEGs into a fresh dataset
    with the default taggers (and the embedder, when one loads), then ingest the same folder
    again with counting wrappers around the same models. Targets: the second run calls no
    model and writes no version, and takes under 5 % of the first run's time.

(b) **Pipeline throughput.** Images/s of the whole ``ingest`` pipeline (enumerate, hash,
    decode in threads, thumbnails, the model, commits, the vector index) against the bare
    model's batch inference on the same images, already decoded, in the same process, with
    the same batch size. Target: pipeline >= 85 % of the bare model. The model is the
    embedder when one is available (the default CLIP if its weights are cached, else the tiny
    test CLIP in models/fmnist-clip), else the ``imagenet`` tagger (``--model`` chooses).

The images are deterministic JPEGs (640x480 by default) cut from the photos that installed
packages ship (see examples/photos/assemble.py), with flips and colour shifts so that every
file is distinct; they are cached in ``bench-data/ingest_<N>_<W>x<H>/`` (git-ignored).
Hugging Face downloads are switched off (``HF_HUB_OFFLINE=1``) unless ``--online`` is given,
so an unavailable default CLIP is reported at once instead of after network retries.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "bench-data"
REINGEST_TARGET = 0.05
THROUGHPUT_TARGET = 0.85


# ---------------------------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------------------------


def _source_photos() -> list[Any]:
    from PIL import Image

    sys.path.insert(0, str(REPO / "examples" / "photos"))
    try:
        import assemble  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    photos = []
    for find in assemble.SOURCES.values():
        for path in find():
            if not path.is_file():
                continue
            with Image.open(path) as im:
                im.draft("RGB", (1600, 1600))
                photos.append(im.convert("RGB"))
    return photos


def make_corpus(n: int, size: tuple[int, int], folder: Path) -> list[Path]:
    """N distinct JPEGs of ``size`` in ``folder`` (reused when already complete)."""
    import numpy as np
    from PIL import Image, ImageOps

    marker = folder / ".complete"
    files = sorted(folder.rglob("*.jpg"))
    if marker.is_file() and len(files) == n:
        return files
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1234)
    photos = _source_photos()
    w, h = size
    for i in range(n):
        if photos:
            src = photos[i % len(photos)]
            scale = rng.uniform(0.5, 1.0)
            cw = max(16, min(src.width, int(src.width * scale)))
            ch = max(16, min(src.height, int(cw * h / w)))
            x = int(rng.integers(0, src.width - cw + 1))
            y = int(rng.integers(0, src.height - ch + 1))
            im = src.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BILINEAR)
            if i % 2:
                im = ImageOps.mirror(im)
            arr = np.asarray(im, dtype=np.int16) + rng.integers(-20, 21, 3)
            im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        else:  # no packaged photos: smooth random scenes
            base = rng.integers(0, 255, (6, 8, 3)).astype(np.uint8)
            im = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
        sub = folder / f"{i // 100:02d}"
        sub.mkdir(exist_ok=True)
        im.save(sub / f"img_{i:05d}.jpg", "JPEG", quality=90)
    marker.write_text(str(n))
    return sorted(folder.rglob("*.jpg"))


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------


class Counting:
    """Wraps a tagger or an embedder and counts the images it is given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.images = 0
        for attr in ("name", "version", "columns", "batch_size", "key", "spec", "identity", "dim"):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))

    def __call__(self, batch: list[Any]) -> list[dict[str, Any]]:
        self.images += len(batch)
        return self.inner(batch)

    def embed_images(self, images: list[Any]) -> Any:
        self.images += len(images)
        return self.inner.embed_images(images)

    def embed_texts(self, texts: list[str]) -> Any:
        return self.inner.embed_texts(texts)


def load_embedder() -> tuple[Any | None, str]:
    from popql.diagnostics import PopQLError
    from popql.engine import embedders

    tried = []
    for spec in (embedders.DEFAULT_EMBEDDER, embedders.TEST_EMBEDDER):
        try:
            return embedders.load_embedder(spec), spec
        except PopQLError as err:
            tried.append(f"{spec}: {err.diagnostics[0].message}")
        except Exception as exc:  # missing packages...
            tried.append(f"{spec}: {type(exc).__name__}: {exc}")
    return None, "; ".join(tried)


def speed_twin_of_default() -> tuple[Any, str]:
    """The default embedder's architecture (open_clip ViT-B-32) with random weights.

    Offline the real weights cannot be downloaded; inference time does not depend on the
    weights' values, so this twin measures the pipeline's throughput against the default
    model's cost (never its quality)."""
    import open_clip

    from popql.engine.embedders import OpenClipEmbedder

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    twin = OpenClipEmbedder(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        key="vit_b_32_speed_twin",
        spec="ViT-B-32 (random weights, speed twin)",
        identity="ViT-B-32@random",
        name="ViT-B-32",
        weights=[],
    )
    return twin, "ViT-B-32 architecture with random weights (speed only)"


# ---------------------------------------------------------------------------------------------
# (a) re-ingest
# ---------------------------------------------------------------------------------------------


def bench_reingest(files: list[Path], folder: Path, embedder: Any | None) -> dict[str, Any]:
    from popql.engine.dataset import Dataset
    from popql.engine.ingest import ingest
    from popql.engine.taggers import get_tagger

    with tempfile.TemporaryDirectory(prefix="popql-bench-") as tmp:
        ds = Path(tmp) / "ds"
        t0 = time.perf_counter()
        # "default": a default tagger that cannot load here is skipped with a note
        first = ingest(ds, folder, taggers="default", embedder=embedder, progress=False)
        t_first = time.perf_counter() - t0
        for note in first.notes:
            print(f"  note: {note}")
        taggers = [get_tagger(name) for name in first.tagged]
        version = Dataset.open(ds).version()
        wrapped = [Counting(t) for t in taggers]
        wrapped_emb = Counting(embedder) if embedder is not None else None
        t0 = time.perf_counter()
        second = ingest(ds, folder, taggers=wrapped, embedder=wrapped_emb, progress=False)
        t_second = time.perf_counter() - t0
        calls = sum(w.images for w in wrapped) + (wrapped_emb.images if wrapped_emb else 0)
        unchanged = Dataset.open(ds).version() == version
    ratio = t_second / t_first
    return {
        "images": len(files),
        "models": [t.name for t in taggers] + ([embedder.key] if embedder is not None else []),
        "first_s": round(t_first, 3),
        "first_images_per_s": round(first.new / t_first, 2),
        "second_s": round(t_second, 3),
        "ratio": round(ratio, 4),
        "second_model_images": calls,
        "second_new_versions": 0 if unchanged else 1,
        "second_skipped_known": second.skipped_known,
        "pass": ratio < REINGEST_TARGET and calls == 0 and unchanged,
    }


# ---------------------------------------------------------------------------------------------
# (b) throughput
# ---------------------------------------------------------------------------------------------


def bench_throughput(
    files: list[Path],
    folder: Path,
    model: Any,
    kind: str,
    batch_size: int,
    repeat: int,
    workers: int | None = None,
    thumbnails: bool = True,
) -> dict[str, Any]:
    from popql.engine.images import decode_image
    from popql.engine.ingest import ingest
    from popql.engine.taggers import ImageInput, run_tagger

    # the same images the pipeline gives the model (same decoder, same size limit)
    decoded = []
    for i, path in enumerate(files):
        d = decode_image(path.read_bytes(), max_side=1024)
        decoded.append(ImageInput(f"{i:016x}", str(path), d.image, d.exif, d.width, d.height))

    def bare() -> float:
        t0 = time.perf_counter()
        for start in range(0, len(decoded), batch_size):
            batch = decoded[start : start + batch_size]
            if kind == "embedder":
                model.embed_images([x.image for x in batch])
            else:
                run_tagger(model, batch)
        return time.perf_counter() - t0

    def pipeline() -> tuple[float, Any]:
        with tempfile.TemporaryDirectory(prefix="popql-bench-") as tmp:
            t0 = time.perf_counter()
            s = ingest(
                Path(tmp) / "ds",
                folder,
                taggers=[model] if kind == "tagger" else [],
                embedder=model if kind == "embedder" else None,
                batch_size=batch_size,
                progress=False,
                workers=workers,
                thumbnails=thumbnails,
            )
            return time.perf_counter() - t0, s

    bare(), pipeline()  # warm-up: model weights, kernels, page cache
    bare_times, pipe_times = [], []
    summary = None
    for _ in range(repeat):  # interleaved
        bare_times.append(bare())
        t, summary = pipeline()
        pipe_times.append(t)
    n = len(files)
    bare_rate = n / statistics.median(bare_times)
    pipe_rate = n / statistics.median(pipe_times)
    assert summary is not None and summary.decoded == n
    return {
        "images": n,
        "model": getattr(model, "key", None) or getattr(model, "name", "?"),
        "kind": kind,
        "batch_size": batch_size,
        "workers": workers or os.cpu_count(),
        "thumbnails": thumbnails,
        "bare_images_per_s": round(bare_rate, 2),
        "pipeline_images_per_s": round(pipe_rate, 2),
        "ratio": round(pipe_rate / bare_rate, 4),
        "runs": repeat,
        "pass": pipe_rate / bare_rate >= THROUGHPUT_TARGET,
    }


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="images for (a) (default 1000)")
    parser.add_argument(
        "--throughput-images", type=int, default=512, help="images for (b) (default 512)"
    )
    parser.add_argument("--size", default="640x480", help="image size WxH (default 640x480)")
    parser.add_argument("--quick", action="store_true", help="200 images, 128 for (b), 1 run")
    parser.add_argument("--only", choices=("reingest", "throughput"))
    parser.add_argument(
        "--model", choices=("auto", "embedder", "vit-b-32-speed", "imagenet"), default="auto"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs for (b) (median)")
    parser.add_argument(
        "--workers",
        default="",
        help="(b): comma-separated decoding thread counts to compare (default: ingest's own)",
    )
    parser.add_argument(
        "--no-thumbnails-too", action="store_true", help="(b): also run without thumbnails"
    )
    parser.add_argument("--online", action="store_true", help="allow model downloads")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    if not args.online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.quick:
        args.images, args.throughput_images, args.repeat = 200, 128, 1
    w, h = (int(v) for v in args.size.lower().split("x"))

    import torch

    device = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(
        f"# popql ingest benchmark: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU(s), torch {torch.__version__} ({device}), "
        f"{torch.get_num_threads()} torch threads"
    )
    results: dict[str, Any] = {"cpus": os.cpu_count(), "device": device}
    n_max = max(args.images, args.throughput_images)
    folder = args.data_dir / f"ingest_{n_max}_{w}x{h}"
    t0 = time.perf_counter()
    files = make_corpus(n_max, (w, h), folder)
    print(f"corpus: {len(files)} JPEGs {w}x{h} in {folder} ({time.perf_counter() - t0:.1f} s)")

    embedder, how = (None, "not requested")
    if args.model == "vit-b-32-speed":
        embedder, how = speed_twin_of_default()
    elif args.model in ("auto", "embedder"):
        embedder, how = load_embedder()
        print(f"embedder: {embedder.key if embedder else 'none'} ({how})")

    def subset(k: int) -> Path:
        if k == len(files):
            return folder
        sub = args.data_dir / f"ingest_{n_max}_{w}x{h}_first{k}"
        if not sub.is_dir() or len(list(sub.glob("*.jpg"))) != k:
            shutil.rmtree(sub, ignore_errors=True)
            sub.mkdir(parents=True)
            for p in files[:k]:
                os.link(p, sub / p.name) if hasattr(os, "link") else shutil.copy(p, sub / p.name)
        return sub

    if args.only in (None, "reingest"):
        print(f"\n## (a) re-ingest of an unchanged folder of {args.images} images")
        r = bench_reingest(files[: args.images], subset(args.images), embedder)
        results["reingest"] = r
        print(
            f"first run {r['first_s']:.2f} s ({r['first_images_per_s']:.1f} images/s, models "
            f"{', '.join(r['models']) or 'none'}); second run {r['second_s']:.3f} s = "
            f"{r['ratio']:.2%} of the first (target < {REINGEST_TARGET:.0%}); model images in "
            f"the second run: {r['second_model_images']}; new versions: "
            f"{r['second_new_versions']}  -> {'PASS' if r['pass'] else 'FAIL'}"
        )

    if args.only in (None, "throughput"):
        print(f"\n## (b) pipeline throughput on {args.throughput_images} images")
        if embedder is not None and args.model in ("auto", "embedder", "vit-b-32-speed"):
            model, kind = embedder, "embedder"
        else:
            from popql.engine.taggers import get_tagger

            model, kind = get_tagger("imagenet"), "tagger"
        variants = [(int(w) if w else None, True) for w in (args.workers or "").split(",")]
        if args.no_thumbnails_too:
            variants += [(w, False) for w, _ in variants]
        results["throughput"] = []
        for workers, thumbs in variants:
            r = bench_throughput(
                files[: args.throughput_images],
                subset(args.throughput_images),
                model,
                kind,
                args.batch_size,
                args.repeat,
                workers,
                thumbs,
            )
            results["throughput"].append(r)
            print(
                f"model {r['model']} ({r['kind']}), batch {r['batch_size']}, {r['workers']} "
                f"decoding threads, thumbnails {'on' if thumbs else 'off'}: bare "
                f"{r['bare_images_per_s']:.1f} images/s, pipeline "
                f"{r['pipeline_images_per_s']:.1f} images/s = {r['ratio']:.1%} (target >= "
                f"{THROUGHPUT_TARGET:.0%}, median of {r['runs']})  -> "
                f"{'PASS' if r['pass'] else 'FAIL'}"
            )

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
