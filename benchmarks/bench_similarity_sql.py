"""Similarity search through PopQL statements vs the vector core alone, on the same data.

    python benchmarks/bench_similarity_sql.py            # 100k x 512 (~1 min once cached)
    python benchmarks/bench_similarity_sql.py --n 1000000

Data: bench_vector.py's clustered vectors (cached under bench-data/), written as a versioned
dataset: ``samples``, a tag table (``grp``: a function of the cluster, so filters on it
correlate with the vectors; ``bucket``: uniform) and ``embeddings.bench`` with the usearch file
bench_vector.py built. Queries are ``NEAR SAMPLE '<id>' TOP 10`` of random samples, so no
model runs. For each filter selectivity it prints p50 / p95 ms of

* **core**: ``VectorIndex.search`` with the filter as a precomputed numpy mask (the baseline:
  what bench_vector.py measures);
* **filter SQL**: DataFusion evaluating the tag predicate alone (``SELECT sample_id FROM
  samples WHERE ...``), the first thing the statement does;
* **PopQL**: the whole statement ``SELECT sample_id, label FROM samples WHERE <filter> AND NEAR
  SAMPLE '<id>' TOP 10`` (parse, lowering, the filter query, id -> key conversion, the search,
  the result table, DataFusion's semi-join against ``samples``), and its overhead over the core.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]


def _bench_vector() -> Any:
    spec = importlib.util.spec_from_file_location(
        "bench_vector", REPO / "benchmarks" / "bench_vector.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_vector"] = module
    spec.loader.exec_module(module)
    return module


def build_dataset(folder: Path, data: dict[str, np.ndarray], index_file: Path) -> None:
    from popql.engine.dataset import SAMPLES_SCHEMA, Dataset, conform

    if (folder / "manifest.json").is_file():
        return
    if folder.exists():
        shutil.rmtree(folder)
    n = len(data["keys"])
    ids = pa.array([f"{int(k):016x}" for k in data["keys"]])
    samples = pa.table(
        {
            "sample_id": ids,
            "uri": pa.array([f"synthetic://{i}" for i in range(n)]),
            "label": pa.array([f"cluster {int(c)}" for c in data["cluster"]]),
        }
    )
    samples = conform(samples, SAMPLES_SCHEMA, "samples")
    tags = pa.table({"sample_id": ids, "grp": data["group"], "bucket": data["bucket"]})
    flat = pa.array(data["vectors"].astype(np.float16).reshape(-1))
    emb = pa.table(
        {
            "sample_id": ids,
            "sample_key": pa.array(data["keys"], pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, data["vectors"].shape[1]),
        }
    )
    ds = Dataset.open(folder, create=True)
    with ds.transaction("synthetic benchmark data") as txn:
        txn.replace("samples", samples)
        txn.replace("tags.bench@1", tags)
        txn.set_tagger("bench", {"version": 1, "table": "tags.bench@1"})
        txn.replace("embeddings.bench", emb)
        rel = "indexes/bench/vectors.usearch"
        shutil.copyfile(index_file, txn.add_file(rel))
        txn.set_embedder(
            "bench",
            {
                "spec": "bench",
                "identity": "bench",
                "dim": int(data["vectors"].shape[1]),
                "table": "embeddings.bench",
                "index": rel,
            },
        )
        txn.commit()


def timed(fn: Any, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=30, help="queries per cell")
    ap.add_argument("--data-dir", type=Path, default=REPO / "bench-data")
    args = ap.parse_args(argv)
    bv = _bench_vector()
    vargs = bv.argparse.Namespace(
        n=args.n,
        dim=512,
        clusters=1000,
        intrinsic_dim=16,
        data_dir=args.data_dir,
        threads=0,
        rebuild=False,
        ef=0,
    )
    data = bv.load_data(vargs)
    info: dict[str, Any] = {}
    index = bv.popql_index(vargs, data, info)  # builds and caches the usearch file if needed
    index_file = args.data_dir / f"vectors_{bv.data_tag(vargs)}.usearch"
    folder = args.data_dir / f"sqlds_{bv.data_tag(vargs)}"
    t0 = time.perf_counter()
    build_dataset(folder, data, index_file)
    print(f"dataset {folder} ready in {time.perf_counter() - t0:.1f} s")

    import popql

    session = popql.connect(folder)
    rng = np.random.default_rng(7)
    picks = rng.choice(len(data["keys"]), args.queries, replace=False)
    ids = [f"{int(data['keys'][i]):016x}" for i in picks]
    rows_of, _ = index.rows_of(data["keys"][picks])
    groups = data["group"]
    buckets = data["bucket"]
    cells: list[tuple[str, str | None, np.ndarray | None]] = [("none", None, None)]
    for s in bv.SELECTIVITIES[1:]:
        g = max(1, round(s * 1000))
        cells.append((f"corr {s:.1%}", f"grp < {g}", groups < g))
        cells.append((f"uncorr {s:.1%}", f"bucket < {g}", buckets < g))
    # warm-up: the index restore and the first plans
    session.sql(f"SELECT sample_id FROM samples WHERE NEAR SAMPLE '{ids[0]}' TOP 10").to_arrow()
    header = (
        f"{'filter':<14} | {'core p50/p95':>14} | {'filter SQL p50':>14} | "
        f"{'PopQL p50/p95':>14} | {'overhead p50':>12} | rows"
    )
    print(f"\n{args.n:,} x 512, top-10, {args.queries} queries per cell\n{header}")
    print("-" * len(header))
    for name, predicate, mask in cells:
        order_mask = None if mask is None else index.mask_of(data["keys"][mask])
        core: list[float] = []
        popql_ms: list[float] = []
        counts: list[int] = []
        for sid, row in zip(ids, rows_of, strict=True):
            vec = np.asarray(index.matrix[row], np.float32)
            core += timed(lambda v=vec, m=order_mask: index.search(v, k=10, allowed=m), 1)
            where = f"{predicate} AND " if predicate else ""
            sql = f"SELECT sample_id, label FROM samples WHERE {where}NEAR SAMPLE '{sid}' TOP 10"
            t0 = time.perf_counter()
            got = session.sql(sql).to_arrow()
            popql_ms.append((time.perf_counter() - t0) * 1000)
            counts.append(got.num_rows)
        filt = timed(
            lambda pr=predicate or "TRUE": session.ctx.sql(
                f"SELECT sample_id FROM samples WHERE {pr}"
            ).to_arrow_table(),
            max(5, args.queries // 3),
        )
        over = statistics.median(popql_ms) - statistics.median(core)
        print(
            f"{name:<14} | {p(core, 50):6.2f} / {p(core, 95):5.2f} | {p(filt, 50):14.2f} | "
            f"{p(popql_ms, 50):6.2f} / {p(popql_ms, 95):5.2f} | {over:+10.2f} ms | "
            f"{min(counts)}-{max(counts)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
