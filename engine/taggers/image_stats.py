"""``image_stats``: cheap, model-free statistics of an image (numpy only).

Pixel statistics are computed on a copy whose longer side is at most :data:`WORK_SIDE` pixels
(box-filtered), so that they are comparable across resolutions and cost the same for a
phone photo and a 50-megapixel scan. Luma is ITU-R BT.601: ``Y = 0.299 R + 0.587 G + 0.114 B``.

==============  ===========  ==================================================================
column          type         meaning
==============  ===========  ==================================================================
brightness      float        mean luma, 0 (black) .. 1 (white)
contrast        float        standard deviation of luma, 0 .. 0.5
sharpness       float        variance of the 4-neighbour Laplacian of luma on the 0..255 scale
                             (the usual blur test: below ~100 is blurry at 512 px)
colorfulness    float        Hasler & Suesstrunk (2003) M3 on 0..255 RGB (0 grey, ~33 moderately
                             colourful, >100 extremely)
entropy         float        Shannon entropy of the 256-bin luma histogram, bits (0..8)
dominant_color  string       most frequent colour name of :data:`PALETTE` (HSV rules per pixel)
aspect_ratio    float        width / height
orientation     string       ``landscape``, ``portrait`` or ``square`` (sides within 5 %)
capture_time    timestamp    EXIF DateTimeOriginal (else DateTimeDigitized), camera local time
time_of_day     string       ``morning`` 05-12h, ``afternoon`` 12-17h, ``evening`` 17-21h,
                             ``night`` 21-05h, from the EXIF hour; NULL without EXIF time
==============  ===========  ==================================================================
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from . import ImageInput, exif_value, tagger

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image as PILImage

#: Longer side (pixels) of the copy the pixel statistics are computed on.
WORK_SIDE = 512

#: Colour names ``dominant_color`` takes, in code order.
PALETTE: tuple[str, ...] = (
    "black",
    "white",
    "gray",
    "red",
    "orange",
    "brown",
    "yellow",
    "green",
    "cyan",
    "blue",
    "purple",
    "pink",
)

#: Hue boundaries (degrees, upper bounds) for saturated colours.
_HUES: tuple[tuple[float, str], ...] = (
    (15.0, "red"),
    (45.0, "orange"),
    (70.0, "yellow"),
    (165.0, "green"),
    (200.0, "cyan"),
    (260.0, "blue"),
    (290.0, "purple"),
    (345.0, "pink"),
    (360.0, "red"),
)

COLUMNS: dict[str, pa.DataType] = {
    "brightness": pa.float32(),
    "contrast": pa.float32(),
    "sharpness": pa.float32(),
    "colorfulness": pa.float32(),
    "entropy": pa.float32(),
    "dominant_color": pa.string(),
    "aspect_ratio": pa.float32(),
    "orientation": pa.string(),
    "capture_time": pa.timestamp("us"),
    "time_of_day": pa.string(),
}

_LUMA = (0.299, 0.587, 0.114)


def _work_array(image: PILImage.Image) -> np.ndarray:
    """``image`` as float32 RGB (H, W, 3), 0..255, longer side at most WORK_SIDE."""
    import numpy as np
    from PIL import Image

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    w, h = rgb.size
    scale = WORK_SIDE / max(w, h)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = rgb.resize(size, Image.Resampling.BOX, reducing_gap=2.0)
    return np.asarray(rgb, dtype=np.float32)


def pixel_stats(arr: np.ndarray) -> dict[str, Any]:
    """Brightness, contrast, sharpness, colorfulness, entropy and dominant colour of an array.

    ``arr`` is float RGB (H, W, 3) on the 0..255 scale.
    """
    import numpy as np

    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    y = r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2]
    if y.shape[0] >= 3 and y.shape[1] >= 3:
        lap = y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:] - 4.0 * y[1:-1, 1:-1]
        sharpness = float(lap.var(dtype=np.float64))
    else:
        sharpness = 0.0
    rg = r - g
    yb = 0.5 * (r + g) - b
    colorfulness = math.hypot(float(rg.std(dtype=np.float64)), float(yb.std(dtype=np.float64)))
    colorfulness += 0.3 * math.hypot(
        float(rg.mean(dtype=np.float64)), float(yb.mean(dtype=np.float64))
    )
    hist = np.bincount(np.clip(np.rint(y), 0, 255).astype(np.uint8).ravel(), minlength=256)
    p = hist[hist > 0] / y.size
    entropy = float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0
    return {
        "brightness": float(y.mean(dtype=np.float64)) / 255.0,
        "contrast": float(y.std(dtype=np.float64)) / 255.0,
        "sharpness": sharpness,
        "colorfulness": colorfulness,
        "entropy": entropy,
        "dominant_color": dominant_color(arr),
    }


def color_names(rgb: np.ndarray) -> np.ndarray:
    """Index into :data:`PALETTE` for each pixel of float RGB ``rgb`` (..., 3) on 0..255."""
    import numpy as np

    x = rgb.reshape(-1, 3).astype(np.float32) / 255.0
    mx = x.max(axis=1)
    mn = x.min(axis=1)
    chroma = mx - mn
    sat = np.where(mx > 0, chroma / np.maximum(mx, 1e-6), 0.0)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    safe = np.maximum(chroma, 1e-6)
    hue = (
        np.where(
            mx == r,
            ((g - b) / safe) % 6.0,
            np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
        )
        * 60.0
    )
    index = {name: i for i, name in enumerate(PALETTE)}
    bounds = np.array([h for h, _ in _HUES], dtype=np.float32)
    hue_codes = np.array([index[n] for _, n in _HUES], dtype=np.int8)
    codes = hue_codes[np.minimum(np.searchsorted(bounds, hue, side="right"), len(bounds) - 1)]
    # dark oranges and reds are brown; pale reds are pink
    codes = np.where((hue >= 10.0) & (hue < 45.0) & (mx < 0.65), index["brown"], codes)
    red = codes == index["red"]
    codes = np.where(red & (sat < 0.5) & (mx > 0.75), index["pink"], codes)
    achromatic = (sat < 0.2) | (chroma < 0.06)
    grey = np.where(mx > 0.85, index["white"], index["gray"])
    codes = np.where(achromatic, grey, codes)
    codes = np.where(mx < 0.16, index["black"], codes)
    return codes.astype(np.int8).reshape(rgb.shape[:-1])


def dominant_color(arr: np.ndarray, max_pixels: int = 65536) -> str:
    """The most frequent :data:`PALETTE` name among (a regular subsample of) the pixels."""
    import numpy as np

    flat = arr.reshape(-1, 3)
    step = max(1, flat.shape[0] // max_pixels)
    counts = np.bincount(color_names(flat[::step]).ravel(), minlength=len(PALETTE))
    return PALETTE[int(np.argmax(counts))]


def orientation(width: int, height: int) -> str:
    """``square`` when the sides differ by at most 5 %, else ``landscape`` or ``portrait``."""
    if max(width, height) <= 1.05 * min(width, height):
        return "square"
    return "landscape" if width > height else "portrait"


def capture_time(exif: dict[Any, Any]) -> datetime | None:
    """EXIF DateTimeOriginal (else DateTimeDigitized) as a naive datetime (camera local time).

    Sub-seconds (SubsecTimeOriginal) are kept; placeholders such as ``"0000:00:00 00:00:00"``
    or blanks give None.
    """
    for name, tag_id, sub_name, sub_id in (
        ("DateTimeOriginal", 0x9003, "SubsecTimeOriginal", 0x9291),
        ("DateTimeDigitized", 0x9004, "SubsecTimeDigitized", 0x9292),
    ):
        value = exif_value(exif, name, tag_id)
        parsed = _parse_exif_time(value)
        if parsed is not None:
            sub = exif_value(exif, sub_name, sub_id)
            digits = "".join(ch for ch in str(sub or "") if ch.isdigit())[:6]
            if digits:
                parsed = parsed.replace(microsecond=int(digits.ljust(6, "0")))
            return parsed
    return None


def _parse_exif_time(value: Any) -> datetime | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    if not isinstance(value, str):
        return None
    text = value.strip("\x00 ").strip()
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(text[:19], fmt)
        except ValueError:
            continue
    return None


def time_of_day(when: datetime | None) -> str | None:
    """``morning`` [5, 12), ``afternoon`` [12, 17), ``evening`` [17, 21), else ``night``."""
    if when is None:
        return None
    h = when.hour
    if 5 <= h < 12:
        return "morning"
    if 12 <= h < 17:
        return "afternoon"
    if 17 <= h < 21:
        return "evening"
    return "night"


def stats_of(item: ImageInput) -> dict[str, Any]:
    """Every ``image_stats`` column for one image."""
    out = pixel_stats(_work_array(item.image))
    width, height = item.width or item.image.width, item.height or item.image.height
    when = capture_time(item.exif or {})
    if when is None and not item.exif:
        from . import read_exif

        when = capture_time(read_exif(item.image))
    out["aspect_ratio"] = width / height if height else None
    out["orientation"] = orientation(width, height)
    out["capture_time"] = when
    out["time_of_day"] = time_of_day(when)
    return out


@tagger("image_stats", version="1", columns=COLUMNS, batch_size=64)
def image_stats(batch: list[ImageInput]) -> list[dict[str, Any]]:
    """Brightness, contrast, sharpness, colorfulness, entropy, colour, shape and EXIF time."""
    return [stats_of(item) for item in batch]
