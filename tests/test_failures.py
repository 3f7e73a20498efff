"""FIND FAILURES recovers planted slices, and prints populations that parse and select them."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pyarrow as pa
import pytest

from popql import ast as A
from popql import parse
from popql.diagnostics import PopQLError
from popql.engine import Session, connect
from popql.engine.failures import kmeans


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b)


def planted_session(n: int = 3000, seed: int = 1) -> tuple[Session, set[str]]:
    """Tags like image_stats' ``brightness`` and faces' ``num_faces``; a model that fails on
    ``brightness < 0.2 AND num_faces = 0`` (80 % errors there, 8 % elsewhere)."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"s{i:05d}" for i in range(n)])
    labels = rng.choice(["a", "b", "c"], n)
    brightness = rng.random(n).astype(np.float32)
    faces = rng.choice([0, 0, 1, 2, 3], n)
    s = connect()
    s.register(
        "samples",
        pa.table(
            {
                "sample_id": ids,
                "uri": [f"img/{i}.png" for i in ids],
                "label": labels,
                "brightness": brightness,
                "contrast": rng.random(n).astype(np.float32),
                "num_faces": pa.array(faces, pa.int32()),
                "dominant_color": rng.choice(["red", "green", "blue", "grey"], n),
            }
        ),
    )
    planted = (brightness < 0.2) & (faces == 0)
    wrong = np.where(planted, rng.random(n) < 0.8, rng.random(n) < 0.08)
    pred = np.where(wrong, np.where(labels == "a", "b", "a"), labels)
    s.log_predictions("m", "1", pa.table({"sample_id": ids, "label": pred}))
    return s, set(ids[planted])


def selected(s: Session, statement: str) -> set[str]:
    """Run the SELECT of a printed CREATE POPULATION (populations run in another module)."""
    (stmt,) = parse(statement).statements
    assert isinstance(stmt, A.CreatePopulation)
    query = statement[statement.index("AS\n") + 3 :]
    return set(s.sql(f"SELECT sample_id FROM ({query})").to_pydict()["sample_id"])


def test_planted_conjunction_is_found_first() -> None:
    s, planted = planted_session()
    rows = s.sql("FIND FAILURES FOR MODEL m").to_pylist()
    top = rows[0]
    assert top["kind"] == "tags"
    assert "brightness <" in top["slice"] and "num_faces = 0" in top["slice"]
    assert top["slice"].count(" AND ") == 1
    threshold = float(re.search(r"brightness < ([0-9.]+)", top["slice"]).group(1))
    assert 0.18 <= threshold <= 0.22
    found = selected(s, top["statement"])
    assert len(found) == top["n"]
    assert jaccard(found, planted) >= 0.9
    assert top["value"] > 0.7 and top["overall"] < 0.2 and top["p_value"] < 1e-10
    # every printed statement parses and selects exactly its slice
    for r in rows:
        assert r["statement"].startswith(f"CREATE POPULATION failures_m_{r['rank']} DESCRIPTION")
        assert len(selected(s, r["statement"])) == r["n"]
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(rows))


def test_by_restricts_the_columns_and_min_support() -> None:
    s, _ = planted_session()
    rows = s.sql("FIND FAILURES FOR MODEL m BY dominant_color, contrast").to_pylist()
    assert all("brightness" not in r["slice"] and "num_faces" not in r["slice"] for r in rows)
    rows = s.sql("FIND FAILURES FOR MODEL m BY brightness, num_faces MIN SUPPORT 400").to_pylist()
    assert rows and all(r["n"] >= 400 for r in rows)
    rows = s.sql("FIND FAILURES FOR MODEL m BY brightness MIN SUPPORT 100").to_pylist()
    assert rows[0]["slice"].startswith("brightness < ")


def test_a_model_without_failures_has_no_slices() -> None:
    rng = np.random.default_rng(5)
    n = 1000
    ids = [f"s{i}" for i in range(n)]
    labels = rng.choice(["a", "b"], n)
    s = connect()
    s.register("samples", pa.table({"sample_id": ids, "label": labels, "x": rng.random(n)}))
    pred = np.where(rng.random(n) < 0.1, np.where(labels == "a", "b", "a"), labels)
    s.log_predictions("m", "1", pa.table({"sample_id": ids, "label": pred}))
    assert s.sql("FIND FAILURES FOR MODEL m").num_rows == 0


def test_embedding_cluster_is_a_candidate() -> None:
    rng = np.random.default_rng(2)
    n, dim = 1200, 8
    centres = rng.normal(size=(4, dim)) * 4
    which = rng.integers(0, 4, n)
    emb = (centres[which] + rng.normal(size=(n, dim))).astype(np.float32)
    ids = np.array([f"s{i:04d}" for i in range(n)])
    labels = rng.choice(["a", "b"], n)
    s = connect()
    s.register(
        "samples",
        pa.table(
            {
                "sample_id": ids,
                "label": labels,
                "embedding_clip": pa.array(list(emb), pa.list_(pa.float32())),
            }
        ),
    )
    bad = which == 2
    wrong = np.where(bad, rng.random(n) < 0.7, rng.random(n) < 0.05)
    s.log_predictions(
        "m",
        "1",
        pa.table(
            {"sample_id": ids, "label": np.where(wrong, np.where(labels == "a", "b", "a"), labels)}
        ),
    )
    rows = s.sql("FIND FAILURES FOR MODEL m").to_pylist()
    assert rows[0]["kind"] == "cluster"
    found = selected(s, rows[0]["statement"])
    assert jaccard(found, set(ids[bad])) >= 0.9


def test_kmeans_separates_blobs() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (50, 2))])
    labels = kmeans(x, 2)
    assert len(set(labels[:50])) == 1 and len(set(labels[50:])) == 1 and labels[0] != labels[50]


def test_needs_a_per_sample_error() -> None:
    s = connect()
    s.register("samples", pa.table({"sample_id": ["a"], "x": [1.0]}))
    s.log_predictions("d", "1", [{"sample_id": "a", "detections": []}])
    with pytest.raises(PopQLError) as info:
        s.sql("FIND FAILURES FOR MODEL d")
    assert info.value.codes == ("V003",)
