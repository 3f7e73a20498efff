#!/usr/bin/env python3
"""Train the tiny test CLIP on Fashion-MNIST and save it in open_clip's local-dir layout.

    python models/train_fmnist_clip.py                       # data from the Debian package
    python models/train_fmnist_clip.py --data DIR --out models/fmnist-clip --steps 450

The data are the four gzip'ed idx files of Fashion-MNIST (``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``)
in ``--data DIR``, else ``$FASHION_MNIST_DIR``, else where ``apt-get install
dataset-fashion-mnist`` puts them: ``/usr/share/datasets/fashion-mnist``.

The model is an open_clip ``CLIP`` with a custom config (a 3-layer ViT of width 128 on 28x28
images in 7x7 patches, a 2-layer text transformer of width 32 with open_clip's usual BPE
tokenizer, 64-d joint space). It is trained from scratch with a contrastive loss between images
and captions such as "a photo of a sneaker" (several templates and synonyms per class); captions
of the same class count as matches (soft targets), so a batch has no false negatives. Then the
script evaluates zero-shot accuracy on the 10,000 test images, saves float16 weights
(``open_clip_model.safetensors``) and ``open_clip_config.json``, reloads the folder through
``popql.engine.embedders.load_embedder('local-dir:...')`` (images as RGB PIL images, as PopQL
sees PNG files), evaluates again, and writes ``README.md`` with the figures.

Seeded: the same command on the same torch version and thread count gives the same weights.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import struct
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "fmnist-clip"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: Fashion-MNIST's ten classes, as captions name them (index = label).
CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
#: Other words for each class, used in training captions only.
SYNONYMS = {
    "t-shirt": ["t-shirt", "top", "tee"],
    "trouser": ["trouser", "pair of trousers", "pair of pants"],
    "pullover": ["pullover", "sweater", "jumper"],
    "dress": ["dress"],
    "coat": ["coat", "jacket"],
    "sandal": ["sandal"],
    "shirt": ["shirt"],
    "sneaker": ["sneaker", "trainer", "running shoe"],
    "bag": ["bag", "handbag"],
    "ankle boot": ["ankle boot", "boot"],
}
#: Caption templates (training and the zero-shot classifier).
TEMPLATES = [
    "a photo of a {}",
    "a picture of a {}",
    "an image of a {}",
    "a {}",
    "a photo of the {}",
    "a black and white photo of a {}",
    "a low resolution photo of a {}",
    "a small photo of a {}",
    "a grayscale image of a {}",
    "a product photo of a {}",
]

MEAN = 0.2860
STD = 0.3530
MODEL_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 28,
        "patch_size": 7,
        "width": 128,
        "head_width": 32,
        "layers": 3,
        "mlp_ratio": 2.0,
    },
    "text_cfg": {
        "context_length": 24,
        "vocab_size": 49408,
        "width": 32,
        "heads": 2,
        "layers": 2,
        "mlp_ratio": 2.0,
    },
}
PREPROCESS_CFG = {
    "mean": [MEAN] * 3,
    "std": [STD] * 3,
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def find_data(data: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder with the idx files: ``data``, ``$FASHION_MNIST_DIR`` or the Debian path."""
    candidates = [data] if data else [os.environ.get("FASHION_MNIST_DIR"), DEBIAN_DIR]
    for c in candidates:
        if c and all((Path(c) / f).is_file() for pair in FILES.values() for f in pair):
            return Path(c)
    return None


def read_idx(path: Path):
    """A numpy array from a gzip'ed idx file."""
    import numpy as np

    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(folder: Path, split: str):
    """``(images uint8 [n, 28, 28], labels int64 [n])``."""
    images, labels = (read_idx(folder / f) for f in FILES[split])
    return images, labels.astype("int64")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(template: str, name: str) -> str:
    """``template`` filled with ``name``, with "a" before a vowel made "an"."""
    return re.sub(r"\ba (?=[aeiou])", "an ", template.format(name))


def training_captions() -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for label, cls in enumerate(CLASSES):
        for name in SYNONYMS[cls]:
            for t in TEMPLATES:
                texts.append(caption(t, name))
                labels.append(label)
    return texts, labels


def to_tensor(images):
    """uint8 [n, 28, 28] -> normalised float [n, 3, 28, 28], as open_clip's transform does."""
    import torch

    x = torch.from_numpy(images.copy()).float().div_(255.0)
    x = (x - MEAN) / STD
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def zero_shot_weights(encode_texts) -> Any:
    """The (10, dim) zero-shot classifier: the mean of each class's template embeddings."""
    import numpy as np

    rows = []
    for cls in CLASSES:
        v = encode_texts([caption(t, cls) for t in TEMPLATES]).mean(axis=0)
        rows.append(v / np.linalg.norm(v))
    return np.stack(rows)


def evaluate(image_emb, labels, encode_texts) -> dict[str, float]:
    """Zero-shot accuracy (template ensemble and "a photo of a {}") and sneaker precision@50."""
    import numpy as np

    labels = np.asarray(labels)
    acc = float(((image_emb @ zero_shot_weights(encode_texts).T).argmax(1) == labels).mean())
    single = encode_texts([caption("a photo of a {}", c) for c in CLASSES])
    acc1 = float(((image_emb @ single.T).argmax(1) == labels).mean())
    q = encode_texts(["a photo of a sneaker"])[0]
    top = np.argsort(-(image_emb[:1000] @ q), kind="stable")[:50]
    p50 = float((labels[:1000][top] == CLASSES.index("sneaker")).mean())
    return {
        "zero_shot_accuracy": acc,
        "zero_shot_accuracy_photo_template": acc1,
        "sneaker_p@50": p50,
    }


def train(args: argparse.Namespace) -> int:
    import numpy as np
    import open_clip
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    data = find_data(args.data)
    if data is None:
        where = args.data or f"$FASHION_MNIST_DIR or {DEBIAN_DIR}"
        print(
            f"Fashion-MNIST idx files not found in {where}; "
            "apt-get install dataset-fashion-mnist, or pass --data DIR",
            file=sys.stderr,
        )
        return 2
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    train_x, train_y = load_split(data, "train")
    test_x, test_y = load_split(data, "test")
    texts, text_labels = training_captions()
    tokenizer = open_clip.get_tokenizer(
        "ViT-B-32", context_length=MODEL_CFG["text_cfg"]["context_length"]
    )
    all_tokens = tokenizer(texts)
    text_labels_np = np.asarray(text_labels)
    by_class = [np.flatnonzero(text_labels_np == c) for c in range(len(CLASSES))]

    model = open_clip.CLIP(**json.loads(json.dumps(MODEL_CFG)))
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)
    ]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    warmup = max(1, args.steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * 0.5 * (1 + np.cos(np.pi * progress))

    print(
        f"data {data}; {len(train_x)} train / {len(test_x)} test images; {len(texts)} captions;"
        f" {n_params / 1e6:.2f} M parameters; {threads} threads;"
        f" {args.steps} steps of {args.batch_size}",
        flush=True,
    )
    model.train()
    t0 = time.perf_counter()
    c0 = time.process_time()
    order = rng.permutation(len(train_x))
    pos = 0
    for step in range(args.steps):
        if pos + args.batch_size > len(order):
            order, pos = rng.permutation(len(train_x)), 0
        idx = order[pos : pos + args.batch_size]
        pos += args.batch_size
        y = torch.from_numpy(train_y[idx])
        # captions: `captions_per_class` random ones of every class, encoded once per step
        cap = np.concatenate(
            [rng.choice(ids, size=args.captions_per_class, replace=False) for ids in by_class]
        )
        cap_y = torch.from_numpy(text_labels_np[cap])
        images = to_tensor(train_x[idx])
        if args.shift:
            # random translations by up to `shift` pixels (zero-padded in pixel space)
            pad = args.shift
            padded = F.pad(images, (pad, pad, pad, pad), value=-MEAN / STD)
            dx, dy = rng.integers(0, 2 * pad + 1, size=2)
            images = padded[:, :, dy : dy + 28, dx : dx + 28]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(all_tokens[cap], normalize=True)
        logits = model.logit_scale.exp() * img @ txt.T
        # contrastive loss where every caption of an image's class is a match (soft targets)
        same = (y[:, None] == cap_y[None, :]).float()
        i2t = torch.sum(-(same / same.sum(1, keepdim=True)) * F.log_softmax(logits, 1), 1).mean()
        present = same.sum(0) > 0
        t2i_target = same.T[present] / same.T[present].sum(1, keepdim=True)
        t2i = torch.sum(-t2i_target * F.log_softmax(logits.T[present], 1), 1).mean()
        loss = 0.5 * (i2t + t2i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        if step % 50 == 0 or step == args.steps - 1:
            print(
                f"step {step:4d}  loss {loss.item():.4f}"
                f"  scale {model.logit_scale.exp().item():.1f}  {time.perf_counter() - t0:6.1f}s",
                flush=True,
            )
    train_seconds = time.perf_counter() - t0
    train_cpu_seconds = time.process_time() - c0
    model.eval()

    # -- evaluate the float32 model on tensors --------------------------------------------------
    def encode_texts_fp32(batch: list[str]):
        with torch.inference_mode():
            return model.encode_text(tokenizer(batch), normalize=True).numpy()

    with torch.inference_mode():
        test_emb = torch.cat(
            [
                model.encode_image(to_tensor(test_x[i : i + 1000]), normalize=True)
                for i in range(0, len(test_x), 1000)
            ]
        ).numpy()
    fp32 = evaluate(test_emb, test_y, encode_texts_fp32)
    print(f"float32 model on tensors: {fp32}", flush=True)

    # -- save (float16, open_clip local-dir layout) ---------------------------------------------
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    weights = out / "open_clip_model.safetensors"
    save_file(state, str(weights), metadata={"format": "pt"})
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}, indent=2) + "\n",
        encoding="utf-8",
    )

    # -- reload through PopQL and evaluate on PIL images ----------------------------------------
    from PIL import Image

    from popql.engine.embedders import clear_cache, load_embedder

    clear_cache()
    emb = load_embedder(f"local-dir:{out}")
    emb.batch_size = 500
    pil = [Image.fromarray(a, mode="L").convert("RGB") for a in test_x]
    t1 = time.perf_counter()
    pil_emb = emb.embed_images(pil)
    embed_seconds = time.perf_counter() - t1
    saved = evaluate(pil_emb, test_y, emb.embed_texts)
    print(f"saved float16 model through load_embedder on PIL images: {saved}", flush=True)
    print(f"identity {emb.identity}", flush=True)
    size = weights.stat().st_size
    sha = emb.identity.rsplit("sha256:", 1)[1]

    command = "python models/train_fmnist_clip.py" + "".join(
        f" --{k.replace('_', '-')} {v}"
        for k, v in (
            ("steps", args.steps),
            ("batch_size", args.batch_size),
            ("lr", args.lr),
            ("seed", args.seed),
            *((("shift", args.shift),) if args.shift else ()),
        )
    )
    metrics = {
        "command": command,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "threads": threads,
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "parameters": n_params,
        "float32": fp32,
        "float16_via_load_embedder": saved,
        "embed_10k_pil_seconds": round(embed_seconds, 1),
        "weights_bytes": size,
        "weights_sha256": sha,
        "identity": emb.identity,
    }
    write_readme(out, metrics)
    print(json.dumps(metrics, indent=2))
    return 0


def cpu_name() -> str:
    """The CPU model, for the record (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def write_readme(out: Path, m: dict[str, Any]) -> None:
    """``README.md`` and ``metrics.json`` in ``out`` from the run's metrics ``m``."""
    s, f = m["float16_via_load_embedder"], m["float32"]
    v, t = MODEL_CFG["vision_cfg"], MODEL_CFG["text_cfg"]
    epochs = m["steps"] * m["batch_size"] / 60000
    rows = [
        ("files", "`open_clip_config.json`, `open_clip_model.safetensors` (float16)"),
        ("weights", f"{m['weights_bytes']:,} bytes, sha256 `{m['weights_sha256']}`"),
        ("identity", f"`{m['identity']}`"),
        (
            "architecture",
            f"open_clip `CLIP`: ViT {v['layers']} layers, width {v['width']},"
            f" {v['patch_size']}x{v['patch_size']} patches on {v['image_size']}x{v['image_size']};"
            f" text transformer {t['layers']} layers, width {t['width']},"
            f" context {t['context_length']}, open_clip's BPE tokenizer;"
            f" embed_dim {MODEL_CFG['embed_dim']}; {m['parameters']:,} parameters",
        ),
        (
            "training",
            f"`{m['command']}`: {m['steps']} steps of {m['batch_size']} images (about"
            f" {epochs:.1f} epochs of the 60,000 training images), AdamW, cosine schedule,"
            " contrastive loss with every caption of an image's class as a match,"
            f" {len(TEMPLATES)} templates and synonyms per class, seed fixed",
        ),
        (
            "training time",
            f"{m['train_seconds']:.0f} s wall, {m['train_cpu_seconds']:.0f} s CPU,"
            f" {m['threads']} torch threads on {m.get('cpu', 'a CPU')}"
            f" (torch {m['torch']}, open_clip {m['open_clip']})",
        ),
        (
            "zero-shot accuracy, 10,000 test images",
            f"**{s['zero_shot_accuracy']:.2%}** (template ensemble);"
            f' {s["zero_shot_accuracy_photo_template"]:.2%} with "a photo of a {{class}}" alone',
        ),
        (
            '"a photo of a sneaker": top 50 of the first 1,000 test images',
            f"**{s['sneaker_p@50']:.0%}** sneakers",
        ),
        (
            "float32 model before saving (same three figures)",
            f"{f['zero_shot_accuracy']:.2%} / {f['zero_shot_accuracy_photo_template']:.2%}"
            f" / {f['sneaker_p@50']:.0%}",
        ),
    ]
    table = "\n".join(f"| {k} | {val} |" for k, val in rows)
    text = f"""# fmnist-clip: a tiny CLIP trained on Fashion-MNIST

PopQL's test embedder (`popql.engine.embedders.TEST_EMBEDDER`, registry name `fmnist-clip`),
in open_clip's local-dir layout:

```python
from popql.engine.embedders import load_embedder

emb = load_embedder("local-dir:models/fmnist-clip")  # or load_embedder("fmnist-clip")
emb.embed_images([pil_image])  # (n, {MODEL_CFG["embed_dim"]}) float32, L2-normalised
emb.embed_texts(["a photo of a sneaker"])
```

It knows the ten Fashion-MNIST classes
({", ".join(CLASSES)})
and little else: it is for tests and examples, not for real photos. Images are any RGB PIL
images; the transform in `open_clip_config.json` resizes them to 28x28 (bicubic, shortest
side, centre crop) and normalises them with mean {MEAN} and std {STD}, so Fashion-MNIST images
saved as PNG files embed exactly as in training.

| | |
|---|---|
{table}

The accuracy figures were measured after saving, through `load_embedder` on the test images as
RGB PIL images (the path PopQL uses for ingested PNG files); `metrics.json` has them all.

## Reproduce

```bash
sudo apt-get install dataset-fashion-mnist     # the idx files go to {DEBIAN_DIR}
python -m pip install -e ".[models]"
{m["command"]}    # [--data DIR] [--out DIR]
python -m pytest -q tests/test_fmnist_clip.py
```

The same command with the same torch version and thread count gives the same weights; other
CPUs or thread counts give slightly different ones (and figures within a point or so).

Fashion-MNIST is by Zalando Research (MIT licence): https://github.com/zalandoresearch/fashion-mnist
"""
    (out / "README.md").write_text(text, encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(m, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", help=f"folder with the idx .gz files (default: $FASHION_MNIST_DIR, {DEBIAN_DIR})"
    )
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: %(default)s)")
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--captions-per-class", type=int, default=6)
    p.add_argument("--shift", type=int, default=0, help="random translation augmentation, pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: all usable CPUs)"
    )
    p.add_argument(
        "--readme-only",
        action="store_true",
        help="only rewrite README.md from the metrics.json in --out",
    )
    args = p.parse_args(argv)
    if args.readme_only:
        out = Path(args.out)
        write_readme(out, json.loads((out / "metrics.json").read_text(encoding="utf-8")))
        return 0
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
