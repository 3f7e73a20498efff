"""Embedders: image and text encoders that put images and phrases in one vector space.

An :class:`Embedder` turns RGB PIL images and strings into float32, L2-normalised vectors of
one dimension, so that ``image_vec @ text_vec`` is a cosine similarity. PopQL stores image
vectors as ``embeddings.<key>`` tables and searches them with ``SIMILAR TO`` / ``NEAR``.

:func:`load_embedder` understands these specs (``docs/datasets-design.md`` section 3):

=========================================  ======================================================
spec                                       meaning
=========================================  ======================================================
``ViT-B-32:laion2b_s34b_b79k``             an open_clip model and pretrained tag (downloaded
                                           once into ``cache_dir``, then offline)
``ViT-B-32``                               the model with its default tag (see below)
``local-dir:/path/to/dir``                 open_clip's local-dir layout: ``open_clip_config.json``
                                           and ``open_clip_model.safetensors``; a relative path
                                           is taken from the working directory, else from the
                                           PopQL checkout (``local-dir:models/fmnist-clip``)
``hf-hub:org/repo``                        an open_clip model on the Hugging Face Hub
``/path/weights.safetensors?model=NAME``   a checkpoint file (``.safetensors``, ``.pt``, ``.pth``,
``NAME:/path/weights.pt``                  ``.bin``) for the open_clip architecture ``NAME``
``clip``, ``fmnist-clip``, user names      registry entries (:func:`register_embedder`)
=========================================  ======================================================

A bare model name loads ``laion2b_s34b_b79k`` for ViT-B-32, else the model's first tag trained
with the model's own activation. Tags trained with QuickGELU (OpenAI's) get a QuickGELU model.

Options may follow a ``?``: ``model=NAME``, ``batch_size=N``, ``device=cpu|cuda``. The device
defaults to ``$POPQL_DEVICE``, else CUDA when available, else the CPU (with as many torch
threads as this process may use: ``$POPQL_NUM_THREADS`` or the CPU affinity mask).

Every embedder has an ``identity``: the model name plus the sha256 of its weights file(s).
Thresholds and stored vectors are only comparable between equal identities.

When the weights cannot be had (offline and not cached, a missing file or folder) loading
raises a :class:`~popql.diagnostics.PopQLError` with code ``M001`` ("CLIP weights unavailable:
...; text search is off"), so callers can carry on without similarity search. Cached weights
load without touching the network; a download is tried only when they are not cached, and fails
at once (no minutes of retries) with ``POPQL_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` or when the
host does not answer one connection attempt within 5 s (skipped when a proxy is configured).

This module imports neither torch nor open_clip nor numpy at import time; they are imported
inside the functions that need them (``pip install -e ".[models]"``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from popql.diagnostics import Diagnostic, PopQLError, did_you_mean_hint

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

__all__ = [
    "DEFAULT_EMBEDDER",
    "FMNIST_CLIP_DIR",
    "TEST_EMBEDDER",
    "EmbedSpec",
    "Embedder",
    "OpenClipEmbedder",
    "clear_cache",
    "embedder_key",
    "list_embedders",
    "load_embedder",
    "parse_spec",
    "register_embedder",
    "sha256_file",
    "unregister_embedder",
]

#: The checkout PopQL runs from (``engine/`` is installed as ``popql.engine``).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The tiny CLIP trained on Fashion-MNIST (``models/train_fmnist_clip.py``).
FMNIST_CLIP_DIR = REPO_ROOT / "models" / "fmnist-clip"

DEFAULT_EMBEDDER = "ViT-B-32:laion2b_s34b_b79k"
TEST_EMBEDDER = f"local-dir:{FMNIST_CLIP_DIR}"

LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
DEFAULT_BATCH_SIZE = 64

_TEXT_OFF = "text search is off"
_MODELS_EXTRA_HINT = 'install the model packages: pip install -e ".[models]"'


# ---------------------------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class Embedder(Protocol):
    """What PopQL needs from an image/text encoder."""

    key: str  # safe file/table name, e.g. "fmnist_clip" or "vit_b_32_laion2b_s34b_b79k"
    spec: str  # how the user named it
    identity: str  # model name + sha256 of the weights (thresholds are tied to it)
    dim: int
    batch_size: int

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(n, dim)`` float32, rows L2-normalised."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, dim)`` float32, rows L2-normalised."""
        ...


# ---------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------


def _unavailable(spec: str, reason: str, *hints: str) -> PopQLError:
    reason = " ".join(str(reason).split())
    if len(reason) > 300:
        reason = reason[:297] + "..."
    return PopQLError(
        Diagnostic(
            "M001",
            f"CLIP weights unavailable: {spec!r}: {reason}; {_TEXT_OFF}",
            hints=hints,
        )
    )


def _unknown(message: str, *hints: str) -> PopQLError:
    return PopQLError(Diagnostic("M002", message, hints=tuple(h for h in hints if h)))


def _invalid(message: str, *hints: str) -> PopQLError:
    return PopQLError(Diagnostic("M003", message, hints=hints))


def _require_packages() -> None:
    missing = []
    for module in ("torch", "open_clip", "PIL", "numpy"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise PopQLError(
            Diagnostic(
                "M004",
                f"embedders need {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'}"
                f" not installed; {_TEXT_OFF}",
                hints=(_MODELS_EXTRA_HINT,),
            )
        )


# ---------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------


class EmbedSpec:
    """A parsed spec. ``kind`` is ``registry``, ``open_clip``, ``local_dir``, ``hf_hub`` or
    ``file``; ``name`` the registry name, open_clip model name, folder, hub id or file;
    ``pretrained`` the open_clip tag; ``model`` the architecture of a checkpoint file."""

    __slots__ = ("batch_size", "device", "kind", "model", "name", "pretrained", "spec")

    def __init__(
        self,
        spec: str,
        kind: str,
        name: str,
        *,
        pretrained: str | None = None,
        model: str | None = None,
        batch_size: int | None = None,
        device: str | None = None,
    ) -> None:
        self.spec = spec
        self.kind = kind
        self.name = name
        self.pretrained = pretrained
        self.model = model
        self.batch_size = batch_size
        self.device = device

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{k}={getattr(self, k)!r}"
            for k in ("kind", "name", "pretrained", "model", "batch_size", "device")
            if getattr(self, k) is not None
        )
        return f"EmbedSpec({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EmbedSpec):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


_OPTIONS = ("model", "batch_size", "device")


def _looks_like_path(text: str) -> bool:
    return (
        "/" in text
        or "\\" in text
        or text.startswith(("~", "."))
        or text.lower().endswith(CHECKPOINT_SUFFIXES)
    )


def parse_spec(spec: str) -> EmbedSpec:
    """Parse an embedder spec (see the module docstring); M002 when it is malformed."""
    if not isinstance(spec, str) or not spec.strip():
        raise _unknown(
            "empty embedder spec",
            f"name an open_clip model such as {DEFAULT_EMBEDDER!r}, a 'local-dir:' folder or a"
            " registered embedder",
        )
    text = spec.strip()
    options: dict[str, str] = {}
    if "?" in text:
        text, _, query = text.partition("?")
        for part in filter(None, query.split("&")):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in _OPTIONS or not value.strip():
                raise _unknown(
                    f"invalid option {part!r} in embedder spec {spec!r}",
                    f"options are {', '.join(o + '=...' for o in _OPTIONS)}",
                )
            options[key] = value.strip()
    batch_size = None
    if "batch_size" in options:
        try:
            batch_size = int(options["batch_size"])
        except ValueError:
            batch_size = 0
        if batch_size <= 0:
            raise _unknown(f"batch_size must be a positive integer in embedder spec {spec!r}")
    device = options.get("device")
    model = options.get("model")
    common: dict[str, Any] = {"batch_size": batch_size, "device": device}

    if text in _REGISTRY:
        if model:
            raise _unknown(f"model= does not apply to the registered embedder {text!r}")
        return EmbedSpec(spec, "registry", text, **common)
    if text.startswith(LOCAL_DIR_PREFIX):
        path = text[len(LOCAL_DIR_PREFIX) :].strip()
        if not path:
            raise _unknown(f"no folder after 'local-dir:' in embedder spec {spec!r}")
        return EmbedSpec(spec, "local_dir", path, **common)
    if text.startswith(HF_HUB_PREFIX):
        repo = text[len(HF_HUB_PREFIX) :].strip().strip("/")
        if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", repo):
            raise _unknown(
                f"invalid Hugging Face Hub id {repo!r} in embedder spec {spec!r}",
                "write hf-hub:ORG/REPO",
            )
        return EmbedSpec(spec, "hf_hub", repo, **common)
    if model is not None:
        return EmbedSpec(spec, "file", text, model=model, **common)
    name, sep, tag = text.partition(":")
    name, tag = name.strip(), tag.strip()
    if sep and name and tag and _looks_like_path(tag) and not _looks_like_path(name):
        return EmbedSpec(spec, "file", tag, model=name, **common)
    if text.lower().endswith(CHECKPOINT_SUFFIXES):
        raise _unknown(
            f"the checkpoint {text!r} needs an architecture",
            f"write '{text}?model=NAME' (an open_clip model name such as ViT-B-32), or"
            " use a 'local-dir:' folder with open_clip_config.json",
        )
    if not name:
        raise _unknown(f"no model name in embedder spec {spec!r}")
    if sep and not tag:
        raise _unknown(f"no pretrained tag after ':' in embedder spec {spec!r}")
    return EmbedSpec(spec, "open_clip", name, pretrained=tag or None, **common)


def embedder_key(text: str) -> str:
    """A safe table/file name made of ``[a-z0-9_]`` (at most 64 characters)."""
    key = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "embedder"
    if key[0].isdigit():
        key = "e_" + key
    if len(key) > 64:
        key = key[:55].rstrip("_") + "_" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return key


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., Embedder]] = {}
_BUILTIN_ALIASES = {"clip": DEFAULT_EMBEDDER, "fmnist-clip": TEST_EMBEDDER}


def register_embedder(name: str, factory: Callable[..., Embedder]) -> None:
    """Register ``factory`` under ``name``; ``load_embedder(name)`` then calls it.

    The factory is called with the keyword arguments it accepts among ``spec`` (what the user
    wrote) and ``cache_dir``, and must return an :class:`Embedder`. Registering a name again
    replaces the previous factory. Names may not contain ``:``, ``?`` or ``/``.
    """
    if not isinstance(name, str) or not name or re.search(r"[:?/\\\s]", name):
        raise ValueError(f"invalid embedder name {name!r}: no ':', '?', '/' or spaces")
    if not callable(factory):
        raise TypeError(f"embedder factory for {name!r} is not callable")
    _REGISTRY[name] = factory


def unregister_embedder(name: str) -> None:
    """Remove a registry entry (no error when absent)."""
    _REGISTRY.pop(name, None)


def list_embedders() -> list[str]:
    """The registered names, sorted."""
    return sorted(_REGISTRY)


def _alias(target: str) -> Callable[..., Embedder]:
    def factory(spec: str, cache_dir: str | None = None) -> Embedder:
        emb = load_embedder(target, cache_dir=cache_dir)
        if isinstance(emb, OpenClipEmbedder):
            emb = emb.renamed(spec)
        return emb

    factory.__doc__ = f"alias of {target!r}"
    return factory


for _name, _target in _BUILTIN_ALIASES.items():
    register_embedder(_name, _alias(_target))


def _call_factory(name: str, factory: Callable[..., Embedder], spec: str, cache_dir: str | None):
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature
        params = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in (("spec", spec), ("cache_dir", cache_dir)) if var_kw or k in params}
    emb = factory(**kwargs)
    missing = [
        a
        for a in ("key", "spec", "identity", "dim", "batch_size", "embed_images", "embed_texts")
        if not hasattr(emb, a)
    ]
    if missing:
        raise _invalid(
            f"the embedder factory registered as {name!r} returned {type(emb).__name__}, which"
            f" lacks {', '.join(missing)}",
            "a factory must return an object with key, spec, identity, dim, batch_size,"
            " embed_images and embed_texts",
        )
    return emb


# ---------------------------------------------------------------------------------------------
# Hashing and caching
# ---------------------------------------------------------------------------------------------

_HASHES: dict[tuple[str, int, int, int], str] = {}
_CACHE: dict[tuple[str, str | None], tuple[tuple, OpenClipEmbedder]] = {}
_LOCK = threading.RLock()


def _stat_key(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file (memoised on path, size, mtime and inode)."""
    p = Path(path)
    key = _stat_key(p)
    with _LOCK:
        if key in _HASHES:
            return _HASHES[key]
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _LOCK:
        _HASHES[key] = digest
    return digest


def _fingerprint(paths: Sequence[Path]) -> tuple:
    try:
        return tuple(_stat_key(p) for p in paths)
    except OSError:
        return ()


def clear_cache() -> None:
    """Forget loaded models (they are otherwise reused while their weight files are unchanged)."""
    with _LOCK:
        _CACHE.clear()
        _HASHES.clear()


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_embedder(spec: str, *, cache_dir: str | None = None) -> Embedder:
    """Load the embedder named by ``spec`` (see the module docstring).

    Raises :class:`PopQLError`: ``M001`` when the weights are unavailable (offline and not in
    ``cache_dir``, a missing file or folder), ``M002`` for an unknown model, tag or malformed
    spec, ``M003`` for a checkpoint that does not load, ``M004`` when torch/open_clip are not
    installed.
    """
    parsed = parse_spec(spec)
    if parsed.kind == "registry":
        factory = _REGISTRY[parsed.name]
        emb = _call_factory(parsed.name, factory, spec, cache_dir)
        if parsed.batch_size:
            emb.batch_size = parsed.batch_size
        return emb
    _require_packages()
    cache_key = (spec.strip(), None if cache_dir is None else str(cache_dir))
    with _LOCK:
        cached = _CACHE.get(cache_key)
    if cached is not None:
        fingerprint, emb = cached
        if fingerprint and fingerprint == _fingerprint(emb.weights):
            return emb
    emb = _load_open_clip(parsed, cache_dir)
    with _LOCK:
        _CACHE[cache_key] = (_fingerprint(emb.weights), emb)
    return emb


def _resolve_local(path_text: str) -> Path:
    p = Path(path_text).expanduser()
    if p.is_absolute() or p.exists():
        return p.absolute() if not p.is_absolute() else p
    fallback = REPO_ROOT / p
    return fallback if fallback.exists() else p.absolute()


def _load_open_clip(parsed: EmbedSpec, cache_dir: str | None) -> OpenClipEmbedder:
    import open_clip

    spec = parsed.spec
    weights: list[Path]
    pretrained: str | None = None
    offline = False  # True when everything is cached: open_clip must not touch the network
    quick_gelu = False
    if parsed.kind == "local_dir":
        folder = _resolve_local(parsed.name)
        if not folder.is_dir():
            raise _unavailable(spec, f"folder {str(folder)!r} not found")
        config = folder / "open_clip_config.json"
        if not config.is_file():
            raise _unavailable(
                spec,
                f"{str(config)!r} not found",
                "a local-dir folder holds open_clip_config.json and open_clip_model.safetensors",
            )
        found = open_clip.factory._find_checkpoint_in_dir(folder)
        if not found:
            raise _unavailable(
                spec, f"no weights file (*.safetensors, *.bin, *.pth) in {str(folder)!r}"
            )
        weights = [Path(found)]
        name = folder.name
        oc_name = LOCAL_DIR_PREFIX + str(folder)
        key = embedder_key(name)
    elif parsed.kind == "hf_hub":
        name = HF_HUB_PREFIX + parsed.name
        oc_name = name
        found = _cached_hf(parsed.name, [_HF_CONFIG], cache_dir) and _cached_hf(
            parsed.name, _hf_weight_names(None), cache_dir
        )
        if found:
            offline = True
        else:
            _probe(spec, _hf_endpoint())
            try:
                open_clip.factory._get_hf_config(parsed.name, cache_dir=cache_dir)
                found = open_clip.pretrained.download_pretrained_from_hf(
                    parsed.name, cache_dir=cache_dir
                )
            except Exception as exc:
                raise _unavailable(
                    spec,
                    f"cannot download from the Hugging Face Hub ({_short(exc)})",
                    _DOWNLOAD_HINT,
                ) from exc
        weights = [Path(found)]
        key = embedder_key(parsed.name)
    elif parsed.kind == "file":
        model = _check_model_name(parsed.model or "", spec)
        file = _resolve_local(parsed.name)
        if not file.is_file():
            raise _unavailable(spec, f"checkpoint {str(file)!r} not found")
        weights = [file]
        name = model
        oc_name = model
        pretrained = str(file)
        key = embedder_key(f"{model}_{file.stem}")
    else:  # open_clip name[:tag]
        model = _check_model_name(parsed.name, spec)
        tags = open_clip.list_pretrained_tags_by_model(model)
        tag = parsed.pretrained
        if tag is None:
            if not tags:
                raise _unknown(
                    f"open_clip model {model!r} has no pretrained weights",
                    "name a checkpoint: 'MODEL:/path/weights.safetensors'",
                )
            tag = _default_tag(model, tags)
        elif tag not in tags:
            raise _unknown(
                f"unknown pretrained tag {tag!r} for open_clip model {model!r}",
                did_you_mean_hint(tag, tags) or "",
                f"tags for {model}: {', '.join(tags)}" if tags else "",
            )
        cfg = open_clip.pretrained.get_pretrained_cfg(model, tag)
        quick_gelu = bool(cfg.get("quick_gelu"))  # e.g. OpenAI's weights (as open_clip advises)
        found = _cached_pretrained(cfg, cache_dir)
        if found:
            offline = True
        else:
            _probe(spec, _pretrained_url(cfg))
            try:
                found = open_clip.pretrained.download_pretrained(cfg, cache_dir=cache_dir)
            except Exception as exc:
                raise _unavailable(
                    spec, f"cannot download the weights ({_short(exc)})", _DOWNLOAD_HINT
                ) from exc
        if not found or not Path(found).is_file():
            raise _unavailable(spec, "open_clip returned no weights file")
        weights = [Path(found)]
        name = f"{model}:{tag}"
        oc_name = model
        pretrained = tag
        key = embedder_key(f"{model}_{tag}")

    digest = sha256_file(weights[0]) if len(weights) == 1 else _combined(weights)
    identity = f"{name}@sha256:{digest}"
    device = parsed.device or os.environ.get("POPQL_DEVICE") or None
    try:
        with _hub_offline(offline):
            model_obj, _, preprocess = open_clip.create_model_and_transforms(
                oc_name,
                pretrained=pretrained,
                cache_dir=cache_dir,
                device="cpu",
                weights_only=True,
                force_quick_gelu=quick_gelu,
            )
            tokenizer = open_clip.get_tokenizer(oc_name, cache_dir=cache_dir)
    except (OSError, ConnectionError) as exc:
        raise _unavailable(spec, _short(exc)) from exc
    except Exception as exc:
        raise _invalid(
            f"the weights of embedder {spec!r} do not load: {_short(exc)}",
            "check that the checkpoint matches the model's architecture",
        ) from exc
    return OpenClipEmbedder(
        model=model_obj,
        preprocess=preprocess,
        tokenizer=tokenizer,
        key=key,
        spec=spec,
        identity=identity,
        name=name,
        weights=weights,
        batch_size=parsed.batch_size or DEFAULT_BATCH_SIZE,
        device=device,
    )


_DOWNLOAD_HINT = (
    "run once with internet access (the weights are then cached), pass cache_dir pointing at a"
    " folder that holds them, or use local weights such as 'local-dir:models/fmnist-clip'"
)
_HF_CONFIG = "open_clip_config.json"
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _hf_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except Exception:  # pragma: no cover - huggingface_hub is a dependency of open_clip
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _hf_offline_mode() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.is_offline_mode())
    except Exception:  # pragma: no cover
        return False


def _probe(spec: str, url: str) -> None:
    """M001 at once when downloads cannot work, instead of minutes of retries.

    Offline mode (``POPQL_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) or an unreachable host (one TCP
    connection, 5 s timeout; skipped when a proxy is configured) means no download.
    """
    popql_offline = os.environ.get("POPQL_OFFLINE", "").strip().lower() in {"1", "true", "yes"}
    if popql_offline or (url == _hf_endpoint() and _hf_offline_mode()):
        raise _unavailable(
            spec, "offline mode is on and the weights are not cached", _DOWNLOAD_HINT
        )
    if not url or any(os.environ.get(v) for v in _PROXY_VARS):
        return
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise _unavailable(
            spec, f"the weights are not cached and {host} is unreachable ({exc})", _DOWNLOAD_HINT
        ) from exc


def _pretrained_url(cfg: dict[str, Any]) -> str:
    if cfg.get("hf_hub"):
        return _hf_endpoint()
    return str(cfg.get("url") or "")


def _hf_weight_names(filename: str | None) -> list[str]:
    import open_clip

    filename = filename or open_clip.constants.HF_WEIGHTS_NAME
    return [*open_clip.pretrained._get_safe_alternatives(filename), filename]


def _cached_hf(repo: str, filenames: Sequence[str], cache_dir: str | None) -> str | None:
    """The cached path of the first of ``filenames`` in hub ``repo``, without the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for fn in filenames:
        try:
            found = try_to_load_from_cache(repo, fn, cache_dir=cache_dir)
        except Exception:
            continue
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _cached_pretrained(cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    """Where open_clip's ``download_pretrained(cfg)`` would find the weights offline, if anywhere.

    Mirrors open_clip: a local ``file``, else the hub entry (preferred), else the URL's file
    in ``cache_dir`` (default ``~/.cache/clip``).
    """
    if cfg.get("file"):
        return str(cfg["file"]) if os.path.isfile(cfg["file"]) else None
    hub = cfg.get("hf_hub")
    if hub:
        repo, filename = os.path.split(hub)
        return _cached_hf(repo, _hf_weight_names(filename or None), cache_dir)
    url = cfg.get("url")
    if url:
        target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        return str(target) if target.is_file() else None
    return None


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Keep open_clip's second look-up of already cached files off the network.

    huggingface_hub asks the Hub whether a cached file is current unless offline mode is on;
    without a network that takes minutes of retries. Offline mode is switched on for the
    duration of the call only (process-wide, under the module lock).
    """
    if not offline:
        yield
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        yield
        return
    with _LOCK:
        before = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = before


#: The tag a bare model name means when the model has a well-known default.
_DEFAULT_TAGS = {"ViT-B-32": "laion2b_s34b_b79k"}


def _default_tag(model: str, tags: Sequence[str]) -> str:
    """The tag a bare ``MODEL`` spec loads: the known default, else the first tag trained with
    the model's own activation (QuickGELU or not), else the first tag."""
    import open_clip

    if _DEFAULT_TAGS.get(model) in tags:
        return _DEFAULT_TAGS[model]
    own = bool((open_clip.get_model_config(model) or {}).get("quick_gelu"))
    for tag in tags:
        if bool(open_clip.pretrained.get_pretrained_cfg(model, tag).get("quick_gelu")) == own:
            return tag
    return tags[0]


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def _combined(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def _check_model_name(model: str, spec: str) -> str:
    import open_clip

    models = open_clip.list_models()
    if model in models:
        return model
    cleaned = model.replace("/", "-")
    if cleaned in models:
        return cleaned
    raise _unknown(
        f"unknown open_clip model {model!r} in embedder spec {spec!r}",
        did_you_mean_hint(model, models) or "",
        "open_clip.list_models() lists the model names; registered embedders: "
        + ", ".join(list_embedders()),
    )


# ---------------------------------------------------------------------------------------------
# The open_clip embedder
# ---------------------------------------------------------------------------------------------

_THREADS_SET = False


def _configure_torch() -> None:
    """Use no more torch threads than this process may run on (once per process)."""
    global _THREADS_SET
    if _THREADS_SET:
        return
    import torch

    env = os.environ.get("POPQL_NUM_THREADS")
    try:
        n = int(env) if env else len(os.sched_getaffinity(0))
    except (AttributeError, ValueError):
        n = os.cpu_count() or 1
    n = max(1, n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _THREADS_SET = True


class OpenClipEmbedder:
    """An :class:`Embedder` around an open_clip model (see :func:`load_embedder`)."""

    def __init__(
        self,
        *,
        model: Any,
        preprocess: Callable[[Any], Any],
        tokenizer: Callable[[Sequence[str]], Any],
        key: str,
        spec: str,
        identity: str,
        name: str,
        weights: Sequence[Path],
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | None = None,
    ) -> None:
        import torch

        _configure_torch()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.key = key
        self.spec = spec
        self.identity = identity
        self.name = name
        self.weights = list(weights)
        self.batch_size = int(batch_size)
        self.dim = int(self.embed_texts([""]).shape[1])

    def __repr__(self) -> str:
        return (
            f"OpenClipEmbedder(key={self.key!r}, identity={self.identity!r}, dim={self.dim},"
            f" device={str(self.device)!r})"
        )

    def renamed(self, spec: str) -> OpenClipEmbedder:
        """The same model under another spec (shares the weights)."""
        clone = object.__new__(OpenClipEmbedder)
        clone.__dict__.update(self.__dict__)
        clone.spec = spec
        return clone

    def _run(self, batches: list[Any], encode: Callable[[Any], Any]) -> np.ndarray:
        import numpy as np
        import torch

        out = []
        with torch.inference_mode():
            for x in batches:
                v = encode(x.to(self.device)).float()
                out.append(v.cpu().numpy())
        if not out:
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        arr = np.concatenate(out).astype(np.float32, copy=False)
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        return arr / np.maximum(norms, 1e-12)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB PIL images of any size (other modes are converted to RGB)."""
        import torch

        images = list(images)
        bs = max(1, self.batch_size)
        batches = []
        for i in range(0, len(images), bs):
            chunk = [im if im.mode == "RGB" else im.convert("RGB") for im in images[i : i + bs]]
            batches.append(torch.stack([self.preprocess(im) for im in chunk]))
        return self._run(batches, self.model.encode_image)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed phrases with the model's own tokenizer."""
        texts = [str(t) for t in texts]
        bs = max(1, self.batch_size)
        batches = [self.tokenizer(texts[i : i + bs]) for i in range(0, len(texts), bs)]
        return self._run(batches, self.model.encode_text)


def read_local_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``open_clip_config.json`` of a local-dir folder."""
    with (Path(folder) / "open_clip_config.json").open(encoding="utf-8") as f:
        return json.load(f)
