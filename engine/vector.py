"""Vector search over one embedder's vectors: exact scans, usearch HNSW, and a filter-aware planner.

This is the core that ``SIMILAR TO``, ``NEAR IMAGE`` and ``NEAR SAMPLE`` run on
(``docs/vector-search.md``). A :class:`VectorIndex` holds, for one embedder:

* ``keys``: the int64 sample keys (``sample_key`` of ``embeddings.<key>``), one per row;
* the float16 matrix of the vectors (row ``i`` is the vector of ``keys[i]``), used by exact scans;
* a usearch HNSW index (cosine, f16, integer keys = the sample keys), used by approximate search.

:meth:`VectorIndex.search` takes a query (positive examples averaged, negative examples
subtracted, renormalised), ``k`` (top-k) and/or ``threshold`` (score at least t), and the allowed
rows (the rows that pass the other predicates of the query: a bool mask aligned with
:attr:`VectorIndex.keys`, an array of int64 keys, or ``None`` for all), and returns a
:class:`SearchResult`: keys, cosine scores, the strategy chosen and the reason, for ``EXPLAIN``.

Strategies (see :meth:`VectorIndex.plan`):

``exact``
    Brute force over the allowed rows (read in place through the mask by the compiled scan, or
    gathered for usearch's kernel). Chosen when the filter is selective enough that scanning the
    candidates costs less than an HNSW search that would find ``k`` of them (below the
    *crossover* selectivity, about 2-10 % depending on the number of rows and ``k``), for every
    threshold query (HNSW cannot prove that it missed no row above the threshold), when
    ``EXACT`` is asked for, and as the fallback of the approximate strategies.
``hnsw``
    Plain HNSW search when nothing is filtered out.
``hnsw-filtered``
    With the compiled kernels: an HNSW search with the filter inside the graph (every node is
    traversed, only allowed rows enter the result list), accepted unless the allowed rows it met
    were much sparser than the selectivity predicts (a filter anti-correlated with the query) or
    it spent the exact scan's predicted cost; then the exact scan answers. Without them: HNSW
    search oversampled by ``k * oversample / selectivity``, the hits re-checked against the
    allowed rows, and widened (the count doubled) until ``k`` allowed hits are found within the
    first ``1 / margin`` of the list, or until one more round would cost more than the exact
    scan, which then answers. Either way a top-k query returns ``k`` rows whenever ``k`` rows
    pass the filter: never silently fewer.
``empty``
    No allowed row, ``k = 0``, or an empty index.

The compiled kernels (``engine/_vecscan.c``, an optional extension built by ``pip install``;
``POPQL_VECSCAN=0`` or ``index.compiled = False`` turns them off) scan the float16 matrix in
place (memory-mapped, no gather, AVX2/F16C when the CPU has them, 2 threads on large scans) and
walk the HNSW graph as usearch saved it. Without them, exact scans use usearch's SIMD cosine
kernel on the gathered float16 rows (``usearch.index.search(..., exact=True)``): numpy's float16
-> float32 conversion runs at about 2.7 ns per element on the 2-core development machine
(scalar code), 10x slower than the kernel itself, so a numpy matrix product over converted
blocks loses by an order of magnitude. Every returned score is then recomputed in float64 with
numpy from the stored float16 vector and the float32 query (``dot(x, q) / (|x| |q|)``, rounded
to float32), so that results equal an independent numpy computation whatever strategy and code
path produced them, and ties are broken by key (smaller first). The kernels' scores are within
:func:`compiled_kernel_eps` (compiled) or :data:`KERNEL_EPS` (usearch: float16 query, float32
sums) of the exact ones; the exact strategies widen their candidate list until that bound
proves that no unreturned row can enter the top-k (or pass the threshold).

Nothing here imports DataFusion; numpy and usearch are imported when this module is.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np


def _load_vecscan() -> Any:
    """The optional compiled kernels (engine/_vecscan.c), or None when they were not built or
    ``POPQL_VECSCAN=0`` is set (then usearch's kernel and post-filtered search are used)."""
    if os.environ.get("POPQL_VECSCAN", "1") == "0":
        return None
    try:
        from . import _vecscan as mod  # type: ignore[attr-defined]
    except ImportError:
        return None
    return mod


_vecscan = _load_vecscan()

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "KERNEL_EPS",
    "CostModel",
    "SearchPlan",
    "SearchResult",
    "VectorIndex",
    "combine_query",
    "compiled_kernel_eps",
]

#: Bound on |usearch kernel score - exact score| for unit-norm float16 vectors: the query is cast
#: to float16 by the kernel (|q - f16(q)| <= 2**-11 |q|, so at most ~5e-4 on the score) and sums
#: run in float32 (~1e-5 for 4096 dimensions). 4e-3 leaves a wide margin; it only costs a few
#: more rows rescored.
KERNEL_EPS = 1.5e-3


def compiled_kernel_eps(dim: int) -> float:
    """Bound on |compiled kernel score - exact score|: the kernel reads the float16 values
    exactly, rounds the unit query to float32 (at most 2**-24 relative per component) and sums in
    float32; the classic bound for n-term float32 sums is ``n * 2**-24`` relative to ``sum |x_i
    q_i| <= |x| |q|``, for the dot product and the squared norm alike, so the cosine is off by
    at most ``(1.5 n + 3) * 2**-24``. Three times that, plus 1e-5, is used."""
    return 1e-5 + 3 * (1.5 * dim + 3) * 2.0**-24


_STRATEGIES = ("exact", "hnsw", "hnsw-filtered", "empty")
_USEARCH_DEFAULT_EF = 64
_CPUS = os.cpu_count() or 1  # os.cpu_count() costs ~15 us a call, once per search


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _fmt_pct(x: float) -> str:
    pct = 100.0 * x
    if pct == 0:
        return "0 %"
    if pct >= 10:
        return f"{pct:.0f} %"
    if pct >= 1:
        return f"{pct:.1f} %"
    if pct >= 0.01:
        return f"{pct:.2f} %"
    return f"{pct:.2g} %"


def _fmt_ms(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us < 10_000 else f"{us / 1000:.0f} ms"


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------


def _as_matrix(vectors: Any, what: str) -> np.ndarray:
    arr = np.asarray(vectors)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a vector or a matrix of vectors, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def combine_query(positives: Any, negatives: Any = None, *, dim: int | None = None) -> np.ndarray:
    """One unit query vector (float64) from examples: the mean of the (normalised) positive
    vectors minus the mean of the (normalised) negative vectors, renormalised.

    ``positives`` and ``negatives`` are vectors ``(dim,)`` or matrices ``(n, dim)``; at least one
    positive is needed. Raises ``ValueError`` on a wrong dimension, non-finite values, a zero
    vector, or examples that cancel out.
    """
    if negatives is None and isinstance(positives, np.ndarray) and positives.ndim == 1:
        # the common case, one example: normalise it
        v = positives.astype(np.float64)
        if dim is not None and v.shape[0] != dim:
            raise ValueError(f"positive examples have dimension {v.shape[0]}, the index has {dim}")
        norm = float(np.sqrt(v @ v))
        if not math.isfinite(norm):
            raise ValueError("positive examples contain NaN or infinite values")
        if norm == 0:
            raise ValueError("positive examples contain a zero vector (no direction)")
        return v / norm
    pos = _as_matrix(positives, "positive examples")
    if pos.shape[0] == 0:
        raise ValueError("a query needs at least one positive example")
    parts = [("positive examples", pos)]
    neg = None
    if negatives is not None:
        neg = _as_matrix(negatives, "negative examples")
        if neg.shape[0] == 0:
            neg = None
        else:
            parts.append(("negative examples", neg))
    want = dim if dim is not None else pos.shape[1]
    for what, arr in parts:
        if arr.shape[1] != want:
            raise ValueError(f"{what} have dimension {arr.shape[1]}, the index has {want}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{what} contain NaN or infinite values")

    def unit_mean(arr: np.ndarray, what: str) -> np.ndarray:
        norms = np.linalg.norm(arr, axis=1)
        if np.any(norms == 0):
            raise ValueError(f"{what} contain a zero vector (no direction)")
        return (arr / norms[:, None]).mean(axis=0)

    q = unit_mean(pos, "positive examples")
    if neg is not None:
        q = q - unit_mean(neg, "negative examples")
    norm = float(np.linalg.norm(q))
    if not norm > 1e-9:
        raise ValueError(
            "the positive and negative examples cancel out: the query has no direction"
        )
    return q / norm


# ---------------------------------------------------------------------------------------------
# Plans and results
# ---------------------------------------------------------------------------------------------


@dataclass
class CostModel:
    """Predicted latency of the strategies, in microseconds, for one query.

    Measured on the 2-core development machine (``benchmarks/bench_vector.py`` prints the
    figures, :meth:`VectorIndex.calibrate` re-measures them for one index).

    With the compiled kernels (``popql.engine._vecscan``):

    * exact scan of ``m`` rows read in place: ``cscan_overhead_us + m * per_row``, where
      ``per_row = cscan_us_per_row`` for rows scattered through the matrix (a filter: every row
      touches its own pages) and ``cscan_dense_us_per_row`` for the whole matrix (sequential),
      divided by ``threads`` above ``VectorIndex.parallel_rows_compiled`` rows;
    * HNSW search with the filter inside the graph, ``ef`` allowed results, selectivity ``s``:
      ``graph_overhead_us + graph_us_per_visit * visits`` with ``visits = ef *
      (graph_visits_per_ef + graph_visits_per_ef_sel / s)`` distance computations (to collect
      ``ef`` allowed rows the search walks about ``1 / s`` rows per allowed one).

    Without them (usearch + numpy):

    * exact scan of ``m`` rows: ``exact_overhead_us + m * (scan_us_per_row + gather)``, where
      ``gather = gather_us_per_row`` when the allowed rows must first be copied out of the
      matrix (a filter), 0 for the whole matrix;
    * HNSW search returning ``count`` rows: ``hnsw_overhead_us + hnsw_us_per_count *
      max(count, ef)`` (the search visits about ``max(count, ef)`` nodes and computes their
      neighbours' distances: random accesses, so a count costs ~10-20 scanned rows).
    """

    scan_us_per_row: float = 0.16
    gather_us_per_row: float = 0.10
    exact_overhead_us: float = 60.0
    hnsw_us_per_count: float = 3.0
    hnsw_overhead_us: float = 60.0
    cscan_us_per_row: float = 0.20
    cscan_dense_us_per_row: float = 0.09
    cscan_overhead_us: float = 25.0
    graph_us_per_visit: float = 0.40
    graph_overhead_us: float = 40.0
    graph_visits_per_ef: float = 2.0
    graph_visits_per_ef_sel: float = 4.0

    def exact(
        self, rows: int, *, gathered: bool, compiled: bool = False, threads: int = 1
    ) -> float:
        if compiled:
            per_row = self.cscan_us_per_row if gathered else self.cscan_dense_us_per_row
            return self.cscan_overhead_us + rows * per_row / max(1, threads)
        per_row = self.scan_us_per_row + (self.gather_us_per_row if gathered else 0.0)
        return self.exact_overhead_us + rows * per_row

    def hnsw(self, count: int, ef: int) -> float:
        return self.hnsw_overhead_us + self.hnsw_us_per_count * max(count, ef)

    def graph_visits(self, ef: int, selectivity: float) -> float:
        return ef * (
            self.graph_visits_per_ef + self.graph_visits_per_ef_sel / max(selectivity, 1e-9)
        )

    def graph(self, ef: int, selectivity: float) -> float:
        return self.graph_overhead_us + self.graph_us_per_visit * self.graph_visits(ef, selectivity)


@dataclass(frozen=True)
class SearchPlan:
    """What :meth:`VectorIndex.search` will do, decided before running (``EXPLAIN``)."""

    strategy: str  # one of "exact", "hnsw", "hnsw-filtered", "empty"
    reason: str
    rows: int  # vectors in the index
    allowed: int  # rows that pass the filter
    k: int | None
    threshold: float | None
    count: int = 0  # HNSW: the first count asked for
    crossover: float | None = None  # selectivity below which an exact scan wins (top-k)
    est_exact_us: float | None = None
    est_hnsw_us: float | None = None
    forced: bool = False  # approximate=True: no cost-based fall-back to an exact scan
    graph: bool = False  # hnsw-filtered: the compiled search with the filter inside the graph
    kernel: str = "usearch"  # "compiled" (engine/_vecscan.c) or "usearch" (+ numpy)

    @property
    def selectivity(self) -> float:
        return self.allowed / self.rows if self.rows else 0.0


@dataclass
class SearchResult:
    """Matches, best first: ``keys`` (int64) and ``scores`` (float32 cosine similarities in
    [-1, 1], descending; ties by ascending key). ``strategy`` and ``reason`` say what was done
    and why (``EXPLAIN``), ``stats`` the numbers behind it."""

    keys: np.ndarray
    scores: np.ndarray
    strategy: str
    reason: str
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def to_arrow(self, key_name: str = "sample_key", score_name: str = "score") -> pa.Table:
        """The matches as an Arrow table ``(sample_key int64, score float32)``."""
        import pyarrow as pa

        return pa.table(
            {
                key_name: pa.array(self.keys, pa.int64()),
                score_name: pa.array(self.scores, pa.float32()),
            }
        )

    def explain(self) -> str:
        """One line for EXPLAIN: the strategy and why."""
        return f"{self.strategy}: {self.reason}"


# ---------------------------------------------------------------------------------------------
# usearch files
# ---------------------------------------------------------------------------------------------


def _usearch() -> Any:
    try:
        import usearch.index as ui
    except ImportError as exc:  # pragma: no cover - usearch is a dependency of the models extra
        raise ImportError(
            "vector search needs usearch: pip install -e '.[models]' (or pip install usearch)"
        ) from exc
    return ui


@dataclass(frozen=True)
class _Graph:
    """The layout of a saved usearch (2.x) dense index, read in place by the compiled filtered
    HNSW search: the file's bytes, where each slot's node starts, and the graph's header."""

    raw: np.ndarray  # uint8: the whole file (memory-mapped) or a saved buffer
    matrix_offset: int
    rows: int
    slot_keys: np.ndarray  # int64 key of each slot
    starts: np.ndarray  # int64 byte offset of each slot's node
    conn: int
    conn_base: int
    slot_bytes: int
    max_level: int
    entry: int

    def level0_neighbours(self, slot: int) -> np.ndarray:
        """The level-0 neighbour slots of a node."""
        p = int(self.starts[slot]) + 10
        count = int(np.frombuffer(self.raw[p : p + 4].tobytes(), dtype=np.uint32)[0])
        raw = np.asarray(self.raw[p + 4 : p + 4 + count * self.slot_bytes]).reshape(count, -1)
        if self.slot_bytes == 4:
            return raw.copy().view(np.uint32).reshape(-1).astype(np.int64)
        wide = np.zeros((count, 8), np.uint8)
        wide[:, : self.slot_bytes] = raw
        return wide.view(np.int64).reshape(-1)


def _parse_graph(
    raw: np.ndarray, dim: int, *, rows_expected: int | None, slot_bytes_options: tuple[int, ...]
) -> _Graph | None:
    """Parse a saved usearch (2.x) dense index with float16 vectors included, or None when the
    layout is not the one understood here (then callers copy the vectors out through usearch
    and use usearch's own search).

    The file is ``[rows, bytes per row]`` (u32 each, u64 with 64-bit dimensions), the vectors in
    slot order, a 64-byte head, the HNSW header (size, connectivity, connectivity_base,
    max_level, entry_slot: u64 each), the level of each slot (i16), then one node per slot:
    key (u64), level (i16), and per level 0..L a neighbour count (u32) and the neighbours' slots
    (connectivity_base at level 0, connectivity above).
    """
    size = len(raw)
    for wide in (False, True):
        head_t = np.uint64 if wide else np.uint32
        offset = 16 if wide else 8
        if size < offset:
            return None
        rows, row_bytes = (int(x) for x in np.frombuffer(raw[:offset].tobytes(), dtype=head_t))
        if row_bytes == 2 * dim and (rows_expected is None or rows == rows_expected):
            break
    else:
        return None
    pos = offset + rows * row_bytes
    if raw[pos : pos + 7].tobytes() != b"usearch":
        return None
    pos += 64
    hdr = np.frombuffer(raw[pos : pos + 40].tobytes(), dtype=np.uint64)
    if len(hdr) != 5 or int(hdr[0]) != rows:
        return None
    conn, conn_base, max_level, entry = (int(x) for x in hdr[1:5])
    pos += 40
    levels = np.frombuffer(raw[pos : pos + 2 * rows].tobytes(), dtype=np.int16).astype(np.int64)
    if len(levels) != rows or (rows and (levels.min() < 0 or levels.max() > max_level)):
        return None
    if rows and not 0 <= entry < rows:
        return None
    pos += 2 * rows
    for slot_bytes in slot_bytes_options:
        node = 8 + 2 + (4 + conn_base * slot_bytes) + levels * (4 + conn * slot_bytes)
        if pos + int(node.sum()) == size:
            break
    else:
        return None
    starts = pos + np.concatenate(([0], np.cumsum(node)[:-1])) if rows else np.zeros(0, np.int64)
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    if rows:
        idx = starts[:, None] + np.arange(8)[None, :]
        slot_keys = np.ascontiguousarray(raw[idx]).view(np.int64).reshape(rows)
        lv = np.ascontiguousarray(raw[(starts + 8)[:, None] + np.arange(2)[None, :]])
        if not np.array_equal(lv.view(np.int16).reshape(rows).astype(np.int64), levels):
            return None
        # neighbour counts within bounds (a sample: the whole file was size-checked above)
        probe = starts[:: max(1, rows // 256)]
        cnt = np.ascontiguousarray(raw[(probe + 10)[:, None] + np.arange(4)[None, :]])
        if np.any(cnt.view(np.uint32).reshape(-1) > conn_base):
            return None
    else:
        slot_keys = np.zeros(0, np.int64)
    return _Graph(
        raw, offset, rows, slot_keys.copy(), starts, conn, conn_base, slot_bytes, max_level, entry
    )


def _slot_layout(path: Path, meta: dict[str, Any]) -> _Graph | None:
    """The graph layout of a saved usearch file (see :func:`_parse_graph`), its bytes
    memory-mapped, or None when usearch's metadata says it is not a dense f16 index whose
    vectors are included and none deleted."""
    if not meta.get("matrix_included") or meta.get("count_deleted", 1) != 0:
        return None
    if str(getattr(meta.get("kind_scalar"), "name", "")) != "F16":
        return None
    if str(getattr(meta.get("kind_key"), "name", "")) not in ("U64", "I64"):
        return None
    slot_bytes = {"U32": 4, "U40": 5}.get(
        str(getattr(meta.get("kind_compressed_slot"), "name", ""))
    )
    if slot_bytes is None:
        return None
    dim = int(meta.get("dimensions", 0))
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    return _parse_graph(
        raw, dim, rows_expected=int(meta.get("count_present", -1)), slot_bytes_options=(slot_bytes,)
    )


# ---------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------


class VectorIndex:
    """One embedder's vectors: keys, a float16 matrix for exact scans, and a usearch HNSW index.

    Build with :meth:`build` (keys + vectors), :meth:`from_arrow` (an ``embeddings.<key>``
    table), :meth:`restore` (a saved usearch file: both the HNSW graph and the vectors are
    memory-mapped, nothing is copied) or :meth:`from_snapshot` (a dataset version).
    """

    #: HNSW widening: the first count is ``k * oversample / selectivity``; a round is accepted
    #: when the ``k``-th allowed hit lies within the first ``count / margin`` hits.
    oversample: float = 2.0
    margin: float = 1.5
    #: HNSW search breadth (usearch's ``expansion_search``) unless the caller sets one: usearch's
    #: default of 64 left 1-3 % of the benchmark's queries with a recall below 0.5 (a greedy
    #: search stuck in a poor region); 128 none, for ~0.2 ms more (``docs/vector-search.md``).
    default_ef: int = 128
    #: Exact top-k asks the kernel for ``k + pad`` rows first.
    pad: int = 16
    #: Exact scans of fewer rows run on one thread (starting usearch's workers costs ~0.2 ms).
    parallel_rows: int = 50_000
    #: The compiled scan runs on ``threads`` threads from this many rows (a thread costs ~30 us).
    parallel_rows_compiled: int = 32_768
    #: The compiled HNSW search's result breadth. A first, narrow search: the index's tuned ef
    #: (:meth:`tuned_ef`) without a filter, at least ``k + min(pad, k)``;
    #: ``ceil(ef * selectivity)``, at least k, with one (to keep ef allowed rows the walk
    #: scores about ef / selectivity).
    #: Measured at 1M rows, 300 queries, k = 10 (docs/vector-search.md): no filter ef 32 recall
    #: 0.973 in 0.16 ms (ef 256: 0.980 in 0.50 ms); uncorrelated 10 % ef 10 0.982.
    #: A filter correlated with the query needs more when the query's own neighbourhood is
    #: filtered out (correlated 50 %: 0.70 at ef 32 for those queries, 0.97 for the others), and
    #: the narrow search tells which case it met: when many more of the rows it scored beat its
    #: k-th allowed result than an independent filter would put there (``graph_anti_ratio`` x
    #: k / selectivity; measured: at most 3x for independent filters, 5-1000x for those
    #: queries), it searches again with the wide breadth: ``expansion_search`` doubled from
    #: ``graph_ef_double_rows`` rows when at least ``graph_ef_wide_sel`` of the rows pass (1M,
    #: correlated 50 %: ef 256 recall 0.977, 0.951 at 128), halved below that selectivity (10 %:
    #: ef 64 gave the recall of 128 in 40-70 % of the time).
    graph_anti_ratio: float = 3.0
    #: ... and when fewer than ``graph_dense_ratio`` x k / selectivity rows beat its k-th allowed
    #: result, the filter is dense near the query (correlated with it: the query's own cluster
    #: allowed), the walk skipped few rows, and it searches again at the unfiltered ef (1M,
    #: correlated 50 %: those queries had recall 0.945 at the narrow ef 16, 0.974 at ef 32).
    graph_dense_ratio: float = 0.6
    #: The narrow breadth is tuned once per index (indexes of ``graph_tune_rows`` rows or more,
    #: when ``expansion_search`` was not set by the caller): ``graph_tune_queries`` of the
    #: index's own rows, as NEAR SAMPLE queries, are searched at growing ef, and the smallest ef
    #: whose top-k agree on at least ``graph_tune_agreement`` of their rows with a search of
    #: breadth ``graph_tune_reference`` is kept (never above ``expansion_search``). Data whose
    #: graph is hard to navigate (isotropic noise) keeps a wider search; clustered data like the
    #: benchmark's gets ef 24-32. ~0.1 s at 1M rows, on the first search.
    graph_tune_rows: int = 10_000
    graph_tune_queries: int = 64
    graph_tune_agreement: float = 0.99
    graph_tune_reference: int = 512
    graph_ef_double_rows: int = 500_000
    graph_ef_wide_sel: float = 0.25
    #: The compiled filtered HNSW search is trusted when the allowed rows it met are at least this
    #: fraction as dense as the filter's selectivity predicts; sparser means a filter
    #: anti-correlated with the query, where a search with the filter inside the graph settles
    #: in the first allowed region it reaches (recall 0.88 measured at 1M), so the exact scan
    #: answers instead.
    min_density: float = 0.5
    #: Breadth of the compiled search on the graph's upper levels (1 is usearch's greedy descent):
    #: a few candidates per level keep queries whose greedy path ends in a poor region from
    #: being stuck there.
    graph_ef_upper: int = 4
    #: Unfiltered top-k queries also run the compiled graph search (else usearch's own).
    graph_unfiltered: bool = True
    #: In-memory indexes up to this many rows are serialised once (usearch's save to a buffer) so
    #: that the compiled filtered search can read their graph; restored files are read in place.
    graph_copy_max_rows: int = 200_000

    def __init__(
        self,
        keys: np.ndarray,
        matrix: np.ndarray,
        hnsw: Any,
        *,
        path: Path | None = None,
        threads: int = 0,
        cost: CostModel | None = None,
    ) -> None:
        self._keys = keys
        self._matrix = matrix
        self._hnsw = hnsw
        self._path = path  # the file the HNSW index is memory-mapped from (None: in memory)
        if int(hnsw.expansion_search) == _USEARCH_DEFAULT_EF:
            hnsw.expansion_search = self.default_ef
        self.threads = threads
        self.cost = cost or CostModel()
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self._crossover_memo: tuple[tuple, float] | None = None
        self._lock = threading.Lock()
        #: Use the compiled kernels (``popql.engine._vecscan``) when they are built; False: the
        #: pure usearch + numpy path (what a machine without a C compiler runs).
        self.compiled = _vecscan is not None
        # The usearch graph as laid out in its file, for the compiled filtered HNSW search:
        # parsed by restore(), or lazily from a saved buffer (None: not parsed yet, False: the
        # layout is not understood or the index changed since).
        self._graph: _Graph | bool | None = None
        self._tuned_ef: int | None = None
        self._plan_memo: tuple[tuple, SearchPlan] | None = None
        self._matrix_ok: tuple[Any, bool] | None = None  # (matrix, readable in place)
        self._ef_set = False  # expansion_search set by the caller: no tuning

    # -- construction ---------------------------------------------------------------------------

    @staticmethod
    def _check_inputs(keys: Any, vectors: Any, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
        k = np.asarray(keys)
        if k.ndim != 1 or (k.size and k.dtype.kind not in "iu"):
            raise ValueError(f"keys must be a 1-d integer array, got {k.dtype} {k.shape}")
        k = k.astype(np.int64)
        v = np.asarray(vectors)
        if v.ndim != 2 or v.shape[0] != k.shape[0]:
            raise ValueError(f"vectors must be a ({len(k)}, dim) matrix, got shape {v.shape}")
        if dim is not None and v.shape[1] != dim:
            raise ValueError(f"vectors have dimension {v.shape[1]}, the index has {dim}")
        if v.shape[1] == 0:
            raise ValueError("vectors must have at least one dimension")
        if v.dtype.kind != "f":
            raise ValueError(f"vectors must be float16 or float32, got {v.dtype}")
        v16 = np.ascontiguousarray(v, dtype=np.float16)
        if not np.all(np.isfinite(v16)):
            raise ValueError("vectors contain NaN or infinite values (or overflow float16)")
        if k.size and int(k.min()) < 0:
            raise ValueError("keys must be non-negative (sample keys are 63-bit)")
        if len(np.unique(k)) != len(k):
            raise ValueError("keys must be unique")
        return k, v16

    @classmethod
    def build(
        cls,
        keys: Any,
        vectors: Any,
        *,
        connectivity: int | None = None,
        expansion_add: int | None = None,
        expansion_search: int | None = None,
        threads: int = 0,
        cost: CostModel | None = None,
    ) -> VectorIndex:
        """An index over ``vectors`` (``(n, dim)``, float16 or float32) with int64 ``keys``
        (unique). The HNSW graph is built now (``threads``: 0 = all cores)."""
        k, v16 = cls._check_inputs(keys, vectors, None)
        ui = _usearch()
        hnsw = ui.Index(
            ndim=v16.shape[1],
            metric="cos",
            dtype="f16",
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
        )
        if len(k):
            hnsw.add(k.view(np.uint64), v16, threads=threads)
        index = cls(k, v16, hnsw, threads=threads, cost=cost)
        if expansion_search is not None:
            index.expansion_search = expansion_search
        return index

    @classmethod
    def from_arrow(
        cls,
        table: Any,
        *,
        key_column: str = "sample_key",
        vector_column: str = "embedding",
        **build_options: Any,
    ) -> VectorIndex:
        """Build from an Arrow table with an int64 key column and a ``fixed_size_list<float16 or
        float32>[dim]`` vector column (the ``embeddings.<key>`` table)."""
        keys, matrix = _arrow_vectors(table, key_column, vector_column)
        return cls.build(keys, matrix, **build_options)

    @classmethod
    def restore(
        cls,
        path: str | os.PathLike[str],
        *,
        view: bool = True,
        keys: Any = None,
        vectors: Any = None,
        threads: int = 0,
        cost: CostModel | None = None,
    ) -> VectorIndex:
        """Open a usearch file saved by :meth:`save` (or by ingest). With ``view=True`` the
        graph is memory-mapped (``Index.restore(path, view=True)``) and so are the vectors,
        read in place from the file (usearch stores them first, in slot order). ``keys`` and
        ``vectors`` may be given instead (e.g. the ``embeddings.<key>`` table): then the
        matrix is those, and the index must hold exactly those keys."""
        ui = _usearch()
        p = Path(path)
        hnsw = ui.Index.restore(os.fspath(p), view=view)
        if hnsw is None:
            raise ValueError(f"{p} is not a usearch index file")
        dim = int(hnsw.ndim)
        if vectors is not None or keys is not None:
            if vectors is None or keys is None:
                raise ValueError("restore: give both keys and vectors, or neither")
            k, v16 = cls._check_inputs(keys, vectors, dim)
            if len(hnsw) != len(k):
                raise ValueError(
                    f"the index {p.name} holds {len(hnsw):,} vectors but {len(k):,} were given"
                )
            probe = k[:: max(1, len(k) // 64)][:64]
            if len(probe) and not bool(np.all(hnsw.contains(probe.view(np.uint64)))):
                raise ValueError(f"the index {p.name} lacks some of the given keys")
            return cls(k, v16, hnsw, path=p if view else None, threads=threads, cost=cost)
        meta = ui.Index.metadata(os.fspath(p)) or {}
        layout = _slot_layout(p, meta) if meta else None
        matrix: np.ndarray | None = None
        if layout is not None:
            offset, rows, slot_keys = layout.matrix_offset, layout.rows, layout.slot_keys
            if rows:
                mm = np.memmap(p, dtype=np.float16, mode="r", offset=offset, shape=(rows, dim))
                matrix = mm if view else np.array(mm)
            else:
                matrix = np.zeros((0, dim), np.float16)
            k = slot_keys
            probe = np.arange(0, rows, max(1, rows // 32))[:32]
            if len(probe):
                got = np.asarray(
                    np.vstack(hnsw.get(k[probe].view(np.uint64))), dtype=np.float16
                ).reshape(len(probe), dim)
                if not np.array_equal(got, np.asarray(matrix[probe])):
                    matrix = None  # not the layout assumed: copy through usearch below
                    layout = None
        if matrix is None:
            k = np.asarray(hnsw.keys, dtype=np.uint64).view(np.int64)
            matrix = (
                np.asarray(np.vstack(hnsw.get(k.view(np.uint64))), dtype=np.float16).reshape(
                    len(k), dim
                )
                if len(k)
                else np.zeros((0, dim), np.float16)
            )
        index = cls(k, matrix, hnsw, path=p if view else None, threads=threads, cost=cost)
        if layout is not None:
            index._graph = layout
        return index

    @classmethod
    def from_snapshot(cls, snapshot: Any, embedder_key: str, **options: Any) -> VectorIndex:
        """The index of embedder ``embedder_key`` at a dataset version
        (:class:`popql.engine.dataset.Snapshot`): its usearch file memory-mapped when it holds
        exactly the rows of ``embeddings.<key>``, else built from that table."""
        meta = snapshot.embedders.get(embedder_key)
        if meta is None:
            raise KeyError(f"no embedder '{embedder_key}' in {snapshot!r}")
        table_name = meta.get("table") or f"embeddings.{embedder_key}"
        index_rel = meta.get("index")
        if index_rel:
            path = Path(snapshot.root) / index_rel
            if path.is_file():
                try:
                    index = cls.restore(path, **options)
                except (ValueError, OSError, RuntimeError):
                    index = None
                if index is not None and len(index) == snapshot.num_rows(table_name):
                    return index
        table = snapshot.table(table_name)
        if "sample_key" not in table.column_names:
            import pyarrow as pa

            from .images import sample_key_of

            ids = table.column("sample_id").to_pylist()
            table = table.append_column(
                "sample_key", pa.array([sample_key_of(s) for s in ids], pa.int64())
            )
        return cls.from_arrow(table, **options)

    # -- properties -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        where = f" mapped from {self._path}" if self._path else ""
        return f"<VectorIndex {len(self):,} x {self.dim}{where}>"

    @property
    def keys(self) -> np.ndarray:
        """The int64 key of each row (read-only view). Bool masks passed as ``allowed`` are
        aligned with this array."""
        view = self._keys.view()
        view.flags.writeable = False
        return view

    @property
    def matrix(self) -> np.ndarray:
        """The float16 vectors, row ``i`` for ``keys[i]`` (read-only; may be memory-mapped)."""
        view = self._matrix.view()
        view.flags.writeable = False
        return view

    @property
    def dim(self) -> int:
        return int(self._matrix.shape[1])

    @property
    def hnsw(self) -> Any:
        """The usearch ``Index``."""
        return self._hnsw

    @property
    def expansion_search(self) -> int:
        return int(self._hnsw.expansion_search)

    @expansion_search.setter
    def expansion_search(self, ef: int) -> None:
        self._hnsw.expansion_search = int(ef)
        self._ef_set = True
        self._tuned_ef = None

    def memory_usage(self) -> dict[str, int]:
        """Bytes held: ``matrix`` (float16 vectors), ``keys``, ``hnsw`` (usearch's own figure:
        its graph and its copy of the vectors; memory-mapped pages when restored as a view),
        ``graph`` (the compiled search's node offsets, 8 bytes per vector, plus, for an
        in-memory index, the saved copy of the graph it reads)."""
        g = self._graph if isinstance(self._graph, _Graph) else None
        graph = 0
        if g is not None:
            graph = int(g.starts.nbytes)  # slot_keys is the keys array itself
            if not isinstance(g.raw, np.memmap):
                graph += int(g.raw.nbytes)
        return {
            "matrix": int(self._matrix.nbytes),
            # the keys, plus a sorted copy and its order once a key lookup needed them
            "keys": int(self._keys.nbytes) * (3 if self._sorted is not None else 1),
            "hnsw": int(self._hnsw.memory_usage),
            "graph": graph,
        }

    # -- keys <-> rows --------------------------------------------------------------------------

    def _sorted_keys(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sorted is None:
            order = np.argsort(self._keys, kind="stable")
            self._sorted = (self._keys[order], order)
        return self._sorted

    def rows_of(self, keys: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, found)``: the row of each key (``-1`` where the index lacks it) and a bool
        array saying which keys were found."""
        want = np.asarray(keys, dtype=np.int64).reshape(-1)
        skeys, order = self._sorted_keys()
        if not len(skeys):
            return np.full(len(want), -1, np.int64), np.zeros(len(want), bool)
        pos = np.searchsorted(skeys, want)
        pos_c = np.minimum(pos, len(skeys) - 1)
        found = skeys[pos_c] == want
        rows = np.where(found, order[pos_c], -1)
        return rows.astype(np.int64), found

    def mask_of(self, keys: Any) -> np.ndarray:
        """A bool mask over the rows, true for the given keys (unknown keys are ignored)."""
        rows, found = self.rows_of(keys)
        mask = np.zeros(len(self), bool)
        mask[rows[found]] = True
        return mask

    def _allowed_mask(self, allowed: Any) -> tuple[np.ndarray | None, int, dict[str, Any]]:
        """``(mask or None for all, allowed count, stats)``."""
        stats: dict[str, Any] = {}
        if allowed is None:
            return None, len(self), stats
        arr = np.asarray(allowed)
        if arr.dtype == np.bool_:
            if arr.shape != (len(self),):
                raise ValueError(
                    f"an allowed mask must have one entry per row ({len(self):,}), "
                    f"got shape {arr.shape}"
                )
            mask = arr
        elif arr.dtype.kind in "iu" or arr.size == 0:
            t0 = time.perf_counter()
            rows, found = self.rows_of(arr.astype(np.int64, copy=False))
            mask = np.zeros(len(self), bool)
            mask[rows[found]] = True
            stats["allowed_keys_given"] = int(arr.size)
            stats["allowed_keys_unknown"] = int(arr.size - int(found.sum()))
            stats["resolve_keys_ms"] = (time.perf_counter() - t0) * 1000
        else:
            raise ValueError(
                f"allowed must be a bool mask over the rows or an array of int64 keys, "
                f"got dtype {arr.dtype}"
            )
        m = int(np.count_nonzero(mask))
        if m == len(self):
            return None, m, stats
        return mask, m, stats

    # -- planning -------------------------------------------------------------------------------

    def crossover(self, k: int, *, rows: int | None = None) -> float:
        """The selectivity below which an exact scan over the allowed rows is predicted to be
        faster than an HNSW search that finds ``k`` of them (cost model): with the compiled
        kernels, the in-place scan against the search with the filter inside the graph; else the
        gathered usearch scan against the oversampled post-filtered search."""
        n = len(self) if rows is None else rows
        if n <= 0 or k <= 0:
            return 0.0
        graph = self._graph_layout() is not None
        # the cost model's fields, not its repr(): this runs on every filtered search
        cost = tuple(vars(self.cost).values())
        memo = (k, n, graph, self.expansion_search, self.oversample, cost, self.threads)
        if self._crossover_memo is not None and self._crossover_memo[0] == memo:
            return self._crossover_memo[1]
        value = self._crossover(k, n, graph)
        self._crossover_memo = (memo, value)
        return value

    def _crossover(self, k: int, n: int, graph: bool = False) -> float:
        ef = self.expansion_search

        def exact_wins(sel: float) -> bool:
            m = int(sel * n)
            if graph:
                exact = self.cost.exact(
                    m, gathered=True, compiled=True, threads=self._scan_threads(m)
                )
                return exact <= self.cost.graph(self._graph_ef_planned(k), sel)
            count = min(n, max(k, math.ceil(k * self.oversample / sel)))
            return self.cost.exact(m, gathered=True) <= self.cost.hnsw(count, ef)

        if exact_wins(1.0):
            return 1.0
        lo, hi = 0.0, 1.0  # exact wins at lo (an empty filter), loses at hi
        for _ in range(50):
            mid = (lo + hi) / 2
            if mid > 0 and exact_wins(mid):
                lo = mid
            else:
                hi = mid
        return float(lo)

    def plan(
        self,
        *,
        k: int | None = None,
        threshold: float | None = None,
        allowed: Any = None,
        exact: bool = False,
        approximate: bool = False,
        _mask_info: tuple[np.ndarray | None, int] | None = None,
    ) -> SearchPlan:
        """Choose a strategy (``EXPLAIN``) without searching. Widening decisions are made while
        searching and reported in the :class:`SearchResult`. ``approximate=True`` (benchmarks,
        tests) takes the HNSW path for any top-k query it can serve, whatever the cost model
        says; widening then falls back to an exact scan only when the graph runs out."""
        k, threshold = _check_k_threshold(k, threshold)
        if exact and approximate:
            raise ValueError("exact and approximate exclude each other")
        n = len(self)
        if _mask_info is None:
            mask, m, _ = self._allowed_mask(allowed)
        else:
            mask, m = _mask_info
        filtered = mask is not None
        # A plan depends on counts and settings only, never on which rows pass: the last one is
        # kept (~25 us of formatting and cost estimates saved when a population or a filter is
        # queried again; SearchPlan is frozen).
        key = (
            n,
            m,
            filtered,
            k,
            threshold,
            exact,
            approximate,
            self._use_compiled(),
            self._graph_layout() is not None,
            self.expansion_search,
            self._tuned_ef,
            tuple(vars(self.cost).values()),
            self.oversample,
            self.pad,
            self.graph_unfiltered,
            self.graph_ef_wide_sel,
            self.graph_ef_double_rows,
            self.parallel_rows_compiled,
            self.threads,
        )
        memo = self._plan_memo
        if memo is not None and memo[0] == key:
            return memo[1]
        plan = self._plan(n, m, filtered, k, threshold, exact, approximate)
        self._plan_memo = (key, plan)
        return plan

    def _plan(
        self,
        n: int,
        m: int,
        filtered: bool,
        k: int | None,
        threshold: float | None,
        exact: bool,
        approximate: bool,
    ) -> SearchPlan:
        base: dict[str, Any] = {"rows": n, "allowed": m, "k": k, "threshold": threshold}
        of_n = f"{_fmt_int(m)} of {_fmt_int(n)}" if filtered else f"all {_fmt_int(n)}"
        if n == 0 or m == 0 or k == 0:
            why = (
                "the index is empty"
                if n == 0
                else ("no row passes the filter" if m == 0 else "k = 0 asks for no row")
            )
            return SearchPlan("empty", why, **base)
        compiled = self._use_compiled()
        base["kernel"] = "compiled" if compiled else "usearch"
        est_exact = self.cost.exact(
            m, gathered=filtered, compiled=compiled, threads=self._scan_threads(m)
        )
        if exact:
            return SearchPlan(
                "exact",
                f"EXACT requested: brute force over {of_n} rows",
                est_exact_us=est_exact,
                **base,
            )
        if k is None:
            t = f"{threshold:g}"
            return SearchPlan(
                "exact",
                f"threshold {t}: exact scan over {of_n} rows "
                "(an HNSW search cannot prove that no row scoring at least the threshold was "
                "missed)",
                est_exact_us=est_exact,
                **base,
            )
        if k >= m:
            return SearchPlan(
                "exact",
                f"k = {_fmt_int(k)} >= the {_fmt_int(m)} allowed rows: exact scan returns all",
                est_exact_us=est_exact,
                **base,
            )
        ef = self.expansion_search
        if not filtered and self.graph_unfiltered and self._graph_layout() is not None:
            ef_g = self._graph_ef(k)
            return SearchPlan(
                "hnsw",
                f"no filter: HNSW search for the top {_fmt_int(k)} of {_fmt_int(n)} rows "
                f"(ef {ef_g})",
                count=ef_g,
                est_exact_us=est_exact,
                est_hnsw_us=self.cost.graph(ef_g, 1.0),
                graph=True,
                forced=True,
                **base,
            )
        if not filtered:
            est = self.cost.hnsw(k, ef)
            return SearchPlan(
                "hnsw",
                f"no filter: HNSW search for the top {_fmt_int(k)} of {_fmt_int(n)} rows "
                f"(ef {max(ef, k)})",
                count=k,
                est_exact_us=est_exact,
                est_hnsw_us=est,
                **base,
            )
        sel = m / n
        cross = self.crossover(k)
        where = f"{_fmt_int(m)} candidates ({_fmt_pct(sel)} of {_fmt_int(n)})"
        if self._graph_layout() is not None:
            ef_g = self._graph_ef(k, sel)
            est_graph = self.cost.graph(self._graph_ef_planned(k), sel)
            common: dict[str, Any] = {
                "count": ef_g,
                "crossover": cross,
                "est_exact_us": est_exact,
                "graph": True,
            }
            if approximate:
                return SearchPlan(
                    "hnsw-filtered",
                    f"approximate search requested over {where}: HNSW search with the filter "
                    f"inside the graph (ef {ef_g})",
                    est_hnsw_us=est_graph,
                    forced=True,
                    **common,
                    **base,
                )
            if est_exact <= est_graph:
                return SearchPlan(
                    "exact",
                    f"exact scan over {where}: below the {_fmt_pct(cross)} crossover for k = {k} "
                    f"(predicted {_fmt_ms(est_exact)} vs HNSW {_fmt_ms(est_graph)})",
                    crossover=cross,
                    est_exact_us=est_exact,
                    est_hnsw_us=est_graph,
                    **base,
                )
            return SearchPlan(
                "hnsw-filtered",
                f"HNSW search over {where} with the filter inside the graph (ef {ef_g}): above "
                f"the {_fmt_pct(cross)} crossover for k = {k} (predicted {_fmt_ms(est_graph)} vs "
                f"exact {_fmt_ms(est_exact)}); searched again with ef "
                f"{self._graph_ef_wide(k, sel)} if the allowed rows are scarce near the query, "
                "exact scan instead if they stay much sparser than the selectivity or the search "
                "costs more than the scan",
                est_hnsw_us=est_graph,
                **common,
                **base,
            )
        count = min(n, max(k, math.ceil(k * self.oversample / sel)))
        est_hnsw = self.cost.hnsw(count, ef)
        if approximate:
            return SearchPlan(
                "hnsw-filtered",
                f"approximate search requested over {where}: count {_fmt_int(count)} "
                f"(k x {self.oversample:g} / selectivity), widened until k pass",
                count=count,
                crossover=cross,
                est_exact_us=est_exact,
                est_hnsw_us=est_hnsw,
                forced=True,
                **base,
            )
        if est_exact <= est_hnsw:
            return SearchPlan(
                "exact",
                f"exact scan over {where}: below the {_fmt_pct(cross)} crossover for k = {k} "
                f"(predicted {_fmt_ms(est_exact)} vs HNSW {_fmt_ms(est_hnsw)})",
                crossover=cross,
                est_exact_us=est_exact,
                est_hnsw_us=est_hnsw,
                **base,
            )
        return SearchPlan(
            "hnsw-filtered",
            f"HNSW search over {where}: above the {_fmt_pct(cross)} crossover for k = {k}; "
            f"count {_fmt_int(count)} (k x {self.oversample:g} / selectivity), hits re-checked "
            "against the filter, widened until k pass (exact scan if widening would cost more)",
            count=count,
            crossover=cross,
            est_exact_us=est_exact,
            est_hnsw_us=est_hnsw,
            **base,
        )

    # -- search ---------------------------------------------------------------------------------

    def search(
        self,
        positives: Any,
        negatives: Any = None,
        *,
        k: int | None = None,
        threshold: float | None = None,
        allowed: Any = None,
        exact: bool = False,
        approximate: bool = False,
    ) -> SearchResult:
        """The rows most similar to the query (see :func:`combine_query`).

        ``k``: top-k (returns ``min(k, allowed rows)`` rows, never fewer); ``threshold``: every
        allowed row whose score is at least ``threshold`` (exact); both: the top-k of those.
        ``allowed``: a bool mask aligned with :attr:`keys`, an int64 array of keys, or None.
        ``exact=True`` forces brute force; ``approximate=True`` forces the HNSW path for top-k
        (benchmarks and tests; it still never returns fewer than k rows).
        """
        t_start = time.perf_counter()
        q = combine_query(positives, negatives, dim=self.dim)
        k, threshold = _check_k_threshold(k, threshold)
        mask, m, stats = self._allowed_mask(allowed)
        plan = self.plan(
            k=k, threshold=threshold, exact=exact, approximate=approximate, _mask_info=(mask, m)
        )
        stats.update(rows=plan.rows, allowed=m, selectivity=plan.selectivity)
        if plan.crossover is not None:
            stats["crossover"] = plan.crossover
        if plan.strategy == "empty":
            keys, scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
            strategy, reason = plan.strategy, plan.reason
        elif plan.strategy == "exact":
            keys, scores = self._exact(q, mask, k, threshold, stats)
            strategy, reason = plan.strategy, plan.reason
        else:
            keys, scores, strategy, reason = self._approximate(q, mask, m, k, plan, stats)
            if threshold is not None:
                keep = scores >= threshold
                if int(keep.sum()) < len(keys):
                    # Fewer than k rows reach the threshold: claiming "these are all" needs proof.
                    keys, scores = self._exact(q, mask, k, threshold, stats)
                    strategy = "exact"
                    reason += (
                        f"; fewer than k rows reached the threshold {threshold:g}: "
                        "exact scan to prove completeness"
                    )
        if k is not None and len(keys) < min(k, m):  # pragma: no cover - defensive
            keys, scores = self._exact(q, mask, k, threshold, stats)
            strategy = "exact"
            reason += "; an approximate search returned fewer than k rows: exact scan"
        stats["returned"] = len(keys)
        stats["elapsed_ms"] = (time.perf_counter() - t_start) * 1000
        return SearchResult(keys, scores, strategy, reason, stats)

    # -- scoring --------------------------------------------------------------------------------

    def _rescore(self, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Exact float32 cosine scores of ``rows``: float64 arithmetic, each row summed on its
        own (``(x * q).sum(axis=1)``, not BLAS, whose blocking may sum identical rows in a
        different order), so equal vectors get equal scores; zero vectors score 0. With the compiled
        kernels the same in C (``_vecscan.rescore``: fixed summation order, the same bits on every
        CPU; ~50 us less per query than numpy for a top-10)."""
        out = np.zeros(len(rows), np.float32)
        if self._use_compiled():
            assert _vecscan is not None
            _vecscan.rescore(
                self._matrix,
                self.dim,
                np.ascontiguousarray(rows, dtype=np.int64),
                np.ascontiguousarray(q, dtype=np.float64),
                out,
            )
            return out
        for s in range(0, len(rows), 4096):
            x = np.take(self._matrix, rows[s : s + 4096], axis=0).astype(np.float64)
            dots = (x * q).sum(axis=1)
            norms = np.sqrt((x * x).sum(axis=1))
            safe = np.where(norms > 0, norms, 1.0)
            out[s : s + 4096] = np.clip(np.where(norms > 0, dots / safe, 0.0), -1.0, 1.0)
        return out

    def _order(self, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Indices sorting by score descending, then key ascending."""
        return np.lexsort((self._keys[rows], -scores.astype(np.float64)))

    # -- the compiled kernels ---------------------------------------------------------------------

    def _use_compiled(self) -> bool:
        """Whether searches run the compiled kernels (built, enabled, and a float16 C-contiguous
        matrix to read in place)."""
        if not self.compiled or _vecscan is None:
            return False
        matrix = self._matrix
        memo = self._matrix_ok
        if memo is None or memo[0] is not matrix:
            ok = (
                matrix.dtype == np.float16
                and bool(matrix.flags.c_contiguous)
                and len(self._keys) > 0
            )
            memo = self._matrix_ok = (matrix, ok)
        return memo[1]

    def _scan_threads(self, rows: int) -> int:
        if rows < self.parallel_rows_compiled:
            return 1
        return max(1, self.threads or _CPUS)

    def _graph_layout(self) -> _Graph | None:
        """The HNSW graph as saved by usearch, for the compiled filtered search: the restored
        file read in place, or (small in-memory indexes) a buffer saved once; None when the
        layout is not understood (then the post-filtered usearch search is used)."""
        if not self._use_compiled():
            return None
        g = self._graph
        if g is None:
            g = False
            if len(self) <= self.graph_copy_max_rows:
                try:
                    buf = self._hnsw.save()
                except (RuntimeError, ValueError, OSError):  # pragma: no cover - defensive
                    buf = None
                if buf is not None:
                    raw = np.frombuffer(buf, dtype=np.uint8)
                    parsed = _parse_graph(
                        raw, self.dim, rows_expected=len(self), slot_bytes_options=(4, 5)
                    )
                    if parsed is not None and np.array_equal(parsed.slot_keys, self._keys):
                        g = replace(parsed, slot_keys=self._keys)
            self._graph = g
        return g if isinstance(g, _Graph) else None

    def _graph_ef(self, k: int, selectivity: float = 1.0) -> int:
        """The first, narrow search breadth: the index's tuned ef (:attr:`graph_tune_rows`,
        else ``expansion_search``), at least ``k + min(pad, k)``; under a filter of selectivity
        ``s``, ``ceil(ef * s)``, at least ``k``. A filtered walk keeps ef allowed rows but
        scores about ef / s rows on its way, so ``ef * s`` kept rows cover the neighbourhood
        that ``ef`` rows cover without a filter (1M rows, tuned ef 32: uncorrelated 10 %
        reached recall 0.982 at ef 10 in 0.29 ms, 0.984 at ef 20 in 0.46 ms; 50 %: 0.967 at
        ef 16)."""
        ef = self.tuned_ef()
        if selectivity < 1.0:
            return max(k, math.ceil(ef * selectivity))
        return max(ef, k + min(self.pad, k))

    def _walk(
        self,
        q32: np.ndarray,
        mask8: np.ndarray | None,
        ef: int,
        max_visits: int,
        k: int,
        out_rows: np.ndarray,
        out_scores: np.ndarray,
    ) -> tuple[int, int, int, int, int, int]:
        """One compiled HNSW walk over this index's graph (``_vecscan.hnsw``): (written,
        visits, exhausted, allowed_seen, first_allowed_visit, above_kth)."""
        assert _vecscan is not None
        g = self._graph_layout()
        assert g is not None
        return _vecscan.hnsw(  # type: ignore[no-any-return]
            g.raw,
            g.starts,
            self._matrix,
            self.dim,
            g.conn,
            g.conn_base,
            g.slot_bytes,
            g.max_level,
            g.entry,
            mask8,
            q32,
            ef,
            self.graph_ef_upper,
            max_visits,
            k,
            out_rows,
            out_scores,
        )

    def _graph_ef_planned(self, k: int) -> int:
        """The breadth the cost model prices a filtered walk at when choosing between it and
        the exact scan: half the tuned ef, at least ``k + min(pad, k)``. Wider than the walk itself
        (:meth:`_graph_ef`): the model's visits per ef were measured at this breadth, and
        pricing the narrow walk would move the crossover into selectivities (1 %) where the
        narrow walk measured slower than the scan and below its recall."""
        return max(self.tuned_ef() // 2, k + min(self.pad, k))

    def tuned_ef(self) -> int:
        """The narrow search breadth of this index (see :attr:`graph_tune_rows`): measured on
        the first call, then kept until the index changes."""
        if self._tuned_ef is not None:
            return self._tuned_ef
        ef = self.expansion_search
        if self._ef_set or len(self) < self.graph_tune_rows or self._graph_layout() is None:
            return ef
        with self._lock:
            if self._tuned_ef is None:
                self._tuned_ef = self._tune_ef(ef)
            return self._tuned_ef

    def _tune_ef(self, ceiling: int, k: int = 10) -> int:
        g = self._graph_layout()
        assert g is not None
        n = len(self)
        rng = np.random.default_rng(20261127)
        rows = rng.choice(n, size=min(n, self.graph_tune_queries), replace=False)
        ladder = [e for e in (16, 24, 32, 48, 64, 96, 128, 192, 256) if e < ceiling] + [ceiling]
        reference = max(self.graph_tune_reference, ceiling)
        out_rows = np.empty(reference, np.int64)
        out_scores = np.empty(reference, np.float32)

        def top(q: np.ndarray, ef: int) -> np.ndarray:
            written = self._walk(q, None, ef, n + 1, k + 1, out_rows, out_scores)[0]
            return out_rows[: min(written, k + 1)].copy()

        # A query is the midpoint of a row and one of its level-0 neighbours: a point of the data
        # that is not a row (a row itself is too easy to find: its own neighbour list holds its
        # nearest rows).
        queries = []
        for r in rows:
            nbs = g.level0_neighbours(int(r))
            if not len(nbs):
                continue
            a = np.asarray(self._matrix[r], np.float32)
            b = np.asarray(self._matrix[int(nbs[rng.integers(len(nbs))])], np.float32)
            na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
            if na == 0 or nb == 0:
                continue
            q = a / na + b / nb
            norm = float(np.linalg.norm(q))
            if norm > 0:
                queries.append((q / norm).astype(np.float32))
        if not queries:
            return ceiling
        refs = [top(q, reference) for q in queries]
        for ef in ladder:
            agree = [
                len(np.intersect1d(top(q, ef), ref)) / max(1, len(ref))
                for q, ref in zip(queries, refs, strict=True)
            ]
            if float(np.mean(agree)) >= self.graph_tune_agreement:
                return ef
        return ceiling

    def _graph_ef_wide(self, k: int, selectivity: float = 1.0) -> int:
        """The breadth of the second search when the first met an anti-correlated filter."""
        ef = self.expansion_search
        if selectivity < self.graph_ef_wide_sel:
            ef //= 2
        elif len(self) >= self.graph_ef_double_rows:
            ef *= 2
        return max(ef, k + min(self.pad, k))

    def _cscan(
        self,
        mask: np.ndarray | None,
        q32: np.ndarray,
        count: int,
        threshold: float,
        m: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The compiled in-place scan: (rows, kernel scores), the ``count`` best (best first),
        or with ``count = 0`` every row whose kernel score reaches ``threshold``."""
        assert _vecscan is not None
        if mask is None:
            mode, sel = 0, None
        else:
            mode, sel = 2, np.ascontiguousarray(mask).view(np.uint8)
        cap = max(1, count if count else m)
        out_rows = np.empty(cap, np.int64)
        out_scores = np.empty(cap, np.float32)
        written = _vecscan.scan(
            self._matrix,
            self.dim,
            sel,
            mode,
            q32,
            int(count),
            float(threshold),
            out_rows,
            out_scores,
            self._scan_threads(m),
        )
        return out_rows[:written], out_scores[:written]

    def _exact_compiled(
        self,
        q: np.ndarray,
        mask: np.ndarray | None,
        k: int | None,
        threshold: float | None,
        stats: dict[str, Any],
    ) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        if mask is None:
            m = len(self)
        elif isinstance(stats.get("allowed"), int):
            m = stats["allowed"]  # counted by search() already
        else:
            m = int(np.count_nonzero(mask))
        stats["exact_rows_scanned"] = stats.get("exact_rows_scanned", 0) + m
        stats["kernel"] = "compiled"
        if m == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        q32 = np.ascontiguousarray(q, dtype=np.float32)
        eps = compiled_kernel_eps(self.dim)
        if k is None:
            assert threshold is not None
            cand, _ = self._cscan(mask, q32, 0, threshold - eps, m)
            return self._threshold_result(cand, q, threshold, stats, t0)

        def fetch(count: int) -> tuple[np.ndarray, float]:
            cand, ks = self._cscan(mask, q32, count, 0.0, m)
            return cand, float(ks[-1]) + eps  # best exact score of a row left out

        return self._widening_exact(fetch, q, m, k, threshold, stats, t0)

    def _graph_filtered(
        self,
        q: np.ndarray,
        mask: np.ndarray | None,
        m: int,
        k: int,
        plan: SearchPlan,
        stats: dict[str, Any],
    ) -> tuple[np.ndarray, np.ndarray, str, str]:
        """The compiled HNSW search with the filter inside the graph, checked, else exact."""
        n = len(self)
        ef = max(plan.count, k)
        sel = m / n
        if plan.forced or plan.est_exact_us is None:
            budget_us = math.inf
        else:
            budget_us = plan.est_exact_us - self.cost.graph_overhead_us
        per_visit = max(self.cost.graph_us_per_visit, 1e-6)
        q32 = np.ascontiguousarray(q, dtype=np.float32)
        mask8 = None if mask is None else np.ascontiguousarray(mask).view(np.uint8)

        def walk(ef: int, budget_us: float) -> tuple[int, int, int, int, int, np.ndarray]:
            max_visits = n + 1 if math.isinf(budget_us) else max(ef, int(budget_us / per_visit))
            out_rows = np.empty(ef, np.int64)
            out_scores = np.empty(ef, np.float32)
            written, visits, exhausted, seen, _first, above = self._walk(
                q32, mask8, ef, max_visits, k, out_rows, out_scores
            )
            return written, visits, exhausted, seen, above, out_rows

        t0 = time.perf_counter()
        written, visits, exhausted, seen, above, out_rows = walk(ef, budget_us)
        total_visits = visits
        note = ""
        why = ""
        expected_above = k / max(sel, 1e-12)
        if (
            mask is not None
            and written >= k
            and not exhausted
            and above > self.graph_anti_ratio * expected_above
        ):
            ef_wide = max(self._graph_ef_wide(k, sel), ef)
            ratio = above / expected_above
            stats["graph_anti_ratio"] = ratio
            if ef_wide > ef:
                spent_us = visits * per_visit
                scarce = (
                    f"the allowed rows were scarce near the query ({_fmt_int(above)} scored rows "
                    f"beat the {k}-th allowed one, {ratio:.0f}x what an independent filter "
                    "leaves)"
                )
                if self.cost.graph(ef_wide, sel) > budget_us - spent_us:
                    why = f"met a filter anti-correlated with the query: {scarce}"
                else:
                    written, visits, exhausted, seen, above, out_rows = walk(
                        ef_wide, budget_us - spent_us
                    )
                    total_visits += visits
                    note = f"; {scarce}: searched again with ef {ef_wide}"
                    ef = ef_wide
        elif (
            mask is not None
            and written >= k
            and not exhausted
            and 0 <= above < self.graph_dense_ratio * expected_above
            and ef < self._graph_ef(k)
        ):
            # The allowed rows are denser near the query than the selectivity says (a filter
            # correlated with the query): the walk met few rows it had to skip, so it covered
            # only what an unfiltered walk of the same, narrow ef covers.
            ef_full = self._graph_ef(k)
            stats["graph_dense_ratio"] = above / expected_above
            spent_us = visits * per_visit
            if self.cost.graph(ef_full, 1.0) <= budget_us - spent_us:
                written, visits, exhausted, seen, above, out_rows = walk(
                    ef_full, budget_us - spent_us
                )
                total_visits += visits
                note = (
                    f"; the allowed rows were dense near the query ({_fmt_int(above)} scored "
                    f"rows beat the {k}-th allowed one, fewer than the {expected_above:.0f} an "
                    f"independent filter leaves): searched again with ef {ef_full}"
                )
                ef = ef_full
        density = (seen / visits) / sel if visits else 0.0
        stats.update(
            graph_ms=(time.perf_counter() - t0) * 1000,
            graph_ef=ef,
            graph_visits=total_visits,
            graph_allowed_seen=seen,
            graph_density=density,
            kernel="compiled",
        )
        if why:
            pass
        elif written < k:
            why = f"found {written} allowed rows (k = {k}) before running out of graph"
            if exhausted:
                why = (
                    f"found {written} allowed rows (k = {k}) within {_fmt_int(total_visits)} "
                    "distances, the exact scan's cost"
                )
        elif exhausted and not plan.forced:
            why = f"needed more than {_fmt_int(total_visits)} distances, the exact scan's cost"
        elif density < self.min_density and not plan.forced:
            why = (
                f"met the allowed rows {1 / max(density, 1e-9):.1f}x sparser near the query than "
                f"the filter's {_fmt_pct(sel)} (a filter anti-correlated with the query)"
            )
        if not why:
            take = out_rows[: min(written, k + min(self.pad, k))]
            scores = self._rescore(take, q)
            o = self._order(take, scores)
            take, scores = take[o][:k], scores[o][:k]
            return self._keys[take], scores, plan.strategy, plan.reason + note
        keys, scores = self._exact(q, mask, k, None, stats)
        reason = (
            f"{plan.reason}; the graph search {why}, so exact scan over {_fmt_int(m)} candidates"
        )
        return keys, scores, "exact", reason

    def _kernel(
        self, data: np.ndarray, q16: np.ndarray, count: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """usearch's exact SIMD scan: local row positions and cosine distances, best first."""
        ui = _usearch()
        # usearch starts its worker threads per call: ~0.2 ms, more than a small scan costs.
        threads = 1 if len(data) < self.parallel_rows else self.threads
        res = ui.search(data, q16, count, ui.MetricKind.Cos, exact=True, threads=threads)
        local = np.asarray(res.keys, dtype=np.uint64).view(np.int64)
        dist = np.asarray(res.distances, dtype=np.float64)
        return local[: len(dist)], dist

    def _exact(
        self,
        q: np.ndarray,
        mask: np.ndarray | None,
        k: int | None,
        threshold: float | None,
        stats: dict[str, Any],
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._use_compiled():
            return self._exact_compiled(q, mask, k, threshold, stats)
        t0 = time.perf_counter()
        if mask is None:
            rows_all: np.ndarray | None = None
            data = self._matrix
        else:
            rows_all = np.flatnonzero(mask)
            data = np.take(self._matrix, rows_all, axis=0)
        m = len(data)
        stats["exact_rows_scanned"] = stats.get("exact_rows_scanned", 0) + m
        if m == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        q16 = q.astype(np.float16)
        if not np.all(np.isfinite(q16)) or not np.any(q16):  # pragma: no cover - unit vector
            q16 = q.astype(np.float32)
            data = np.asarray(data, np.float32)

        def to_rows(local: np.ndarray) -> np.ndarray:
            return local if rows_all is None else rows_all[local]

        if k is None:
            # Threshold: every row whose kernel score may reach t, rescored exactly.
            assert threshold is not None
            local, dist = self._kernel(data, q16, m)
            cand = to_rows(local[(1.0 - dist) >= threshold - KERNEL_EPS])
            return self._threshold_result(cand, q, threshold, stats, t0)

        def fetch(count: int) -> tuple[np.ndarray, float]:
            local, dist = self._kernel(data, q16, count)
            # best exact score of a row left out (none is when every row came back)
            bound = 1.0 - float(dist[-1]) + KERNEL_EPS if len(local) else -np.inf
            return to_rows(local), bound

        return self._widening_exact(fetch, q, m, k, threshold, stats, t0)

    def _threshold_result(
        self,
        cand: np.ndarray,
        q: np.ndarray,
        threshold: float,
        stats: dict[str, Any],
        t0: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Threshold-only scans: the kernel's candidates rescored exactly, kept when they reach
        the threshold, best first."""
        scores = self._rescore(cand, q)
        keep = scores >= threshold
        cand, scores = cand[keep], scores[keep]
        order = self._order(cand, scores)
        stats["rescored"] = stats.get("rescored", 0) + len(keep)
        stats["exact_ms"] = (time.perf_counter() - t0) * 1000
        return self._keys[cand[order]], scores[order]

    def _widening_exact(
        self,
        fetch: Callable[[int], tuple[np.ndarray, float]],
        q: np.ndarray,
        m: int,
        k: int,
        threshold: float | None,
        stats: dict[str, Any],
        t0: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-k of an exact scan, whatever kernel: ``fetch(count)`` gives the kernel's best
        ``count`` rows and a bound on the exact score of every row it left out; the rows are
        rescored exactly, and ``count`` grows x4 until the k-th rescored score beats the bound
        (or every allowed row was rescored)."""
        count = min(m, k + self.pad)
        rounds = 0
        while True:
            rounds += 1
            cand, bound = fetch(count)
            scores = self._rescore(cand, q)
            order = self._order(cand, scores)
            cand, scores = cand[order], scores[order]
            stats["rescored"] = stats.get("rescored", 0) + len(cand)
            if threshold is not None:
                keep = scores >= threshold
                cand, scores = cand[keep], scores[keep]
            complete = count >= m  # every allowed row was rescored
            if not complete:
                if len(scores) >= k and float(scores[k - 1]) > bound:
                    complete = True
                elif threshold is not None and len(scores) < k and threshold > bound:
                    complete = True  # nothing left out can reach the threshold
            if complete:
                break
            count = min(m, count * 4)
        stats["exact_rounds"] = rounds
        stats["exact_ms"] = (time.perf_counter() - t0) * 1000
        return self._keys[cand[:k]], scores[:k]

    def _approximate(
        self,
        q: np.ndarray,
        mask: np.ndarray | None,
        m: int,
        k: int | None,
        plan: SearchPlan,
        stats: dict[str, Any],
    ) -> tuple[np.ndarray, np.ndarray, str, str]:
        assert k is not None
        if plan.graph:
            return self._graph_filtered(q, mask, m, k, plan, stats)
        n = len(self)
        ef = self.expansion_search
        q16 = q.astype(np.float16)
        count = plan.count
        est_exact = plan.est_exact_us if plan.est_exact_us is not None else math.inf
        spent_us = 0.0
        counts: list[int] = []
        skeys, order = self._sorted_keys()
        while True:
            t0 = time.perf_counter()
            with self._lock:
                res = self._hnsw.search(q16, count, threads=1)
            hit_keys = np.asarray(res.keys, dtype=np.uint64).view(np.int64)
            spent_us += (time.perf_counter() - t0) * 1e6
            counts.append(count)
            pos = np.minimum(np.searchsorted(skeys, hit_keys), max(0, len(skeys) - 1))
            rows = order[pos]
            hits = np.arange(len(rows)) if mask is None else np.flatnonzero(mask[rows])
            short = len(hit_keys) < min(count, n)  # the graph gave fewer than asked
            if mask is None:
                accept = len(hits) >= k
            else:
                accept = len(hits) >= k and (hits[k - 1] < count / self.margin or count >= n)
            if accept:
                take = rows[hits[: k + min(self.pad, k)]]
                scores = self._rescore(take, q)
                o = self._order(take, scores)
                take, scores = take[o][:k], scores[o][:k]
                stats.update(hnsw_counts=counts, hnsw_ms=spent_us / 1000)
                reason = plan.reason
                if len(counts) > 1:
                    reason += f"; widened {len(counts) - 1}x to count {_fmt_int(count)}"
                return self._keys[take], scores, plan.strategy, reason
            # Widen: at least double. When the hits came sparser than the selectivity predicted
            # (a filter anti-correlated with the query: the allowed rows start deep in the
            # ranking), jump to the count that the observed start and density of the hits
            # need, so that a hopeless widening gives up for the exact scan at once.
            nxt = count * 2
            if not plan.forced:
                if len(hits):
                    first = int(hits[0])
                    rate = len(hits) / max(1, count - first)
                    need = self.margin * (first + k / rate)
                    nxt = max(nxt, math.ceil(1.1 * need))
                else:
                    nxt = count * 8
            nxt = min(n, nxt)
            too_dear = spent_us + self.cost.hnsw(nxt, ef) > max(est_exact, 1.0)
            if short or nxt >= n or (too_dear and not plan.forced):
                why = (
                    "the HNSW graph returned fewer rows than asked"
                    if short
                    else f"widening to count {_fmt_int(nxt)} would cost more than the exact scan"
                )
                stats.update(hnsw_counts=counts, hnsw_ms=spent_us / 1000)
                keys, scores = self._exact(q, mask, k, None, stats)
                found = len(hits)
                reason = (
                    f"{plan.reason}; HNSW count {_fmt_int(count)} found {_fmt_int(found)} "
                    f"allowed rows (k = {k}): {why}, so exact scan over {_fmt_int(m)} candidates"
                )
                return keys, scores, "exact", reason
            count = nxt

    # -- changes --------------------------------------------------------------------------------

    def subset(self, allowed: Any, **build_options: Any) -> VectorIndex:
        """A new index over the allowed rows only (a bool mask over :attr:`keys` or int64
        keys), with its own HNSW graph: a per-partition index for a frequent predicate (a split,
        a population), which answers top-k queries restricted to it at unfiltered speed where a
        post-filtered search over the whole index must widen (see docs/vector-search.md)."""
        mask, _, _ = self._allowed_mask(allowed)
        rows = np.arange(len(self)) if mask is None else np.flatnonzero(mask)
        options = {"threads": self.threads, "cost": replace(self.cost), **build_options}
        return VectorIndex.build(self._keys[rows], np.take(self._matrix, rows, axis=0), **options)

    def _writable_hnsw(self) -> Any:
        if self._path is not None:  # memory-mapped view: load an in-memory copy to change it
            ui = _usearch()
            self._hnsw = ui.Index.restore(os.fspath(self._path), view=False)
            self._path = None
        return self._hnsw

    def add(self, keys: Any, vectors: Any) -> None:
        """Add vectors (keys must be new). The matrix and the HNSW graph are updated; a
        memory-mapped index is loaded into memory first."""
        k, v16 = self._check_inputs(keys, vectors, self.dim)
        if not len(k):
            return
        _, found = self.rows_of(k)
        if found.any():
            raise ValueError(f"{int(found.sum()):,} of the keys are already in the index")
        hnsw = self._writable_hnsw()
        hnsw.add(k.view(np.uint64), v16, threads=self.threads)
        self._keys = np.concatenate([self._keys, k])
        self._matrix = np.concatenate([np.asarray(self._matrix), v16])
        self._sorted = None
        self._graph = None
        self._tuned_ef = None
        self._crossover_memo = None

    def remove(self, keys: Any) -> int:
        """Remove the given keys (unknown ones are ignored); returns how many were removed."""
        rows, found = self.rows_of(keys)
        rows = np.unique(rows[found])
        if not len(rows):
            return 0
        hnsw = self._writable_hnsw()
        hnsw.remove(self._keys[rows].view(np.uint64))
        keep = np.ones(len(self), bool)
        keep[rows] = False
        self._keys = self._keys[keep]
        self._matrix = np.asarray(self._matrix)[keep]
        self._sorted = None
        self._graph = None
        self._tuned_ef = None
        self._crossover_memo = None
        return len(rows)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the usearch file (graph and vectors); :meth:`restore` reads it back."""
        p = Path(path)
        if self._path is not None and p.resolve() == self._path.resolve():
            return  # a view of this very file: nothing changed
        self._hnsw.save(os.fspath(p))

    # -- calibration ----------------------------------------------------------------------------

    def calibrate(self, *, k: int = 10, queries: int = 20, seed: int = 0) -> CostModel:
        """Measure the cost model on this index and this machine (a few hundred ms) and use it."""
        n = len(self)
        if n < 1000:
            return self.cost
        rng = np.random.default_rng(seed)
        sample = rng.choice(n, size=min(queries, n), replace=False)
        qs = [np.asarray(self._matrix[i], np.float64) for i in sample]

        def timed(fn: Any) -> float:
            fn()
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return min(ts) * 1e6

        q16 = qs[0].astype(np.float16)
        m = min(n, 20_000)
        rows = np.sort(rng.choice(n, size=m, replace=False))
        block = np.take(self._matrix, rows, axis=0)
        gather = timed(lambda: np.take(self._matrix, rows, axis=0))
        # the kernel as _kernel runs it: one thread below parallel_rows
        scan = timed(lambda: self._kernel(block, q16, k + self.pad))
        small = timed(lambda: self._kernel(block[:256], q16, k + self.pad))
        ef = self.expansion_search
        counts = (ef, max(2 * ef, 2048))
        hn = []
        for c in counts:
            per = []
            for q in qs:
                qq = q.astype(np.float16)
                per.append(timed(lambda qq=qq, c=c: self._hnsw.search(qq, c, threads=1)))
            hn.append(float(np.median(per)))
        slope = max(0.01, (hn[1] - hn[0]) / (counts[1] - counts[0]))
        cost = CostModel(
            scan_us_per_row=max(1e-4, (scan - small) / max(1, m - 256)),
            gather_us_per_row=max(1e-4, gather / m),
            exact_overhead_us=max(1.0, small),
            hnsw_us_per_count=slope,
            hnsw_overhead_us=max(1.0, hn[0] - slope * counts[0]),
        )
        if self._use_compiled():
            self._calibrate_compiled(cost, rows, qs, timed, k)
        self.cost = cost
        self._crossover_memo = None
        return self.cost

    def _calibrate_compiled(
        self, cost: CostModel, rows: np.ndarray, qs: list[np.ndarray], timed: Any, k: int
    ) -> None:
        """The compiled kernels' constants: the scan per scattered and per sequential row (one
        thread), and the filtered graph search's time per distance and distances per ef."""
        n, m = len(self), len(rows)
        q32 = np.asarray(qs[0], np.float32)
        scattered = np.zeros(n, bool)
        scattered[rows] = True
        few = np.zeros(n, bool)
        few[rows[:256]] = True
        dense = np.zeros(n, bool)
        dense[:m] = True
        saved = self.parallel_rows_compiled
        self.parallel_rows_compiled = n + 1  # one thread, as the model counts
        try:
            t_scat = timed(lambda: self._cscan(scattered, q32, k + self.pad, 0.0, m))
            t_few = timed(lambda: self._cscan(few, q32, k + self.pad, 0.0, 256))
            t_dense = timed(lambda: self._cscan(dense, q32, k + self.pad, 0.0, m))
        finally:
            self.parallel_rows_compiled = saved
        cost.cscan_us_per_row = max(1e-4, (t_scat - t_few) / max(1, m - 256))
        cost.cscan_dense_us_per_row = max(1e-4, (t_dense - t_few) / max(1, m - 256))
        cost.cscan_overhead_us = max(1.0, t_few - 256 * cost.cscan_us_per_row)
        if self._graph_layout() is None:
            return
        rng = np.random.default_rng(1)
        tenth = rng.random(n) < 0.1
        ef = self.expansion_search
        per_visit: list[float] = []
        v_all: list[float] = []
        v_tenth: list[float] = []
        for q in qs:
            for mask, out in ((None, v_all), (tenth, v_tenth)):
                st: dict[str, Any] = {}
                plan = SearchPlan(
                    "hnsw-filtered", "", n, n, k, None, count=ef, forced=True, graph=True
                )
                self._graph_filtered(q, mask, n if mask is None else int(tenth.sum()), k, plan, st)
                per_visit.append(st["graph_ms"] * 1000 / max(1, st["graph_visits"]))
                out.append(st["graph_visits"] / ef)
        # visits / ef = a + b / s, from s = 1 and s = 0.1
        a_plus_b, a_plus_10b = float(np.median(v_all)), float(np.median(v_tenth))
        b = max(0.1, (a_plus_10b - a_plus_b) / 9)
        cost.graph_visits_per_ef_sel = b
        cost.graph_visits_per_ef = max(0.0, a_plus_b - b)
        cost.graph_us_per_visit = max(1e-3, float(np.median(per_visit)))


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _check_k_threshold(k: Any, threshold: Any) -> tuple[int | None, float | None]:
    if k is None and threshold is None:
        raise ValueError("a similarity search needs k (top-k), a threshold, or both")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        k = int(k)
    if threshold is not None:
        threshold = float(threshold)
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold!r}")
    return k, threshold


def _arrow_vectors(
    table: Any, key_column: str, vector_column: str
) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    keys = table.column(key_column).to_numpy()
    col = table.column(vector_column).combine_chunks()
    if not pa.types.is_fixed_size_list(col.type):
        raise ValueError(f"column {vector_column} must be a fixed_size_list, got {col.type}")
    if col.null_count:
        raise ValueError(f"column {vector_column} has {col.null_count} null vectors")
    dim = col.type.list_size
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(keys, np.int64), np.asarray(flat).reshape(len(keys), dim)
