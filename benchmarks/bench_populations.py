"""Populations at scale: hold-out stability and cost, SHOW SPLITS, SHOW LEAKAGE, expansion.

A synthetic versioned dataset (fixed seed): N samples with a numeric tag and random 512-d unit
vectors (float16, a usearch index like ingest writes), plus P planted near-duplicates (a copy
of a vector with a little noise). It measures:

1. ``HOLD OUT 10 PERCENT`` of a population of all samples, then 10x more samples appended and
   the hold-out re-applied (what ingest does): how many earlier assignments changed (must be 0)
   and the time of each step;
2. ``SHOW SPLITS`` time, and its numbers against an independent count;
3. ``SHOW LEAKAGE THRESHOLD 0.95``: time, and its pairs against a brute-force numpy scan of
   every cross-split pair (chunked matrix products);
4. the cost of naming a population: ``SELECT count(*) FROM pop WHERE ...`` against the same
   query written inline (median of repeated runs, planning included).

    python benchmarks/bench_populations.py              # N = 20,000, 10x growth
    python benchmarks/bench_populations.py --n 5000     # quicker
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import popql
from popql.engine.dataset import Dataset
from popql.engine.images import sample_key_of
from popql.engine.populations import SPLITS_TABLE, holdout_draw, reapply_holdouts
from popql.engine.vector import VectorIndex

DIM = 512


def ids_for(start: int, count: int) -> list[str]:
    return [
        hashlib.sha256(f"sample-{i}".encode()).hexdigest()[:16] for i in range(start, start + count)
    ]


def samples_table(ids: list[str], rng: np.random.Generator) -> pa.Table:
    return pa.table(
        {
            "sample_id": ids,
            "uri": [f"/data/{s}.png" for s in ids],
            "width": pa.array(rng.integers(16, 1024, len(ids)), pa.int64()),
        }
    )


def build(
    root: Path, n: int, planted: int, rng: np.random.Generator
) -> tuple[list[str], np.ndarray]:
    ids = ids_for(0, n)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    for j in range(planted):  # sample n-1-j is a near copy of sample j
        vectors[n - 1 - j] = vectors[j] + rng.normal(scale=0.05, size=DIM)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    v16 = vectors.astype(np.float16)
    keys = np.array([sample_key_of(s) for s in ids], np.int64)
    d = Dataset.open(root, create=True)
    with d.transaction("bench data") as tx:
        tx.append("samples", samples_table(ids, rng))
        emb = pa.FixedSizeListArray.from_arrays(pa.array(v16.reshape(-1)), DIM)
        tx.append(
            "embeddings.bench",
            pa.table({"sample_id": ids, "sample_key": pa.array(keys), "embedding": emb}),
        )
        rel = "indexes/bench/index.usearch"
        path = tx.add_file(rel)
        VectorIndex.build(keys, v16).save(path)
        tx.set_embedder(
            "bench",
            {"spec": "bench", "identity": "bench@sha256:0", "dim": DIM,
             "table": "embeddings.bench", "index": rel},
        )  # fmt: skip
    return ids, v16


def timed(fn):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def brute_force_pairs(v16: np.ndarray, ids: list[str], split: dict[str, str], t: float) -> set:
    m = v16.astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    labels = np.array([split[s] for s in ids])
    out = set()
    for start in range(0, len(ids), 2048):
        block = m[start : start + 2048] @ m.T
        rows, cols = np.nonzero(block >= t - 1e-6)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if i < c and labels[i] != labels[c]:
                out.add(frozenset((ids[i], ids[c])))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--growth", type=int, default=10)
    ap.add_argument("--planted", type=int, default=50)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        (ids, v16), t_build = timed(lambda: build(root, args.n, args.planted, rng))
        print(f"dataset: {args.n:,} samples, {DIM}-d vectors, {args.planted} planted near-copies"
              f" (built in {t_build:.1f} s)")  # fmt: skip
        s = popql.connect(root)
        s.sql("CREATE POPULATION everything AS SELECT * FROM samples WHERE width >= 0")
        s.sql("CREATE POPULATION wide AS SELECT * FROM samples WHERE width > 512")

        # 1. hold-out and growth
        summary, t_hold = timed(
            lambda: s.sql("HOLD OUT 10 PERCENT OF everything SALT 'b'").to_pylist()
        )
        rows = s.sql("SELECT sample_id, split FROM samples").to_pylist()
        before = {r["sample_id"]: r["split"] for r in rows}
        print(f"HOLD OUT 10 PERCENT of {args.n:,}: {t_hold:.2f} s, test {summary[0]['test']:,}"
              f" ({summary[0]['test'] / args.n:.2%})")  # fmt: skip
        more = args.n * args.growth
        with Dataset.open(root).transaction("more samples") as tx:
            tx.append("samples", samples_table(ids_for(args.n, more), rng))
        _, t_re = timed(lambda: reapply_holdouts(popql.connect(root)))
        s = popql.connect(root)
        after = {
            r["sample_id"]: r["split"]
            for r in s.sql("SELECT sample_id, split FROM samples").to_pylist()
        }
        changed = sum(1 for sid, v in before.items() if after[sid] != v)
        wrong = sum(
            1
            for sid, v in after.items()
            if v != ("test" if holdout_draw("b", sid) < 0.1 else "train")
        )
        assigned = s.snapshot.table(SPLITS_TABLE).num_rows if s.snapshot else 0
        test_share = sum(1 for v in after.values() if v == "test") / len(after)
        print(f"+{more:,} samples ({args.growth}x), hold-out re-applied in {t_re:.2f} s:"
              f" {changed} earlier assignment(s) changed, {wrong} off the hash rule,"
              f" {assigned:,} assigned, test share {test_share:.2%}"
              f"  {'PASS' if changed == 0 and wrong == 0 else 'FAIL'}")  # fmt: skip

        # 2. SHOW SPLITS
        rows, t_splits = timed(lambda: s.sql("SHOW SPLITS").to_pylist())
        wide = {
            r["sample_id"]
            for r in s.sql("SELECT sample_id FROM samples WHERE width > 512").to_pylist()
        }
        expected = sum(1 for sid in wide if after[sid] == "test")
        got = next(r["samples"] for r in rows if r["population"] == "wide" and r["split"] == "test")
        print(f"SHOW SPLITS ({len(after):,} samples, 2 populations): {t_splits:.2f} s;"
              f" wide/test {got:,} vs independent {expected:,}"
              f"  {'PASS' if got == expected else 'FAIL'}")  # fmt: skip

        # 3. SHOW LEAKAGE (over the samples that have vectors: the first N)
        leak, t_leak = timed(lambda: s.sql(f"SHOW LEAKAGE THRESHOLD {args.threshold}").to_pylist())
        got_pairs = {frozenset((r["sample_id"], r["other_sample_id"])) for r in leak}
        truth, t_brute = timed(lambda: brute_force_pairs(v16, ids, after, args.threshold))
        crossing = sum(
            1 for j in range(args.planted) if after[ids[j]] != after[ids[args.n - 1 - j]]
        )
        print(f"SHOW LEAKAGE THRESHOLD {args.threshold} ({args.n:,} vectors): {t_leak:.2f} s,"
              f" {len(got_pairs)} pair(s) ({crossing} planted pairs cross splits); brute force"
              f" numpy {t_brute:.2f} s, {len(truth)} pair(s)"
              f"  {'PASS' if got_pairs == truth else 'FAIL'}")  # fmt: skip

        # 4. naming a population vs writing its query inline
        named = "SELECT count(*) AS n FROM wide WHERE width < 900"
        inline = (
            "SELECT count(*) AS n FROM (SELECT * FROM samples WHERE width > 512) AS wide"
            " WHERE width < 900"
        )
        for q in (named, inline):
            s.sql(q).to_pylist()
        times = {}
        for label, q in (("named", named), ("inline", inline)):
            runs = []
            for _ in range(args.runs):
                _, t = timed(lambda q=q: s.sql(q).to_pylist())
                runs.append(t)
            times[label] = statistics.median(runs)
        print(f"count(*) over a population: named {times['named'] * 1e3:.1f} ms, inline"
              f" {times['inline'] * 1e3:.1f} ms (median of {args.runs}; +"
              f"{(times['named'] - times['inline']) * 1e3:.1f} ms to expand the name)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
