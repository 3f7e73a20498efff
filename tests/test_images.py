"""popql.engine.images: safe decoding (a reason for every bad file), EXIF, reads from paths and
URLs, content hashes and the thumbnail cache."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
PIL_Image = pytest.importorskip("PIL.Image")

from popql.engine import images as I  # noqa: E402

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def photo(w: int = 64, h: int = 48, seed: int = 0, mode: str = "RGB"):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    im = PIL_Image.fromarray(arr)
    return im if mode == "RGB" else im.convert(mode)


def encode(im, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_header(w: int, h: int, idat: bytes = b"", color_type: int = 0) -> bytes:
    """A PNG whose header claims w x h (no need to build the pixels: bombs are cheap)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    idat = idat or zlib.compress(b"\0" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def reason_of(data: bytes, **kw) -> str:
    with pytest.raises(I.ImageError) as info:
        I.decode_image(data, uri="x", **kw)
    assert info.value.reason in I.REASONS
    assert info.value.uri == "x" and info.value.message
    return info.value.reason


# ---------------------------------------------------------------------------------------------
# decoding good images
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM"])
def test_decode_formats_to_rgb(fmt: str) -> None:
    d = I.decode_image(encode(photo(40, 30), fmt))
    assert d.image.mode == "RGB"
    assert d.image.size == (40, 30)
    assert (d.width, d.height) == (40, 30)
    assert d.format == fmt


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "CMYK", "I;16"])
def test_decode_modes_to_rgb(mode: str) -> None:
    if mode == "I;16":
        im = PIL_Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16))
        fmt = "PNG"
    else:
        im = photo().convert(mode)
        fmt = "JPEG" if mode in ("L", "CMYK") else ("TIFF" if mode == "1" else "PNG")
    d = I.decode_image(encode(im, fmt))
    assert d.image.mode == "RGB" and d.image.size == (64, 48)
    if mode == "I;16":  # 16-bit grey scaled by its range, not clipped to white
        lo, hi = d.image.getextrema()[0]
        assert lo == 0 and hi == 255


def test_palette_with_transparency_is_composited_without_warnings() -> None:
    im = PIL_Image.new("P", (8, 8), 0)
    im.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    data = encode(im, "PNG", transparency=0)
    d = I.decode_image(data)  # -W error: PIL's palette warning would raise
    assert d.image.getpixel((0, 0)) == (255, 255, 255)


def test_exif_and_orientation() -> None:
    exif = PIL_Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    exif[0x010F] = "Canon"
    exif[0x0110] = "EOS 5D"
    data = encode(photo(80, 40), "JPEG", exif=exif)
    d = I.decode_image(data)
    assert d.exif["Make"] == "Canon" and d.exif["Model"] == "EOS 5D"
    assert d.exif["Orientation"] == 6
    assert (d.width, d.height) == (40, 80)  # as displayed
    assert d.image.size == (40, 80)
    assert I.exif_json(d.exif) is not None and I.exif_json({}) is None


def test_max_side_reduces_pixels_but_keeps_full_size() -> None:
    d = I.decode_image(encode(photo(1200, 600), "JPEG"), max_side=256)
    assert max(d.image.size) <= 256
    assert (d.width, d.height) == (1200, 600)
    png = I.decode_image(encode(photo(600, 300), "PNG"), max_side=100)
    assert png.image.size == (100, 50)


def test_animated_gif_gives_first_frame() -> None:
    frames = [photo(20, 10, seed=i).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    d = I.decode_image(buf.getvalue())
    assert d.frames == 3 and d.image.size == (20, 10)


# ---------------------------------------------------------------------------------------------
# every kind of bad file
# ---------------------------------------------------------------------------------------------


def test_zero_bytes() -> None:
    assert reason_of(b"") == "zero_bytes"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "TIFF", "BMP"])
def test_truncated(fmt: str) -> None:
    data = encode(photo(200, 150), fmt)
    assert reason_of(data[: len(data) // 2]) == "truncated"


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (b"hello, this is a text file named photo.jpg\n", "text"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "SVG"),
        (bytes(range(256)) * 4, "binary"),
    ],
)
def test_not_an_image(data: bytes, hint: str) -> None:
    with pytest.raises(I.ImageError) as info:
        I.decode_image(data)
    assert info.value.reason == "not_image"
    assert hint in info.value.message


def test_corrupt_data_in_a_known_format() -> None:
    data = png_header(10, 10, idat=b"this is not zlib data", color_type=2)
    assert reason_of(data) == "corrupt"


@pytest.mark.parametrize(
    ("w", "h"),
    [(10_000, 10_000), (20_000, 20_000), (1_000_000, 100)],  # 1x and 2x PIL's limit, a strip
)
def test_decompression_bomb_is_an_error(w: int, h: int) -> None:
    data = png_header(w, h)
    assert len(data) < 200  # tiny file, huge image
    assert reason_of(data) == "decompression_bomb"


def test_pixel_limit_is_configurable() -> None:
    data = encode(photo(100, 100), "PNG")
    assert reason_of(data, max_pixels=5_000) == "decompression_bomb"
    assert I.decode_image(data, max_pixels=10_000).width == 100


def test_pil_global_limit_untouched() -> None:
    before = PIL_Image.MAX_IMAGE_PIXELS
    with pytest.raises(I.ImageError):
        I.decode_image(png_header(20_000, 20_000))
    assert before == PIL_Image.MAX_IMAGE_PIXELS


# ---------------------------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------------------------


def test_read_local_and_file_url(tmp_path: Path) -> None:
    data = encode(photo(), "PNG")
    p = tmp_path / "a b.png"
    p.write_bytes(data)
    assert I.read_bytes(p) == data
    assert I.read_bytes(str(p)) == data
    assert I.read_bytes("file://" + str(p)) == data
    assert I.open_image(p).width == 64


def test_unreadable_directory_named_like_an_image(tmp_path: Path) -> None:
    folder = tmp_path / "x.jpg"
    folder.mkdir()
    with pytest.raises(I.ImageError) as info:
        I.read_bytes(folder)
    assert info.value.reason == "unreadable"
    assert "directory" in info.value.message


def test_unreadable_broken_symlink_and_missing_file(tmp_path: Path) -> None:
    link = tmp_path / "gone.jpg"
    link.symlink_to(tmp_path / "nowhere.jpg")
    for path in (link, tmp_path / "missing.png"):
        with pytest.raises(I.ImageError) as info:
            I.open_image(path)
        assert info.value.reason == "unreadable"


def test_unreadable_permissions(tmp_path: Path) -> None:
    p = tmp_path / "secret.jpg"
    p.write_bytes(encode(photo()))
    p.chmod(0)
    try:
        if os.access(p, os.R_OK):  # root reads anything: nothing to test here
            pytest.skip("running as root: permission bits do not stop reads")
        with pytest.raises(I.ImageError) as info:
            I.read_bytes(p)
        assert info.value.reason == "unreadable"
    finally:
        p.chmod(0o644)


def test_too_large(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    p.write_bytes(encode(photo(), "PNG"))
    with pytest.raises(I.ImageError) as info:
        I.read_bytes(p, max_bytes=100)
    assert info.value.reason == "too_large"
    with pytest.raises(I.ImageError) as info:
        I.hash_file(I.FileRef.local(p), max_bytes=100)
    assert info.value.reason == "too_large"


def test_hash_and_identities(tmp_path: Path) -> None:
    data = encode(photo(), "JPEG")
    p = tmp_path / "a.jpg"
    p.write_bytes(data)
    h = I.hash_file(I.FileRef.local(p))
    assert h.content_hash == hashlib.sha256(data).hexdigest()
    assert h.size == len(data) and h.data == data
    assert h.sample_id == h.content_hash[:16] == I.sample_id_of(h.content_hash)
    key = I.sample_key_of(h.content_hash)
    assert 0 <= key < 2**63 and key == I.sample_key_of(h.sample_id)
    assert I.hash_file(I.FileRef.local(p), keep=False).data is None
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert I.hash_file(I.FileRef.local(empty)).content_hash == hashlib.sha256(b"").hexdigest()


def test_fsspec_memory_url() -> None:
    fsspec = pytest.importorskip("fsspec")
    data = encode(photo(), "PNG")
    fs = fsspec.filesystem("memory")
    fs.pipe("/popql-test-images/one.png", data)
    try:
        assert I.read_bytes("memory://popql-test-images/one.png") == data
        assert I.open_image("memory://popql-test-images/one.png").format == "PNG"
        with pytest.raises(I.ImageError) as info:
            I.read_bytes("memory://popql-test-images/missing.png")
        assert info.value.reason == "unreadable"
    finally:
        fs.rm("/popql-test-images", recursive=True)


def _s3_args(fs) -> dict:
    return fs.__reduce__()[1][0]


def test_s3_endpoint_from_storage_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    fs, path = I.filesystem_for(
        "s3://bucket/photos/a.jpg",
        {"endpoint_url": "http://localhost:9000", "key": "k", "secret": "s"},
    )
    args = _s3_args(fs)
    assert path == "bucket/photos/a.jpg"
    assert args["endpoint_override"] == "localhost:9000" and args["scheme"] == "http"
    assert args["access_key"] == "k" and args["secret_key"] == "s"
    assert args["region"] == "us-east-1"
    # s3fs-style nesting
    fs, _ = I.filesystem_for(
        "s3://b/k", {"client_kwargs": {"endpoint_url": "https://minio.example:9443"}}
    )
    assert _s3_args(fs)["endpoint_override"] == "minio.example:9443"
    assert _s3_args(fs)["scheme"] == "https"
    with pytest.raises(ValueError, match="unknown S3 storage option"):
        I.filesystem_for("s3://b/k", {"endpoint_urll": "x"})


def test_s3_endpoint_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9999")
    fs, path = I.filesystem_for("s3://bucket/prefix/")
    assert _s3_args(fs)["endpoint_override"] == "127.0.0.1:9999"
    assert path == "bucket/prefix"


def test_is_url() -> None:
    assert I.is_url("s3://b/k") and I.is_url("file:///x") and I.is_url("memory://x")
    assert not I.is_url("/tmp/x.jpg") and not I.is_url("C:\\x.jpg") and not I.is_url("a.jpg")


# ---------------------------------------------------------------------------------------------
# thumbnails
# ---------------------------------------------------------------------------------------------


def test_thumbnail_made_once(tmp_path: Path) -> None:
    data = encode(photo(1000, 500), "JPEG")
    h = hashlib.sha256(data).hexdigest()
    d = I.decode_image(data)
    path = I.make_thumbnail(tmp_path, h, d.image)
    assert path == tmp_path / "thumbnails" / h[:2] / f"{h}.jpg" == I.thumbnail_path(tmp_path, h)
    with PIL_Image.open(path) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (256, 128)
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp - 10**9, stamp - 10**9))
    again = I.make_thumbnail(tmp_path, h, photo(10, 10))  # not rewritten
    assert again == path and path.stat().st_mtime_ns == stamp - 10**9
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]
