"""Similarity search at execution time: what ``SIMILAR TO``, ``NEAR`` and ``SIMILARITY()`` run.

The lowering (:mod:`popql.engine.lower_similarity`) turns each search of a statement into a
:class:`SearchRequest` (the examples, the embedder, top-k or threshold, and the SQL that selects
the ``sample_id`` of the rows the search may return) and hands it to the session's
:class:`SimilarityService` through the catalog. The service

1. resolves the embedder (``USING name``, or the dataset's only one) in the dataset version the
   FROM item reads, and checks that the embedder loads with the identity (model and weights
   hash) its stored vectors were computed with;
2. embeds each example once -- text with the embedder's text tower, ``IMAGE 'x.jpg'`` by
   decoding the file, ``SAMPLE 'id'`` by reading the stored vector -- and caches the vector for
   the session (key: embedder identity, kind, value, and for files their size and mtime);
3. runs the allowed-rows SQL (the other predicates of the WHERE clause), turns the sample ids
   into index keys and searches the version's :class:`~popql.engine.vector.VectorIndex`
   (memory-mapped once per session and version), which picks exact, HNSW or filtered HNSW
   search (see docs/vector-search.md);
4. registers the matches as a table ``(sample_id string, score float32)`` that the rewritten
   statement joins (membership) and a scalar UDF that reads a row's score (``SIMILARITY``).

The tables and UDFs of a statement are dropped once DataFusion has planned it (a planned
DataFrame keeps its own references). ``EXPLAIN`` plans each search without running it and
reports the strategy and its reason; ``EXPLAIN ANALYZE`` runs it and reports what it did.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from popql.diagnostics import Diagnostic, PopQLError, did_you_mean_hint

if TYPE_CHECKING:
    from .dataset import Snapshot
    from .session import Session
    from .vector import VectorIndex

__all__ = ["Example", "SearchOutcome", "SearchRequest", "SimilarityService", "keys_of_ids"]

RESULT_SCHEMA = pa.schema([("sample_id", pa.string()), ("score", pa.float32())])
#: A threshold below every cosine: "score every allowed row" (SIMILARITY over a whole table).
ALL_ROWS = -2.0
#: Results up to this size are written into the statement as ``sample_id IN ('...', ...)``:
#: DataFusion pushes a literal IN list down into the scans under the samples view (a semi-join
#: against the result table is probed only after the view's joins: 104 vs 46 ms at 100k rows).
INLINE_IDS = 1000


@dataclass(frozen=True)
class Example:
    """One example of a search: ``TEXT`` (a caption), ``IMAGE`` (a file or URL), ``SAMPLE``
    (a sample id of the dataset); negated examples are subtracted."""

    kind: str
    value: str
    negated: bool = False
    span: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class SearchRequest:
    examples: tuple[Example, ...]
    using: str | None = None  # embedder name; None: the dataset's only embedder
    k: int | None = None
    threshold: float | None = None  # ALL_ROWS: score every allowed row
    exact: bool = False
    allowed_sql: str | None = None  # SELECT of the allowed rows' sample_id; None: every row
    fallback_sql: str | None = None  # the same without the WHERE conjuncts (outer references)
    version: int | None = None  # the dataset version the FROM item reads; None: the session's
    span: Any = field(default=None, compare=False)
    construct: str = "SIMILAR TO"


@dataclass(frozen=True)
class SearchOutcome:
    table: str  # the registered result: (sample_id, score), best first
    score_udf: str  # a scalar UDF: sample_id -> score (NULL for rows not in the result)
    note: str  # for EXPLAIN: embedder, strategy and why
    rows: int  # matches (0 when only planned)
    ids: tuple[str, ...] | None = None  # the matches' sample ids when there are few of them


def keys_of_ids(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """int64 index keys of 16-hex sample ids (``popql.engine.images.sample_key_of``),
    vectorised: the first 16 hex digits as a 63-bit integer. Ids of another shape map to -1."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    ids = ids.cast(pa.string())
    n = len(ids)
    if n == 0:
        return np.zeros(0, np.int64)
    valid = pc.fill_null(pc.equal(pc.utf8_length(ids), 16), False)
    all_valid = pc.all(valid).as_py()
    fixed = ids if all_valid else pc.if_else(valid, ids, pa.scalar("0" * 16))
    if isinstance(fixed, pa.ChunkedArray):
        fixed = fixed.combine_chunks()
    bufs = fixed.buffers()
    start = int(np.frombuffer(bufs[1], np.int32)[fixed.offset])
    data = np.frombuffer(bufs[2], np.uint8)[start : start + 16 * n]
    nib = _HEX[data].reshape(n, 16)
    # a non-hex digit maps to 255: test the high bit of the 16 digits as two 64-bit words
    bad = (nib.view("<u8").reshape(n, 2) & np.uint64(0x8080808080808080)).any(axis=1)
    if not all_valid:
        bad |= ~valid.to_numpy(zero_copy_only=False)
    # two hex digits a byte, eight bytes big-endian: the integer the digits spell
    packed = ((nib[:, 0::2] << 4) | (nib[:, 1::2] & 15)).astype(np.uint8)
    keys = packed.view(">u8").reshape(n).astype(np.int64) & np.int64(0x7FFF_FFFF_FFFF_FFFF)
    keys[bad] = -1
    return keys


_HEX = np.full(256, 255, np.uint8)
for _i, _ch in enumerate(b"0123456789abcdef"):
    _HEX[_ch] = _i
for _i, _ch in enumerate(b"ABCDEF"):
    _HEX[_ch] = 10 + _i


@dataclass
class _IndexEntry:
    index: VectorIndex
    ids_by_key: pa.Array  # sample ids in ascending key order
    sorted_keys: np.ndarray


class SimilarityService:
    """The session's similarity searches: index and query-vector caches, result tables."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.mode = "run"  # "run", "explain" (plan only), "analyze" (run and report), "check"
        self.notes: list[str] = []
        self._indexes: dict[tuple[str, int, str], _IndexEntry] = {}
        self._vectors: dict[tuple[Any, ...], np.ndarray] = {}
        self._tables: list[str] = []
        self._udfs: list[str] = []
        self._counter = 0
        self._memo: dict[SearchRequest, SearchOutcome] = {}
        self.source: Session = session  # whose dataset a scratch (checking) session searches
        self.embeddings_computed = 0  # examples embedded by a model (not from the cache)

    # -- statement life cycle -----------------------------------------------------------------

    def begin(self, mode: str = "run") -> None:
        self.mode = mode
        self.notes = []
        self._memo = {}

    def end(self) -> None:
        """Drop the statement's result tables and UDFs (planned DataFrames keep their own)."""
        ctx = self.session.ctx
        for name in self._tables:
            try:
                ctx.deregister_table(f'"{name}"')
            except Exception:
                continue
        for name in self._udfs:
            try:
                ctx.deregister_udf(name)
            except Exception:
                continue
        self._tables.clear()
        self._udfs.clear()

    def clear_caches(self) -> None:
        self._indexes.clear()

    # -- the search ---------------------------------------------------------------------------

    def search(self, req: SearchRequest) -> SearchOutcome:
        """Run (or plan, or check) one search and register its result; the same request twice
        in a statement (a derived table typed, then lowered) runs once."""
        done = self._memo.get(req)
        if done is not None:
            return done
        outcome = self._search(req)
        self._memo[req] = outcome
        return outcome

    def _search(self, req: SearchRequest) -> SearchOutcome:
        snapshot = self._snapshot(req)
        key, meta = self._embedder(req, snapshot)
        identity = str(meta.get("identity") or key)
        self._counter += 1
        table = f"__popql_sim_{self._counter}"
        udf = f"__popql_score_{self._counter}"
        if self.mode == "check":
            self._check_examples(req, snapshot, key)
            self._register(table, udf, RESULT_SCHEMA.empty_table())
            return SearchOutcome(table, udf, "", 0)
        entry = self._index(snapshot, key)
        index = entry.index
        mask, allowed_note = self._allowed(req, index)
        what = _membership(req)
        if self.mode == "explain":
            plan = index.plan(k=req.k, threshold=_threshold(req), allowed=mask, exact=req.exact)
            self._examples_valid(req, entry, key, snapshot)
            note = f"{req.construct} {what} using {key}: {plan.strategy}: {plan.reason}"
            self.notes.append(note + allowed_note)
            self._register(table, udf, RESULT_SCHEMA.empty_table())
            return SearchOutcome(table, udf, note, 0)
        positives, negatives = self._query_vectors(req, entry, key, meta, identity)
        started = time.perf_counter()
        try:
            result = index.search(
                positives,
                negatives if len(negatives) else None,
                k=req.k,
                threshold=_threshold(req),
                allowed=mask,
                exact=req.exact,
            )
        except ValueError as exc:  # examples that cancel out, a zero vector
            raise _error("S003", f"cannot search with these examples: {exc}", req.span) from exc
        ms = (time.perf_counter() - started) * 1000
        keys = np.asarray(result.keys, np.int64)
        pos = np.searchsorted(entry.sorted_keys, keys)
        ids = entry.ids_by_key.take(pa.array(pos, pa.int64()))
        found = pa.table({"sample_id": ids, "score": pa.array(result.scores, pa.float32())})
        self._register(table, udf, found)
        few = tuple(ids.to_pylist()) if 0 < len(keys) <= INLINE_IDS else None
        note = (
            f"{req.construct} {what} using {key}: {result.strategy}: {result.reason}"
            f" -> {len(keys):,} rows in {ms:.2f} ms"
        )
        self.notes.append(note + allowed_note)
        return SearchOutcome(table, udf, note, len(keys), few)

    # -- parts ----------------------------------------------------------------------------------

    def _snapshot(self, req: SearchRequest) -> Snapshot:
        s = self.source
        if s.dataset is None or s.snapshot is None:
            raise _error(
                "S002",
                f"{req.construct} needs a dataset with embeddings, but this session has none",
                req.span,
                "open one with popql.connect('DIR') (or popql query --dataset DIR) after"
                " `popql ingest DIR PHOTOS --embedder clip`",
            )
        if req.version is None or req.version == s.snapshot.version:
            return s.snapshot
        return s.dataset.snapshot(req.version)

    def _embedder(self, req: SearchRequest, snapshot: Snapshot) -> tuple[str, dict[str, Any]]:
        from .embedders import embedder_key

        embedders = {k: (m if isinstance(m, dict) else {}) for k, m in snapshot.embedders.items()}
        usable = {
            k: m
            for k, m in embedders.items()
            if (m.get("table") or f"embeddings.{k}") in snapshot.tables
        }
        if req.using is not None:
            for name in (req.using, embedder_key(req.using)):
                if name in usable:
                    return name, usable[name]
            hint = did_you_mean_hint(req.using, list(usable))
            hints = [hint] if hint else []
            hints.append(
                f"this dataset has embeddings from: {', '.join(sorted(usable)) or 'none'};"
                f" compute others with `popql ingest DIR PHOTOS --embedder {req.using}`"
            )
            raise _error(
                "S002",
                f"no embeddings from embedder '{req.using}' in version {snapshot.version}",
                req.span,
                *hints,
            )
        if len(usable) == 1:
            key = next(iter(usable))
            return key, usable[key]
        if not usable:
            raise _error(
                "S002",
                f"{req.construct} needs embeddings, but version {snapshot.version} of the"
                " dataset has none",
                req.span,
                "compute them with `popql ingest DIR PHOTOS --embedder clip` (or fmnist-clip"
                " for the offline test model)",
            )
        raise _error(
            "S002",
            f"this dataset has embeddings from {len(usable)} embedders: say which with USING",
            req.span,
            f"e.g. ... {req.construct} ... USING {sorted(usable)[0]}"
            f" (embedders: {', '.join(sorted(usable))})",
        )

    def _index(self, snapshot: Snapshot, key: str) -> _IndexEntry:
        from .vector import VectorIndex

        cache_key = (os.fspath(snapshot.root), int(snapshot.version), key)
        entry = self._indexes.get(cache_key)
        if entry is not None:
            return entry
        index = VectorIndex.from_snapshot(snapshot, key)
        meta = snapshot.embedders[key]
        table_name = meta.get("table") or f"embeddings.{key}"
        ids = snapshot.dataset(table_name).to_table(columns=["sample_id"]).column("sample_id")
        keys = keys_of_ids(ids)
        order = np.argsort(keys, kind="stable")
        entry = _IndexEntry(
            index, ids.combine_chunks().take(pa.array(order, pa.int64())), keys[order]
        )
        self._indexes[cache_key] = entry
        return entry

    def _allowed(self, req: SearchRequest, index: VectorIndex) -> tuple[Any, str]:
        if req.allowed_sql is None:
            return None, ""
        note = ""
        try:
            table = self.session.ctx.sql(req.allowed_sql).to_arrow_table()
        except Exception:
            # The other predicates reference an outer query (a correlated subquery): rank the
            # rows of the FROM clause, and say so.
            if req.fallback_sql is None:
                return None, " [the other predicates reference an outer query: every row ranked]"
            table = self.session.ctx.sql(req.fallback_sql).to_arrow_table()
            note = " [the other predicates reference an outer query: FROM rows ranked]"
        keys = keys_of_ids(table.column(0)) if table.num_columns else np.zeros(0, np.int64)
        keys = np.sort(keys[keys >= 0])  # sorted lookups walk the sorted index keys in order
        mask = index.mask_of(keys)
        passing = f" [{int(mask.sum()):,} of {len(index):,} rows allowed]"
        return mask, note or passing

    def _check_examples(self, req: SearchRequest, snapshot: Snapshot, key: str) -> None:
        for ex in req.examples:
            if ex.kind == "IMAGE" and not _is_url(ex.value) and not os.path.exists(ex.value):
                raise _error(
                    "S003",
                    f"image file not found: {ex.value}",
                    ex.span,
                    "paths are relative to the current directory",
                )

    def _examples_valid(
        self, req: SearchRequest, entry: _IndexEntry, key: str, snapshot: Snapshot
    ) -> None:
        self._check_examples(req, snapshot, key)
        for ex in req.examples:
            if ex.kind == "SAMPLE":
                self._sample_row(ex, entry, key)

    def _query_vectors(
        self,
        req: SearchRequest,
        entry: _IndexEntry,
        key: str,
        meta: dict[str, Any],
        identity: str,
    ) -> tuple[np.ndarray, np.ndarray]:
        pos: list[np.ndarray] = []
        neg: list[np.ndarray] = []
        for ex in req.examples:
            vec = self._vector(ex, entry, key, meta, identity)
            (neg if ex.negated else pos).append(vec)
        if not pos:
            raise _error(
                "S003",
                f"{req.construct} needs at least one positive example (all are NOT ...)",
                req.span,
            )
        dim = entry.index.dim
        return np.stack(pos), (np.stack(neg) if neg else np.zeros((0, dim), np.float32))

    def _vector(
        self, ex: Example, entry: _IndexEntry, key: str, meta: dict[str, Any], identity: str
    ) -> np.ndarray:
        if ex.kind == "SAMPLE":
            row = self._sample_row(ex, entry, key)
            return np.asarray(entry.index.matrix[row], np.float32)
        cache_key: tuple[Any, ...] = (identity, ex.kind, ex.value)
        if ex.kind == "IMAGE" and not _is_url(ex.value):
            try:
                st = os.stat(ex.value)
                cache_key += (st.st_size, st.st_mtime_ns)
            except OSError:
                pass
        cached = self._vectors.get(cache_key)
        if cached is not None:
            return cached
        embedder = self._load_embedder(key, meta, identity, ex.span)
        if ex.kind == "TEXT":
            vec = embedder.embed_texts([ex.value])[0]
        else:
            vec = embedder.embed_images([self._open_image(ex)])[0]
        vec = np.asarray(vec, np.float32).reshape(-1)
        if vec.shape[0] != entry.index.dim:
            raise _error(
                "S004",
                f"embedder {key} gives {vec.shape[0]}-d vectors, but the dataset's are"
                f" {entry.index.dim}-d",
                ex.span,
                "re-ingest the dataset with this embedder",
            )
        self.embeddings_computed += 1
        self._vectors[cache_key] = vec
        return vec

    def _load_embedder(self, key: str, meta: dict[str, Any], identity: str, span: Any) -> Any:
        from .embedders import load_embedder

        spec = str(meta.get("spec") or key)
        embedder = load_embedder(spec)
        loaded = str(getattr(embedder, "identity", spec))
        if meta.get("identity") and loaded != identity:
            raise _error(
                "S004",
                f"embedder {key} now loads as {loaded}, but the dataset's vectors were computed"
                f" with {identity}",
                span,
                "a query embedded by other weights would be compared with vectors it does not"
                " match; restore those weights, or re-ingest the dataset so that its vectors"
                " are recomputed (`popql ingest DIR PHOTOS --embedder ...`)",
            )
        return embedder

    def _open_image(self, ex: Example) -> Any:
        from .images import ImageError, open_image

        try:
            return open_image(ex.value, max_side=1024).image
        except ImageError as exc:
            raise _error(
                "S003",
                f"cannot use image {ex.value}: {exc.message}",
                ex.span,
                "NEAR IMAGE takes a path (relative to the current directory) or a URL of a"
                " JPEG, PNG, WebP... image",
            ) from exc

    def _sample_row(self, ex: Example, entry: _IndexEntry, key: str) -> int:
        text = ex.value
        if text.isdigit() and len(text) != 16:
            wanted = np.array([int(text)], np.int64)
        else:
            wanted = keys_of_ids(pa.array([text]))
        rows, found = entry.index.rows_of(wanted)
        if wanted[0] < 0 or not found[0]:
            raise _error(
                "S003",
                f"no sample '{text}' with an embedding from {key} in this dataset version",
                ex.span,
                "NEAR SAMPLE takes a sample_id (16 hex digits, as in SELECT sample_id FROM"
                " samples) or a sample_key",
            )
        return int(rows[0])

    def _register(self, table: str, udf_name: str, found: pa.Table) -> None:
        import datafusion

        ctx = self.session.ctx
        batches = found.combine_chunks().to_batches() or [
            pa.RecordBatch.from_pylist([], schema=RESULT_SCHEMA)
        ]
        ctx.register_record_batches(f'"{table}"', [batches])
        self._tables.append(table)
        ids = found.column("sample_id").combine_chunks()
        scores = found.column("score").combine_chunks()

        def score(sample_ids: pa.Array) -> pa.Array:
            where = pc.index_in(sample_ids, value_set=ids)
            return pc.take(scores, where)

        ctx.register_udf(
            datafusion.udf(score, [pa.string()], pa.float32(), "stable", name=udf_name)
        )
        self._udfs.append(udf_name)


def _threshold(req: SearchRequest) -> float | None:
    return req.threshold


def _membership(req: SearchRequest) -> str:
    exact = " EXACT" if req.exact else ""
    if req.threshold == ALL_ROWS:
        return f"(scores of every allowed row{exact})"
    if req.k is not None:
        return f"(TOP {req.k}{exact})"
    return f"(THRESHOLD {req.threshold:g}{exact})"


def _is_url(text: str) -> bool:
    from .images import is_url

    return is_url(text)


def _error(code: str, message: str, span: Any, *hints: str) -> PopQLError:
    return PopQLError((Diagnostic(code, message, span, hints=tuple(hints)),))


def examples_text(examples: Sequence[Example]) -> str:
    return ", ".join(("NOT " if e.negated else "") + f"{e.kind} {e.value!r}" for e in examples)
