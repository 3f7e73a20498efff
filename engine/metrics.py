"""Metrics with 95 % confidence intervals, computed with numpy over aligned per-sample arrays.

Every metric is computed on a :class:`Frame`: the samples of one population that have both a
prediction and the ground truth the metric needs, one array entry per sample.

==================  ===========================================  ================================
metric              definition                                   interval
==================  ===========================================  ================================
``accuracy``        share of samples whose predicted ``label``   Wilson score (a proportion)
                    equals the true ``label``
``error_rate``      1 - accuracy                                 Wilson score
``precision``       macro average over the classes seen (true    percentile bootstrap
``recall``, ``f1``  or predicted), as scikit-learn's
                    ``average='macro'`` with ``zero_division=0``
``precision('c')``  one class: TP / (TP + FP), TP / (TP + FN)    Wilson score (a proportion)
``recall('c')``
``f1('c')``         one class                                    percentile bootstrap
``map50``           detection: mean over the true classes of     percentile bootstrap over
                    the average precision at IoU >= 0.5 (all-    images
                    point interpolated, greedy matching by
                    score, as Pascal VOC 2010+)
``miou``            segmentation: mean over classes of the IoU   percentile bootstrap over
                    (masks: intersection and union summed over   samples
                    samples; per-sample ``class_iou``: its mean)
``mae``             mean |``value`` - true ``target``|           percentile bootstrap
``mean(col)``       mean of a per-sample column                  percentile bootstrap
==================  ===========================================  ================================

The bootstrap resamples samples with replacement (``BOOTSTRAP`` = 1000 resamples, 200 for
``map50``) from a generator seeded with ``SEED``, so intervals are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .taggers.faces import iou_matrix  # boxes [x0, y0, x1, y1]: the faces tagger's IoU

__all__ = [
    "METRICS",
    "Frame",
    "MetricSpec",
    "MetricValue",
    "bootstrap_interval",
    "compute",
    "wilson",
]

Z95 = 1.959963984540054
SEED = 20240601
BOOTSTRAP = 1000


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k / n`` (``(nan, nan)`` when n = 0).

    >>> [round(x, 4) for x in wilson(81, 100)]
    [0.7222, 0.8749]
    """
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class Frame:
    """Aligned per-sample arrays of one population: predictions and ground truth.

    ``columns`` maps a name to a numpy array (object arrays for lists and strings):
    ``pred_label``, ``true_label``, ``pred_detections``, ``true_detections``, ``pred_value``,
    ``true_target``, ``pred_mask``, ``true_mask``, ``pred_class_iou`` and any per-sample
    column (``loss``...).
    """

    sample_ids: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    #: values shared by every resample of this frame (e.g. the number of classes)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def take(self, idx: np.ndarray) -> Frame:
        columns = {k: v[idx] for k, v in self.columns.items()}
        return Frame(self.sample_ids[idx], columns, self.meta)


@dataclass(frozen=True)
class MetricSpec:
    """A metric as written: ``accuracy``, ``precision('cat')``, ``mean(loss)``."""

    name: str
    arg: str | None = None

    @property
    def label(self) -> str:
        return self.name if self.arg is None else f"{self.name}({self.arg})"

    @property
    def higher_is_better(self) -> bool:
        return self.name not in ("mae", "error_rate")

    def needs(self) -> tuple[str, ...]:
        """The Frame columns this metric reads."""
        return METRICS[self.name].needs(self)


@dataclass(frozen=True)
class MetricValue:
    """A metric on one population: value, 95 % interval, support and the method used."""

    metric: str
    value: float
    lo: float
    hi: float
    n: int
    method: str  # "wilson" or "bootstrap"


@dataclass(frozen=True)
class _Metric:
    needs: Callable[[MetricSpec], tuple[str, ...]]
    # statistic over a whole frame (used for the value and for each bootstrap resample)
    stat: Callable[[Frame, MetricSpec], float]
    # (successes, trials) for proportions with a Wilson interval, else None
    proportion: Callable[[Frame, MetricSpec], tuple[int, int] | None] | None = None
    # per-sample contribution (paired comparisons and failure search), else None
    per_sample: Callable[[Frame, MetricSpec], np.ndarray] | None = None
    resamples: int = BOOTSTRAP


# -- classification ----------------------------------------------------------------------------


def _correct(f: Frame, _: MetricSpec) -> np.ndarray:
    return (f.columns["pred_label"] == f.columns["true_label"]).astype(np.float64)


def _accuracy(f: Frame, s: MetricSpec) -> float:
    return float(_correct(f, s).mean()) if len(f) else math.nan


def _accuracy_k(f: Frame, s: MetricSpec) -> tuple[int, int]:
    return int(_correct(f, s).sum()), len(f)


def _codes(f: Frame) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes of the true and predicted labels (computed once, kept by resamples)."""
    if "_true_code" not in f.columns:
        classes, inv = np.unique(
            np.concatenate([f.columns["true_label"], f.columns["pred_label"]]).astype(str),
            return_inverse=True,
        )
        n = len(f)
        f.columns["_true_code"] = inv[:n]
        f.columns["_pred_code"] = inv[n:]
        f.meta["classes"] = len(classes)
    return f.columns["_true_code"], f.columns["_pred_code"], int(f.meta["classes"])


def _macro(f: Frame, which: str) -> float:
    if not len(f):
        return math.nan
    t, p, k = _codes(f)
    cm = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    return cm_value(cm, which, None)


CONFUSION = ("precision", "recall", "f1")


def cm_value(cm: np.ndarray, which: str, cls: int | None) -> float:
    """precision / recall / f1 from a confusion matrix (rows: true, columns: predicted):
    macro over the classes present when ``cls`` is None, else of class index ``cls``."""
    tp = np.diag(cm).astype(np.float64)
    pred_pos = cm.sum(axis=0).astype(np.float64)
    true_pos = cm.sum(axis=1).astype(np.float64)
    if cls is not None:
        if cls < 0:
            return math.nan
        t, pp, tt = tp[cls], pred_pos[cls], true_pos[cls]
        if which == "precision":
            return t / pp if pp else math.nan
        if which == "recall":
            return t / tt if tt else math.nan
        return 2 * t / (pp + tt) if pp + tt else math.nan
    seen = (pred_pos + true_pos) > 0
    if not seen.any():
        return math.nan
    tp, pred_pos, true_pos = tp[seen], pred_pos[seen], true_pos[seen]
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(pred_pos > 0, tp / pred_pos, 0.0)
        rec = np.where(true_pos > 0, tp / true_pos, 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    return float({"precision": prec, "recall": rec, "f1": f1}[which].mean())


def _cells_bootstrap(
    keys: np.ndarray, statistic: Callable[[np.ndarray], float], resamples: int, seed: int = SEED
) -> np.ndarray:
    """Bootstrap of a statistic of categorical per-sample ``keys`` (e.g. confusion cells).

    Resampling n samples with replacement is the same as drawing the counts of the distinct
    keys from a multinomial with the observed frequencies, which costs O(#keys) instead of
    O(n) per resample. ``statistic`` gets the counts aligned with ``np.unique(keys)``."""
    n = len(keys)
    values = np.full(resamples, math.nan)
    if n == 0:
        return values
    _, counts = np.unique(keys, return_counts=True)
    rng = np.random.default_rng(seed)
    probs = counts / n
    for i in range(resamples):
        values[i] = statistic(rng.multinomial(n, probs))
    return values


def _one_class(f: Frame, cls: str) -> tuple[int, int, int]:
    t = f.columns["true_label"].astype(str) == cls
    p = f.columns["pred_label"].astype(str) == cls
    return int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())


def _prf(which: str) -> _Metric:
    def stat(f: Frame, s: MetricSpec) -> float:
        if s.arg is None:
            return _macro(f, which)
        tp, fp, fn = _one_class(f, s.arg)
        if which == "precision":
            return tp / (tp + fp) if tp + fp else math.nan
        if which == "recall":
            return tp / (tp + fn) if tp + fn else math.nan
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan

    def proportion(f: Frame, s: MetricSpec) -> tuple[int, int] | None:
        if s.arg is None:  # a macro average is not a proportion
            return None
        tp, fp, fn = _one_class(f, s.arg)
        return (tp, tp + fp) if which == "precision" else (tp, tp + fn)

    return _Metric(
        needs=lambda s: ("pred_label", "true_label"),
        stat=stat,
        proportion=None if which == "f1" else proportion,
    )


# -- detection ---------------------------------------------------------------------------------


def match_detections(
    preds: Sequence[dict[str, Any]] | None, truth: Sequence[dict[str, Any]] | None, iou: float = 0.5
) -> list[tuple[str, float, bool]]:
    """Greedy matching of one image's predicted boxes to its true boxes, per class, by
    descending score: ``(label, score, is_true_positive)`` for each prediction."""
    preds = list(preds or [])
    truth = [t for t in (truth or []) if not t.get("iscrowd")]
    out: list[tuple[str, float, bool]] = []
    for label in {str(p["label"]) for p in preds}:
        ps = sorted(
            (p for p in preds if str(p["label"]) == label),
            key=lambda p: -float(p.get("score") or 0.0),
        )
        ts = [t for t in truth if str(t["label"]) == label]
        if not ts:
            out.extend((label, float(p.get("score") or 0.0), False) for p in ps)
            continue
        m = iou_matrix(
            np.array([p["box"] for p in ps], dtype=np.float64).reshape(-1, 4),
            np.array([t["box"] for t in ts], dtype=np.float64).reshape(-1, 4),
        )
        taken = np.zeros(len(ts), dtype=bool)
        for i, p in enumerate(ps):
            row = np.where(taken, -1.0, m[i])
            j = int(np.argmax(row))
            hit = row[j] >= iou
            if hit:
                taken[j] = True
            out.append((label, float(p.get("score") or 0.0), bool(hit)))
    return out


def average_precision(scores: np.ndarray, tp: np.ndarray, n_true: int) -> float:
    """All-point interpolated AP (Pascal VOC 2010+) of predictions ranked by score."""
    if n_true == 0:
        return math.nan
    if not len(scores):
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = tp[order].astype(np.float64)
    ctp = np.cumsum(tp)
    cfp = np.cumsum(1 - tp)
    recall = ctp / n_true
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def _map50(f: Frame, _: MetricSpec) -> float:
    if not len(f):
        return math.nan
    per_image = f.columns.get("_matches")
    if per_image is None:
        per_image = np.array(
            [
                match_detections(p, t)
                for p, t in zip(
                    f.columns["pred_detections"], f.columns["true_detections"], strict=True
                )
            ],
            dtype=object,
        )
        f.columns["_matches"] = per_image
    counts: dict[str, int] = {}
    for truth in f.columns["true_detections"]:
        for t in truth or []:
            if not t.get("iscrowd"):
                counts[str(t["label"])] = counts.get(str(t["label"]), 0) + 1
    if not counts:
        return math.nan
    by_label: dict[str, list[tuple[float, bool]]] = {}
    for matches in per_image:
        for label, score, hit in matches:
            by_label.setdefault(label, []).append((score, hit))
    aps = []
    for label, n_true in counts.items():
        rows = by_label.get(label, [])
        scores = np.array([r[0] for r in rows], dtype=np.float64)
        hits = np.array([r[1] for r in rows], dtype=bool)
        aps.append(average_precision(scores, hits, n_true))
    return float(np.mean(aps))


# -- segmentation ------------------------------------------------------------------------------


def _miou(f: Frame, _: MetricSpec) -> float:
    if not len(f):
        return math.nan
    if "pred_mask" in f.columns and "true_mask" in f.columns:
        inter: dict[int, float] = {}
        union: dict[int, float] = {}
        for p, t in zip(f.columns["pred_mask"], f.columns["true_mask"], strict=True):
            if p is None or t is None:
                continue
            p = np.asarray(p)
            t = np.asarray(t)
            for c in np.union1d(np.unique(p), np.unique(t)):
                pc_, tc = p == c, t == c
                inter[int(c)] = inter.get(int(c), 0.0) + float((pc_ & tc).sum())
                union[int(c)] = union.get(int(c), 0.0) + float((pc_ | tc).sum())
        ious = [inter[c] / union[c] for c in union if union[c] > 0]
        return float(np.mean(ious)) if ious else math.nan
    sums: dict[str, list[float]] = {}
    for row in f.columns["pred_class_iou"]:
        for item in row or []:
            if item.get("iou") is not None:
                sums.setdefault(str(item["label"]), []).append(float(item["iou"]))
    return float(np.mean([np.mean(v) for v in sums.values()])) if sums else math.nan


def _miou_needs(s: MetricSpec) -> tuple[str, ...]:
    return ("pred_mask|pred_class_iou",)


# -- regression and per-sample scores ----------------------------------------------------------


def _abs_err(f: Frame, _: MetricSpec) -> np.ndarray:
    return np.abs(
        f.columns["pred_value"].astype(np.float64) - f.columns["true_target"].astype(np.float64)
    )


def _mae(f: Frame, s: MetricSpec) -> float:
    return float(_abs_err(f, s).mean()) if len(f) else math.nan


def _column(f: Frame, s: MetricSpec) -> np.ndarray:
    return f.columns[f"col:{s.arg}"].astype(np.float64)


def _mean(f: Frame, s: MetricSpec) -> float:
    return float(_column(f, s).mean()) if len(f) else math.nan


METRICS: dict[str, _Metric] = {
    "accuracy": _Metric(
        needs=lambda s: ("pred_label", "true_label"),
        stat=_accuracy,
        proportion=_accuracy_k,
        per_sample=_correct,
    ),
    "error_rate": _Metric(
        needs=lambda s: ("pred_label", "true_label"),
        stat=lambda f, s: 1.0 - _accuracy(f, s),
        proportion=lambda f, s: (len(f) - _accuracy_k(f, s)[0], len(f)),
        per_sample=lambda f, s: 1.0 - _correct(f, s),
    ),
    "precision": _prf("precision"),
    "recall": _prf("recall"),
    "f1": _prf("f1"),
    "map50": _Metric(
        needs=lambda s: ("pred_detections", "true_detections"), stat=_map50, resamples=200
    ),
    "miou": _Metric(needs=_miou_needs, stat=_miou),
    "mae": _Metric(needs=lambda s: ("pred_value", "true_target"), stat=_mae, per_sample=_abs_err),
    "mean": _Metric(needs=lambda s: (f"col:{s.arg}",), stat=_mean, per_sample=_column),
}

#: Metrics that take one argument (a class for precision/recall/f1, a column for mean).
TAKES_ARG = {"precision": False, "recall": False, "f1": False, "mean": True}


def per_sample(f: Frame, spec: MetricSpec) -> np.ndarray | None:
    """The metric's per-sample values (mean = the metric), or None when it has none."""
    m = METRICS[spec.name]
    if m.per_sample is not None:
        return m.per_sample(f, spec)
    return None


def bootstrap_interval(
    f: Frame, statistic: Callable[[Frame], float], resamples: int = BOOTSTRAP, seed: int = SEED
) -> tuple[float, float]:
    """95 % percentile bootstrap interval of ``statistic`` over resamples of ``f``'s samples."""
    n = len(f)
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for i in range(resamples):
        values[i] = statistic(f.take(rng.integers(0, n, n)))
    values = values[~np.isnan(values)]
    if not len(values):
        return (math.nan, math.nan)
    lo, hi = np.quantile(values, [0.025, 0.975])
    return (float(lo), float(hi))


def compute(f: Frame, spec: MetricSpec) -> MetricValue:
    """``spec`` on ``f`` with its 95 % interval."""
    m = METRICS[spec.name]
    value = m.stat(f, spec)
    counts = m.proportion(f, spec) if m.proportion is not None else None
    if counts is not None:
        lo, hi = wilson(*counts)
        return MetricValue(spec.label, value, lo, hi, len(f), "wilson")
    vals = per_sample(f, spec)
    if vals is not None:
        lo, hi = _mean_bootstrap(vals, m.resamples)
    elif spec.name in CONFUSION and len(f):
        t, p, k = _codes(f)
        cell = t * k + p
        uniq = np.unique(cell)
        cls = _class_code(f, spec.arg)

        def stat(counts: np.ndarray) -> float:
            cm = np.bincount(uniq, weights=counts, minlength=k * k).reshape(k, k)
            return cm_value(cm, spec.name, cls)

        lo, hi = _interval(_cells_bootstrap(cell, stat, m.resamples))
    else:
        lo, hi = bootstrap_interval(f, lambda g: m.stat(g, spec), m.resamples)
    return MetricValue(spec.label, value, lo, hi, len(f), "bootstrap")


def _class_code(f: Frame, cls: str | None) -> int | None:
    """The code of class ``cls`` in ``f``'s codes (-1: absent), None for a macro average."""
    if cls is None:
        return None
    _codes(f)
    both = np.concatenate([f.columns["true_label"], f.columns["pred_label"]]).astype(str)
    classes = np.unique(both)
    hit = np.nonzero(classes == cls)[0]
    return int(hit[0]) if len(hit) else -1


def _interval(values: np.ndarray) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if not len(values):
        return (math.nan, math.nan)
    lo, hi = np.quantile(values, [0.025, 0.975])
    return (float(lo), float(hi))


def _mean_bootstrap(values: np.ndarray, resamples: int, seed: int = SEED) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for i in range(resamples):
        means[i] = values[rng.integers(0, n, n)].mean()
    lo, hi = np.quantile(means, [0.025, 0.975])
    return (float(lo), float(hi))


# -- paired comparison -------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """``new - base`` on the same samples, its 95 % interval and a two-sided p-value."""

    metric: str
    base: float
    new: float
    diff: float
    lo: float
    hi: float
    p_value: float
    n: int
    test: str  # "mcnemar" or "paired bootstrap"


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c``."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    # P(X <= k) for X ~ Binomial(n, 1/2), doubled
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def compare(base: Frame, new: Frame, spec: MetricSpec, seed: int = SEED) -> Difference:
    """Paired comparison of two models' frames (same samples, same order)."""
    m = METRICS[spec.name]
    v_base = m.stat(base, spec)
    v_new = m.stat(new, spec)
    n = len(base)
    rng = np.random.default_rng(seed)
    resamples = m.resamples
    diffs = np.empty(resamples)
    pb, pn = per_sample(base, spec), per_sample(new, spec)
    if spec.name in CONFUSION and pb is None and n:
        diffs = _paired_confusion(base, new, spec, resamples, seed)
    else:
        for i in range(resamples):
            idx = rng.integers(0, n, n) if n else np.array([], dtype=np.int64)
            if pb is not None and pn is not None:
                diffs[i] = pn[idx].mean() - pb[idx].mean() if n else math.nan
            else:
                diffs[i] = m.stat(new.take(idx), spec) - m.stat(base.take(idx), spec)
    diffs = diffs[~np.isnan(diffs)]
    lo, hi = (
        (float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975)))
        if len(diffs)
        else (math.nan, math.nan)
    )
    if spec.name in ("accuracy", "error_rate") and pb is not None and pn is not None:
        b = int(((pb == 1) & (pn == 0)).sum())
        c = int(((pb == 0) & (pn == 1)).sum())
        p = mcnemar_exact(b, c)
        test = "mcnemar"
    else:
        if len(diffs):
            # two-sided, with the +1 correction so that p is never 0 from finite resamples
            tail = min(int((diffs <= 0).sum()), int((diffs >= 0).sum()))
            p = min(1.0, 2.0 * (tail + 1) / (len(diffs) + 1))
        else:
            p = math.nan
        test = "paired bootstrap"
    return Difference(spec.label, v_base, v_new, v_new - v_base, lo, hi, p, n, test)


def _paired_confusion(
    base: Frame, new: Frame, spec: MetricSpec, resamples: int, seed: int
) -> np.ndarray:
    """Paired bootstrap of ``new - base`` for confusion metrics, over the joint cells
    (true, base prediction, new prediction) of each sample (see :func:`_cells_bootstrap`)."""
    truth = base.columns["true_label"].astype(str)
    pb = base.columns["pred_label"].astype(str)
    pn = new.columns["pred_label"].astype(str)
    classes, inv = np.unique(np.concatenate([truth, pb, pn]), return_inverse=True)
    k = len(classes)
    n = len(truth)
    t, b, c = inv[:n], inv[n : 2 * n], inv[2 * n :]
    joint = (t * k + b) * k + c
    uniq = np.unique(joint)
    ut, ub, uc = uniq // (k * k), (uniq // k) % k, uniq % k
    cls: int | None = None
    if spec.arg is not None:
        hit = np.nonzero(classes == spec.arg)[0]
        cls = int(hit[0]) if len(hit) else -1

    def stat(counts: np.ndarray) -> float:
        cm_b = np.bincount(ut * k + ub, weights=counts, minlength=k * k).reshape(k, k)
        cm_n = np.bincount(ut * k + uc, weights=counts, minlength=k * k).reshape(k, k)
        return cm_value(cm_n, spec.name, cls) - cm_value(cm_b, spec.name, cls)

    return _cells_bootstrap(joint, stat, resamples, seed)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    idx = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: p_values[i])
    m = len(order)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out
