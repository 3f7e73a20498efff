"""popql.engine.ingest: incremental ingest into a versioned dataset.

Models are small counting fakes (the contract's Tagger / Embedder protocols), so these tests
check what ingest runs and when, not what the models say: a real embedder is tried only at
the end when the tiny test CLIP is on disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

np = pytest.importorskip("numpy")
PIL_Image = pytest.importorskip("PIL.Image")

from popql.diagnostics import Diagnostic, PopQLError  # noqa: E402
from popql.engine import images as I  # noqa: E402
from popql.engine.dataset import Dataset  # noqa: E402
from popql.engine.ingest import ERRORS_SCHEMA, enumerate_sources, ingest  # noqa: E402

# ---------------------------------------------------------------------------------------------
# fakes
# ---------------------------------------------------------------------------------------------


class CountingTagger:
    """Mean brightness and the size it was given; counts calls and images."""

    def __init__(self, name: str = "fake_stats", version: str = "1", fail_after: int = -1):
        self.name = name
        self.version = version
        self.columns = {"mean": pa.float32(), "w": pa.int32(), "h": pa.int32()}
        self.batch_size = 8
        self.calls = 0
        self.images = 0
        self.seen: list[str] = []
        self.fail_after = fail_after
        self.threads: set[str] = set()

    def __call__(self, batch: list[Any]) -> list[dict[str, Any]]:
        if 0 <= self.fail_after <= self.images:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.images += len(batch)
        self.seen.extend(x.uri for x in batch)
        self.threads.add(threading.current_thread().name)
        return [
            {"mean": float(np.asarray(x.image).mean()), "w": x.width, "h": x.height}
            for x in batch
        ]


class CountingEmbedder:
    """Deterministic unit vectors from a 4x4 thumbnail of the image."""

    def __init__(self, dim: int = 16, identity: str = "fake-embedder@1"):
        self.key = "fake_embedder"
        self.spec = "fake"
        self.identity = identity
        self.dim = dim
        self.batch_size = 16
        self.calls = 0
        self.images = 0

    def embed_images(self, images: list[Any]) -> Any:
        self.calls += 1
        self.images += len(images)
        rows = []
        for im in images:
            v = np.asarray(im.convert("L").resize((4, 4)), dtype=np.float32).reshape(-1)
            v = np.resize(v, self.dim) + 1.0
            rows.append(v / np.linalg.norm(v))
        return np.stack(rows).astype(np.float32)

    def embed_texts(self, texts: list[str]) -> Any:
        return np.ones((len(texts), self.dim), dtype=np.float32) / np.sqrt(self.dim)


# ---------------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------------


def _photo(seed: int, w: int, h: int) -> Any:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (1, 1, 3)).astype(np.float32)
    noise = rng.normal(0, 40, (h, w, 3))
    yy = np.linspace(0, 1, h)[:, None, None] * rng.integers(0, 120)
    arr = np.clip(base + noise + yy, 0, 255).astype(np.uint8)
    return PIL_Image.fromarray(arr)


def write_generated(folder: Path, count: int, start: int = 0) -> list[Path]:
    out = []
    for i in range(start, start + count):
        sub = folder / ("nested/deeper" if i % 5 == 0 else ("nested" if i % 3 == 0 else ""))
        sub.mkdir(parents=True, exist_ok=True)
        suffix = ".png" if i % 4 == 0 else ".jpg"
        path = sub / f"gen_{i:03d}{suffix}"
        _photo(i, 48 + i % 7 * 8, 40 + i % 5 * 8).save(path)
        out.append(path)
    return out


def real_photos() -> list[Path]:
    """A few real photos shipped by installed packages (none when they are missing)."""
    found: list[Path] = []
    try:
        import skimage

        data = Path(skimage.__file__).parent / "data"
        found += [data / n for n in ("astronaut.png", "coffee.png", "chelsea.png")]
    except ImportError:
        pass
    try:
        import sklearn.datasets

        images = Path(sklearn.datasets.__file__).parent / "images"
        found += [images / "china.jpg", images / "flower.jpg"]
    except ImportError:
        pass
    return [p for p in found if p.is_file()]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    write_generated(folder, 30)
    for p in real_photos():
        shutil.copy(p, folder / f"real_{p.name}")
    (folder / ".hidden.jpg").write_bytes(b"never read")
    (folder / "notes.txt").write_text("not an image suffix: never read")
    return folder


def size_of(path: Path) -> tuple[int, int]:
    with PIL_Image.open(path) as im:
        return im.size


def n_images(folder: Path) -> int:
    return sum(
        1
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.suffix in (".jpg", ".png")
    )


def tables(ds: Path | Dataset) -> dict[str, pa.Table]:
    d = ds if isinstance(ds, Dataset) else Dataset.open(ds)
    snap = d.snapshot()
    return {name: snap.table(name) for name in snap.tables}


def run(ds: Path, sources: Any, tagger: Any = None, embedder: Any = None, **kw: Any):
    return ingest(
        ds,
        sources,
        taggers=[tagger] if tagger is not None else [],
        embedder=embedder,
        progress=False,
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# the life of a dataset
# ---------------------------------------------------------------------------------------------


def test_first_ingest(tmp_path: Path, photos: Path) -> None:
    ds = tmp_path / "ds"
    tagger, emb = CountingTagger(), CountingEmbedder()
    total = n_images(photos)
    s = run(ds, photos, tagger, emb, commit_every=10, batch_size=8)
    assert s.found == total and s.new == total and s.error_count == 0
    assert s.decoded == total and s.tagged == {"fake_stats": total} and s.embedded == total
    assert tagger.images == total and emb.images == total
    assert s.commits >= 3  # every 10 images
    assert s.version == Dataset.open(ds).version() == s.commits
    t = tables(ds)
    samples = t["samples"]
    assert samples.num_rows == total
    assert sorted(samples.column("uri").to_pylist()) == sorted(
        str(p) for p in photos.rglob("*") if p.suffix in (".jpg", ".png") and "hidden" not in p.name
    )
    row = next(r for r in samples.to_pylist() if r["uri"].endswith("gen_001.jpg"))
    data = (photos / "gen_001.jpg").read_bytes()
    assert row["content_hash"] == hashlib.sha256(data).hexdigest()
    assert row["sample_id"] == row["content_hash"][:16]
    assert row["size_bytes"] == len(data) and row["format"] == "JPEG"
    assert (row["width"], row["height"]) == size_of(photos / "gen_001.jpg")
    assert json.loads(row["metadata"])["mode"] == "RGB"
    assert t["tags.fake_stats@1"].num_rows == total
    emb_table = t["embeddings.fake_embedder"]
    assert emb_table.schema.field("embedding").type == pa.list_(pa.float16(), 16)
    assert emb_table.num_rows == total
    snap = Dataset.open(ds).snapshot()
    assert snap.taggers["fake_stats"]["table"] == "tags.fake_stats@1"
    meta = snap.embedders["fake_embedder"]
    assert meta["dim"] == 16 and meta["identity"] == "fake-embedder@1"
    assert meta["index"].startswith("indexes/fake_embedder/")
    for h in samples.column("content_hash").to_pylist():  # one thumbnail per sample
        assert I.thumbnail_path(ds, h).is_file()
    assert Dataset.open(ds).check() == []


def test_real_photos_keep_their_full_size(tmp_path: Path) -> None:
    reals = real_photos()
    if not reals:
        pytest.skip("no packaged photos installed")
    tagger = CountingTagger()
    run(tmp_path / "ds", reals, tagger, max_side=128)
    rows = tables(tmp_path / "ds")["tags.fake_stats@1"].to_pylist()
    sizes = {size_of(p) for p in reals}
    assert {(r["w"], r["h"]) for r in rows} == sizes  # full size given with a reduced image


def test_reingest_unchanged_runs_no_model_and_writes_nothing(tmp_path: Path, photos: Path) -> None:
    ds = tmp_path / "ds"
    run(ds, photos, CountingTagger(), CountingEmbedder())
    version = Dataset.open(ds).version()
    tagger, emb = CountingTagger(), CountingEmbedder()
    s = run(ds, photos, tagger, emb)
    assert (tagger.calls, emb.calls) == (0, 0)
    assert s.new == 0 and s.decoded == 0 and s.skipped_known == s.found == n_images(photos)
    assert s.commits == 0 and Dataset.open(ds).version() == version


def test_grown_folder_processes_only_new_files(tmp_path: Path, photos: Path) -> None:
    ds = tmp_path / "ds"
    run(ds, photos, CountingTagger(), CountingEmbedder())
    added = write_generated(photos, 7, start=100)
    tagger, emb = CountingTagger(), CountingEmbedder()
    s = run(ds, photos, tagger, emb)
    assert s.new == 7 and s.skipped_known == s.found - 7
    assert sorted(tagger.seen) == sorted(str(p) for p in added)
    assert emb.images == 7
    t = tables(ds)
    total = n_images(photos)
    assert t["samples"].num_rows == t["tags.fake_stats@1"].num_rows == total
    assert t["embeddings.fake_embedder"].num_rows == total
    assert Dataset.open(ds).check() == []


def test_changed_file_replaces_old_sample(tmp_path: Path, photos: Path) -> None:
    ds = tmp_path / "ds"
    run(ds, photos, CountingTagger(), CountingEmbedder())
    target = photos / "gen_001.jpg"
    old_id = hashlib.sha256(target.read_bytes()).hexdigest()[:16]
    _photo(999, 64, 64).save(target)
    new_id = hashlib.sha256(target.read_bytes()).hexdigest()[:16]
    tagger, emb = CountingTagger(), CountingEmbedder()
    s = run(ds, photos, tagger, emb)
    assert s.new == 1 and s.replaced == 1 and tagger.seen == [str(target)]
    t = tables(ds)
    for name in ("samples", "tags.fake_stats@1", "embeddings.fake_embedder"):
        ids = t[name].column("sample_id").to_pylist()
        assert new_id in ids and old_id not in ids, name
        assert len(ids) == n_images(photos)
    rows = [r for r in t["samples"].to_pylist() if r["uri"] == str(target)]
    assert [r["sample_id"] for r in rows] == [new_id]
    assert Dataset.open(ds).check() == []


def test_swapped_files_keep_both_samples(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    a, b = write_generated(folder, 2)
    ds = tmp_path / "ds"
    run(ds, folder, CountingTagger())
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    run(ds, folder, CountingTagger())
    rows = {r["uri"]: r["sample_id"] for r in tables(ds)["samples"].to_pylist()}
    assert rows == {
        str(a): hashlib.sha256(db).hexdigest()[:16],
        str(b): hashlib.sha256(da).hexdigest()[:16],
    }
    assert tables(ds)["tags.fake_stats@1"].num_rows == 2
    assert Dataset.open(ds).check() == []


def test_duplicate_content_is_one_sample(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (first,) = write_generated(folder, 1)
    shutil.copy(first, folder / "copy_of_first.jpg" if first.suffix == ".jpg" else folder / "c.png")
    tagger = CountingTagger()
    s = run(tmp_path / "ds", folder, tagger)
    assert s.found == 2 and s.new == 1 and s.duplicates == 1 and tagger.images == 1


def test_new_tagger_version_processes_only_what_it_has_not_seen(
    tmp_path: Path, photos: Path
) -> None:
    ds = tmp_path / "ds"
    emb = CountingEmbedder()
    run(ds, photos, CountingTagger(), emb)
    v2, emb2 = CountingTagger(version="2"), CountingEmbedder()
    s = run(ds, photos, v2, emb2)
    total = n_images(photos)
    assert v2.images == total and emb2.images == 0 and s.new == 0  # nothing else re-runs
    assert s.tagged == {"fake_stats": total}
    t = tables(ds)
    assert t["tags.fake_stats@1"].num_rows == t["tags.fake_stats@2"].num_rows == total
    assert Dataset.open(ds).snapshot().taggers["fake_stats"]["version"] == "2"
    # a grown folder: v2 and the embedder see only the new file, v1 is not asked for
    (new,) = write_generated(photos, 1, start=200)
    v2b, emb3 = CountingTagger(version="2"), CountingEmbedder()
    run(ds, photos, v2b, emb3)
    assert v2b.seen == [str(new)] and emb3.images == 1
    # a second tagger added later runs on every sample, decoding only for it
    other = CountingTagger(name="other")
    s = run(ds, photos, other)
    assert other.images == total + 1 and s.new == 0


def test_new_embedder_identity_recomputes(tmp_path: Path, photos: Path) -> None:
    ds = tmp_path / "ds"
    run(ds, photos, embedder=CountingEmbedder())
    emb = CountingEmbedder(identity="fake-embedder@2")
    s = run(ds, photos, embedder=emb)
    total = n_images(photos)
    assert emb.images == total and s.embedded == total
    assert tables(ds)["embeddings.fake_embedder"].num_rows == total
    assert Dataset.open(ds).snapshot().embedders["fake_embedder"]["identity"] == "fake-embedder@2"
    assert Dataset.open(ds).check() == []


def test_vector_index_is_updated_incrementally(tmp_path: Path, photos: Path) -> None:
    usearch = pytest.importorskip("usearch.index")
    ds = tmp_path / "ds"
    run(ds, photos, embedder=CountingEmbedder(), commit_every=12)
    snap = Dataset.open(ds).snapshot()
    first = snap.embedders["fake_embedder"]["index"]
    write_generated(photos, 3, start=300)
    run(ds, photos, embedder=CountingEmbedder())
    snap = Dataset.open(ds).snapshot()
    second = snap.embedders["fake_embedder"]["index"]
    assert second != first and (ds / first).is_file()  # a new file; the old one stays
    index = usearch.Index.restore(str(ds / second))
    table = snap.table("embeddings.fake_embedder")
    assert len(index) == table.num_rows == n_images(photos)
    assert index.ndim == 16
    keys = table.column("sample_key").to_pylist()
    ids = table.column("sample_id").to_pylist()
    assert keys == [I.sample_key_of(s) for s in ids]
    vec = np.asarray(table.column("embedding")[5].as_py(), dtype=np.float32)
    hits = index.search(vec, 1)
    assert int(hits.keys[0]) == keys[5]


def test_bad_files_are_recorded_and_the_run_continues(tmp_path: Path, photos: Path) -> None:
    good = n_images(photos)
    jpeg = (photos / "gen_001.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (photos / "zero.png").write_bytes(b"")
    (photos / "text.jpg").write_text("I am a text file")
    (photos / "dir.jpg").mkdir()  # a directory named like an image: walked, holds nothing
    (photos / "broken_link.jpg").symlink_to(photos / "does_not_exist.jpg")
    bomb = io.BytesIO()
    header = PIL_Image.new("L", (1, 1))
    header.save(bomb, "PNG")
    (photos / "bomb.png").write_bytes(_bomb_png())
    ds = tmp_path / "ds"
    tagger = CountingTagger()
    s = run(ds, photos, tagger, CountingEmbedder())
    assert s.errors == {
        "truncated": 1,
        "zero_bytes": 1,
        "not_image": 1,
        "unreadable": 1,
        "decompression_bomb": 1,
    }
    assert s.new == good and tagger.images == good and s.found == good + 5
    errors = tables(ds)["ingest_errors"]
    assert errors.schema == ERRORS_SCHEMA
    by_uri = {Path(r["uri"]).name: r for r in errors.to_pylist()}
    assert by_uri["truncated.jpg"]["reason"] == "truncated"
    assert by_uri["broken_link.jpg"]["reason"] == "unreadable"
    assert by_uri["broken_link.jpg"]["content_hash"] is None
    assert by_uri["zero.png"]["content_hash"] == hashlib.sha256(b"").hexdigest()
    assert all(r["error"] and r["at"] is not None for r in errors.to_pylist())
    # unchanged bad files are not decoded again and nothing new is written
    version = Dataset.open(ds).version()
    s2 = run(ds, photos, CountingTagger(), CountingEmbedder())
    assert s2.known_errors == 5 and s2.errors == {} and s2.commits == 0
    assert Dataset.open(ds).version() == version
    # a fixed file leaves ingest_errors; a file that breaks differently is updated
    _photo(4, 30, 30).save(photos / "truncated.jpg")
    _photo(5, 30, 30).save(photos / "text.jpg")
    (photos / "zero.png").write_text("now text")
    s3 = run(ds, photos, CountingTagger())
    assert s3.new == 2 and s3.errors == {"not_image": 1}
    reasons = {Path(r["uri"]).name: r["reason"] for r in tables(ds)["ingest_errors"].to_pylist()}
    assert reasons == {
        "zero.png": "not_image",
        "broken_link.jpg": "unreadable",
        "bomb.png": "decompression_bomb",
    }


def _bomb_png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_crash_keeps_committed_chunks_and_rerun_finishes(tmp_path: Path, photos: Path) -> None:
    ds = tmp_path / "ds"
    total = n_images(photos)
    crashing = CountingTagger(fail_after=16)
    with pytest.raises(PopQLError) as info:
        run(ds, photos, crashing, commit_every=8, batch_size=8)
    assert "E003" in info.value.codes and "fake_stats" in str(info.value)
    committed = tables(ds)["samples"].num_rows
    assert committed == 16  # two chunks of 8; the failing batch is lost
    tagger = CountingTagger()
    s = run(ds, photos, tagger)
    assert s.new == total - committed and tagger.images == total - committed
    t = tables(ds)
    assert t["samples"].num_rows == t["tags.fake_stats@1"].num_rows == total
    assert Dataset.open(ds).check() == []


def test_sources_glob_list_url_and_dataset_inside(tmp_path: Path, photos: Path) -> None:
    ds = photos / "dataset"  # inside the folder: its thumbnails must not be ingested
    total = n_images(photos)
    run(ds, photos, CountingTagger())
    s = run(ds, photos, CountingTagger())
    assert s.found == total and s.new == 0
    refs, roots = enumerate_sources(str(photos / "nested" / "**" / "*.png"))
    assert refs and all(r.uri.endswith(".png") and "/nested/" in r.uri for r in refs)
    assert roots == [str(photos / "nested")]
    listed = [photos / "gen_001.jpg", str(photos / "gen_002.jpg"), "file://" + str(photos)]
    refs, _ = enumerate_sources(listed, exclude=[ds])
    assert len(refs) == total  # listed files are in the folder too: each once
    notes = photos / "notes.txt"
    refs, _ = enumerate_sources([notes])
    assert [r.uri for r in refs] == [str(notes)]  # a file named explicitly is always taken
    with pytest.raises(PopQLError) as info:
        enumerate_sources(tmp_path / "missing")
    assert "F001" in info.value.codes
    with pytest.raises(PopQLError):
        enumerate_sources(str(tmp_path / "*.nothing"))


def test_fsspec_url_source(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for i in range(3):
        buf = io.BytesIO()
        _photo(i, 20, 20).save(buf, "PNG")
        fs.pipe(f"/popql-ingest-test/set/{i}.png", buf.getvalue())
    fs.pipe("/popql-ingest-test/set/readme.md", b"no")
    try:
        s = run(tmp_path / "ds", "memory://popql-ingest-test/set", CountingTagger())
        assert s.found == 3 and s.new == 3
        uris = tables(tmp_path / "ds")["samples"].column("uri").to_pylist()
        assert sorted(uris) == [f"memory:///popql-ingest-test/set/{i}.png" for i in range(3)]
    finally:
        fs.rm("/popql-ingest-test", recursive=True)


def test_s3_with_custom_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against an in-process S3 server (moto); skipped where moto is not installed."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        port = server._server.server_address[1]
        endpoint = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="photos")
        for i in range(3):
            buf = io.BytesIO()
            _photo(i, 24, 24).save(buf, "JPEG")
            client.put_object(Bucket="photos", Key=f"2024/img_{i}.jpg", Body=buf.getvalue())
        client.put_object(Bucket="photos", Key="2024/bad.jpg", Body=b"nope")
        s = ingest(
            tmp_path / "ds",
            "s3://photos/2024/",
            taggers=[CountingTagger()],
            embedder=None,
            storage_options={"endpoint_url": endpoint},
        )
        assert s.new == 3 and s.errors == {"not_image": 1}
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the environment works too
        s = ingest(tmp_path / "ds", "s3://photos/2024/img_", taggers=[], embedder=None)
        assert s.found == 3 and s.skipped_known == 3
    finally:
        server.stop()


def test_labels_csv_and_coco(tmp_path: Path, photos: Path) -> None:
    ds = tmp_path / "ds"
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "path,label,split\ngen_001.jpg,cat,train\nnested/gen_003.jpg,dog,val\nnope.jpg,x,y\n"
    )
    s = run(ds, photos, CountingTagger(), labels=csv)
    assert s.labels_matched == 2 and s.labels_unmatched == 1
    assert any("nope.jpg" in n for n in s.notes)
    t = tables(ds)
    labels = {Path(r["uri"]).name: r for r in t["labels"].to_pylist()}
    assert labels["gen_001.jpg"]["split"] == "train"
    by_name = {Path(r["uri"]).name: r["label"] for r in t["samples"].to_pylist()}
    assert by_name["gen_001.jpg"] == "cat" and by_name["gen_003.jpg"] == "dog"
    assert by_name["gen_002.jpg"] is None
    coco = tmp_path / "instances.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 7, "file_name": "gen_002.jpg", "width": 100, "height": 50}],
                "annotations": [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 50, 25]}],
                "categories": [{"id": 1, "name": "person"}],
            }
        )
    )
    tagger = CountingTagger()
    s = run(ds, photos, tagger, labels=coco)
    assert tagger.images == 0 and s.labels_matched == 1
    rows = tables(ds)["labels"].to_pylist()
    assert len(rows) == 3  # CSV rows kept, COCO row added (columns merged)
    coco_row = next(r for r in rows if r["gt_labels"])
    assert coco_row["gt_labels"] == ["person"]
    assert coco_row["gt_detections"][0]["box"] == pytest.approx([0, 0, 0.5, 0.5])
    assert Dataset.open(ds).check() == []


def test_bad_labels_file_fails_before_any_work(tmp_path: Path, photos: Path) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_text("nothing,useful\n1,2\n")
    tagger = CountingTagger()
    with pytest.raises(PopQLError) as info:
        run(tmp_path / "ds", photos, tagger, labels=bad)
    assert "F003" in info.value.codes and tagger.calls == 0
    assert not (tmp_path / "ds").exists()


# ---------------------------------------------------------------------------------------------
# models that cannot load
# ---------------------------------------------------------------------------------------------


def test_default_embedder_unavailable_says_so_and_goes_on(
    tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from popql.engine import embedders

    def offline(spec: str, **_: Any) -> Any:
        raise PopQLError(
            Diagnostic(
                "M001",
                f"CLIP weights unavailable: {spec!r}: no network; text search is off",
            )
        )

    monkeypatch.setattr(embedders, "load_embedder", offline)
    err = io.StringIO()
    tagger = CountingTagger()
    s = ingest(tmp_path / "ds", photos, taggers=[tagger], embedder="default", stream=err)
    lines = [line for line in err.getvalue().splitlines() if line]
    assert len(lines) == 1 and "CLIP weights unavailable" in lines[0]
    assert "text search is off" in lines[0] and "tags only" in lines[0]
    assert s.embedder is None and s.new == n_images(photos) and tagger.images == s.new
    assert s.notes == [lines[0].removeprefix("popql ingest: ")]
    # an embedder named explicitly must load
    with pytest.raises(PopQLError) as info:
        ingest(tmp_path / "ds", photos, taggers=[], embedder="ViT-B-32", stream=err)
    assert "M001" in info.value.codes


# ---------------------------------------------------------------------------------------------
# progress, decoding threads, summary
# ---------------------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_only(tmp_path: Path, photos: Path) -> None:
    tty = _Tty()
    ingest(tmp_path / "a", photos, taggers=[CountingTagger()], embedder=None, stream=tty)
    text = tty.getvalue()
    assert "\r" in text and "img/s" in text and "ETA" in text and f"/{n_images(photos)}" in text
    quiet = io.StringIO()
    ingest(tmp_path / "b", photos, taggers=[CountingTagger()], embedder=None, stream=quiet)
    assert quiet.getvalue() == ""
    forced_off = _Tty()
    ingest(
        tmp_path / "c", photos, taggers=[], embedder=None, stream=forced_off, progress=False
    )
    assert forced_off.getvalue() == ""


def test_decoding_runs_in_worker_threads(tmp_path: Path, photos: Path, monkeypatch) -> None:
    from popql.engine import ingest as ingest_module

    threads: set[str] = set()
    real = ingest_module.decode_image

    def spy(*args: Any, **kw: Any) -> Any:
        threads.add(threading.current_thread().name)
        return real(*args, **kw)

    monkeypatch.setattr(ingest_module, "decode_image", spy)
    tagger = CountingTagger()
    run(tmp_path / "ds", photos, tagger, workers=2)
    assert threads and all(t.startswith("popql-ingest") for t in threads)
    assert tagger.threads == {threading.current_thread().name}  # models on the caller's thread


def test_summary_json(tmp_path: Path, photos: Path) -> None:
    (photos / "bad.jpg").write_text("x")
    s = run(tmp_path / "ds", photos, CountingTagger(), CountingEmbedder())
    d = json.loads(s.to_json())
    for key in (
        "found",
        "new",
        "skipped_known",
        "errors",
        "tagged",
        "embedded",
        "seconds",
        "images_per_s",
        "version",
        "notes",
    ):
        assert key in d
    assert d["found"] == d["new"] + d["skipped_known"] + d["error_count"] + d["known_errors"]
    assert d["errors"] == {"not_image": 1} and d["images_per_s"] > 0
    assert "new" in s.text() and "images/s" in s.text()


def test_session_ingest(tmp_path: Path, photos: Path) -> None:
    import popql

    session = popql.connect(tmp_path / "ds")
    s = session.ingest(photos, taggers=[CountingTagger()], embedder=None, progress=False)
    assert s.new == n_images(photos)
    count = session.sql("SELECT count(*) AS n FROM samples").to_pylist()[0]["n"]
    assert count == s.new
    with pytest.raises(PopQLError) as info:
        popql.connect().ingest(photos)
    assert "F001" in info.value.codes


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def registered_tagger():
    from popql.engine import taggers

    t = CountingTagger(name="cli_fake")
    taggers.register_tagger(t, replace=True)
    yield t
    taggers.unregister_tagger("cli_fake")


def test_cli_ingest_json(tmp_path: Path, photos: Path, registered_tagger, capsys) -> None:
    from popql.repl.cli import main

    ds = tmp_path / "ds"
    args = ["ingest", str(photos), "--dataset", str(ds), "--tagger", "cli_fake"]
    code = main([*args, "--embedder", "none", "--json", "--commit-every", "5"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    summary = json.loads(out)
    assert summary["new"] == n_images(photos) and summary["tagged"] == {"cli_fake": summary["new"]}
    assert summary["commits"] >= n_images(photos) // 5
    assert summary["errors"] == {} and summary["embedder"] is None
    code = main([*args, "--embedder", "none"])
    out, err = capsys.readouterr()
    assert code == 0 and "already known" in out and registered_tagger.images == summary["new"]


def test_cli_ingest_errors(tmp_path: Path, photos: Path, capsys) -> None:
    from popql.repl.cli import main

    ds = str(tmp_path / "ds")
    assert main(["ingest", str(photos)]) == 2  # --dataset is required
    capsys.readouterr()
    assert main(["ingest", str(tmp_path / "nope"), "--dataset", ds, "--embedder", "none"]) == 1
    assert "F001" in capsys.readouterr().err
    code = main(["ingest", str(photos), "--dataset", ds, "--tagger", "nosuch", "--json"])
    _, err = capsys.readouterr()
    assert code == 1 and json.loads(err)[0]["code"] == "N008"
    assert main(["ingest", str(photos), "--dataset", ds, "--commit-every", "0"]) == 2
    assert not Path(ds).exists()


# ---------------------------------------------------------------------------------------------
# with the real test CLIP, when it is on disk
# ---------------------------------------------------------------------------------------------


def test_with_the_tiny_test_clip(tmp_path: Path, photos: Path) -> None:
    from popql.engine import embedders

    if not embedders.FMNIST_CLIP_DIR.joinpath("open_clip_config.json").is_file():
        pytest.skip("models/fmnist-clip is not trained yet")
    pytest.importorskip("open_clip")
    emb = embedders.load_embedder(embedders.TEST_EMBEDDER)
    s = run(tmp_path / "ds", photos, embedder=emb)
    assert s.embedded == n_images(photos)
    table = tables(tmp_path / "ds")[f"embeddings.{emb.key}"]
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-2)
    assert os.path.isfile(
        tmp_path / "ds" / Dataset.open(tmp_path / "ds").snapshot().embedders[emb.key]["index"]
    )
