#!/usr/bin/env python
"""Copy a few dozen real photos that installed packages ship into one folder, for trying
``popql ingest`` without downloading anything.

    python examples/photos/assemble.py [DEST] [--with-bad-files]   # DEST: ./popql-example-photos
    popql ingest DEST --dataset photos.popql --embedder none

Sources, each skipped when missing (nothing is downloaded):

* Python packages: ``skimage.data`` (astronaut, coffee, chelsea the cat, a rocket, a
  motorcycle, the Hubble deep field...), ``sklearn.datasets.load_sample_images`` (china,
  flower), ``matplotlib.cbook.get_sample_data`` (Grace Hopper);
* Debian packages (``apt-get install darknet visp-images-data mate-backgrounds``): darknet's
  test photos (dog, horses, giraffe, eagle, kite, person...), ViSP's Klimt and Solvay
  conference photos, MATE's nature wallpapers.

File names are deterministic (``<source>_<name>.<ext>``) and files are copied byte for byte,
so the same installed packages always give the same folder and the same sample ids. With
``--with-bad-files`` a few broken files (truncated, empty, text named .jpg) are added, to see
``ingest_errors`` at work. Prints one line per source; exits 1 when nothing was found.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

DEFAULT_DEST = Path("popql-example-photos")

SKIMAGE_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "camera.png",
    "coins.png",
    "moon.png",
    "retina.jpg",
    "ihc.png",
)
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)
DARKNET = Path("/usr/share/darknet/data")
DARKNET_PHOTOS = (
    "dog.jpg",
    "eagle.jpg",
    "giraffe.jpg",
    "horses.jpg",
    "kite.jpg",
    "person.jpg",
    "scream.jpg",
)
VISP = Path("/usr/share/visp-images-data/ViSP-images")
VISP_PHOTOS = (
    "Klimt/Klimt.jpeg",
    "Solvay/Solvay_conference_1927_Version2_1024x705.jpg",
    "mire/mire.jpg",
)
MATE = Path("/usr/share/backgrounds/mate/nature")


def _skimage() -> Iterator[Path]:
    try:
        import skimage
    except ImportError:
        return
    folder = Path(skimage.__file__).parent / "data"
    for name in SKIMAGE_PHOTOS:
        yield folder / name


def _sklearn() -> Iterator[Path]:
    try:
        import sklearn.datasets
    except ImportError:
        return
    folder = Path(sklearn.datasets.__file__).parent / "images"
    yield from sorted(folder.glob("*.jpg"))


def _matplotlib() -> Iterator[Path]:
    try:
        from matplotlib import cbook
    except ImportError:
        return
    for name in MATPLOTLIB_PHOTOS:
        try:
            yield Path(cbook.get_sample_data(name, asfileobj=False))
        except (OSError, ValueError):
            continue


def _debian(folder: Path, names: tuple[str, ...] | None = None) -> Iterator[Path]:
    if names is None:
        yield from sorted(folder.glob("*.jpg")) if folder.is_dir() else iter(())
        return
    for name in names:
        yield folder / name


SOURCES = {
    "skimage": _skimage,
    "sklearn": _sklearn,
    "matplotlib": _matplotlib,
    "darknet": lambda: _debian(DARKNET, DARKNET_PHOTOS),
    "visp": lambda: _debian(VISP, VISP_PHOTOS),
    "mate": lambda: _debian(MATE),
}


def _name(source: str, path: Path) -> str:
    stem = path.stem.lower().replace(" ", "_").replace("-", "_")
    return f"{source}_{stem}{path.suffix.lower()}"


def assemble(dest: Path, *, with_bad_files: bool = False, quiet: bool = False) -> list[Path]:
    """Copy the photos into ``dest`` (created); returns the files written, sorted."""
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for source, find in SOURCES.items():
        copied = 0
        for path in find():
            if not path.is_file():
                continue
            target = dest / _name(source, path)
            if not target.exists() or target.stat().st_size != path.stat().st_size:
                shutil.copyfile(path, target)
            written.append(target)
            copied += 1
        if not quiet:
            print(f"{source:<11} {copied:3d} photo(s)" + ("" if copied else "  (not installed)"))
    if with_bad_files and written:
        jpegs = [p for p in written if p.suffix == ".jpg"] or written
        data = jpegs[0].read_bytes()
        bad = {
            "bad_truncated.jpg": data[: len(data) // 3],
            "bad_empty.png": b"",
            "bad_text.jpg": b"this is a text file, not a photo\n",
        }
        for name, content in bad.items():
            (dest / name).write_bytes(content)
            written.append(dest / name)
        if not quiet:
            print(f"{'bad files':<11} {len(bad):3d}")
    return sorted(written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", nargs="?", type=Path, default=DEFAULT_DEST, help="target folder")
    parser.add_argument(
        "--with-bad-files", action="store_true", help="add truncated, empty and text files"
    )
    args = parser.parse_args(argv)
    files = assemble(args.dest, with_bad_files=args.with_bad_files)
    print(f"{len(files)} file(s) in {args.dest}")
    return 0 if files else 1


if __name__ == "__main__":
    sys.exit(main())
