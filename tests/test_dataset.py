"""Versioned dataset storage (popql.engine.dataset) and how sessions query it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from popql.diagnostics import Diagnostic, PopQLError
from popql.engine import connect
from popql.engine.dataset import (
    SAMPLES_SCHEMA,
    Dataset,
    Snapshot,
    Transaction,
    samples_view_columns,
)
from popql.repl.cli import main

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def samples(*ids: str) -> pa.Table:
    return pa.table(
        {
            "sample_id": pa.array(list(ids), pa.string()),
            "uri": pa.array([f"file:///img/{i}.jpg" for i in ids], pa.string()),
            "width": pa.array([100 + n for n in range(len(ids))], pa.int32()),
        }
    )


def tags(ids: list[str], **columns: list[Any]) -> pa.Table:
    return pa.table({"sample_id": pa.array(ids, pa.string()), **columns})


def ids_of(table: pa.Table) -> list[str]:
    return sorted(table.column("sample_id").to_pylist())


def errors(diags: list[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diags if d.severity == "error"]


def codes(diags: list[Diagnostic]) -> list[str]:
    return [d.code for d in diags]


@pytest.fixture
def ds(tmp_path: Path) -> Dataset:
    return Dataset.open(tmp_path / "ds", create=True, lock_timeout=5)


def commit(ds: Dataset, message: str = "", **tables: pa.Table) -> int:
    with ds.transaction(message) as tx:
        for name, data in tables.items():
            tx.append(name, data)
        return tx.commit()


# ---------------------------------------------------------------------------------------------
# open / create
# ---------------------------------------------------------------------------------------------


def test_open_missing_or_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(PopQLError) as info:
        Dataset.open(tmp_path / "nope")
    assert info.value.code == "F001"
    assert not (tmp_path / "nope").exists()
    with pytest.raises(PopQLError) as info:
        Dataset.open(tmp_path)
    assert info.value.code == "F001" and "manifest.json" in str(info.value)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PopQLError) as info:
        Dataset.open(f, create=True)
    assert info.value.code == "F001"


def test_create_layout(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    ds = Dataset.open(root, create=True)
    assert ds.path == root.absolute()
    assert json.loads((root / "manifest.json").read_text()) == {
        "format": "popql-dataset",
        "format_version": 1,
        "version": 0,
    }
    assert (root / "versions").is_dir()
    assert ds.version() == 0 and ds.versions() == []
    snap = ds.snapshot()
    assert snap.version == 0 and snap.tables == {}
    assert ds.check(leftovers=True) == []
    # opening again (with or without create) keeps it
    assert Dataset.open(root, create=True).version() == 0
    assert Dataset.open(str(root)).version() == 0


def test_create_keeps_plain_tables(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    pq.write_table(samples("a"), tmp_path / "tables" / "extra.parquet")
    Dataset.open(tmp_path, create=True)
    assert (tmp_path / "tables" / "extra.parquet").is_file()


def test_bad_manifests(tmp_path: Path) -> None:
    Dataset.open(tmp_path, create=True)
    manifest = tmp_path / "manifest.json"
    for text, needle in [
        ("{not json", "not JSON"),
        ('{"format": "other", "format_version": 1, "version": 0}', "not a popql-dataset"),
        ('{"format": "popql-dataset", "format_version": 2, "version": 0}', "format_version"),
        ('{"format": "popql-dataset", "format_version": 1, "version": -1}', "bad version"),
        ('{"format": "popql-dataset", "format_version": 1, "version": true}', "bad version"),
    ]:
        manifest.write_text(text)
        with pytest.raises(PopQLError) as info:
            Dataset.open(tmp_path)
        assert info.value.code == "D001", text
        assert needle in str(info.value)
        assert codes(Dataset(tmp_path).check()) == ["D001"]
    manifest.write_text('{"format": "popql-dataset", "format_version": 2, "version": 0}')
    with pytest.raises(PopQLError) as info:
        Dataset.open(tmp_path)
    assert "upgrade PopQL" in str(info.value)


# ---------------------------------------------------------------------------------------------
# commits and snapshots
# ---------------------------------------------------------------------------------------------


def test_commit_writes_snapshot_and_manifest(ds: Dataset) -> None:
    with ds.transaction("first") as tx:
        assert isinstance(tx, Transaction)
        tx.append("samples", samples("a", "b"))
        tx.append("samples", samples("c"))
        tx.append("tags.stats@1", tags(["a"], brightness=[0.5]))
        tx.set_tagger("stats", {"version": "1", "table": "tags.stats@1", "columns": {}})
        assert ids_of(tx.table("samples")) == ["a", "b", "c"]
        assert ds.version() == 0  # nothing visible before commit
        assert tx.commit() == 1
    assert tx.state == "committed" and tx.committed_version == 1
    assert ds.version() == 1 and ds.versions() == [1]
    doc = json.loads((ds.path / "versions" / "00000001.json").read_text())
    assert {"version", "parent", "created", "message", "tables", "taggers", "embedders"} <= set(doc)
    assert doc["version"] == 1 and doc["parent"] == 0 and doc["message"] == "first"
    assert doc["taggers"]["stats"]["table"] == "tags.stats@1"
    assert len(doc["tables"]["samples"]) == 2
    for rel in doc["tables"]["samples"]:
        assert rel.startswith("data/samples/") and rel.endswith(".parquet")
        assert (ds.path / rel).is_file()
    snap = ds.snapshot()
    assert snap.version == 1 and snap.parent == 0 and snap.message == "first"
    assert set(snap.tables) == {"samples", "tags.stats@1"}
    assert all(p.is_absolute() for p in snap.tables["samples"])
    assert ids_of(snap.table("samples")) == ["a", "b", "c"]
    assert snap.num_rows("samples") == 3
    assert snap.schema("samples") == samples().schema
    assert snap.dataset("samples").to_table().num_rows == 3
    assert ds.check(leftovers=True) == []


def test_context_manager_commits_on_clean_exit(ds: Dataset) -> None:
    with ds.transaction("auto") as tx:
        tx.append("samples", samples("a"))
    assert tx.state == "committed" and ds.version() == 1
    with ds.transaction("explicit") as tx:
        tx.append("samples", samples("b"))
        assert tx.commit() == 2
        with pytest.raises(PopQLError) as info:
            tx.append("samples", samples("c"))
        assert info.value.code == "D008"
    assert ds.version() == 2
    # without `with`
    tx = ds.transaction("plain")
    tx.append("samples", samples("c"))
    assert tx.commit() == 3


def test_rollback_on_exception_deletes_files_and_releases_lock(ds: Dataset) -> None:
    commit(ds, samples=samples("a"))
    with pytest.raises(RuntimeError), ds.transaction("boom") as tx:
        tx.append("samples", samples("b"))
        written = [ds.path / r for r in tx._written]
        assert all(p.is_file() for p in written)
        raise RuntimeError("boom")
    assert tx.state == "rolled back"
    assert not any(p.exists() for p in written)
    assert ds.version() == 1
    assert ds.check(leftovers=True) == []
    with ds.transaction("after", timeout=0.5) as tx:  # the lock is free again
        tx.rollback()
    assert ds.version() == 1


def test_empty_commit_writes_no_version(ds: Dataset) -> None:
    with ds.transaction("nothing") as tx:
        pass
    assert tx.committed_version == 0 and ds.version() == 0
    assert not list((ds.path / "versions").iterdir())


def test_empty_table_keeps_schema(ds: Dataset) -> None:
    with ds.transaction() as tx:
        tx.append("samples", samples())
        tx.replace("labels", tags([], label=pa.array([], pa.string())))
    snap = ds.snapshot()
    assert snap.tables["samples"] == [] and snap.tables["labels"] == []
    assert snap.table("samples").schema == samples().schema
    assert snap.table("samples").num_rows == 0
    assert snap.dataset("labels").to_table().schema.names == ["sample_id", "label"]


def test_unknown_table_in_snapshot(ds: Dataset) -> None:
    commit(ds, samples=samples("a"))
    with pytest.raises(PopQLError) as info:
        ds.snapshot().table("sampels")
    assert info.value.code == "N001" and "did you mean 'samples'" in str(info.value)


def test_append_conforms_to_schema(ds: Dataset) -> None:
    commit(ds, samples=samples("a"))
    with ds.transaction() as tx:
        # reordered, int64 width (cast to int32), uri missing (nullable: nulls)
        tx.append(
            "samples",
            pa.table({"width": pa.array([7], pa.int64()), "sample_id": ["b"]}),
        )
        with pytest.raises(PopQLError) as info:
            tx.append("samples", samples("c").append_column("extra", pa.array([1])))
        assert info.value.code == "D008" and "extra" in str(info.value)
        with pytest.raises(PopQLError) as info:
            tx.append("samples", pa.table({"sample_id": ["d"], "width": ["wide"]}))
        assert info.value.code == "D008" and "width" in str(info.value)
        with pytest.raises(TypeError):
            tx.append("samples", [{"sample_id": "x"}])  # type: ignore[arg-type]
    rows = ds.snapshot().table("samples").to_pylist()
    assert rows[1] == {"sample_id": "b", "uri": None, "width": 7}
    assert ds.snapshot().schema("samples") == samples().schema


def test_types_round_trip_exactly(ds: Dataset) -> None:
    import numpy as np

    data = pa.table(
        {
            "sample_id": ["a"],
            "ts": pa.array([1], pa.timestamp("s")),  # Parquet stores ms
            "date": pa.array([86_400_000], pa.date64()),  # Parquet stores date32
            "at": pa.array([1], pa.timestamp("us", tz="UTC")),
            "embedding": pa.array([np.ones(4, np.float16)], pa.list_(pa.float16(), 4)),
            "labels": pa.array([["x", "y"]]),
            "box": pa.array([{"x": 1.0, "label": "car"}]),
        }
    )
    with ds.transaction() as tx:
        tx.replace("t", data)
        tx.append("t", data)
    snap = ds.snapshot()
    assert snap.table("t").num_rows == 2
    assert snap.schema("t").field("ts").type == pa.timestamp("ms")
    assert ds.check(deep=True) == []


def test_invalid_names_and_metadata(ds: Dataset) -> None:
    with ds.transaction() as tx:
        for bad in ["", "../x", "a/b", ".hidden", "-x", "x" * 201, "a\\b"]:
            with pytest.raises(PopQLError) as info:
                tx.append(bad, samples("a"))
            assert info.value.code == "D008", bad
        with pytest.raises(PopQLError) as info:
            tx.set_tagger("t", {"fn": object()})
        assert info.value.code == "D008"
        with pytest.raises(PopQLError) as info:
            tx.set_embedder("e", {"dim": float("nan")})
        assert info.value.code == "D008"
        with pytest.raises(PopQLError) as info:
            tx.delete_where("nope", {"a"})
        assert info.value.code == "D008"
        tx.rollback()


def test_replace_delete_and_time_travel(ds: Dataset) -> None:
    assert commit(ds, "v1", samples=samples("a", "b", "c")) == 1
    assert commit(ds, "v2", samples=samples("d")) == 2
    with ds.transaction("v3") as tx:
        assert tx.delete_where("samples", {"b", "d", "zz"}) == 2
        assert tx.delete_where("samples", set()) == 0
    with ds.transaction("v4") as tx:
        tx.replace("samples", samples("x", "y"))
    with ds.transaction("v5") as tx:
        tx.delete_where("samples", {"x", "y"})
        tx.append("tags.t@1", tags(["x"], v=[1]))
        tx.drop_table("tags.t@1")
    assert ds.version() == 5
    expected = {
        0: [],
        1: ["a", "b", "c"],
        2: ["a", "b", "c", "d"],
        3: ["a", "c"],
        4: ["x", "y"],
        5: [],
    }
    for version, ids in expected.items():
        snap = ds.snapshot(version)
        assert snap.version == version
        got = ids_of(snap.table("samples")) if "samples" in snap.tables else []
        assert got == ids, version
    assert ds.snapshot(5).tables["samples"] == []
    assert "tags.t@1" not in ds.snapshot(5).tables
    # v2 kept v1's file: files are shared, not copied
    assert set(ds.snapshot(1).files("samples")) < set(ds.snapshot(2).files("samples"))
    for bad in (6, -1, 100):
        with pytest.raises(PopQLError) as info:
            ds.snapshot(bad)
        assert info.value.code == "D006" and "available versions: 1..5" in str(info.value)
    with pytest.raises(TypeError):
        ds.snapshot("3")  # type: ignore[arg-type]
    assert ds.check(leftovers=True) == []


def test_delete_where_needs_sample_id(ds: Dataset) -> None:
    commit(ds, ingest_errors=pa.table({"uri": ["x"], "reason": ["corrupt"]}))
    with ds.transaction() as tx, pytest.raises(PopQLError) as info:
        tx.delete_where("ingest_errors", {"x"})
    assert info.value.code == "D008"


def test_taggers_embedders_and_files(ds: Dataset) -> None:
    with ds.transaction() as tx:
        tx.append("samples", samples("a"))
        path = tx.add_file("indexes/clip/one.usearch")
        assert path == ds.path / "indexes" / "clip" / "one.usearch"
        assert path.parent.is_dir()
        path.write_bytes(b"index")
        tx.set_embedder(
            "clip", {"dim": 4, "table": "embeddings.clip", "index": "indexes/clip/one.usearch"}
        )
        spare = tx.add_file("indexes/clip/unused.bin")
        spare.write_bytes(b"x")
        for bad in ["versions/x.json", "manifest.json", "/abs", "indexes/../x", "indexes", "x/y"]:
            with pytest.raises(PopQLError) as info:
                tx.add_file(bad)
            assert info.value.code == "D008", bad
        with pytest.raises(PopQLError):
            tx.add_file("indexes/clip/one.usearch")  # already reserved
    assert not spare.exists()  # reserved, but no version names it: deleted at commit
    snap = ds.snapshot()
    assert snap.embedders["clip"]["index"] == "indexes/clip/one.usearch"
    assert "indexes/clip/one.usearch" in snap.referenced_files()
    # a reserved file that metadata names but nobody wrote: the commit is refused
    with ds.transaction() as tx:
        tx.add_file("indexes/clip/two.usearch")
        tx.set_embedder("clip", {"index": "indexes/clip/two.usearch"})
        with pytest.raises(PopQLError) as info:
            tx.commit()
        assert info.value.code == "D008" and "two.usearch" in str(info.value)
    assert tx.state == "failed" and ds.version() == 1
    assert (ds.path / "indexes/clip/two.usearch").parent.is_dir()
    (ds.path / "indexes/clip/stray.bin").write_bytes(b"x")
    report = ds.vacuum()
    assert report.removed_files == ["indexes/clip/stray.bin"]
    assert (ds.path / "indexes/clip/one.usearch").is_file()
    with ds.transaction() as tx:
        tx.remove_embedder("clip")
        tx.remove_tagger("none")
    assert ds.snapshot().embedders == {}
    ds.vacuum()
    assert not (ds.path / "indexes/clip").exists()


# ---------------------------------------------------------------------------------------------
# crash safety (in-process failure injection; tests/test_dataset_kill.py uses SIGKILL)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fail_at", ["snapshot", "manifest"])
def test_interrupted_commit_keeps_last_version(
    ds: Dataset, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    commit(ds, samples=samples("a"))
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        target = Path(dst)
        if (fail_at == "manifest" and target.name == "manifest.json") or (
            fail_at == "snapshot" and target.parent.name == "versions"
        ):
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(PopQLError) as info, ds.transaction() as tx:
        tx.append("samples", samples("b"))
    assert info.value.code == "F004"
    assert tx.state == "failed"
    monkeypatch.setattr(os, "replace", real_replace)
    assert ds.version() == 1
    assert ids_of(ds.snapshot().table("samples")) == ["a"]
    assert ds.check() == []
    leftovers = ds.check(leftovers=True)
    assert leftovers and {d.code for d in leftovers} == {"D009"}
    assert all(d.severity == "note" for d in leftovers)
    if fail_at == "manifest":  # versions/00000002.json exists but was never committed
        assert any("never committed" in d.message for d in leftovers)
        with pytest.raises(PopQLError) as info:
            ds.snapshot(2)
        assert info.value.code == "D006"
    # the next writer commits version 2 over the leftovers
    assert commit(ds, samples=samples("c")) == 2
    assert ids_of(ds.snapshot().table("samples")) == ["a", "c"]
    report = ds.vacuum(keep_versions=5)
    assert report.removed_versions == [] and report.removed_files
    assert ds.check(leftovers=True) == []


def test_crash_leftovers_in_files(ds: Dataset) -> None:
    commit(ds, samples=samples("a"))
    (ds.path / "data" / "samples" / "half.parquet").write_bytes(b"PAR1 trunc")
    (ds.path / "versions" / "00000009.json").write_text("{")
    (ds.path / ".manifest.json.123.tmp").write_text("{")
    assert ds.check() == []
    notes = ds.check(leftovers=True)
    assert len(notes) == 3 and {d.severity for d in notes} == {"note"}
    report = ds.vacuum()
    assert sorted(report.removed_files) == [
        ".manifest.json.123.tmp",
        "data/samples/half.parquet",
        "versions/00000009.json",
    ]
    assert ds.check(leftovers=True) == []
    assert ds.version() == 1


# ---------------------------------------------------------------------------------------------
# vacuum
# ---------------------------------------------------------------------------------------------


def test_vacuum_keeps_versions_and_shared_files(ds: Dataset) -> None:
    for i in range(5):
        with ds.transaction(f"v{i + 1}") as tx:
            tx.append("samples", samples(f"s{i}"))
            tx.replace("tags.t@1", tags([f"s{i}"], v=[i]))
    files_before = {p for p in (ds.path / "data").rglob("*") if p.is_file()}
    report = ds.vacuum(keep_versions=2)
    assert report.kept_versions == [4, 5]
    assert report.removed_versions == [1, 2, 3]
    # samples files are shared by every version: all kept; tag files of v1..v3 removed
    assert all(r.startswith("data/tags.t@1/") for r in report.removed_files)
    assert len(report.removed_files) == 3 and report.freed_bytes > 0
    assert "removed 3 version(s) and 3 file(s)" in str(report)
    assert report.to_dict()["kept_versions"] == [4, 5]
    assert len(files_before) - len(report.removed_files) == len(
        [p for p in (ds.path / "data").rglob("*") if p.is_file()]
    )
    assert ds.versions() == [4, 5]
    assert ids_of(ds.snapshot(4).table("samples")) == ["s0", "s1", "s2", "s3"]
    with pytest.raises(PopQLError) as info:
        ds.snapshot(2)
    assert info.value.code == "D006" and "removed by vacuum" in str(info.value)
    assert "available versions: 4..5" in str(info.value)
    assert ds.check(leftovers=True) == []
    again = ds.vacuum(keep_versions=2)
    assert again.removed_versions == [] and again.removed_files == []
    assert ds.vacuum(keep_versions=1).removed_versions == [4]
    with pytest.raises(ValueError):
        ds.vacuum(keep_versions=0)
    # the numbering goes on
    assert commit(ds, samples=samples("z")) == 6


def test_vacuum_empty_dataset(ds: Dataset) -> None:
    report = ds.vacuum()
    assert report.kept_versions == [] and report.removed_files == []
    assert str(report).endswith("no versions")


# ---------------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------------


def _two_versions(ds: Dataset) -> None:
    commit(ds, samples=samples("a", "b"))
    commit(ds, samples=samples("c"))


def test_check_missing_and_truncated_files(ds: Dataset) -> None:
    _two_versions(ds)
    first, second = ds.snapshot().files("samples")
    (ds.path / first).unlink()
    raw = (ds.path / second).read_bytes()
    (ds.path / second).write_bytes(raw[: len(raw) // 2])
    found = ds.check()
    assert sorted(codes(found)) == ["D003", "D004"]
    missing = next(d for d in found if d.code == "D003")
    assert first in missing.message and "versions 1..2" in missing.message
    assert missing.file == str(ds.path / first)
    # the session still opens (nothing is read), queries fail with a diagnostic
    s = connect(ds.path)
    with pytest.raises(PopQLError):
        s.sql("SELECT count(*) FROM samples").to_arrow()
    with pytest.raises(PopQLError) as info:
        ds.snapshot().table("samples")
    assert info.value.code == "D003"


def test_check_row_count_and_schema_mismatch(ds: Dataset) -> None:
    _two_versions(ds)
    first, second = ds.snapshot().files("samples")
    pq.write_table(samples("x", "y", "z"), ds.path / first)  # 3 rows, recorded 2
    pq.write_table(pa.table({"sample_id": ["c"], "other": [1]}), ds.path / second)
    found = ds.check()
    assert codes(found) == ["D004", "D004"]
    assert "has 3 rows; versions 1..2 recorded 2" in found[0].message
    assert "does not have the schema" in found[1].message


def test_check_deep_reads_pages(ds: Dataset) -> None:
    commit(ds, samples=samples(*[f"id{i}" for i in range(2000)]))
    (rel,) = ds.snapshot().files("samples")
    path = ds.path / rel
    raw = bytearray(path.read_bytes())
    meta = pq.read_metadata(path)
    start = meta.row_group(0).column(0).data_page_offset
    raw[start + 10 : start + 400] = b"\xff" * 390  # damage data pages, keep the footer
    path.write_bytes(bytes(raw))
    assert ds.check() == []
    assert codes(ds.check(deep=True)) == ["D004"]


def test_check_snapshots(ds: Dataset) -> None:
    _two_versions(ds)
    v1 = ds.path / "versions" / "00000001.json"
    v2 = ds.path / "versions" / "00000002.json"
    v1.write_text("{broken")
    assert codes(ds.check()) == ["D002"]
    v1.write_text(json.dumps({"version": 1, "tables": {"samples": ["../../etc/passwd"]}}))
    found = ds.check()
    assert codes(found) == ["D002"] and "bad file path" in found[0].message
    v1.write_text(json.dumps({"version": 7, "tables": {}}))
    assert codes(ds.check()) == ["D002"]
    v1.unlink()  # as if vacuumed: fine
    assert ds.check() == []
    v2.unlink()  # the manifest names it
    found = ds.check()
    assert codes(found) == ["D001"] and "00000002.json is missing" in found[0].message
    with pytest.raises(PopQLError) as info:
        ds.snapshot()
    assert info.value.code == "D001"


def test_check_duplicate_sample_ids(ds: Dataset) -> None:
    commit(ds, samples=samples("a", "b"))
    commit(ds, samples=samples("b"), labels=tags(["a", "a"], label=["x", "y"]))
    found = ds.check()
    assert codes(found) == ["D005"]
    assert "'samples'" in found[0].message and "'b'" in found[0].message


def test_contract_minimal_snapshot_is_readable(ds: Dataset) -> None:
    """A snapshot with only the contract's keys (no schemas/rows) still reads and checks."""
    (ds.path / "data" / "samples").mkdir(parents=True)
    pq.write_table(samples("a", "b"), ds.path / "data" / "samples" / "one.parquet")
    doc = {
        "version": 1,
        "parent": 0,
        "created": "2024-01-01T00:00:00+00:00",
        "message": "by hand",
        "tables": {"samples": ["data/samples/one.parquet"]},
        "taggers": {},
        "embedders": {},
    }
    (ds.path / "versions" / "00000001.json").write_text(json.dumps(doc))
    (ds.path / "manifest.json").write_text(
        json.dumps({"format": "popql-dataset", "format_version": 1, "version": 1})
    )
    snap = ds.snapshot()
    assert snap.num_rows("samples") == 2 and snap.schema("samples") == samples().schema
    assert ds.check(leftovers=True) == []
    with ds.transaction() as tx:
        tx.append("samples", samples("c"))
    assert ds.snapshot().num_rows("samples") == 3


# ---------------------------------------------------------------------------------------------
# the writer lock
# ---------------------------------------------------------------------------------------------


def test_second_writer_in_the_same_thread_is_refused(ds: Dataset) -> None:
    with ds.transaction() as tx:
        with pytest.raises(PopQLError) as info:
            ds.transaction()
        assert info.value.code == "D007" and "this thread" in str(info.value)
        with pytest.raises(PopQLError):
            ds.vacuum()
        tx.rollback()


def test_second_writer_waits_then_times_out(ds: Dataset) -> None:
    tx = ds.transaction("holder")
    result: dict[str, Any] = {}

    def other() -> None:
        try:
            ds.transaction("waiter", timeout=0.2)
        except PopQLError as err:
            result["error"] = err

    t = threading.Thread(target=other)
    t.start()
    t.join()
    err = result["error"]
    assert err.code == "D007"
    assert "locked by another writer" in str(err) and f"pid {os.getpid()}" in str(err)
    tx.rollback()


def test_writers_are_serialised(ds: Dataset) -> None:
    """A waiting writer gets the lock when the holder commits, and stages on its version."""
    tx = ds.transaction("first")
    tx.append("samples", samples("a"))
    seen: dict[str, Any] = {}

    def other() -> None:
        with ds.transaction("second", timeout=10) as tx2:
            seen["base"] = tx2.base.version
            tx2.append("samples", samples("b"))

    t = threading.Thread(target=other)
    t.start()
    time.sleep(0.2)
    assert t.is_alive()  # waiting for the lock
    assert tx.commit() == 1
    t.join(10)
    assert seen["base"] == 1 and ds.version() == 2
    assert ids_of(ds.snapshot().table("samples")) == ["a", "b"]


def test_lock_held_by_another_process(ds: Dataset) -> None:
    script = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(ds.path / ".lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "locked"
            start = time.monotonic()
            with pytest.raises(PopQLError) as info:
                ds.transaction(timeout=0.3)
            assert info.value.code == "D007" and time.monotonic() - start >= 0.3
            with pytest.raises(PopQLError):
                ds.vacuum(timeout=0.1)
            # readers never lock
            assert ds.snapshot().version == 0 and ds.check() == []
        finally:
            proc.stdin.close()
            proc.wait(10)
    with ds.transaction(timeout=5) as tx:  # released when the process ended
        tx.append("samples", samples("a"))
    assert ds.version() == 1


# ---------------------------------------------------------------------------------------------
# the samples view (section 5)
# ---------------------------------------------------------------------------------------------


def _tagged(ds: Dataset) -> None:
    import numpy as np

    with ds.transaction("tagged") as tx:
        tx.append("samples", samples("a", "b", "c"))
        tx.append("tags.stats@1", tags(["a", "b"], brightness=[0.1, 0.9], width=[1, 2]))
        tx.set_tagger("stats", {"version": "1", "table": "tags.stats@1", "columns": {}})
        tx.append("tags.faces@2", tags(["c"], num_faces=[3], brightness=[0.5]))
        tx.set_tagger("faces", {"version": 2, "table": "tags.faces@2"})
        tx.append("tags.faces@1", tags(["a"], num_faces=[9]))  # an older tagger version
        emb = pa.array([np.ones(4, np.float16)] * 2, pa.list_(pa.float16(), 4))
        tx.append("embeddings.clip", pa.table({"sample_id": ["a", "b"], "embedding": emb}))
        tx.set_embedder("clip", {"dim": 4, "table": "embeddings.clip", "identity": "x"})
        tx.set_tagger("ghost", {"version": "1", "table": "tags.ghost@1"})  # no table yet
        tx.append("labels", tags(["a"], label=["cat"]))


def test_samples_view_columns(ds: Dataset) -> None:
    _tagged(ds)
    cols = samples_view_columns(ds.snapshot())
    assert [(c.name, c.table, c.column, c.tagger, c.tagger_version) for c in cols] == [
        ("sample_id", "samples", "sample_id", None, None),
        ("uri", "samples", "uri", None, None),
        ("width", "samples", "width", None, None),
        ("brightness", "tags.stats@1", "brightness", "stats", "1"),
        ("stats_width", "tags.stats@1", "width", "stats", "1"),
        ("num_faces", "tags.faces@2", "num_faces", "faces", "2"),
        ("faces_brightness", "tags.faces@2", "brightness", "faces", "2"),
    ]  # embeddings are not in the view: they are the table "embeddings.clip"
    empty = samples_view_columns(Snapshot(ds.path, 0))
    assert [c.name for c in empty] == SAMPLES_SCHEMA.names


def test_connect_registers_view_and_tables(ds: Dataset) -> None:
    _tagged(ds)
    s = connect(ds.path)
    assert s.dataset is not None and s.version == 1 and s.snapshot is not None
    assert "@ version 1" in repr(s)
    assert s.tables() == sorted(
        [
            "samples",
            "data.samples",
            "tags.stats@1",
            "tags.faces@1",
            "tags.faces@2",
            "embeddings.clip",
            "ingest_errors",
            "labels",
        ]
    )
    rows = s.sql(
        "SELECT s.sample_id, brightness, stats_width, num_faces, faces_brightness, "
        "e.sample_id IS NOT NULL AS has_embedding"
        ' FROM samples s LEFT JOIN "embeddings.clip" e ON e.sample_id = s.sample_id'
        " ORDER BY sample_id"
    ).to_pylist()
    assert rows == [
        {"sample_id": "a", "brightness": 0.1, "stats_width": 1, "num_faces": None,
         "faces_brightness": None, "has_embedding": True},
        {"sample_id": "b", "brightness": 0.9, "stats_width": 2, "num_faces": None,
         "faces_brightness": None, "has_embedding": True},
        {"sample_id": "c", "brightness": None, "stats_width": None, "num_faces": 3,
         "faces_brightness": 0.5, "has_embedding": False},
    ]  # fmt: skip
    old = s.sql('SELECT sample_id, num_faces FROM "tags.faces@1"').to_pylist()
    assert old == [{"sample_id": "a", "num_faces": 9}]
    assert s.sql('SELECT count(*) AS n FROM "data.samples"').to_pylist() == [{"n": 3}]
    assert s.sql("SELECT count(*) AS n FROM ingest_errors").to_pylist() == [{"n": 0}]
    assert s.schema("ingest_errors").names == ["uri", "reason", "error", "at"]
    # checking (not running) against the view works too
    s.check("SELECT brightness FROM samples WHERE num_faces > 1")
    with pytest.raises(PopQLError) as info:
        s.check("SELECT brightnes FROM samples")
    assert info.value.code == "N002"


def test_describe(ds: Dataset) -> None:
    _tagged(ds)
    s = connect(ds.path)
    d = s.describe("samples")
    assert d.column_names == ["column", "type", "source", "tagger", "tagger_version"]
    rows = {r["column"]: r for r in d.to_pylist()}
    # the view's columns, then the queryable split (engine/populations.py: imported or held out)
    assert list(rows) == [c.name for c in samples_view_columns(ds.snapshot())] + ["split"]
    assert rows["split"]["source"] == "split" and rows["split"]["type"] == "string"
    assert rows["uri"] == {
        "column": "uri",
        "type": "string",
        "source": "samples",
        "tagger": None,
        "tagger_version": None,
    }
    assert rows["faces_brightness"]["source"] == "tags.faces@2"
    assert rows["faces_brightness"]["tagger"] == "faces"
    assert rows["faces_brightness"]["tagger_version"] == "2"
    assert rows["faces_brightness"]["type"] == "double"
    assert "embedding_clip" not in rows
    emb = {r["column"]: r for r in s.describe("embeddings.clip").to_pylist()}
    assert emb["embedding"]["type"].startswith("list") or emb["embedding"]["type"].startswith(
        "fixed_size_list"
    )
    tag_rows = s.describe("tags.stats@1").to_pylist()
    assert {r["tagger"] for r in tag_rows} == {"stats"}
    assert {r["source"] for r in s.describe("labels").to_pylist()} == {"labels"}
    s.register("plain", samples("q"))
    assert set(s.describe("plain").column("source").to_pylist()) == {"table"}
    s.sql("CREATE VIEW v AS SELECT 1 AS one")
    assert s.describe("v").to_pylist() == [
        {"column": "one", "type": "int64", "source": "table", "tagger": None,
         "tagger_version": None}
    ]  # fmt: skip
    with pytest.raises(PopQLError) as info:
        s.describe("sampels")
    assert info.value.code == "N001"


def test_empty_dataset_session(ds: Dataset) -> None:
    s = connect(ds.path)
    assert s.version == 0
    assert s.schema("samples").names == [*SAMPLES_SCHEMA.names, "split"]
    assert s.sql("SELECT count(*) AS n FROM samples").to_pylist() == [{"n": 0}]
    assert set(s.describe("samples").column("source").to_pylist()) == {"samples", "split"}


def test_version_pinning_refresh_and_time_travel(ds: Dataset) -> None:
    commit(ds, samples=samples("a"))
    s = connect(ds.path)
    s.register("mine", samples("m"))
    commit(ds, samples=samples("b"))

    def count(session: Any) -> int:
        return int(session.sql("SELECT count(*) AS n FROM samples").to_pylist()[0]["n"])

    assert s.version == 1 and count(s) == 1  # one snapshot per connect
    assert count(connect(ds.path)) == 2
    assert s.refresh() == 2 and s.version == 2 and count(s) == 2
    assert s.refresh() == 2
    assert "mine" in s.tables()  # user tables survive a refresh
    old = s.at_version(1)
    assert old.version == 1 and count(old) == 1 and s.version == 2
    pinned = connect(ds.path, version=1)
    assert count(pinned) == 1
    assert count(connect(ds.path, version=0)) == 0
    with pytest.raises(PopQLError) as info:
        s.at_version(3)
    assert info.value.code == "D006"
    with pytest.raises(PopQLError) as info:
        connect(ds.path, version=9)
    assert info.value.code == "D006"
    with ds.transaction() as tx:  # a new tagger appears after refresh
        tx.append("tags.t@1", tags(["a"], score=[1.0]))
        tx.set_tagger("t", {"version": "1", "table": "tags.t@1"})
    assert "score" not in s.schema("samples").names
    assert pinned.refresh() == 3
    assert "score" in pinned.schema("samples").names
    assert count(pinned) == 2


def test_sessions_without_versions(tmp_path: Path) -> None:
    with pytest.raises(PopQLError) as info:
        connect(version=1)
    assert info.value.code == "D006"
    with pytest.raises(PopQLError) as info:
        connect().at_version(1)
    assert info.value.code == "D006"
    assert connect().refresh() is None
    plain = tmp_path / "plain"
    s = connect(plain)
    assert s.version is None and s.dataset is None
    with pytest.raises(PopQLError) as info:
        connect(plain, version=1)
    assert info.value.code == "D006"
    with pytest.raises(PopQLError) as info:
        s.at_version(1)
    assert info.value.code == "D006"
    # a refresh rescans tables/ and picks up a dataset created meanwhile
    pq.write_table(samples("a"), plain / "tables" / "images.parquet")
    assert s.refresh() is None and s.tables() == ["images"]
    assert set(s.describe("images").column("source").to_pylist()) == {"table"}
    ds = Dataset.open(plain, create=True)
    commit(ds, samples=samples("a", "b"))
    assert s.refresh() == 1
    assert {"samples", "images", "data.samples"} <= set(s.tables())


def test_plain_tables_next_to_a_dataset(ds: Dataset) -> None:
    commit(ds, samples=samples("a"))
    (ds.path / "tables").mkdir()
    pq.write_table(samples("x", "y"), ds.path / "tables" / "extra.parquet")
    s = connect(ds.path)
    assert s.sql("SELECT count(*) AS n FROM extra").to_pylist() == [{"n": 2}]
    pq.write_table(samples("x"), ds.path / "tables" / "samples.parquet")
    with pytest.raises(PopQLError) as info:
        connect(ds.path)
    assert info.value.code == "F001" and "name of a dataset table" in str(info.value)


def test_registration_is_lazy(ds: Dataset) -> None:
    commit(ds, samples=samples("a"))
    for rel in ds.snapshot().files("samples"):
        (ds.path / rel).unlink()
    s = connect(ds.path)  # opens: nothing was read
    assert s.schema("samples").names[:2] == ["sample_id", "uri"]
    with pytest.raises(PopQLError):
        s.sql("SELECT * FROM samples").to_arrow()


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def test_cli_check_dataset(ds: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    _two_versions(ds)
    assert main(["check-dataset", "--dataset", str(ds.path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip().endswith("version 2, 2 version(s) kept: ok") and err == ""
    (ds.path / "data" / "samples" / "junk.parquet").write_bytes(b"x")
    assert main(["check-dataset", "--dataset", str(ds.path)]) == 0
    out, err = capsys.readouterr()
    assert "1 leftover file(s)" in out and "note[D009]" in err
    first = ds.snapshot().files("samples")[0]
    (ds.path / first).unlink()
    assert main(["check-dataset", "--dataset", str(ds.path), "--deep"]) == 1
    out, err = capsys.readouterr()
    assert "1 problem(s)" in out and "error[D003]" in err and first in err
    assert main(["check-dataset", "--dataset", str(ds.path), "--format", "json"]) == 1
    out, _ = capsys.readouterr()
    assert sorted(d["code"] for d in json.loads(out)) == ["D003", "D009"]
    (ds.path / "manifest.json").write_text("{")
    assert main(["check-dataset", "--dataset", str(ds.path)]) == 1
    out, err = capsys.readouterr()
    assert "error[D001]" in err and "unreadable manifest" in out


def test_cli_check_dataset_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-dataset", "--dataset", str(tmp_path / "nope")]) == 1
    assert "F001" in capsys.readouterr().err
    assert main(["check-dataset", "--dataset", str(tmp_path)]) == 1
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["check-dataset"]) == 2
    assert main(["vacuum"]) == 2
    capsys.readouterr()


def test_cli_vacuum(ds: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(4):
        with ds.transaction() as tx:
            tx.replace("samples", samples(f"s{i}"))
    assert main(["vacuum", "--dataset", str(ds.path), "--keep", "2"]) == 0
    out, _ = capsys.readouterr()
    assert "removed 2 version(s) and 2 file(s)" in out and "kept versions 3..4" in out
    assert ds.versions() == [3, 4]
    assert main(["vacuum", "--dataset", str(ds.path), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["removed_versions"] == [3] and report["kept_versions"] == [4]
    for bad in ["0", "-1", "x"]:
        assert main(["vacuum", "--dataset", str(ds.path), "--keep", bad]) == 2
        assert "--keep" in capsys.readouterr().err


def test_cli_query_on_a_versioned_dataset(ds: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    _tagged(ds)
    sql = "SELECT sample_id, num_faces FROM samples WHERE num_faces > 0"
    assert main(["query", sql, "--dataset", str(ds.path), "--format", "csv"]) == 0
    assert capsys.readouterr().out == "sample_id,num_faces\nc,3\n"
