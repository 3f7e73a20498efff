"""popql.engine.labels: label files (CSV, JSON, JSON lines, Parquet; keyed by sample id or
path) and COCO instances, joined to samples."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from popql.diagnostics import PopQLError
from popql.engine import labels as L

ROOT = "/data/photos"
PATHS = {
    f"{ROOT}/cats/001.jpg": "a" * 16,
    f"{ROOT}/cats/002.jpg": "b" * 16,
    f"{ROOT}/dogs/001.jpg": "c" * 16,
    f"{ROOT}/dogs/003.png": "d" * 16,
}


def match(file: L.LabelFile) -> L.LabelMatch:
    return L.match_labels(file, PATHS, roots=[ROOT])


def test_csv_by_relative_path(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text("path,label,difficulty\ncats/001.jpg,cat,1\ndogs/001.jpg,dog,2\nnope.jpg,x,3\n")
    file = L.read_labels(p)
    assert (file.key, file.key_kind, file.format) == ("path", "path", "csv")
    m = match(file)
    assert m.matched == 2 and m.unmatched == ["nope.jpg"]
    rows = m.table.to_pylist()
    assert rows[0] == {
        "sample_id": "a" * 16,
        "uri": f"{ROOT}/cats/001.jpg",
        "path": "cats/001.jpg",
        "label": "cat",
        "difficulty": 1,
    }
    assert m.table.schema.field("difficulty").type == pa.int64()
    assert m.sample_ids == {"a" * 16, "c" * 16}


def test_basename_and_suffix_matching_and_ambiguity(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text("file_name,label\n003.png,dog\n001.jpg,?\n002.jpg,cat\n")
    m = L.match_labels(L.read_labels(p), PATHS)  # no roots: suffix matching only
    assert {r["file_name"]: r["sample_id"] for r in m.table.to_pylist()} == {
        "003.png": "d" * 16,
        "002.jpg": "b" * 16,
    }
    assert m.ambiguous == ["001.jpg"] and not m.unmatched


def test_absolute_paths_and_uris(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text(f"uri,label\n{ROOT}/cats/002.jpg,cat\nfile://{ROOT}/dogs/003.png,dog\n")
    m = match(L.read_labels(p))
    assert [r["sample_id"] for r in m.table.to_pylist()] == ["b" * 16, "d" * 16]


def test_keyed_by_sample_id_kept_as_strings(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text(f"sample_id,label\n{'a' * 16},cat\n1234567890123456,ghost\n")
    file = L.read_labels(p)
    assert file.key_kind == "sample_id"
    assert file.table.schema.field("sample_id").type == pa.string()  # not parsed as a number
    m = match(file)
    assert m.matched == 1 and m.unmatched == ["1234567890123456"]


def test_tsv(tmp_path: Path) -> None:
    p = tmp_path / "labels.tsv"
    p.write_text("path\tlabel\ncats/001.jpg\tcat\n")
    assert match(L.read_labels(p)).matched == 1


def test_json_records_mapping_and_lines(tmp_path: Path) -> None:
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"path": "cats/001.jpg", "label": "cat", "tags": ["a", "b"]}]))
    m = match(L.read_labels(records))
    assert m.table.to_pylist()[0]["tags"] == ["a", "b"]

    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"dogs/001.jpg": "dog", "cats/002.jpg": {"label": "cat"}}))
    m = match(L.read_labels(mapping))
    assert sorted(r["label"] for r in m.table.to_pylist()) == ["cat", "dog"]

    lines = tmp_path / "labels.jsonl"
    lines.write_text('{"image": "dogs/003.png", "score": 0.5}\n\n{"image": "x.jpg"}\n')
    file = L.read_labels(lines)
    assert file.format == "jsonl" and file.key == "image"
    assert match(file).matched == 1


def test_parquet_and_explicit_key(tmp_path: Path) -> None:
    p = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"img": ["cats/001.jpg"], "path": ["ignored"], "label": ["cat"]}), p)
    file = L.read_labels(p, key="img")
    assert file.key == "img" and file.format == "parquet"
    assert match(file).matched == 1


def test_coco_instances(tmp_path: Path) -> None:
    coco = {
        "images": [
            {"id": 1, "file_name": "cats/001.jpg", "width": 200, "height": 100},
            {"id": 2, "file_name": "dogs/003.png", "width": 50, "height": 50},
            {"id": 3, "file_name": "none.jpg", "width": 10, "height": 10},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 17, "bbox": [20, 10, 100, 50], "area": 4000},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 300, 10], "iscrowd": 1},
            {"id": 12, "image_id": 2, "category_id": 18, "bbox": [5, 5, 10, 10], "area": 100},
            {"id": 13, "image_id": 99, "category_id": 18, "bbox": [0, 0, 1, 1]},
        ],
        "categories": [
            {"id": 1, "name": "person"},
            {"id": 17, "name": "cat"},
            {"id": 18, "name": "dog"},
        ],
    }
    p = tmp_path / "instances_val.json"
    p.write_text(json.dumps(coco))
    file = L.read_labels(p)
    assert file.format == "coco" and file.key == "file_name"
    assert file.table.schema == L.COCO_SCHEMA
    m = match(file)
    assert m.matched == 2 and m.unmatched == ["none.jpg"]
    rows = {r["file_name"]: r for r in m.table.to_pylist()}
    cat = rows["cats/001.jpg"]
    assert cat["sample_id"] == "a" * 16 and cat["coco_image_id"] == 1
    assert cat["gt_labels"] == ["cat", "person"]
    first, crowd = cat["gt_detections"]
    assert first["label"] == "cat" and not first["iscrowd"]
    assert first["box"] == pytest.approx([0.1, 0.1, 0.6, 0.6])
    assert first["area"] == pytest.approx(4000 / 20000)
    assert crowd["iscrowd"] and crowd["box"] == pytest.approx([0.0, 0.0, 1.0, 0.1])
    assert crowd["area"] == pytest.approx(3000 / 20000)  # no area: the box's
    assert rows["dogs/003.png"]["gt_detections"][0]["box"] == pytest.approx([0.1, 0.1, 0.3, 0.3])


def test_coco_images_without_annotations_or_size() -> None:
    table = L.read_coco(
        {
            "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
            "annotations": [{"image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]}],
            "categories": [],
        }
    )
    rows = table.to_pylist()
    assert rows[0]["gt_detections"] == [
        {"label": "3", "box": None, "area": None, "iscrowd": False}
    ]
    assert rows[1]["gt_detections"] == [] and rows[1]["gt_labels"] == []


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(PopQLError) as info:
        L.read_labels(tmp_path / "missing.csv")
    assert "F001" in info.value.codes
    with pytest.raises(PopQLError) as info:
        L.read_labels(tmp_path / "labels.xlsx")
    assert "F002" in info.value.codes
    nokey = tmp_path / "nokey.csv"
    nokey.write_text("label,score\ncat,1\n")
    with pytest.raises(PopQLError) as info:
        L.read_labels(nokey)
    assert "F003" in info.value.codes and "sample_id" in str(info.value)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PopQLError) as info:
        L.read_labels(bad)
    assert "F003" in info.value.codes
    scalar = tmp_path / "scalar.json"
    scalar.write_text("42")
    with pytest.raises(PopQLError) as info:
        L.read_labels(scalar)
    assert "F003" in info.value.codes
    badcoco = tmp_path / "coco.json"
    badcoco.write_text(json.dumps({"images": [{"file_name": "a.jpg"}], "annotations": []}))
    with pytest.raises(PopQLError) as info:
        L.read_labels(badcoco)
    assert "F003" in info.value.codes
    with pytest.raises(PopQLError) as info:
        L.read_labels(nokey, key="nope")
    assert "F003" in info.value.codes
