"""DESCRIBE on a dataset table names the tagger and version behind each column."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

import popql
from popql.engine.dataset import Dataset


def test_describe_samples_names_taggers(tmp_path: Path) -> None:
    ds = Dataset.open(tmp_path / "ds", create=True)
    with ds.transaction("seed") as tx:
        tx.append("samples", pa.table({"sample_id": ["a", "b"], "uri": ["a.jpg", "b.jpg"]}))
        tx.append("tags.glow@2", pa.table({"sample_id": ["a"], "glow": [0.5]}))
        tx.set_tagger("glow", {"version": "2", "table": "tags.glow@2"})
        tx.commit()
    session = popql.connect(tmp_path / "ds")
    rows = {r["column"]: r for r in session.sql("DESCRIBE samples").to_pylist()}
    assert rows["glow"]["tagger"] == "glow" and rows["glow"]["tagger_version"] == "2"
    assert rows["glow"]["source"] == "tags.glow@2"
    assert rows["uri"]["source"] == "samples" and rows["uri"]["tagger"] is None
    # a query over the same dataset still sees the tag values
    assert session.sql("SELECT sample_id FROM samples WHERE glow > 0.1").to_pylist() == [
        {"sample_id": "a"}
    ]


def test_describe_outside_a_dataset_is_datafusions() -> None:
    session = popql.connect()
    session.register("t", pa.table({"x": [1]}))
    names = [r["column_name"] for r in session.sql("DESCRIBE t").to_pylist()]
    assert names == ["x"]
