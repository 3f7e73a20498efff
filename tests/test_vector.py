"""Vector search core (popql.engine.vector): exactness, the planner, widening, persistence."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("usearch")

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from popql.engine.vector import (
    CostModel,
    SearchResult,
    VectorIndex,
    combine_query,
)

N, DIM, CLUSTERS = 3000, 32, 30


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def make_data(n: int = N, dim: int = DIM, clusters: int = CLUSTERS, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((clusters, dim)))
    cluster = rng.integers(0, clusters, n)
    x = _unit(centres[cluster] + 0.35 * rng.standard_normal((n, dim)))
    vectors = x.astype(np.float16)
    # a few exact duplicates (ties: broken by key)
    vectors[n - 5 :] = vectors[0]
    cluster[n - 5 :] = cluster[0]
    keys = rng.choice(2**62, size=n, replace=False).astype(np.int64)
    return keys, vectors, cluster, centres


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def index(data):
    keys, vectors, _, _ = data
    return VectorIndex.build(keys, vectors, threads=1)


# -- an independent numpy reference ------------------------------------------------------------


def ref_scores(vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
    x = vectors.astype(np.float64)
    qq = np.asarray(q, np.float64)
    qq = qq / np.linalg.norm(qq)
    return ((x @ qq) / np.linalg.norm(x, axis=1)).astype(np.float32)


def ref_ranked(keys, scores, mask=None):
    idx = np.arange(len(keys)) if mask is None else np.flatnonzero(mask)
    order = np.lexsort((keys[idx], -scores[idx].astype(np.float64)))
    return keys[idx][order], scores[idx][order]


def assert_same_ranking(result: SearchResult, keys: np.ndarray, scores: np.ndarray) -> None:
    np.testing.assert_allclose(result.scores, scores, rtol=0, atol=2e-7)
    if not np.array_equal(result.keys, keys):
        # Only a score within float noise of another may change places.
        diff = np.flatnonzero(result.keys != keys)
        assert np.all(np.abs(np.diff(scores)).min(initial=1.0) < 1e-6), (diff, result.keys, keys)


def check_invariants(index: VectorIndex, result: SearchResult, q, mask, k) -> None:
    m = len(index) if mask is None else int(mask.sum())
    assert result.keys.dtype == np.int64 and result.scores.dtype == np.float32
    if k is not None:
        assert len(result) == min(k, m), (len(result), k, m, result.reason)
    assert len(set(result.keys.tolist())) == len(result)
    rows, found = index.rows_of(result.keys)
    assert found.all()
    if mask is not None:
        assert mask[rows].all(), "a returned row does not pass the filter"
    exact = ref_scores(np.asarray(index.matrix)[rows], q)
    np.testing.assert_allclose(result.scores, exact, rtol=0, atol=2e-7)
    s = result.scores.astype(np.float64)
    assert np.all(np.diff(s) <= 0), "not sorted by score"
    ties = np.flatnonzero(np.diff(s) == 0)
    assert np.all(result.keys[ties] < result.keys[ties + 1]), "ties not broken by key"
    assert np.all(np.abs(result.scores) <= 1.0)


# -- exact results equal numpy ------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 10, 100])
@pytest.mark.parametrize("filtered", ["none", "mask", "keys"])
def test_exact_equals_numpy(index, data, k, filtered):
    keys, vectors, _, centres = data
    rng = np.random.default_rng(k)
    mask = rng.random(N) < 0.3 if filtered != "none" else None
    allowed = {"none": None, "mask": mask, "keys": keys[mask] if mask is not None else None}
    for qi in range(5):
        q = centres[qi] + 0.1 * rng.standard_normal(DIM)
        r = index.search(q, k=k, allowed=allowed[filtered], exact=True)
        assert r.strategy == "exact" and "EXACT" in r.reason
        want_k, want_s = ref_ranked(keys, ref_scores(vectors, q), mask)
        assert_same_ranking(r, want_k[:k], want_s[:k])


def test_ties_broken_by_key(index, data):
    keys, vectors, _, _ = data
    q = vectors[0].astype(np.float32)
    r = index.search(q, k=6, exact=True)
    dup = np.sort(np.concatenate([keys[:1], keys[N - 5 :]]))
    assert np.array_equal(r.keys, dup)  # six equal vectors: equal scores, ascending keys
    assert len(set(r.scores.tolist())) == 1
    planned = index.search(q, k=6)
    assert np.array_equal(planned.keys, dup)


@pytest.mark.parametrize("threshold", [0.95, 0.7, 0.3, -1.0])
def test_threshold_is_complete(index, data, threshold):
    keys, vectors, _, centres = data
    rng = np.random.default_rng(7)
    mask = rng.random(N) < 0.5
    for allowed in (None, mask):
        q = centres[3]
        r = index.search(q, threshold=threshold, allowed=allowed)
        assert r.strategy == "exact"
        sc = ref_scores(vectors, q)
        want_k, want_s = ref_ranked(keys, sc, allowed)
        keep = want_s >= threshold
        assert_same_ranking(r, want_k[keep], want_s[keep])
        check_invariants(index, r, q, allowed, None)


def test_threshold_with_k(index, data):
    keys, vectors, _, centres = data
    q = centres[5]
    sc = ref_scores(vectors, q)
    want_k, want_s = ref_ranked(keys, sc)
    t = float(want_s[40])  # 41+ rows reach it
    r = index.search(q, k=10, threshold=t)
    assert len(r) == 10 and np.all(r.scores >= t)
    r = index.search(q, k=1000, threshold=t)  # fewer than k reach it: all of them, exactly
    keep = want_s >= t
    assert_same_ranking(r, want_k[keep], want_s[keep])


def test_negatives_combine(index, data):
    keys, vectors, _, centres = data
    pos = np.stack([centres[1], centres[2]])
    neg = centres[3]
    q = combine_query(pos, neg)
    manual = _unit(pos).mean(0) - _unit(neg)
    np.testing.assert_allclose(q, manual / np.linalg.norm(manual), atol=1e-12)
    r = index.search(pos, neg, k=20, exact=True)
    want_k, want_s = ref_ranked(keys, ref_scores(vectors, q))
    assert_same_ranking(r, want_k[:20], want_s[:20])
    planned = index.search(pos, neg, k=20)
    check_invariants(index, planned, q, None, 20)
    with pytest.raises(ValueError, match="cancel out"):
        combine_query(centres[1], centres[1])
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.ones(DIM + 1), k=3)


# -- the planner ---------------------------------------------------------------------------------


def test_plan_strategies(index, data):
    centres = data[3]
    q = centres[0]
    assert index.search(q, k=10).strategy == "hnsw"
    few = np.zeros(N, bool)
    few[:12] = True
    r = index.search(q, k=10, allowed=few)
    assert r.strategy == "exact" and "crossover" in r.reason and "12 candidates" in r.reason
    many = np.ones(N, bool)
    many[::2] = False
    r = index.search(q, k=10, allowed=many)
    assert r.strategy == "hnsw-filtered", r.reason
    assert "1,500 candidates (50 % of 3,000)" in r.reason
    assert index.search(q, threshold=0.5).strategy == "exact"
    assert "cannot prove" in index.search(q, threshold=0.5).reason
    assert index.search(q, k=10, allowed=many, exact=True).strategy == "exact"
    plan = index.plan(k=10, allowed=few)
    assert plan.strategy == "exact" and plan.allowed == 12 and 0 < plan.crossover < 1
    # the crossover shrinks as the index grows (exact cost ~ s*n, HNSW ~ k/s)
    assert index.crossover(10, rows=1_000_000) < index.crossover(10, rows=100_000)


def test_empty_cases(index, data):
    q = data[3][0]
    none = np.zeros(N, bool)
    for r in (
        index.search(q, k=10, allowed=none),
        index.search(q, k=10, allowed=np.array([], np.int64)),
        index.search(q, k=0),
        index.search(q, threshold=0.5, allowed=none),
    ):
        assert len(r) == 0 and r.strategy == "empty"
    empty = VectorIndex.build(np.zeros(0, np.int64), np.zeros((0, DIM), np.float32))
    assert len(empty.search(q, k=5)) == 0


def test_allowed_keys(index, data):
    keys, vectors, _, centres = data
    unknown = np.array([12345, 67890], np.int64)
    unknown = unknown[~np.isin(unknown, keys)]
    allowed = np.concatenate([keys[:50], unknown])
    r = index.search(centres[0], k=5, allowed=allowed)
    assert r.stats["allowed"] == 50
    assert r.stats["allowed_keys_unknown"] == len(unknown)
    mask = np.isin(keys, keys[:50])
    want_k, _ = ref_ranked(keys, ref_scores(vectors, centres[0]), mask)
    assert np.array_equal(r.keys, want_k[:5])


def test_bad_arguments(index, data):
    q = data[3][0]
    with pytest.raises(ValueError, match="needs k"):
        index.search(q)
    with pytest.raises(ValueError, match="one entry per row"):
        index.search(q, k=3, allowed=np.ones(N + 1, bool))
    with pytest.raises(ValueError, match="non-negative"):
        index.search(q, k=-1)
    with pytest.raises(ValueError, match="bool mask"):
        index.search(q, k=3, allowed=np.ones(N, np.float32))
    with pytest.raises(ValueError, match="unique"):
        VectorIndex.build(np.array([1, 1]), np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="non-negative"):
        VectorIndex.build(np.array([-1, 1]), np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        VectorIndex.build(np.array([1, 2]), np.array([[1.0, np.nan], [1.0, 0.0]]))


# -- property tests against brute force ---------------------------------------------------------


@st.composite
def predicates(draw):
    kind = draw(
        st.sampled_from(["none", "zero", "one", "fewer", "random", "clusters", "far-clusters"])
    )
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if kind == "none":
        return kind, None
    mask = np.zeros(N, bool)
    if kind == "one":
        mask[rng.integers(N)] = True
    elif kind == "fewer":
        mask[rng.choice(N, size=int(rng.integers(2, 9)), replace=False)] = True
    elif kind == "random":
        p = draw(st.sampled_from([0.002, 0.01, 0.05, 0.2, 0.5, 0.9, 1.0]))
        mask = rng.random(N) < p
    elif kind in ("clusters", "far-clusters"):
        n_clusters = draw(st.integers(1, CLUSTERS - 1))
        mask = np.isin(_CLUSTER, rng.permutation(CLUSTERS)[:n_clusters])
    return kind, mask


_KEYS, _VECTORS, _CLUSTER, _CENTRES = make_data()


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    pred=predicates(),
    k=st.sampled_from([1, 3, 10, 25, 100]),
    query=st.integers(0, CLUSTERS - 1),
    approximate=st.booleans(),
)
def test_planned_topk_matches_brute_force(index, pred, k, query, approximate):
    kind, mask = pred
    keys, vectors = _KEYS, _VECTORS
    rng = np.random.default_rng(query)
    centre = query
    if kind == "far-clusters" and mask is not None and (~mask).any():
        centre = int(_CLUSTER[np.flatnonzero(~mask)[0]])  # the query's cluster is filtered out
    q = _CENTRES[centre] + 0.2 * rng.standard_normal(DIM)
    r = index.search(q, k=k, allowed=mask, approximate=approximate)
    event(f"{kind}: {r.strategy}{' widened' if len(r.stats.get('hnsw_counts', ())) > 1 else ''}")
    check_invariants(index, r, q, mask, k)
    want_k, want_s = ref_ranked(keys, ref_scores(vectors, q), mask)
    if r.strategy in ("exact", "empty"):
        assert_same_ranking(r, want_k[:k], want_s[:k])
    else:
        got = len(np.intersect1d(r.keys, want_k[:k]))
        assert got >= 0.8 * min(k, len(want_k)), (got, r.reason, r.stats)


def test_recall_on_clustered_filters(index):
    """Mean recall@10 of the planned search over correlated and uncorrelated filters."""
    rng = np.random.default_rng(99)
    recalls = []
    for i in range(60):
        if i % 2:
            mask = np.isin(_CLUSTER, rng.permutation(CLUSTERS)[: rng.integers(1, 15)])
        else:
            mask = rng.random(N) < rng.choice([0.05, 0.2, 0.6])
        q = _CENTRES[rng.integers(CLUSTERS)] + 0.2 * rng.standard_normal(DIM)
        r = index.search(q, k=10, allowed=mask)
        want, _ = ref_ranked(_KEYS, ref_scores(_VECTORS, q), mask)
        recalls.append(len(np.intersect1d(r.keys, want[:10])) / min(10, len(want)))
    assert np.mean(recalls) >= 0.97


# -- widening -------------------------------------------------------------------------------------


def test_widening_finds_k_rows_far_from_the_query(index):
    # allowed: one cluster; query: the centre of another, so the allowed rows rank far down
    far = 0
    target = int(np.argmin(_CENTRES @ _CENTRES[far]))
    mask = target == _CLUSTER
    q = _CENTRES[far]
    r = index.search(q, k=10, allowed=mask, approximate=True)
    assert len(r) == 10
    assert len(r.stats["hnsw_counts"]) > 1, r.stats  # widened
    assert r.stats["hnsw_counts"] == sorted(r.stats["hnsw_counts"])
    assert "widened" in r.reason or r.strategy == "exact"
    want, _ = ref_ranked(_KEYS, ref_scores(_VECTORS, q), mask)
    assert len(np.intersect1d(r.keys, want[:10])) >= 9


def test_widening_falls_back_to_exact_when_dearer(data):
    keys, vectors, _, _ = data
    vi = VectorIndex.build(keys, vectors, threads=1)
    # HNSW made cheap to plan, dear to widen: the first round runs, the widening gives up
    vi.cost = CostModel(scan_us_per_row=1.0, hnsw_us_per_count=0.001, hnsw_overhead_us=0.0)
    far = 0
    target = int(np.argmin(_CENTRES @ _CENTRES[far]))
    mask = target == _CLUSTER
    vi.cost.exact_overhead_us = 0.0
    plan = vi.plan(k=10, allowed=mask)
    assert plan.strategy == "hnsw-filtered"
    vi.cost.hnsw_us_per_count = 10.0  # now a second round costs more than the scan
    r = vi.search(_CENTRES[far], k=10, allowed=mask)
    assert r.strategy == "exact" and "exact scan over" in r.reason
    want, _ = ref_ranked(keys, ref_scores(vectors, _CENTRES[far]), mask)
    assert np.array_equal(r.keys, want[:10])


# -- determinism and persistence ---------------------------------------------------------------


def test_deterministic(index):
    q = _CENTRES[4]
    mask = np.random.default_rng(1).random(N) < 0.4
    a = index.search(q, k=25, allowed=mask)
    b = index.search(q, k=25, allowed=mask)
    assert np.array_equal(a.keys, b.keys) and np.array_equal(a.scores, b.scores)
    assert a.strategy == b.strategy and a.reason == b.reason


def test_save_restore_view(index, tmp_path):
    path = tmp_path / "e.usearch"
    index.save(path)
    back = VectorIndex.restore(path)  # view=True: graph and vectors memory-mapped
    assert isinstance(back.matrix.base, np.memmap) or isinstance(back.matrix, np.memmap)
    assert np.array_equal(np.sort(back.keys), np.sort(index.keys))
    rows, found = index.rows_of(back.keys)
    assert found.all() and np.array_equal(np.asarray(back.matrix), np.asarray(index.matrix)[rows])
    q = _CENTRES[6]
    for kw in ({"k": 10, "exact": True}, {"threshold": 0.5}):
        a, b = index.search(q, **kw), back.search(q, **kw)
        assert np.array_equal(a.keys, b.keys) and np.array_equal(a.scores, b.scores)
    # masks follow the restored row order
    mask = back.mask_of(_KEYS[:100])
    r = back.search(q, k=5, allowed=mask)
    assert set(r.keys.tolist()) <= set(_KEYS[:100].tolist())
    copy = VectorIndex.restore(path, view=False)
    assert not isinstance(copy.matrix.base, np.memmap)
    assert np.array_equal(copy.keys, back.keys)


def test_add_remove_and_restore_again(data, tmp_path):
    keys, vectors, _, _ = data
    half = N // 2
    vi = VectorIndex.build(keys[:half], vectors[:half], threads=1)
    path = tmp_path / "a.usearch"
    vi.save(path)
    vi = VectorIndex.restore(path)  # a view: add() loads it into memory first
    vi.add(keys[half:], vectors[half:].astype(np.float32))
    assert len(vi) == N
    with pytest.raises(ValueError, match="already"):
        vi.add(keys[:1], vectors[:1])
    q = _CENTRES[8]
    want_k, want_s = ref_ranked(keys, ref_scores(vectors, q))
    assert_same_ranking(vi.search(q, k=10, exact=True), want_k[:10], want_s[:10])
    gone = want_k[:3]
    assert vi.remove(np.concatenate([gone, [1]])) == 3
    r = vi.search(q, k=10)
    assert not set(gone.tolist()) & set(r.keys.tolist())
    assert_same_ranking(vi.search(q, k=10, exact=True), want_k[3:13], want_s[3:13])
    path2 = tmp_path / "b.usearch"
    vi.save(path2)  # with deleted slots: restore copies the vectors out through usearch
    back = VectorIndex.restore(path2)
    assert len(back) == N - 3
    assert_same_ranking(back.search(q, k=10, exact=True), want_k[3:13], want_s[3:13])


def test_from_arrow_and_restore_with_vectors(data, tmp_path):
    pa = pytest.importorskip("pyarrow")
    keys, vectors, _, _ = data
    flat = pa.array(vectors.reshape(-1), pa.float16())
    table = pa.table(
        {"sample_key": pa.array(keys), "embedding": pa.FixedSizeListArray.from_arrays(flat, DIM)}
    )
    vi = VectorIndex.from_arrow(table, threads=1)
    assert np.array_equal(vi.keys, keys)
    path = tmp_path / "c.usearch"
    vi.save(path)
    back = VectorIndex.restore(path, keys=keys, vectors=vectors)
    assert np.array_equal(back.keys, keys)
    r = back.search(_CENTRES[2], k=5).to_arrow()
    assert r.column_names == ["sample_key", "score"] and r.num_rows == 5
    with pytest.raises(ValueError, match="holds"):
        VectorIndex.restore(path, keys=keys[:10], vectors=vectors[:10])


def test_from_snapshot(data, tmp_path):
    pa = pytest.importorskip("pyarrow")
    from popql.engine.dataset import Dataset

    keys, vectors, _, _ = data
    ds = Dataset.open(tmp_path / "ds", create=True)
    ids = [f"{k:016x}" for k in keys]
    flat = pa.array(vectors.reshape(-1), pa.float16())
    table = pa.table(
        {
            "sample_id": pa.array(ids),
            "sample_key": pa.array(keys),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, DIM),
        }
    )
    vi = VectorIndex.build(keys, vectors, threads=1)
    with ds.transaction("embeddings") as txn:
        txn.append("embeddings.e", table)
        rel = "indexes/e/one.usearch"
        path = txn.add_file(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        vi.save(path)
        txn.set_embedder(
            "e", {"spec": "e", "identity": "e", "dim": DIM, "table": "embeddings.e", "index": rel}
        )
        txn.commit()
    back = VectorIndex.from_snapshot(ds.snapshot(), "e")
    assert len(back) == N
    q = _CENTRES[9]
    a, b = vi.search(q, k=10, exact=True), back.search(q, k=10, exact=True)
    assert np.array_equal(a.keys, b.keys)


def test_subset_index(index):
    mask = np.isin(_CLUSTER, [1, 2, 3])
    sub = index.subset(mask, threads=1)
    assert len(sub) == int(mask.sum())
    assert set(sub.keys.tolist()) == set(_KEYS[mask].tolist())
    q = _CENTRES[1]
    a = sub.search(q, k=10)  # unfiltered HNSW on the partition
    b = index.search(q, k=10, allowed=mask, exact=True)
    assert a.strategy == "hnsw"
    assert len(np.intersect1d(a.keys, b.keys)) >= 9


def test_calibrate(data):
    keys, vectors, _, _ = data
    vi = VectorIndex.build(keys, vectors, threads=1)
    cost = vi.calibrate(queries=3)
    assert cost is vi.cost
    assert cost.scan_us_per_row > 0 and cost.hnsw_us_per_count > 0
    assert 0 < vi.crossover(10) <= 1
    assert vi.search(_CENTRES[0], k=5, allowed=_CLUSTER == 0).keys.size == 5
