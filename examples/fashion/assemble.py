"""Write Fashion-MNIST test images as PNG files with a labels.csv, for the similarity example.

    python3 examples/fashion/assemble.py fashion [--n 2000]
    popql ingest fashion/img --dataset fashion-ds --embedder fmnist-clip --labels fashion/labels.csv
    popql run examples/fashion/queries.popql --dataset fashion-ds

The images come from Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist) or a
folder named by FASHION_MNIST_DIR; the embedder is the tiny CLIP in models/fmnist-clip, trained
offline on the training split (these are test images it has not seen).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write img/ and labels.csv into")
    parser.add_argument("--n", type=int, default=2000, help="how many test images (max 10000)")
    args = parser.parse_args(argv)
    spec = importlib.util.spec_from_file_location("t", ROOT / "models" / "train_fmnist_clip.py")
    assert spec and spec.loader
    T = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(T)
    data = T.find_data()
    if data is None:
        print(
            "Fashion-MNIST not found: apt-get install dataset-fashion-mnist, or set"
            " FASHION_MNIST_DIR to a folder with its idx .gz files",
            file=sys.stderr,
        )
        return 1
    from PIL import Image

    images, labels = T.load_split(data, "test")
    img = args.out / "img"
    img.mkdir(parents=True, exist_ok=True)
    rows = ["path,label"]
    for i in range(min(args.n, len(images))):
        Image.fromarray(images[i], mode="L").save(img / f"{i:05d}.png")
        rows.append(f"{i:05d}.png,{T.CLASSES[int(labels[i])]}")
    (args.out / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(f"wrote {len(rows) - 1} images to {img} and {args.out / 'labels.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
