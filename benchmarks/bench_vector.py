"""Benchmark of PopQL's vector search core (``popql.engine.vector``) against its peers.

Top-10 queries over clustered 512-d vectors with tag columns, at filter selectivities 100 %, 50 %,
10 %, 1 % and 0.1 %, each with a filter correlated with the clusters (a tag that is a function of
the cluster, as real tags are) and one that is not (a uniform random bucket). Per cell: p50 and
p95 latency and recall@10 against the exact answer, for PopQL's planner, numpy brute force, and,
side by side on the same data and queries, FAISS (exact search over a bitmap of the passing rows;
HNSW with the filter inside the graph), LanceDB (IVF_HNSW_SQ with prefilter) and DuckDB's vss
HNSW index, when their packages import (they are not PopQL dependencies: ``pip install faiss-cpu
lancedb duckdb duckdb-ext-vss``). Peers are tuned per cell up a ladder of search parameters until
recall@10 reaches 0.95 (or the ladder ends); the table shows the first setting that did.

A benchmark, not a test: it prints a Markdown table and PASS/FAIL lines and exits 0.

    python benchmarks/bench_vector.py                 # 100k vectors (quick mode)
    python benchmarks/bench_vector.py --n 1000000     # 1M vectors (build once: ~7 min, cached)

Generated data and built indexes are cached under ``bench-data/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import glob
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SELECTIVITIES = (1.0, 0.5, 0.1, 0.01, 0.001)
TARGET_RECALL = 0.95
TARGET_P50_NOFILTER_MS = 2.0
TARGET_P50_FILTER_MS = 10.0
#: FAISS HNSW's efSearch ladder: fine steps where it is fast, so that it is compared at its
#: cheapest setting that reaches the recall it is compared at.
FAISS_EF_LADDER = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096, 16384]
#: Rows of peers at their cheapest setting reaching TARGET_RECALL (when that is below PopQL's
#: recall in the cell, PopQL is compared with them at better, not equal, recall).
AT95 = "at recall 0.95: "
DATA_VERSION = 2  # 1: isotropic within-cluster noise (--intrinsic-dim 0), 2: low-rank


def data_tag(args: argparse.Namespace) -> str:
    """File name stem of a data variant (cached files are reused only for the same variant)."""
    if args.intrinsic_dim == 0:
        return f"{args.n}x{args.dim}_v1"
    return f"{args.n}x{args.dim}_lr{args.intrinsic_dim}_v{DATA_VERSION}"


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def generate(
    n: int, dim: int, clusters: int, seed: int = 0, intrinsic: int = 16
) -> dict[str, np.ndarray]:
    """Clustered unit vectors: a common direction (all CLIP image vectors share one), 50
    super-clusters, ``clusters`` clusters, and per-vector variation (cosine to the cluster centre
    about 0.8, between two members of a cluster about 0.65, across clusters 0.1-0.5).

    The variation lies mostly in a low-dimensional subspace (``intrinsic`` dimensions, one basis
    per super-cluster, plus a little isotropic noise), as real embeddings lie near a
    low-dimensional manifold. ``intrinsic=0`` makes it isotropic in all ``dim`` dimensions: the
    members of a cluster are then nearly equidistant random vectors, the hard case that the
    issue calls a poor benchmark (HNSW recall at 1M drops to ~0.89 at ef 128, see
    docs/vector-search.md)."""
    rng = np.random.default_rng(seed)

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    common = unit(rng.standard_normal(dim).astype(np.float32))
    supers = unit(rng.standard_normal((50, dim)).astype(np.float32))
    own = unit(rng.standard_normal((clusters, dim)).astype(np.float32))
    super_of = rng.integers(0, 50, clusters)
    centres = unit(0.5 * common + 0.6 * supers[super_of] + 0.6 * own)
    cluster = rng.integers(0, clusters, n).astype(np.int32)
    if intrinsic:
        bases = np.linalg.qr(rng.standard_normal((50, dim, intrinsic)).astype(np.float32))[0]
    vectors = np.empty((n, dim), np.float16)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        c = cluster[s:e]
        if intrinsic:
            noise = rng.standard_normal((e - s, dim)).astype(np.float32) * (0.27 / np.sqrt(dim))
            z = rng.standard_normal((e - s, intrinsic)).astype(np.float32) * (
                0.70 / np.sqrt(intrinsic)
            )
            sup = super_of[c]
            for b in np.unique(sup):
                rows = np.flatnonzero(sup == b)
                noise[rows] += z[rows] @ bases[b].T
        else:
            noise = rng.standard_normal((e - s, dim)).astype(np.float32) * (0.75 / np.sqrt(dim))
        vectors[s:e] = unit(centres[c] + noise)
    keys = rng.permutation(np.arange(1, 4 * n + 1, dtype=np.int64))[:n] * 7919  # sparse int64
    group = rng.permutation(clusters)[cluster].astype(np.int32)  # a tag given by the cluster
    bucket = rng.integers(0, 1000, n).astype(np.int32)  # a tag independent of the vector
    return {
        "vectors": vectors,
        "keys": keys,
        "cluster": cluster,
        "group": group,
        "bucket": bucket,
        "centres": centres,
        "super_of": super_of,
        "bases": bases if intrinsic else np.zeros((0,), np.float32),
    }


def make_queries(data: dict[str, np.ndarray], count: int, seed: int) -> np.ndarray:
    """NEAR SAMPLE-like queries: new members of random clusters (not in the data), drawn like
    the data."""
    rng = np.random.default_rng(seed)
    centres, bases = data["centres"], data.get("bases", np.zeros(0))
    dim = centres.shape[1]
    c = rng.integers(0, len(centres), count)
    if bases.ndim == 3:
        intrinsic = bases.shape[2]
        z = rng.standard_normal((count, intrinsic)).astype(np.float32) * (0.70 / np.sqrt(intrinsic))
        low = np.einsum("qdr,qr->qd", bases[data["super_of"][c]], z)
        noise = low + rng.standard_normal((count, dim)).astype(np.float32) * (0.27 / np.sqrt(dim))
    else:
        noise = rng.standard_normal((count, dim)).astype(np.float32) * (0.75 / np.sqrt(dim))
    q = centres[c] + noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def load_data(args: argparse.Namespace) -> dict[str, np.ndarray]:
    path = args.data_dir / f"vectors_{data_tag(args)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    t0 = time.perf_counter()
    data = generate(args.n, args.dim, args.clusters, intrinsic=args.intrinsic_dim)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    print(f"generated {args.n:,} x {args.dim} in {time.perf_counter() - t0:.1f} s -> {path}")
    return data


def filters(
    data: dict[str, np.ndarray], clusters: int
) -> list[tuple[str, float, np.ndarray | None]]:
    out: list[tuple[str, float, np.ndarray | None]] = [("none", 1.0, None)]
    for s in SELECTIVITIES[1:]:
        out.append(("correlated", s, data["group"] < max(1, round(s * clusters))))
        out.append(("uncorrelated", s, data["bucket"] < max(1, round(s * 1000))))
    return out


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def truth_topk(scores: np.ndarray, mask: np.ndarray | None, k: int) -> list[np.ndarray]:
    """Exact top-k row ids per query from a (queries x rows) score matrix."""
    out = []
    for row in scores:
        s = row if mask is None else np.where(mask, row, -np.inf)
        top = np.argpartition(-s, k)[:k]
        top = top[np.isfinite(s[top])]
        out.append(top[np.argsort(-s[top], kind="stable")])
    return out


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    if len(truth) == 0:
        return 1.0
    return len(np.intersect1d(got, truth)) / len(truth)


class Cell:
    def __init__(self, want: int = 0) -> None:
        self.want = want  # k: an answer with fewer rows (when k rows pass) is "short"
        self.times: list[float] = []
        self.recalls: list[float] = []
        self.short = 0  # queries answered with fewer rows than k (and than the filter allows)
        self.setting = ""
        self.notes: list[str] = []
        self.fn: Callable[[np.ndarray], np.ndarray] | None = None  # what was timed

    @property
    def p50(self) -> float:
        return float(np.percentile(self.times, 50)) * 1000 if self.times else float("nan")

    @property
    def p95(self) -> float:
        return float(np.percentile(self.times, 95)) * 1000 if self.times else float("nan")

    @property
    def recall(self) -> float:
        return float(np.mean(self.recalls)) if self.recalls else float("nan")

    def measure(
        self, fn: Callable[[np.ndarray], np.ndarray], q: np.ndarray, truth: np.ndarray
    ) -> None:
        """Time one query and score its answer against the exact one."""
        t0 = time.perf_counter()
        got = fn(q)
        self.times.append(time.perf_counter() - t0)
        self.recalls.append(recall(np.asarray(got), truth))
        if len(got) < min(self.want, len(truth)):
            self.short += 1

    def text(self) -> str:
        if not self.times:
            return " / ".join(self.notes) or "-"
        s = f"{self.p50:.2f} / {self.p95:.2f} / {self.recall:.3f}"
        if self.short:
            s += f" ({self.short} short)"
        if self.setting:
            s += f" [{self.setting}]"
        return s


def run_queries(
    fn: Callable[[np.ndarray], np.ndarray],
    queries: np.ndarray,
    truths: list[np.ndarray],
    want: int,
    warmup: int = 2,
) -> Cell:
    """``fn(q)`` returns row ids; time each call (after ``warmup`` untimed calls)."""
    cell = Cell(want)
    for q in queries[:warmup]:
        fn(q)
    gc.collect()
    gc.disable()
    try:
        for q, t in zip(queries, truths, strict=True):
            cell.measure(fn, q, t)
    finally:
        gc.enable()
    return cell


def tuned(
    make: Callable[[Any], Callable[[np.ndarray], np.ndarray]],
    ladder: list[Any],
    queries: np.ndarray,
    truths: list[np.ndarray],
    k: int,
    label: Callable[[Any], str],
    max_ms: float,
    target: float = TARGET_RECALL,
    screen: int = 50,
) -> tuple[Cell, Cell | None]:
    """Climb ``ladder`` until recall@k >= ``target`` (PopQL's recall in the cell, at least
    TARGET_RECALL: the peer is compared at equal or better recall); stop early when p50 exceeds
    ``max_ms``. Returns (the matched cell, or the best recall reached; the first cell that
    reached TARGET_RECALL on the way, or None). A setting whose recall on the first ``screen``
    queries is well below both goals is not run on the rest (saves minutes at 1M)."""
    best: Cell | None = None
    at_target: Cell | None = None
    for i, setting in enumerate(ladder):
        fn = make(setting)
        last = i == len(ladder) - 1
        if screen and len(queries) > 2 * screen and not last:
            probe = run_queries(fn, queries[:screen], truths[:screen], k)
            if probe.p50 > max_ms:
                probe.setting = label(setting)
                return (best if best is not None and best.recall >= probe.recall else probe), (
                    at_target
                )
            if probe.recall < min(target, TARGET_RECALL) - 0.03:
                continue
        cell = run_queries(fn, queries, truths, k)
        cell.setting = label(setting)
        cell.fn = fn
        if best is None or cell.recall > best.recall + 1e-9:
            best = cell
        if at_target is None and cell.recall >= TARGET_RECALL:
            at_target = cell
        if cell.recall >= target or cell.p50 > max_ms:
            return (cell if cell.recall >= target else best), at_target
    assert best is not None
    return best, at_target


# ---------------------------------------------------------------------------------------------
# Systems
# ---------------------------------------------------------------------------------------------


def head_to_head(
    ours: Cell, theirs: Cell, queries: np.ndarray, truths: list[np.ndarray], k: int
) -> tuple[Cell, Cell]:
    """Both systems again on the same queries, alternating query by query (and which goes
    first), so that a close call is not decided by the machine's load drifting between the
    minutes each system's block ran in."""
    assert ours.fn is not None and theirs.fn is not None
    a, b = Cell(k), Cell(k)
    for q in queries[:2]:
        ours.fn(q)
        theirs.fn(q)
    gc.collect()
    gc.disable()
    try:
        for i, (q, t) in enumerate(zip(queries, truths, strict=True)):
            pair = ((ours.fn, a), (theirs.fn, b))
            for fn, cell in pair if i % 2 == 0 else pair[::-1]:
                cell.measure(fn, q, t)
    finally:
        gc.enable()
    b.setting = theirs.setting
    return a, b


def curve(args, data, queries, truths, cells, fs, perm) -> list[str]:
    """Recall and p50 of PopQL and FAISS HNSW at the same ef ladder, without a filter and at
    the uncorrelated 50 % filter: the whole trade-off, not one tuned point per system."""
    from popql.engine.vector import VectorIndex

    faiss = fs["faiss"]
    path = args.data_dir / f"vectors_{data_tag(args)}.usearch"
    k = args.k
    order = np.argsort(data["keys"])
    sorted_keys = data["keys"][order]
    rows = [
        "| cell | ef | PopQL p50 ms | PopQL recall | FAISS HNSW p50 ms | FAISS HNSW recall |",
        "|---|---|---|---|---|---|",
    ]
    ladder = (16, 24, 32, 48, 64, 96, 128, 256)
    indexes = {}
    for ef in ladder:
        indexes[ef] = VectorIndex.restore(path, view=True, threads=args.threads)
        indexes[ef].expansion_search = ef  # the first (narrow) search's ef; no tuning
    for kind, s, mask in cells:
        if not (kind == "none" or (kind == "uncorrelated" and s == 0.5)):
            continue
        imask = None if mask is None else mask[perm]
        bits = np.packbits(mask, bitorder="little") if mask is not None else None
        for ef in ladder:

            def ours(q, index=indexes[ef], imask=imask):
                keys = index.search(q, k=k, allowed=imask, approximate=True).keys
                return order[np.searchsorted(sorted_keys, keys)]

            p = faiss.SearchParametersHNSW()
            p.efSearch = ef
            if bits is not None:
                p.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))

            def theirs(q, p=p):
                _, ids = fs["hnsw"].search(q[None, :], k, params=p)
                return ids[0][ids[0] >= 0]

            a = run_queries(ours, queries, truths[(kind, s)], k)
            b = run_queries(theirs, queries, truths[(kind, s)], k)
            name = "none" if kind == "none" else f"uncorr {s:.0%}"
            rows.append(
                f"| {name} | {ef} | {a.p50:.3f} | {a.recall:.3f} | {b.p50:.3f} | {b.recall:.3f} |"
            )
    print("  curve done")
    return rows


def popql_index(args: argparse.Namespace, data: dict[str, np.ndarray], info: dict) -> Any:
    from popql.engine.vector import VectorIndex

    path = args.data_dir / f"vectors_{data_tag(args)}.usearch"
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file() and not args.rebuild:
        t0 = time.perf_counter()
        index = VectorIndex.restore(path, view=True, threads=args.threads)
        info["popql_restore_s"] = time.perf_counter() - t0
        info["popql_build_s"] = json.loads(meta.read_text())["build_s"]
        info["popql_build_cached"] = True
    else:
        t0 = time.perf_counter()
        built = VectorIndex.build(data["keys"], data["vectors"], threads=args.threads)
        info["popql_build_s"] = time.perf_counter() - t0
        built.save(path)
        meta.write_text(json.dumps({"build_s": info["popql_build_s"]}))
        t0 = time.perf_counter()
        index = VectorIndex.restore(path, view=True, threads=args.threads)
        info["popql_restore_s"] = time.perf_counter() - t0
        del built
    info["popql_file_bytes"] = path.stat().st_size
    # The file is memory-mapped: pages another job pushed out of the page cache would be read
    # from disk during the timed queries, which the in-RAM peers never pay. Read it once.
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass
    info["popql_warm_s"] = time.perf_counter() - t0
    if args.ef:
        index.expansion_search = args.ef
    return index


def faiss_systems(args, data, vectors32, info) -> dict[str, Any]:
    try:
        import faiss
    except ImportError as exc:
        info["faiss"] = f"not installed ({exc})"
        return {}
    faiss.omp_set_num_threads(args.threads or os.cpu_count() or 1)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(vectors32)
    out: dict[str, Any] = {"faiss": faiss, "flat": flat}
    if args.skip_faiss_hnsw:
        return out
    path = args.data_dir / f"vectors_{data_tag(args)}.faiss_hnsw"
    meta = path.with_suffix(".faiss_json")
    if path.is_file() and meta.is_file() and not args.rebuild:
        hnsw = faiss.read_index(str(path))
        info["faiss_hnsw_build_s"] = json.loads(meta.read_text())["build_s"]
    else:
        t0 = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(args.dim, 16, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 128
        hnsw.add(vectors32)
        info["faiss_hnsw_build_s"] = time.perf_counter() - t0
        faiss.write_index(hnsw, str(path))
        meta.write_text(json.dumps({"build_s": info["faiss_hnsw_build_s"]}))
    info["faiss_hnsw_bytes"] = path.stat().st_size
    out["hnsw"] = hnsw
    return out


def lance_table(args, data, vectors32, info) -> Any:
    os.environ.setdefault("LANCEDB_LOG", "error")  # one deprecation warning per query otherwise
    try:
        import lancedb
        import pyarrow as pa
    except ImportError as exc:
        info["lancedb"] = f"not installed ({exc})"
        return None
    uri = args.data_dir / f"lance_{data_tag(args)}"
    meta = args.data_dir / f"lance_{data_tag(args)}.json"
    db = lancedb.connect(str(uri))
    if meta.is_file() and not args.rebuild:
        info.update(json.loads(meta.read_text()))
        return db.open_table("vectors")
    shutil.rmtree(uri, ignore_errors=True)
    db = lancedb.connect(str(uri))
    table = pa.table(
        {
            "row": pa.array(np.arange(args.n, dtype=np.int64)),
            "grp": pa.array(data["group"]),
            "bucket": pa.array(data["bucket"]),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors32.reshape(-1)), args.dim),
        }
    )
    tbl = db.create_table("vectors", table)
    t0 = time.perf_counter()
    parts = max(1, round(np.sqrt(args.n) / 2))
    tbl.create_index(
        metric="cosine", vector_column_name="vector", index_type="IVF_HNSW_SQ", num_partitions=parts
    )
    for col in ("grp", "bucket"):
        with contextlib.suppress(Exception):
            tbl.create_scalar_index(col, index_type="BTREE")
    build = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in Path(uri).rglob("*") if p.is_file())
    got = {"lance_build_s": build, "lance_partitions": parts, "lance_bytes": size}
    meta.write_text(json.dumps(got))
    info.update(got)
    return tbl


def duckdb_conn(args, data, vectors32, info) -> Any:
    try:
        import duckdb
        import pyarrow as pa
    except ImportError as exc:
        info["duckdb"] = f"not installed ({exc})"
        return None
    try:
        import duckdb_ext  # noqa: F401  (the duckdb-ext-vss package ships the extension binary)

        found = glob.glob(
            os.path.join(
                os.path.dirname(sys.modules["duckdb_ext"].__path__[0] + "/"),
                f"extensions/v{duckdb.__version__}/*/vss.duckdb_extension",
            )
        )
    except ImportError:
        found = []
    path = args.data_dir / f"duckdb_{data_tag(args)}.db"
    meta = path.with_suffix(".json")
    fresh = not (path.is_file() and meta.is_file()) or args.rebuild
    if fresh:
        path.unlink(missing_ok=True)
    conn = duckdb.connect(str(path))
    try:
        conn.execute(f"LOAD '{found[0]}'" if found else "LOAD vss")
    except Exception as exc:
        try:
            conn.execute("INSTALL vss")
            conn.execute("LOAD vss")
        except Exception:
            info["duckdb"] = f"vss extension unavailable ({str(exc).splitlines()[0]})"
            conn.close()
            return None
    conn.execute("SET hnsw_enable_experimental_persistence = true")
    if not fresh:
        info.update(json.loads(meta.read_text()))
        return conn
    arrow = pa.table(  # noqa: F841  (read by DuckDB's replacement scan)
        {
            "row": pa.array(np.arange(args.n, dtype=np.int64)),
            "grp": pa.array(data["group"]),
            "bucket": pa.array(data["bucket"]),
            "v": pa.FixedSizeListArray.from_arrays(pa.array(vectors32.reshape(-1)), args.dim),
        }
    )
    conn.execute(f"CREATE TABLE t AS SELECT row, grp, bucket, v::FLOAT[{args.dim}] AS v FROM arrow")
    t0 = time.perf_counter()
    conn.execute("CREATE INDEX t_hnsw ON t USING HNSW (v) WITH (metric = 'cosine')")
    build = time.perf_counter() - t0
    conn.execute("CHECKPOINT")
    got = {"duckdb_build_s": build, "duckdb_bytes": path.stat().st_size}
    meta.write_text(json.dumps(got))
    info.update(got)
    return conn


def sweep(args, index, data, perm, queries, info) -> None:
    """Measure where an exact scan over the candidates stops beating the oversampled HNSW
    search (both forced), for uncorrelated and correlated filters."""
    sels = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
    qs = queries[: args.sweep_queries]
    rows = [
        "| selectivity | " + " | ".join(f"{s:.1%}" for s in sels) + " |",
        "|---|" + "---|" * len(sels),
    ]
    found: dict[str, float | None] = {}
    for kind in ("uncorrelated", "correlated"):
        ex, ap = [], []
        for s in sels:
            if kind == "uncorrelated":
                mask = (data["bucket"] < max(1, round(s * 1000)))[perm]
            else:
                mask = (data["group"] < max(1, round(s * args.clusters)))[perm]
            for force, out in (("exact", ex), ("approximate", ap)):
                ts = []
                for q in qs:
                    t0 = time.perf_counter()
                    index.search(q, k=args.k, allowed=mask, **{force: True})
                    ts.append(time.perf_counter() - t0)
                out.append(float(np.median(ts[1:] or ts)) * 1000)
        rows.append(f"| {kind}: exact p50 ms | " + " | ".join(f"{v:.2f}" for v in ex) + " |")
        rows.append(f"| {kind}: HNSW p50 ms | " + " | ".join(f"{v:.2f}" for v in ap) + " |")
        cross = None
        for i in range(1, len(sels)):
            if ex[i - 1] <= ap[i - 1] and ex[i] > ap[i]:
                # interpolate on log(selectivity)
                a, b = ex[i - 1] - ap[i - 1], ex[i] - ap[i]
                f = a / (a - b) if a != b else 0.5
                cross = float(
                    np.exp(np.log(sels[i - 1]) + f * (np.log(sels[i]) - np.log(sels[i - 1])))
                )
                break
        if cross is None:
            cross = sels[-1] if ex[-1] <= ap[-1] else sels[0]
        found[kind] = cross
    info["measured_crossover"] = found
    info["sweep_table"] = rows
    print(
        f"crossover (forced exact vs forced HNSW, {len(qs)} queries): uncorrelated "
        f"{found['uncorrelated']:.2%}, correlated {found['correlated']:.2%}; planner's model "
        f"{index.crossover(args.k):.2%}"
    )
    print("\n".join(rows))


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="vectors (default 100000; 1000000)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument(
        "--intrinsic-dim",
        type=int,
        default=16,
        help="dimensions of the within-cluster variation (default 16; 0: isotropic, harder)",
    )
    ap.add_argument("--queries", type=int, default=100, help="queries per cell (default 100)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--numpy-queries", type=int, default=20, help="timed numpy brute-force runs")
    ap.add_argument("--threads", type=int, default=0, help="threads for exact scans (0: all)")
    ap.add_argument("--ef", type=int, default=0, help="HNSW expansion_search (0: usearch's 64)")
    ap.add_argument("--calibrate", action="store_true", help="re-measure the cost model first")
    ap.add_argument(
        "--no-compiled",
        action="store_true",
        help="PopQL without its compiled kernels (the usearch + numpy fallback path)",
    )
    ap.add_argument("--peers", default="faiss,lancedb,duckdb", help="comma list, or 'none'")
    ap.add_argument("--skip-faiss-hnsw", action="store_true")
    ap.add_argument("--no-sweep", action="store_true", help="skip the crossover measurement")
    ap.add_argument(
        "--curve",
        action="store_true",
        help="also print recall and p50 of PopQL and FAISS HNSW over an ef ladder (no filter, "
        "uncorrelated 50 %%)",
    )
    ap.add_argument("--sweep-queries", type=int, default=30)
    ap.add_argument("--rebuild", action="store_true", help="ignore cached indexes")
    ap.add_argument("--data-dir", type=Path, default=REPO / "bench-data")
    ap.add_argument("--json", type=Path, help="write the figures as JSON")
    args = ap.parse_args(argv)
    k = args.k
    peers = set() if args.peers == "none" else set(args.peers.split(","))
    info: dict[str, Any] = {}
    t_all = time.perf_counter()

    data = load_data(args)
    n = args.n
    vectors32 = data["vectors"].astype(np.float32)
    queries = make_queries(data, args.queries, seed=12345)
    cells = filters(data, args.clusters)

    index = popql_index(args, data, info)
    if args.no_compiled:
        index.compiled = False
    from popql.engine import vector as vector_module

    kernels = (
        f"compiled ({vector_module._vecscan.kernel()})"
        if index._use_compiled()
        else "usearch + numpy (no compiled kernels)"
    )
    info["popql_kernels"] = kernels
    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    if args.calibrate:
        cost = index.calibrate(k=k)
        print(f"calibrated cost model: {cost}")
    t0 = time.perf_counter()
    info["popql_tuned_ef"] = index.tuned_ef()
    info["popql_tune_ms"] = (time.perf_counter() - t0) * 1000
    info["popql_crossover"] = index.crossover(k)
    mem = index.memory_usage()
    print(
        f"PopQL index: {n:,} x {args.dim}, build {info['popql_build_s']:.1f} s"
        f"{' (cached)' if info.get('popql_build_cached') else ''}, restore (mmap) "
        f"{info['popql_restore_s'] * 1000:.0f} ms, crossover {info['popql_crossover']:.2%}, "
        f"ef {index.expansion_search}, kernels: {kernels}"
    )

    # Exact answers, by row id (one batched matrix product).
    t0 = time.perf_counter()
    all_scores = queries @ vectors32.T
    truths = {(kind, s): truth_topk(all_scores, mask, k) for kind, s, mask in cells}
    print(f"ground truth in {time.perf_counter() - t0:.1f} s")
    del all_scores

    systems: dict[str, dict[tuple[str, float], Cell]] = {}
    strategies: dict[tuple[str, float], dict[str, int]] = {}

    # PopQL: the planner. Its row order is the index file's (slot order): masks are permuted to
    # it once per cell, as the SQL lowering would build them over the index's keys.
    order = np.argsort(data["keys"])
    key_to_row = (data["keys"][order], order)
    data_row_of_index_row = order[np.searchsorted(key_to_row[0], index.keys)]
    res: dict[tuple[str, float], Cell] = {}
    for kind, s, mask in cells:
        used: dict[str, int] = {}
        imask = None if mask is None else mask[data_row_of_index_row]

        def fn(q: np.ndarray, imask: np.ndarray | None = imask, used: dict = used) -> np.ndarray:
            r = index.search(q, k=k, allowed=imask)
            used[r.strategy] = used.get(r.strategy, 0) + 1
            return r.keys

        def rows_fn(q: np.ndarray, fn: Callable = fn) -> np.ndarray:
            keys = fn(q)
            return key_to_row[1][np.searchsorted(key_to_row[0], keys)]

        res[(kind, s)] = run_queries(rows_fn, queries, truths[(kind, s)], k)
        res[(kind, s)].fn = rows_fn
        strategies[(kind, s)] = used
        example = index.search(queries[0], k=k, allowed=imask)
        print(
            f"  popql {kind:12} {s:>6.1%}: {res[(kind, s)].text()}  {used}  "
            f"(load {os.getloadavg()[0]:.2f})"
        )
        print(f"      e.g. {example.strategy}: {example.reason}")
    popql_name = (
        "PopQL (compiled kernels + planner)"
        if index._use_compiled()
        else "PopQL (usearch + planner)"
    )
    systems[popql_name] = res
    popql_res = res

    def matched(kind: str, s: float) -> float:
        """The recall a peer is tuned to reach in a cell: PopQL's there, at least the target."""
        return max(TARGET_RECALL, popql_res[(kind, s)].recall)

    if not args.no_sweep:
        sweep(args, index, data, data_row_of_index_row, queries, info)

    # Key arrays instead of a mask: what resolving them costs.
    mask10 = data["bucket"] < 100
    allowed_keys = data["keys"][mask10]
    index.mask_of(allowed_keys[:1])  # the sorted keys are built once per index, not per query
    t0 = time.perf_counter()
    index.mask_of(allowed_keys)
    info["resolve_keys_10pct_ms"] = (time.perf_counter() - t0) * 1000

    # numpy brute force (float32 copy of the matrix, masked scores, argpartition).
    res = {}
    nq = min(args.numpy_queries, len(queries))
    for kind, s, mask in cells:

        def np_fn(q: np.ndarray, mask: np.ndarray | None = mask) -> np.ndarray:
            sc = vectors32 @ q
            if mask is not None:
                sc = np.where(mask, sc, -np.inf)
            top = np.argpartition(-sc, k)[:k]
            return top[np.argsort(-sc[top])]

        res[(kind, s)] = run_queries(np_fn, queries[:nq], truths[(kind, s)][:nq], k, warmup=1)
    systems["numpy brute force (f32)"] = res
    print("  numpy done")

    if "faiss" in peers:
        fs = faiss_systems(args, data, vectors32, info)
        if fs:
            faiss = fs["faiss"]
            res = {}
            for kind, s, mask in cells:
                if mask is None:
                    params = None
                else:
                    bits = np.packbits(mask, bitorder="little")
                    sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
                    params = faiss.SearchParameters(sel=sel)

                def flat_fn(q, params=params, bits=bits if mask is not None else None):
                    _, ids = fs["flat"].search(q[None, :], k, params=params)
                    return ids[0][ids[0] >= 0]

                res[(kind, s)] = run_queries(flat_fn, queries, truths[(kind, s)], k)
            systems["FAISS exact over bitmap (f32)"] = res
            print("  faiss flat done")
            if "hnsw" in fs:
                res, res95 = {}, {}
                for kind, s, mask in cells:
                    bits = np.packbits(mask, bitorder="little") if mask is not None else None

                    def make(ef, mask=mask, bits=bits):
                        p = faiss.SearchParametersHNSW()
                        p.efSearch = ef
                        if mask is not None:
                            p.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))

                        def f(q, p=p, bits=bits):
                            _, ids = fs["hnsw"].search(q[None, :], k, params=p)
                            return ids[0][ids[0] >= 0]

                        return f

                    res[(kind, s)], res95[(kind, s)] = tuned(
                        make,
                        FAISS_EF_LADDER,
                        queries,
                        truths[(kind, s)],
                        k,
                        lambda ef: f"ef {ef}",
                        max_ms=200,
                        target=matched(kind, s),
                    )
                systems["FAISS HNSW, filter in graph (f32)"] = res
                systems[AT95 + "FAISS HNSW"] = {c: v for c, v in res95.items() if v is not None}
                print("  faiss hnsw done")
                if args.curve:
                    info["curve_table"] = curve(
                        args, data, queries, truths, cells, fs, data_row_of_index_row
                    )

    if "lancedb" in peers:
        tbl = lance_table(args, data, vectors32, info)
        if tbl is not None:
            res, res95 = {}, {}
            parts = info.get("lance_partitions", 1)
            ladder = sorted({min(parts, p) for p in (8, 32, 128, parts)})
            for kind, s, mask in cells:
                where = (
                    None
                    if mask is None
                    else (
                        f"grp < {max(1, round(s * args.clusters))}"
                        if kind == "correlated"
                        else f"bucket < {max(1, round(s * 1000))}"
                    )
                )

                def make(nprobes, where=where):
                    def f(q):
                        qb = tbl.search(q, vector_column_name="vector").limit(k).nprobes(nprobes)
                        if where:
                            qb = qb.where(where, prefilter=True)
                        return qb.select(["row"]).to_arrow().column("row").to_numpy()

                    return f

                res[(kind, s)], res95[(kind, s)] = tuned(
                    make,
                    ladder,
                    queries,
                    truths[(kind, s)],
                    k,
                    lambda p: f"nprobes {p}",
                    max_ms=300,
                    target=matched(kind, s),
                )
            systems["LanceDB IVF_HNSW_SQ, prefilter"] = res
            systems[AT95 + "LanceDB"] = {c: v for c, v in res95.items() if v is not None}
            print("  lancedb done")

    if "duckdb" in peers:
        conn = duckdb_conn(args, data, vectors32, info)
        if conn is not None:
            res = {}
            for kind, s, mask in cells:
                cond = (
                    ""
                    if mask is None
                    else (
                        f"WHERE grp < {max(1, round(s * args.clusters))}"
                        if kind == "correlated"
                        else f"WHERE bucket < {max(1, round(s * 1000))}"
                    )
                )
                sql = (
                    f"SELECT row FROM t {cond} ORDER BY array_cosine_distance(v, "
                    f"$q::FLOAT[{args.dim}]) LIMIT {k}"
                )

                def make(ef, sql=sql):
                    conn.execute(f"SET hnsw_ef_search = {ef}")

                    def f(q):
                        out = conn.execute(sql, {"q": q.tolist()}).fetchnumpy()["row"]
                        return np.asarray(out)

                    return f

                res[(kind, s)], _ = tuned(
                    make,
                    [64, 512, 4096],
                    queries[: max(20, len(queries) // 2)],
                    truths[(kind, s)][: max(20, len(queries) // 2)],
                    k,
                    lambda ef: f"ef {ef}",
                    max_ms=300,
                    target=matched(kind, s),
                )
            systems["DuckDB vss HNSW"] = res
            print("  duckdb done")

    # ---- report ---------------------------------------------------------------------------
    head = f"| system (p50 ms / p95 ms / recall@{k}) |"
    sep = "|---|"
    cols = [(kind, s) for kind, s, _ in cells]
    for kind, s in cols:
        head += (
            " none |"
            if kind == "none"
            else f" {'corr' if kind == 'correlated' else 'uncorr'} {s:.1%} |"
        )
        sep += "---|"
    lines = [head, sep]
    for name, res in systems.items():
        lines.append(
            f"| {name} | " + " | ".join(res[c].text() if c in res else "-" for c in cols) + " |"
        )
    strat = (
        "| PopQL strategy | "
        + " | ".join(", ".join(f"{a} {b}" for a, b in sorted(strategies[c].items())) for c in cols)
        + " |"
    )
    lines.append(strat)

    popql = systems[popql_name]
    worst_recall = min(popql[c].recall for c in cols)
    nofilter_p50 = popql[("none", 1.0)].p50
    filter_p50 = max(popql[c].p50 for c in cols if c[0] != "none")
    worst_filter = max((c for c in cols if c[0] != "none"), key=lambda c: popql[c].p50)
    short = sum(popql[c].short for c in cols)
    verdict = []
    verdict.append(
        f"recall@{k} >= {TARGET_RECALL} at every selectivity: "
        f"{'PASS' if worst_recall >= TARGET_RECALL else 'FAIL'} (worst {worst_recall:.3f})"
    )
    verdict.append(
        f"p50 <= {TARGET_P50_NOFILTER_MS} ms without a filter: "
        f"{'PASS' if nofilter_p50 <= TARGET_P50_NOFILTER_MS else 'FAIL'} ({nofilter_p50:.2f} ms)"
    )
    verdict.append(
        f"p50 <= {TARGET_P50_FILTER_MS} ms with any filter: "
        f"{'PASS' if filter_p50 <= TARGET_P50_FILTER_MS else 'FAIL'} (worst {filter_p50:.2f} ms, "
        f"{worst_filter[0]} {worst_filter[1]:.1%})"
    )
    verdict.append(
        f"never fewer than k rows: {'PASS' if short == 0 else 'FAIL'} ({short} short answers)"
    )
    losses = []
    h2h_lines = []
    for name, res in systems.items():
        if name.startswith("PopQL") or name.startswith("numpy"):
            continue
        for c in cols:
            if c not in res or not res[c].times:
                continue
            peer, ours = res[c], popql[c]
            if peer.recall < ours.recall - 1e-9 or peer.short:
                continue  # not at equal or better recall
            if peer.p50 < 1.5 * ours.p50 and peer.fn is not None and ours.fn is not None:
                # a close call: both again, interleaved, on the same queries
                ours, peer = head_to_head(ours, peer, queries, truths[c], k)
                h2h_lines.append(f"| {name} | {c[0]} {c[1]:.1%} | {ours.text()} | {peer.text()} |")
            if peer.recall >= ours.recall - 1e-9 and peer.p50 < ours.p50:
                losses.append(f"{name} at {c[0]} {c[1]:.1%} ({peer.p50:.2f} vs {ours.p50:.2f} ms)")
    if h2h_lines:
        info["h2h_table"] = [
            "| peer | cell | PopQL | peer |",
            "|---|---|---|---|",
            *h2h_lines,
        ]
    verdict.append(
        "lower p50 than each peer at equal or better recall: "
        + ("PASS" if not losses else f"FAIL ({len(losses)} cells: " + "; ".join(losses) + ")")
    )

    file_b = info["popql_file_bytes"] / n
    mem_lines = [
        f"- PopQL: usearch file {file_b:.0f} B/vector (f16 vectors {2 * args.dim} B + HNSW graph "
        f"{file_b - 2 * args.dim:.0f} B); restored as a view both are memory-mapped and the exact "
        f"scans read the file's own vector block; +{mem['keys'] / n:.0f} B/vector of keys and "
        f"+{mem.get('graph', 0) / n:.0f} B/vector of graph node offsets in RAM. "
        f"Build {info['popql_build_s']:.1f} s ({args.threads or os.cpu_count()} threads), "
        f"restore {info['popql_restore_s'] * 1000:.0f} ms; reading the file once into the page "
        f"cache before timing {info['popql_warm_s']:.1f} s.",
        f"- resolving 10 % of the rows given as int64 keys (instead of a mask): "
        f"{info['resolve_keys_10pct_ms']:.1f} ms per query.",
    ]
    if "faiss_hnsw_build_s" in info:
        mem_lines.append(
            f"- FAISS HNSW (f32, M 16, efConstruction 128): {info['faiss_hnsw_bytes'] / n:.0f} "
            f"B/vector, build {info['faiss_hnsw_build_s']:.1f} s; "
            f"FAISS flat: {4 * args.dim} B/vector."
        )
    if "lance_build_s" in info:
        mem_lines.append(
            f"- LanceDB (IVF_HNSW_SQ, {info['lance_partitions']} partitions): on disk "
            f"{info['lance_bytes'] / n:.0f} B/vector (f32 data + index), index build "
            f"{info['lance_build_s']:.1f} s."
        )
    if "duckdb_build_s" in info:
        mem_lines.append(
            f"- DuckDB vss (HNSW, f32): database file {info['duckdb_bytes'] / n:.0f} B/vector, "
            f"index build {info['duckdb_build_s']:.1f} s."
        )
    for key in ("faiss", "lancedb", "duckdb"):
        if isinstance(info.get(key), str):
            mem_lines.append(f"- {key}: {info[key]}")

    print()
    print(
        f"### Vector search, {n:,} x {args.dim} clustered vectors ({args.clusters} clusters), "
        f"top-{k}, {len(queries)} queries per cell"
    )
    print()
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, "
        f"numpy {np.__version__}; load average {load_start[0]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end; PopQL kernels: {kernels}, narrow ef "
        f"{info['popql_tuned_ef']} (tuned on the index, {info['popql_tune_ms']:.0f} ms). Peers "
        f"tuned per cell up a parameter ladder until their recall@{k} reaches PopQL's in that "
        f"cell (at least {TARGET_RECALL}; setting in brackets); rows '{AT95}...': their cheapest "
        f"setting reaching {TARGET_RECALL}. numpy: {nq} queries per cell."
    )
    print()
    print("\n".join(lines))
    print()
    print("\n".join(mem_lines))
    print()
    if "h2h_table" in info:
        print(
            "Close calls (a peer at equal or better recall within 1.5x of PopQL's p50) measured "
            "again head to head, the two systems alternating query by query; the verdict uses "
            "these:"
        )
        print()
        print("\n".join(info["h2h_table"]))
        print()
    if "curve_table" in info:
        print(
            f"Recall-latency curve at equal ef (PopQL's narrow search forced to that ef, no "
            f"tuning; {len(queries)} queries):"
        )
        print()
        print("\n".join(info["curve_table"]))
        print()
    if "sweep_table" in info:
        mc = info["measured_crossover"]
        print(
            f"Crossover, exact scan over the candidates vs oversampled HNSW (both forced, "
            f"p50 of {args.sweep_queries} queries): uncorrelated {mc['uncorrelated']:.2%}, "
            f"correlated {mc['correlated']:.2%}; the planner's cost model puts it at "
            f"{info['popql_crossover']:.2%}."
        )
        print()
        print("\n".join(info["sweep_table"]))
        print()
    for v in verdict:
        print(f"- {v}")
    print(f"\n(total {time.perf_counter() - t_all:.0f} s)")
    if args.json:
        out = {
            "n": n,
            "dim": args.dim,
            "k": k,
            "info": info,
            "cells": {
                name: {
                    f"{c[0]}:{c[1]}": {
                        "p50_ms": r.p50,
                        "p95_ms": r.p95,
                        "recall": r.recall,
                        "short": r.short,
                        "setting": r.setting,
                    }
                    for c, r in res.items()
                }
                for name, res in systems.items()
            },
            "strategies": {f"{c[0]}:{c[1]}": v for c, v in strategies.items()},
            "verdict": verdict,
        }
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
