"""Images: reading bytes (local paths, ``file://``, ``s3://`` and other pyarrow.fs / fsspec URLs),
safe decoding to RGB, EXIF, content hashes and the thumbnail cache.

Everything that can go wrong with one file is an :class:`ImageError` carrying a stable
``reason`` (the ``reason`` column of the dataset table ``ingest_errors``):

=====================  ==========================================================================
reason                 meaning
=====================  ==========================================================================
``zero_bytes``         the file is empty
``unreadable``         the file cannot be read: missing, a directory, a broken link, permissions,
                       a storage error
``too_large``          the file is larger than ``max_bytes`` (not read)
``not_image``          the bytes are not an image format PIL knows (text named ``.jpg``...)
``truncated``          the image stops early (a partial download or copy)
``decompression_bomb`` width x height exceeds ``max_pixels``: an error, never a warning
``corrupt``            any other decoding failure (bad data inside a recognised format)
=====================  ==========================================================================

Decoding never changes process-wide settings (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``, warning filters) and is safe to run in threads: PIL
releases the GIL while it decodes, which is how ingest keeps every core busy.

``import popql.engine.images`` imports neither PIL nor pyarrow.fs at module level; both load
on first use.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    from PIL import Image as PILImage

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "REASONS",
    "THUMBNAIL_SIZE",
    "DecodedImage",
    "FileRef",
    "HashedFile",
    "ImageError",
    "decode_image",
    "exif_json",
    "extract_exif",
    "filesystem_for",
    "hash_file",
    "is_url",
    "make_thumbnail",
    "open_image",
    "read_bytes",
    "sample_id_of",
    "sample_key_of",
    "thumbnail_path",
]

#: Suffixes (lower case) of the files a folder or URL prefix source picks up.
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".png",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)

#: Largest width x height decoded (PIL's own default limit, 0.25 GiB of RGB). Beyond it the
#: file is a ``decompression_bomb`` error.
DEFAULT_MAX_PIXELS = 89_478_485
#: Largest file read (bytes). Beyond it the file is a ``too_large`` error.
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
#: Longest side of the cached JPEG thumbnails.
THUMBNAIL_SIZE = 256

REASONS: dict[str, str] = {
    "zero_bytes": "the file is empty",
    "unreadable": "the file cannot be read",
    "too_large": "the file is larger than the size limit",
    "not_image": "not an image file",
    "truncated": "the image data stops early",
    "decompression_bomb": "the image has more pixels than the limit",
    "corrupt": "the image data is corrupt",
}

_CHUNK = 1 << 20


class ImageError(Exception):
    """One file that cannot be used; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, message: str, uri: str | None = None) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.uri = uri

    def __str__(self) -> str:
        return f"{self.uri}: {self.message}" if self.uri else self.message


# ---------------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------------


def sample_id_of(content_hash: str) -> str:
    """The sample id of a file: the first 16 hex digits of its sha256."""
    return content_hash[:16]


def sample_key_of(content_hash_or_id: str) -> int:
    """The int64 key of a sample in vector indexes: the first 8 bytes of the content hash as a
    non-negative (63-bit) integer. Accepts the full hash or the 16-hex sample id."""
    return int(content_hash_or_id[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF


# ---------------------------------------------------------------------------------------------
# Files: local paths and URLs
# ---------------------------------------------------------------------------------------------


def is_url(source: str) -> bool:
    """True for ``scheme://...`` (but not a Windows drive letter)."""
    scheme, sep, _ = source.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.replace("+", "").replace("-", "").isalnum()


_S3_OPTION_NAMES = {
    "endpoint_url": "endpoint_override",
    "endpoint_override": "endpoint_override",
    "endpoint": "endpoint_override",
    "key": "access_key",
    "access_key": "access_key",
    "aws_access_key_id": "access_key",
    "secret": "secret_key",
    "secret_key": "secret_key",
    "aws_secret_access_key": "secret_key",
    "token": "session_token",
    "session_token": "session_token",
    "aws_session_token": "session_token",
    "anon": "anonymous",
    "anonymous": "anonymous",
    "region": "region",
    "region_name": "region",
    "scheme": "scheme",
}


def _s3_options(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """pyarrow ``S3FileSystem`` keyword arguments from s3fs/fsspec-style storage options and
    the environment (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``)."""
    given: dict[str, Any] = dict(storage_options or {})
    client_kwargs = given.pop("client_kwargs", None) or {}
    given.update({k: v for k, v in client_kwargs.items() if k not in given})
    out: dict[str, Any] = {}
    unknown = []
    for name, value in given.items():
        target = _S3_OPTION_NAMES.get(name)
        if target is None:
            unknown.append(name)
        else:
            out[target] = value
    if unknown:
        raise ValueError(
            "unknown S3 storage option(s): "
            + ", ".join(sorted(unknown))
            + "; known: "
            + ", ".join(sorted(_S3_OPTION_NAMES))
        )
    endpoint = out.get("endpoint_override") or (
        os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    if endpoint:
        endpoint = str(endpoint)
        scheme, sep, rest = endpoint.partition("://")
        if sep:
            out.setdefault("scheme", scheme)
            endpoint = rest
        out["endpoint_override"] = endpoint.rstrip("/")
        # A custom endpoint (MinIO, Ceph, R2...) has no AWS region to discover.
        out.setdefault("region", os.environ.get("AWS_REGION") or "us-east-1")
        out.setdefault("force_virtual_addressing", False)
    if "anonymous" in out:
        out["anonymous"] = str(out["anonymous"]).lower() in ("1", "true", "yes")
    return out


def filesystem_for(
    uri: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a URL: pyarrow's own file systems for ``file://`` and
    ``s3://`` (with an endpoint from ``storage_options['endpoint_url']`` or the environment
    variable ``AWS_ENDPOINT_URL``), pyarrow's ``from_uri`` for the other schemes it knows
    (``gs://``, ``hdfs://``...), else fsspec (``memory://``, ``http://``, ``hf://``... with
    ``storage_options`` passed to it). ``ValueError`` when no file system handles it."""
    import pyarrow.fs as pafs

    scheme = uri.partition("://")[0].lower() if is_url(uri) else "file"
    if scheme == "file":
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        return pafs.LocalFileSystem(), path
    if scheme in ("s3", "s3a"):
        rest = uri.partition("://")[2]
        options = _s3_options(storage_options)
        return pafs.S3FileSystem(**options), rest.rstrip("/") if rest.endswith("/") else rest
    if not storage_options and scheme in ("gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"):
        with contextlib.suppress(Exception):
            return pafs.FileSystem.from_uri(uri)
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec is a pyarrow/datafusion neighbour
        raise ValueError(f"no file system for {scheme}:// URLs (install fsspec)") from exc
    try:
        fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise ValueError(f"no file system for {scheme}:// URLs: {exc}") from exc
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


@dataclass(frozen=True)
class FileRef:
    """One file to read: its ``uri`` (what the dataset records), and where it is: a local
    ``path`` (``fs`` None) or a path inside a pyarrow file system ``fs``."""

    uri: str
    path: str
    fs: Any = None
    size: int | None = None

    @classmethod
    def local(cls, path: str | os.PathLike[str]) -> FileRef:
        p = os.path.abspath(os.fspath(path))
        return cls(uri=p, path=p)

    @classmethod
    def for_uri(cls, uri: str, storage_options: Mapping[str, Any] | None = None) -> FileRef:
        if not is_url(uri) or uri.startswith("file://"):
            return cls.local(uri[len("file://") :] if uri.startswith("file://") else uri)
        fs, path = filesystem_for(uri, storage_options)
        return cls(uri=uri, path=path, fs=fs)

    def chunks(self, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[bytes]:
        """The file's bytes in chunks; ImageError ``unreadable``/``too_large``."""
        try:
            if self.fs is None:
                fh: Any = open(self.path, "rb")  # noqa: SIM115 - closed below
                size: int | None = os.fstat(fh.fileno()).st_size
            else:
                fh = self.fs.open_input_stream(self.path)
                size = self.size
        except OSError as exc:
            raise ImageError("unreadable", _os_message(exc), self.uri) from exc
        except Exception as exc:  # storage errors from pyarrow / fsspec
            raise ImageError("unreadable", f"{type(exc).__name__}: {exc}", self.uri) from exc
        with fh:
            if size is not None and size > max_bytes:
                raise ImageError(
                    "too_large", f"{size:,} bytes is over the limit of {max_bytes:,}", self.uri
                )
            total = 0
            while True:
                try:
                    chunk = fh.read(_CHUNK)
                except OSError as exc:
                    raise ImageError("unreadable", _os_message(exc), self.uri) from exc
                if not chunk:
                    return
                total += len(chunk)
                if total > max_bytes:
                    raise ImageError(
                        "too_large", f"more than {max_bytes:,} bytes (the limit)", self.uri
                    )
                yield bytes(chunk)


def _os_message(exc: OSError) -> str:
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(exc, FileNotFoundError):
        return "file not found (or a broken link)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc) or type(exc).__name__


@dataclass(frozen=True)
class HashedFile:
    """A file's sha256 (hex), size and, when kept, its bytes."""

    ref: FileRef
    content_hash: str
    size: int
    data: bytes | None = field(default=None, repr=False)

    @property
    def sample_id(self) -> str:
        return sample_id_of(self.content_hash)


def hash_file(ref: FileRef, *, keep: bool = True, max_bytes: int = DEFAULT_MAX_BYTES) -> HashedFile:
    """Stream ``ref`` through sha256 (hashlib releases the GIL on large chunks); ``keep`` the
    bytes for decoding. ImageError ``unreadable``/``too_large``. An empty file hashes like any
    other (``decode_image`` reports it as ``zero_bytes``)."""
    digest = hashlib.sha256()
    kept: list[bytes] = []
    size = 0
    for chunk in ref.chunks(max_bytes):
        digest.update(chunk)
        size += len(chunk)
        if keep:
            kept.append(chunk)
    data = (kept[0] if len(kept) == 1 else b"".join(kept)) if keep else None
    return HashedFile(ref, digest.hexdigest(), size, data)


def read_bytes(
    uri: str | os.PathLike[str] | FileRef,
    *,
    storage_options: Mapping[str, Any] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
    """All bytes of a local path, ``file://`` or other URL (see :func:`filesystem_for`)."""
    ref = uri if isinstance(uri, FileRef) else _ref(uri, storage_options)
    return b"".join(ref.chunks(max_bytes))


def _ref(uri: str | os.PathLike[str], storage_options: Mapping[str, Any] | None) -> FileRef:
    if isinstance(uri, os.PathLike):
        return FileRef.local(uri)
    return FileRef.for_uri(uri, storage_options)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


@dataclass
class DecodedImage:
    """A decoded image: ``image`` is RGB, oriented as displayed (EXIF orientation applied) and
    possibly reduced (``max_side``); ``width``/``height`` are the full displayed size."""

    image: PILImage.Image
    width: int
    height: int
    format: str
    exif: dict[str, Any]
    mode: str = ""
    frames: int = 1


def decode_image(
    data: bytes,
    *,
    uri: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
) -> DecodedImage:
    """Decode ``data`` to an RGB PIL image, or raise :class:`ImageError`.

    ``max_pixels`` (None: no limit) is checked from the header before any pixel is decoded,
    for every format, whatever ``PIL.Image.MAX_IMAGE_PIXELS`` says (PIL's own guard, when it
    trips first, is reported the same way). ``max_side`` reduces the decoded image so that its
    longest side is at most that (JPEGs are decoded at a reduced DCT scale, much faster);
    ``width``/``height`` stay the full size. Multi-frame files give their first frame.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError("zero_bytes", "the file is empty (0 bytes)", uri)
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageError("not_image", f"not an image file ({_sniff(data)})", uri) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("decompression_bomb", _bomb_message(exc, max_pixels), uri) from exc
    except Exception as exc:
        raise _classify(exc, uri) from exc
    try:
        fmt = im.format or ""
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageError("corrupt", f"invalid image size {width}x{height}", uri)
        if max_pixels is not None and width * height > max_pixels:
            raise ImageError(
                "decompression_bomb",
                f"{width}x{height} = {width * height:,} pixels is over the limit of "
                f"{max_pixels:,} (possible decompression bomb)",
                uri,
            )
        mode = im.mode
        frames = int(getattr(im, "n_frames", 1) or 1)
        if max_side is not None and fmt == "JPEG":
            im.draft("RGB", _draft_box(im.size, max(1, max_side)))
        im.load()  # before EXIF: PNG's getexif() would load the pixels and hide errors
        exif = extract_exif(im)
        orientation = exif.get("Orientation")
        transpose = _orientations().get(orientation) if isinstance(orientation, int) else None
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        rgb = _to_rgb(im)
        if transpose is not None:
            rgb = rgb.transpose(transpose)
        if max_side is not None and max(rgb.size) > max_side:
            if rgb is im:
                rgb = im.copy()
            rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    except ImageError:
        im.close()
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        im.close()
        raise ImageError("decompression_bomb", _bomb_message(exc, max_pixels), uri) from exc
    except Exception as exc:
        im.close()
        raise _classify(exc, uri) from exc
    if rgb is not im:
        im.close()
    rgb.info.pop("exif", None)
    return DecodedImage(rgb, width, height, fmt, exif, mode, frames)


@functools.cache
def _orientations() -> dict[int, Any]:
    from PIL import Image

    t = Image.Transpose
    return {
        2: t.FLIP_LEFT_RIGHT,
        3: t.ROTATE_180,
        4: t.FLIP_TOP_BOTTOM,
        5: t.TRANSPOSE,
        6: t.ROTATE_270,
        7: t.TRANSVERSE,
        8: t.ROTATE_90,
    }


def _draft_box(size: tuple[int, int], longest: int) -> tuple[int, int]:
    w, h = size
    scale = longest / max(w, h)
    return (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale)))


def _to_rgb(im: PILImage.Image) -> PILImage.Image:
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16/32-bit greyscale and float: scale to 8 bits by the image's own range.
        extrema: Any = im.getextrema()
        lo, hi = float(extrema[0]), float(extrema[1])
        scale = 255.0 / ((hi - lo) or 1.0)
        return im.point(lambda v: (v - lo) * scale).convert("L").convert("RGB")  # type: ignore[arg-type,operator]
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return im.convert("RGB")


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "gzip data"),
    (b"<?xml", "XML text"),
    (b"<svg", "an SVG drawing (vector images are not decoded)"),
    (b"<!DOCTYPE html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"{", "JSON text"),
    (b"\x00\x00\x00 ftypheic", "a HEIC image (no decoder installed)"),
    (b"\x00\x00\x00\x18ftypheic", "a HEIC image (no decoder installed)"),
)


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip()
    for magic, what in _MAGIC:
        if head[: len(magic)].lower() == magic.lower():
            return f"looks like {what}"
    try:
        data[:512].decode("utf-8")
    except UnicodeDecodeError:
        return f"{len(data):,} bytes of unknown binary data"
    return "looks like text"


def _bomb_message(exc: BaseException, max_pixels: int | None) -> str:
    return f"{exc} (limit {max_pixels:,} pixels)" if max_pixels else str(exc)


def _classify(exc: BaseException, uri: str | None) -> ImageError:
    message = str(exc) or type(exc).__name__
    lowered = message.lower()
    if "truncated" in lowered or "premature end" in lowered:
        return ImageError("truncated", message, uri)
    if isinstance(exc, MemoryError):
        return ImageError("decompression_bomb", "out of memory while decoding", uri)
    return ImageError("corrupt", f"{type(exc).__name__}: {message}", uri)


def open_image(
    uri: str | os.PathLike[str] | FileRef,
    *,
    storage_options: Mapping[str, Any] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DecodedImage:
    """Read and decode one image (see :func:`read_bytes` and :func:`decode_image`)."""
    ref = uri if isinstance(uri, FileRef) else _ref(uri, storage_options)
    data = read_bytes(ref, max_bytes=max_bytes)
    if not data:
        raise ImageError("zero_bytes", "the file is empty (0 bytes)", ref.uri)
    return decode_image(data, uri=ref.uri, max_pixels=max_pixels, max_side=max_side)


# ---------------------------------------------------------------------------------------------
# EXIF
# ---------------------------------------------------------------------------------------------

_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_SKIP_TAGS = {"MakerNote", "UserComment", "PrintImageMatching", "ExifOffset", "GPSInfo"}
_MAX_VALUE_LEN = 256


def extract_exif(im: PILImage.Image) -> dict[str, Any]:
    """EXIF of an opened image as a JSON-ready dict (tag names from ``PIL.ExifTags``; the Exif
    and GPS sub-IFDs merged in; binary blobs and maker notes left out). Never raises."""
    from PIL import ExifTags

    try:
        exif = im.getexif()
    except Exception:
        return {}
    if not exif:
        return {}
    out: dict[str, Any] = {}
    try:
        items: list[tuple[int, Any, dict[int, str]]] = [
            (k, v, ExifTags.TAGS) for k, v in exif.items()
        ]
        for ifd, names in ((_EXIF_IFD, ExifTags.TAGS), (_GPS_IFD, ExifTags.GPSTAGS)):
            with contextlib.suppress(Exception):
                items.extend((k, v, names) for k, v in exif.get_ifd(ifd).items())
    except Exception:
        return out
    for key, value, names in items:
        name = names.get(key, f"0x{key:04x}")
        if name in _SKIP_TAGS:
            continue
        plain = _exif_value(value)
        if plain is not None:
            out[name] = plain
    return out


def _exif_value(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            text = value.rstrip(b"\x00").decode("ascii")
        except UnicodeDecodeError:
            return None
        return text if text.isprintable() and len(text) <= _MAX_VALUE_LEN else None
    if isinstance(value, str):
        text = value.rstrip("\x00").strip()
        return text[:_MAX_VALUE_LEN] if text else None
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, tuple | list):
        items = [_exif_value(v) for v in value[:32]]
        return items if all(v is not None for v in items) else None
    try:  # IFDRational and other numbers
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) else None


def exif_json(exif: Mapping[str, Any]) -> str | None:
    """``exif`` as compact JSON text (None when empty)."""
    return json.dumps(dict(exif), sort_keys=True, ensure_ascii=False) if exif else None


# ---------------------------------------------------------------------------------------------
# Thumbnails
# ---------------------------------------------------------------------------------------------


def thumbnail_path(root: str | os.PathLike[str], content_hash: str) -> Path:
    """``DIR/thumbnails/<aa>/<content_hash>.jpg``."""
    return Path(root) / "thumbnails" / content_hash[:2] / f"{content_hash}.jpg"


def make_thumbnail(
    root: str | os.PathLike[str],
    content_hash: str,
    image: PILImage.Image,
    *,
    size: int = THUMBNAIL_SIZE,
    quality: int = 85,
) -> Path:
    """Write the thumbnail of ``image`` (longest side ``size``, JPEG) once; an existing one is
    kept. Written to a temporary file then renamed, so readers never see half a file."""
    from PIL import Image

    target = thumbnail_path(root, content_hash)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    thumb = image if image.mode == "RGB" else image.convert("RGB")
    scale = min(1.0, size / max(thumb.size))
    dims = (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale)))
    # BOX (area averaging): alias-free when shrinking and several times cheaper than bicubic
    thumb = thumb.resize(dims, Image.Resampling.BOX) if scale < 1.0 else thumb.copy()
    fd, tmp = tempfile.mkstemp(prefix=f".{content_hash[:16]}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            thumb.save(fh, "JPEG", quality=quality)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target
