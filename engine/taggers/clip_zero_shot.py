"""``clip_zero_shot``: label images with user-declared label sets through a CLIP embedder.

For every label set (``{"weather": ["sunny", "rainy", ...], "scene": ["indoor", "outdoor"]}``)
the tagger writes two columns: ``<set>`` (string), the label whose prompt embedding is closest
to the image embedding, and ``<set>_score`` (float), its softmax probability among the set's
labels at CLIP's temperature (``logit_scale`` 100: cosine similarities x 100).

A label set is a list of labels (each prompted through ``template``, ``"a photo of {}."``) or a
mapping ``{label: prompt}`` / ``{label: [prompts...]}`` (several prompts are averaged, the usual
prompt ensemble). The embedder follows ``popql.engine.embedders``' contract (``embed_images`` /
``embed_texts`` return L2-normalised float32 rows); pass an instance, a spec string for
``load_embedder``, or nothing for ``DEFAULT_EMBEDDER`` (loaded on first use, so registering
the tagger never needs the weights).

The version is ``1-<8 hex>`` of the embedder's identity (or spec), the prompts, the template
and the temperature: other label sets or another model write another ``tags`` table.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from popql.diagnostics import Diagnostic, PopQLError

from . import ImageInput, _normalise_columns, register_tagger, register_tagger_factory

#: Label sets of the registered ``clip_zero_shot`` tagger (with prompts that read well).
DEFAULT_LABEL_SETS: dict[str, dict[str, str]] = {
    "weather": {
        "sunny": "a photo taken on a sunny day",
        "rainy": "a photo taken in the rain",
        "snowy": "a photo of a snowy scene",
        "foggy": "a photo taken in fog",
        "night": "a photo taken at night",
    },
    "scene": {
        "indoor": "a photo taken indoors",
        "outdoor": "a photo taken outdoors",
    },
}

DEFAULT_TEMPLATE = "a photo of {}."


def _default_embedder() -> str:
    """``popql.engine.embedders.DEFAULT_EMBEDDER`` (the contract's value if it cannot load)."""
    try:
        from popql.engine.embedders import DEFAULT_EMBEDDER
    except ImportError:  # pragma: no cover - embedders is part of the same package
        return "ViT-B-32:laion2b_s34b_b79k"
    return str(DEFAULT_EMBEDDER)


def _prompts(
    label_sets: Mapping[str, Sequence[str] | Mapping[str, str | Sequence[str]]], template: str
) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for set_name, labels in label_sets.items():
        entries: dict[str, list[str]] = {}
        if isinstance(labels, Mapping):
            for label, prompt in labels.items():
                entries[str(label)] = [prompt] if isinstance(prompt, str) else list(prompt)
        elif isinstance(labels, str):
            raise PopQLError(
                Diagnostic("T005", f"label set '{set_name}' must be a list of labels, not a string")
            )
        else:
            for label in labels:
                entries[str(label)] = [template.format(label)]
        if len(entries) < 2:
            raise PopQLError(
                Diagnostic(
                    "T005",
                    f"label set '{set_name}' needs at least two labels (got {len(entries)})",
                )
            )
        if any(not p for p in entries.values()):
            raise PopQLError(Diagnostic("T005", f"label set '{set_name}': a label has no prompt"))
        out[str(set_name)] = entries
    if not out:
        raise PopQLError(Diagnostic("T005", "clip_zero_shot needs at least one label set"))
    return out


class ClipZeroShotTagger:
    """Zero-shot labels from a CLIP embedder (see the module docstring)."""

    def __init__(
        self,
        embedder: Any = None,
        label_sets: Mapping[str, Sequence[str] | Mapping[str, str | Sequence[str]]] | None = None,
        *,
        name: str = "clip_zero_shot",
        template: str = DEFAULT_TEMPLATE,
        logit_scale: float = 100.0,
        batch_size: int | None = None,
    ) -> None:
        self.prompts = _prompts(DEFAULT_LABEL_SETS if label_sets is None else label_sets, template)
        self._embedder = embedder
        self._spec: str | None = embedder if isinstance(embedder, str) else None
        if embedder is None:
            self._spec = _default_embedder()
            self._embedder = None
        elif isinstance(embedder, str):
            self._embedder = None
        self.logit_scale = float(logit_scale)
        identity = (
            self._spec
            if self._embedder is None
            else getattr(self._embedder, "identity", type(self._embedder).__qualname__)
        )
        blob = json.dumps(
            {"embedder": identity, "prompts": self.prompts, "scale": self.logit_scale},
            sort_keys=True,
        )
        self.name = name
        self.version = f"1-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"
        cols: dict[str, Any] = {}
        for set_name in self.prompts:
            cols[set_name] = pa.string()
            cols[f"{set_name}_score"] = pa.float32()
        self.columns = _normalise_columns(name, cols)
        self.batch_size = int(batch_size or getattr(self._embedder, "batch_size", 0) or 32)
        self._lock = threading.Lock()
        self._text: dict[str, tuple[list[str], Any]] | None = None

    @property
    def label_sets(self) -> dict[str, list[str]]:
        """``{set: [labels...]}``."""
        return {s: list(labels) for s, labels in self.prompts.items()}

    def embedder(self) -> Any:
        """The embedder, loaded from its spec on first use."""
        with self._lock:
            if self._embedder is None:
                from popql.engine.embedders import load_embedder

                self._embedder = load_embedder(self._spec or "")
            return self._embedder

    def text_embeddings(self) -> dict[str, tuple[list[str], Any]]:
        """``{set: (labels, (k, dim) unit vectors)}``, computed once."""
        import numpy as np

        emb = self.embedder()
        if self._text is None:
            out: dict[str, tuple[list[str], Any]] = {}
            for set_name, entries in self.prompts.items():
                labels = list(entries)
                flat = [p for label in labels for p in entries[label]]
                vecs = np.asarray(emb.embed_texts(flat), dtype=np.float32)
                rows, start = [], 0
                for label in labels:
                    n = len(entries[label])
                    v = vecs[start : start + n].mean(axis=0)
                    rows.append(v / max(float(np.linalg.norm(v)), 1e-12))
                    start += n
                out[set_name] = (labels, np.stack(rows))
            self._text = out
        return self._text

    def __call__(self, batch: list[ImageInput]) -> list[dict[str, Any]]:
        import numpy as np

        if not batch:
            return []
        text = self.text_embeddings()
        images = np.asarray(
            self.embedder().embed_images([item.image for item in batch]), dtype=np.float32
        )
        rows: list[dict[str, Any]] = [{} for _ in batch]
        for set_name, (labels, vecs) in text.items():
            logits = self.logit_scale * (images @ vecs.T)
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            best = probs.argmax(axis=1)
            for row, i, p in zip(rows, best, probs, strict=True):
                row[set_name] = labels[int(i)]
                row[f"{set_name}_score"] = float(p[i])
        return rows

    def __repr__(self) -> str:
        return f"<tagger {self.name}@{self.version} sets={list(self.prompts)}>"


register_tagger(ClipZeroShotTagger())
register_tagger_factory("clip_zero_shot", ClipZeroShotTagger)
