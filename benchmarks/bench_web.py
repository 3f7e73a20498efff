"""The web view's latency over real HTTP: first page of a query, more pages, thumbnails.

    python benchmarks/bench_web.py                 # 1,000,000 samples (~1 min to build once)
    python benchmarks/bench_web.py --n 100000

Data (cached under ``bench-data/web-<n>/``): a synthetic versioned dataset of ``n`` samples
with a tag table (``brightness`` uniform in [0, 1), ``grp`` one of 20 strings, ``bucket`` an
integer in [0, 100)). The first ``--real`` samples (default 2,000) are real files: small
generated PNGs whose sha256 is their ``content_hash`` (so the server may read them); half of
those have ingest-style thumbnails in the dataset, the other half have none, so the server
generates theirs into its cache on first request. The other samples have synthetic hashes and
``synthetic://`` uris (their thumbnails are never requested). No model runs.

The server is ``popql.web``'s app under uvicorn in a thread, on 127.0.0.1; requests go through
``httpx`` over a kept-alive connection, like a browser's. Printed: p50 / p95 / max in ms of

* ``POST /api/query`` (parse, policy, run, keep the result, JSON of the first 200 rows) for
  several queries, after 2 warm-up runs each; target: under 300 ms;
* ``GET /api/result/ID`` for a page deep into the largest result;
* ``GET /thumb/ID``: ingest thumbnails, generated ones on first request (cold), and the same
  again from the cache; target: cached under 20 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]

QUERIES = {
    "all samples": "SELECT * FROM samples",
    "filter 30 %": "SELECT * FROM samples WHERE brightness < 0.3",
    "filter 1 %, two tags": "SELECT * FROM samples WHERE grp = 'g7' AND bucket < 20",
    "ordered top 1000": "SELECT * FROM samples ORDER BY brightness DESC LIMIT 1000",
    "group by (table)": "SELECT grp, count(*) AS n, avg(brightness) FROM samples GROUP BY grp",
}


def build_dataset(folder: Path, n: int, real: int) -> None:
    from PIL import Image

    from popql.engine.dataset import SAMPLES_SCHEMA, Dataset, conform
    from popql.engine.images import make_thumbnail

    if (folder / "manifest.json").is_file():
        return
    if folder.exists():
        shutil.rmtree(folder)
    files = folder.parent / f"{folder.name}-files"
    files.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    hashes: list[str] = []
    uris: list[str] = []
    thumbs: list[tuple[str, Any]] = []
    for i in range(real):
        pixels = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
        image = Image.fromarray(pixels, mode="L")
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        path = files / f"{i:06d}.png"
        path.write_bytes(buf.getvalue())
        h = hashlib.sha256(buf.getvalue()).hexdigest()
        hashes.append(h)
        uris.append(str(path))
        if i % 2 == 0:
            thumbs.append((h, image))
    for i in range(real, n):
        hashes.append(hashlib.sha256(f"synthetic {i}".encode()).hexdigest())
        uris.append(f"synthetic://{i}")
    ids = pa.array([h[:16] for h in hashes])
    samples = pa.table(
        {
            "sample_id": ids,
            "uri": pa.array(uris),
            "content_hash": pa.array(hashes),
            "width": pa.array(np.full(n, 32, np.int32)),
            "height": pa.array(np.full(n, 32, np.int32)),
            "format": pa.array(["PNG"] * n),
            "label": pa.array([f"class {i % 10}" for i in range(n)]),
        }
    )
    samples = conform(samples, SAMPLES_SCHEMA, "samples")
    tags = pa.table(
        {
            "sample_id": ids,
            "brightness": pa.array(rng.random(n).astype(np.float32)),
            "grp": pa.array([f"g{int(g)}" for g in rng.integers(0, 20, n)]),
            "bucket": pa.array(rng.integers(0, 100, n).astype(np.int32)),
        }
    )
    ds = Dataset.open(folder, create=True)
    with ds.transaction("synthetic web benchmark data") as txn:
        txn.replace("samples", samples)
        txn.replace("tags.bench@1", tags)
        txn.set_tagger("bench", {"version": 1, "table": "tags.bench@1"})
        txn.commit()
    for h, image in thumbs:
        make_thumbnail(folder, h, image)


def stats(values: list[float]) -> str:
    v = sorted(values)
    p95 = v[min(len(v) - 1, round(0.95 * (len(v) - 1)))]
    return f"p50 {statistics.median(v):7.1f}  p95 {p95:7.1f}  max {v[-1]:7.1f}"


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1000, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="samples (default 1,000,000)")
    ap.add_argument("--real", type=int, default=2000, help="samples with real files")
    ap.add_argument("--runs", type=int, default=10, help="timed runs per query")
    ap.add_argument("--data-dir", default=str(REPO / "bench-data"))
    args = ap.parse_args(argv)

    import httpx

    from popql.web.server import ServerThread, create_app
    from popql.web.service import WebService

    folder = Path(args.data_dir) / f"web-{args.n}"
    t, _ = timed(lambda: build_dataset(folder, args.n, args.real))
    print(f"dataset: {args.n:,} samples at {folder} (built/checked in {t / 1000:.1f} s)")
    cache = Path(args.data_dir) / f"web-{args.n}-cache"
    shutil.rmtree(cache, ignore_errors=True)
    service = WebService(folder, cache_dir=cache)
    t, _ = timed(lambda: service.run("SELECT count(*) FROM samples"))
    print(f"open + first statement (the samples view joined in memory): {t:.0f} ms")

    failures = 0
    with (
        ServerThread(create_app(service)) as server,
        httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as client,
    ):
        print(f"\nPOST /api/query, first page of 200 rows, {args.runs} runs after 2 warm-ups (ms)")
        biggest = ("", -1)
        for name, text in QUERIES.items():
            for _ in range(2):
                client.post("/api/query", json={"text": text}).raise_for_status()
            times = []
            for _ in range(args.runs):
                t, r = timed(lambda text=text: client.post("/api/query", json={"text": text}))
                r.raise_for_status()
                times.append(t)
            data = r.json()
            if data["total"] > biggest[1]:
                biggest = (text, data["total"])
            verdict = "PASS" if statistics.median(times) < 300 else "FAIL"
            failures += verdict == "FAIL"
            print(f"  {name:<24} {data['total']:>9,} rows  {stats(times)}  {verdict} (< 300)")

        rid = client.post("/api/query", json={"text": biggest[0]}).json()["id"]
        times = []
        for k in range(args.runs):
            offset = (biggest[1] // 2 + k * 997) % max(1, biggest[1] - 200)
            t, r = timed(
                lambda offset=offset: client.get(
                    f"/api/result/{rid}", params={"offset": offset, "limit": 200}
                )
            )
            r.raise_for_status()
            times.append(t)
        print(f"\nGET /api/result (200 rows deep in {biggest[1]:,}): {stats(times)}")

        real = "SELECT sample_id FROM samples WHERE uri NOT LIKE 'synthetic://%' ORDER BY uri"
        ids = service.session.sql(real).to_pydict()["sample_id"]
        index = service._sample_index().ids
        from popql.engine.images import thumbnail_path

        stored = [s for s in ids if thumbnail_path(folder, index[s][0]).is_file()][:300]
        missing = [s for s in ids if not thumbnail_path(folder, index[s][0]).is_file()][:300]
        client.get(f"/thumb/{stored[0]}").raise_for_status()  # warm-up

        def fetch(sids: list[str]) -> list[float]:
            out = []
            for sid in sids:
                t, r = timed(lambda sid=sid: client.get(f"/thumb/{sid}"))
                r.raise_for_status()
                assert r.content[:3] == b"\xff\xd8\xff"
                out.append(t)
            return out

        print(f"\nGET /thumb/ID ({len(stored)} requests each, ms)")
        ingest = fetch(stored)
        cold = fetch(missing)
        cached = fetch(missing)
        for name, values, target in [
            ("ingest thumbnails", ingest, 20.0),
            ("generated (first request)", cold, None),
            ("generated, from the cache", cached, 20.0),
        ]:
            verdict = ""
            if target is not None:
                ok = statistics.median(values) < target
                failures += not ok
                verdict = f"  {'PASS' if ok else 'FAIL'} (< {target:.0f})"
            print(f"  {name:<27} {stats(values)}{verdict}")
    print(f"\n{'all targets met' if not failures else f'{failures} target(s) missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
