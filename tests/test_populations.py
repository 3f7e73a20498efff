"""Populations, frozen memberships, hold-outs, splits and leakage, end to end on real images.

The images are Fashion-MNIST's (``apt-get install dataset-fashion-mnist``; the tests that need
them skip otherwise), ingested with the ``image_stats`` tagger; leakage and the end-to-end
identity check also embed them with the committed test CLIP (``models/fmnist-clip``).
"""

from __future__ import annotations

import csv
import gzip
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import popql
from popql.diagnostics import PopQLError
from popql.engine import connect
from popql.engine.dataset import Dataset
from popql.engine.ingest import ingest
from popql.engine.populations import (
    POPULATIONS_TABLE,
    SPLITS_TABLE,
    PopulationDef,
    holdout_draw,
    query_embedders,
    query_hash,
    store_of,
)
from popql.syntax import parse

FMNIST = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    _, _, ndim = struct.unpack(">HBB", data[:4])
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def fmnist() -> tuple[np.ndarray, np.ndarray]:
    images = FMNIST / "t10k-images-idx3-ubyte.gz"
    labels = FMNIST / "t10k-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file():
        pytest.skip("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist")
    if "test" not in _CACHE:
        _CACHE["test"] = (_read_idx(images), _read_idx(labels))
    return _CACHE["test"]


def write_images(folder: Path, start: int, count: int, *, labels_csv: bool = True) -> list[Path]:
    """Fashion-MNIST test images ``start .. start+count`` as PNG files (and labels.csv)."""
    from PIL import Image

    x, y = fmnist()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + count):
        path = folder / f"fmnist_{i:05d}.png"
        Image.fromarray(x[i]).save(path)
        out.append(path)
    if labels_csv:
        with open(folder / "labels.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file_name", "label"])
            for i in range(start, start + count):
                w.writerow([f"fmnist_{i:05d}.png", CLASSES[int(y[i])]])
    return out


def ingest_images(ds: Path, folder: Path, **kw: Any) -> None:
    labels = folder / "labels.csv"
    ingest(
        ds,
        [str(p) for p in sorted(folder.glob("*.png"))],
        taggers=["image_stats"],
        embedder=kw.pop("embedder", None),
        labels=labels if labels.is_file() else None,
        progress=False,
        **kw,
    )


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 Fashion-MNIST images with image_stats tags and class labels."""
    root = tmp_path_factory.mktemp("pops")
    write_images(root / "img", 0, 60)
    ingest_images(root / "ds", root / "img")
    return root / "ds"


@pytest.fixture
def ds(small_ds: Path, tmp_path: Path) -> Path:
    """A private copy of the small dataset (tests change it)."""
    import shutil

    target = tmp_path / "ds"
    shutil.copytree(small_ds, target)
    return target


def tags(session: popql.engine.Session) -> pa.Table:
    return session.sql("SELECT sample_id, brightness, label FROM samples").to_arrow()


def ids_where(table: pa.Table, mask: Any) -> set[str]:
    return set(table.filter(mask).column("sample_id").to_pylist())


# ---------------------------------------------------------------------------------------------
# populations by tags, by name, set operations, persistence
# ---------------------------------------------------------------------------------------------


def test_populations_by_tags_match_an_independent_filter(ds: Path) -> None:
    s = connect(ds)
    t = tags(s)
    median = float(np.median(t.column("brightness").to_numpy()))
    s.sql(
        f"CREATE POPULATION dark DESCRIPTION 'below the median brightness' AS "
        f"SELECT * FROM samples WHERE brightness < {median}"
    )
    s.sql("CREATE POPULATION shoes AS SELECT * FROM samples WHERE label IN ('sneaker', 'sandal')")
    dark = ids_where(t, pc.less(t.column("brightness"), median))
    shoes = ids_where(t, pc.is_in(t.column("label"), pa.array(["sneaker", "sandal"])))
    assert 0 < len(dark) < t.num_rows and shoes

    def q(sql: str) -> set[str]:
        return {r["sample_id"] for r in s.sql(sql).to_pylist()}

    assert q("SELECT sample_id FROM dark") == dark
    assert q("SELECT sample_id FROM shoes") == shoes
    assert q("SELECT sample_id FROM dark UNION SELECT sample_id FROM shoes") == dark | shoes
    assert q("SELECT sample_id FROM dark INTERSECT SELECT sample_id FROM shoes") == dark & shoes
    assert q("SELECT sample_id FROM dark EXCEPT SELECT sample_id FROM shoes") == dark - shoes
    # a population of populations, joins and aliases
    s.sql(
        "CREATE POPULATION dark_shoes AS "
        "SELECT d.* FROM dark AS d JOIN shoes ON d.sample_id = shoes.sample_id"
    )
    assert q("SELECT sample_id FROM dark_shoes") == dark & shoes
    assert s.population_names() == ["dark", "dark_shoes", "shoes"]
    # persisted in the dataset: a new session sees them
    s2 = connect(ds)
    assert s2.population_names() == ["dark", "dark_shoes", "shoes"]
    shown = {r["name"]: r for r in s2.sql("SHOW POPULATIONS").to_pylist()}
    assert shown["dark"]["description"] == "below the median brightness"
    assert shown["shoes"]["query"] == ("SELECT * FROM samples WHERE label IN ('sneaker', 'sandal')")
    assert shown["shoes"]["query_hash"] == query_hash(shown["shoes"]["query"])
    assert q("SELECT sample_id FROM shoes") == shoes
    # membership follows the data: the query re-runs at each use
    assert s2.sql("SELECT count(*) AS n FROM dark").to_pylist() == [{"n": len(dark)}]


def test_create_errors_and_drop(ds: Path) -> None:
    s = connect(ds)
    s.sql("CREATE POPULATION dark AS SELECT * FROM samples WHERE brightness < 0.2")
    with pytest.raises(PopQLError) as info:
        s.sql("CREATE POPULATION dark AS SELECT * FROM samples")
    assert info.value.code == "N006" and "already exists" in str(info.value)
    s.sql("CREATE POPULATION IF NOT EXISTS dark AS SELECT * FROM samples")
    assert "0.2" in s.sql("SHOW POPULATIONS").to_pylist()[0]["query"]
    s.sql("CREATE OR REPLACE POPULATION dark AS SELECT * FROM samples WHERE brightness < 0.3")
    assert "0.3" in s.sql("SHOW POPULATIONS").to_pylist()[0]["query"]
    # errors in the query point into the statement being written
    with pytest.raises(PopQLError) as info:
        s.execute("CREATE POPULATION x AS\n  SELECT * FROM samples WHERE brightnes < 1", file="q")
    assert info.value.code == "N002" and "q:2:" in str(info.value)
    assert "did you mean 'brightness'" in str(info.value)
    with pytest.raises(PopQLError) as info:
        s.sql("CREATE POPULATION samples AS SELECT 1")
    assert info.value.code == "N006"
    with pytest.raises(PopQLError) as info:
        s.sql("CREATE POPULATION loop AS SELECT * FROM loop")
    assert info.value.code == "N006"
    s.sql("CREATE POPULATION darker AS SELECT * FROM dark WHERE brightness < 0.1")
    with pytest.raises(PopQLError) as info:
        s.sql("DROP POPULATION dark")
    assert "used by population(s) darker" in str(info.value)
    s.sql("DROP POPULATION darker")
    s.sql("DROP POPULATION dark")
    s.sql("DROP POPULATION IF EXISTS dark")
    with pytest.raises(PopQLError) as info:
        s.sql("DROP POPULATION dark")
    assert info.value.code == "N004"
    assert s.population_names() == [] and connect(ds).population_names() == []
    # DROP TABLE still is DataFusion's
    s.sql("CREATE TABLE t AS SELECT 1 AS x")
    s.sql("DROP TABLE t")


def test_column_checks_see_a_population(ds: Path) -> None:
    s = connect(ds)
    s.sql("CREATE POPULATION dark AS SELECT sample_id, brightness FROM samples")
    with pytest.raises(PopQLError) as info:
        s.execute("SELECT brightnes FROM dark", file="q.popql")
    assert info.value.code == "N002" and "did you mean 'brightness'" in str(info.value)
    s.check("SELECT brightness FROM dark WHERE brightness > 0.1")
    with pytest.raises(PopQLError) as info:
        s.check("SELECT label FROM dark")
    assert info.value.code == "N002"
    # checking a script that defines a population first (popql check): nothing is written
    s.check("CREATE POPULATION bright AS SELECT * FROM samples WHERE brightness > 0.5;\n"
            "SELECT uri FROM bright;")  # fmt: skip
    assert s.population_names() == ["dark"]
    # a CTE of the same name hides the population
    rows = s.sql("WITH dark AS (SELECT 1 AS one) SELECT * FROM dark").to_pylist()
    assert rows == [{"one": 1}]


def test_error_inside_a_population_names_it(tmp_path: Path) -> None:
    s = connect()
    s.register("t", pa.table({"sample_id": ["a"], "x": [1]}))
    s.sql("CREATE POPULATION p AS SELECT sample_id, x FROM t WHERE x > 0")
    s.register("t", pa.table({"sample_id": ["a"], "y": [1]}))  # the table changed under it
    with pytest.raises(PopQLError) as info:
        s.execute("SELECT *\nFROM p", file="q.popql")
    text = str(info.value)
    assert "in population 'p'" in text and "q.popql:2:6" in text
    assert "population 'p' is: SELECT sample_id, x FROM t WHERE x > 0" in text


def test_concurrent_writers_keep_each_others_populations(ds: Path) -> None:
    a, b = connect(ds), connect(ds)
    a.sql("CREATE POPULATION pa AS SELECT * FROM samples WHERE brightness < 0.2")
    b.sql("CREATE POPULATION pb AS SELECT * FROM samples WHERE brightness > 0.4")  # b was stale
    errors: list[BaseException] = []

    def create(i: int) -> None:
        try:
            connect(ds).sql(f"CREATE POPULATION t{i} AS SELECT * FROM samples LIMIT {i + 1}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert connect(ds).population_names() == ["pa", "pb", "t0", "t1", "t2", "t3"]
    assert Dataset.open(ds).check() == []


def test_popql_run_suite_file(ds: Path, tmp_path: Path) -> None:
    suite = tmp_path / "suite.popql"
    suite.write_text(
        "-- critical populations, checked into the repo\n"
        "CREATE OR REPLACE POPULATION dark DESCRIPTION 'dark garments' AS\n"
        "  SELECT * FROM samples WHERE brightness < 0.2;\n"
        "CREATE OR REPLACE POPULATION bags AS SELECT * FROM samples WHERE label = 'bag';\n"
        "SELECT count(*) AS n FROM dark;\n"
        "HOLD OUT 10 PERCENT OF dark SALT 'suite';\n"
        "SHOW SPLITS OF dark;\n"
        "SHOW POPULATIONS;\n",
        encoding="utf-8",
    )
    popql_bin = Path(sys.executable).parent / "popql"
    cmd = [str(popql_bin), "run", str(suite), "--dataset", str(ds), "--format", "csv"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    n = connect(ds).sql("SELECT count(*) AS n FROM samples WHERE brightness < 0.2").to_pylist()
    assert f"n\n{n[0]['n']}\n" in out.stdout
    assert "dark garments" in out.stdout and "bags" in out.stdout
    # the suite runs again (OR REPLACE), and the populations persisted
    again = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert connect(ds).population_names() == ["bags", "dark"]
    check = subprocess.run(
        [str(popql_bin), "check", str(suite), "--dataset", str(ds)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


# ---------------------------------------------------------------------------------------------
# FREEZE and DIFF
# ---------------------------------------------------------------------------------------------


def test_freeze_and_diff_after_new_data_and_a_changed_query(ds: Path, tmp_path: Path) -> None:
    s = connect(ds)
    s.sql("CREATE POPULATION shoes AS SELECT * FROM samples WHERE label IN ('sneaker', 'sandal')")
    frozen = s.sql("FREEZE POPULATION shoes AS 'v1'").to_pylist()[0]
    before = {r["sample_id"] for r in s.sql("SELECT sample_id FROM shoes").to_pylist()}
    assert frozen["members"] == len(before) and frozen["tag"] == "v1"
    assert s.sql("DIFF POPULATION shoes FROM 'v1'").to_arrow().num_rows == 0
    with pytest.raises(PopQLError) as info:
        s.sql("FREEZE POPULATION shoes AS 'v1'")
    assert info.value.code == "N006"
    with pytest.raises(PopQLError) as info:
        s.sql("DIFF POPULATION shoes FROM 'v2'")
    assert info.value.code == "N004"

    # new data arrives
    write_images(tmp_path / "more", 60, 60)
    ingest_images(ds, tmp_path / "more")
    s = connect(ds)
    now = {r["sample_id"] for r in s.sql("SELECT sample_id FROM shoes").to_pylist()}
    assert now > before
    diff = s.sql("DIFF POPULATION shoes FROM 'v1'").to_pylist()
    assert {r["sample_id"] for r in diff} == now - before
    assert {(r["change"], r["reason"]) for r in diff} == {("added", "new data")}
    assert all(r["uri"].endswith(".png") for r in diff)
    s.sql("FREEZE POPULATION shoes")  # tag v2
    assert s.sql("DIFF POPULATION shoes").to_arrow().num_rows == 0  # the latest freeze

    # the query changes: sneakers only
    s.sql("CREATE OR REPLACE POPULATION shoes AS SELECT * FROM samples WHERE label = 'sneaker'")
    sneakers = {r["sample_id"] for r in s.sql("SELECT sample_id FROM shoes").to_pylist()}
    diff = s.sql("DIFF POPULATION shoes FROM 'v2'").to_pylist()
    assert {r["sample_id"] for r in diff} == now - sneakers
    assert {(r["change"], r["reason"]) for r in diff} == {("removed", "changed query")}
    # against v1: sandals removed by the query, new sneakers added by new data
    diff = s.sql("DIFF POPULATION shoes FROM 'v1'").to_pylist()
    reasons = {r["sample_id"]: (r["change"], r["reason"]) for r in diff}
    for sid in sneakers - before:
        assert reasons[sid] == ("added", "new data")
    for sid in before - sneakers:
        assert reasons[sid] == ("removed", "changed query")
    shown = s.sql("SHOW POPULATIONS").to_pylist()[0]
    assert shown["frozen_tags"] == ["v1", "v2"]


# ---------------------------------------------------------------------------------------------
# hold-outs and splits
# ---------------------------------------------------------------------------------------------


def test_holdout_is_stable_when_the_data_grows_tenfold(tmp_path: Path) -> None:
    """Hold out 20 % of a population of 40 real images, ingest 400 more (10x), and check
    that no earlier assignment changed, that the new members were assigned, and that every
    assignment is the documented hash rule."""
    write_images(tmp_path / "a", 0, 40, labels_csv=False)
    ds = tmp_path / "ds"
    ingest_images(ds, tmp_path / "a")
    s = connect(ds)
    s.sql("CREATE POPULATION everything AS SELECT * FROM samples WHERE brightness >= 0")
    summary = s.sql("HOLD OUT 20 PERCENT OF everything SALT 'seed-1'").to_pylist()[0]
    assert summary["members"] == 40 and summary["test"] + summary["train"] == 40
    first = dict(
        (r["sample_id"], r["split"])
        for r in s.sql("SELECT sample_id, split FROM samples").to_pylist()
    )
    assert set(first.values()) <= {"train", "test"}
    assert summary["test"] == sum(1 for v in first.values() if v == "test")

    write_images(tmp_path / "b", 40, 400, labels_csv=False)
    ingest_images(ds, tmp_path / "b")  # ingest re-applies the hold-out to the new members
    s = connect(ds)
    after = dict(
        (r["sample_id"], r["split"])
        for r in s.sql("SELECT sample_id, split FROM samples").to_pylist()
    )
    assert len(after) == 440
    assert {sid: after[sid] for sid in first} == first  # no earlier assignment changed
    assigned = connect(ds).snapshot.table(SPLITS_TABLE)  # type: ignore[union-attr]
    assert assigned.num_rows == 440  # the new members were assigned too
    for sid, split in after.items():
        assert split == ("test" if holdout_draw("seed-1", sid) < 0.2 else "train")
    share = sum(1 for v in after.values() if v == "test") / len(after)
    assert 0.15 < share < 0.25  # binomial(440, 0.2): 4.3 sigma either side
    # repeating the statement is idempotent; changing it is refused
    again = s.sql("HOLD OUT 20 PERCENT OF everything SALT 'seed-1'").to_pylist()[0]
    assert again["assigned_now"] == 0
    with pytest.raises(PopQLError) as info:
        s.sql("HOLD OUT 30 PERCENT OF everything SALT 'seed-1'")
    assert info.value.code == "T005"


def test_a_sample_in_two_populations_is_assigned_once(ds: Path) -> None:
    s = connect(ds)
    s.sql("CREATE POPULATION dark AS SELECT * FROM samples WHERE brightness < 0.3")
    s.sql("CREATE POPULATION shoes AS SELECT * FROM samples WHERE label IN ('sneaker', 'sandal')")
    s.sql("HOLD OUT 50 PERCENT OF dark SALT 'a'")
    s.sql("HOLD OUT 50 PERCENT OF shoes SALT 'b'")
    assigned = connect(ds).snapshot.table(SPLITS_TABLE).to_pylist()  # type: ignore[union-attr]
    ids = [r["sample_id"] for r in assigned]
    assert len(ids) == len(set(ids))
    dark = {r["sample_id"] for r in s.sql("SELECT sample_id FROM dark").to_pylist()}
    for r in assigned:
        # a dark shoe was assigned by the first hold-out (dark, salt 'a')
        expected_by = "dark" if r["sample_id"] in dark else "shoes"
        assert r["population"] == expected_by
        salt = "a" if expected_by == "dark" else "b"
        assert r["split"] == ("test" if holdout_draw(salt, r["sample_id"]) < 0.5 else "train")
    shown = {r["name"]: r["hold_out_percent"] for r in s.sql("SHOW POPULATIONS").to_pylist()}
    assert shown == {"dark": 50.0, "shoes": 50.0}


def test_split_breakdown_matches_an_independent_count(ds: Path) -> None:
    s = connect(ds)
    s.sql("CREATE POPULATION dark AS SELECT * FROM samples WHERE brightness < 0.3")
    s.sql("CREATE POPULATION tops AS SELECT sample_id FROM samples WHERE label IN "
          "('t-shirt', 'shirt', 'pullover', 'coat')")  # fmt: skip
    s.sql("HOLD OUT 30 PERCENT OF dark SALT 'x'")
    rows = s.sql("SHOW SPLITS").to_pylist()
    # independently: splits from the stored assignments and the hash, populations by filter
    t = tags(s)
    dark = ids_where(t, pc.less(t.column("brightness"), 0.3))
    tops = ids_where(
        t, pc.is_in(t.column("label"), pa.array(["t-shirt", "shirt", "pullover", "coat"]))
    )
    split = {
        sid: ("test" if sid in dark and holdout_draw("x", sid) < 0.3 else "train")
        for sid in t.column("sample_id").to_pylist()
    }
    totals = {v: sum(1 for x in split.values() if x == v) for v in ("train", "test")}
    expected = []
    for v in ("train", "test"):
        expected.append(("*", v, totals[v], totals[v] / len(split), 1.0))
    for name, members in (("dark", dark), ("tops", tops)):
        for v in ("train", "test"):
            n = sum(1 for sid in members if split[sid] == v)
            expected.append((name, v, n, n / len(members), n / totals[v]))
    got = [
        (r["population"], r["split"], r["samples"], r["share_of_population"], r["share_of_split"])
        for r in rows
    ]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g[2] == e[2] and g[3:] == pytest.approx(e[3:]), (g, e)
    only = s.sql("SHOW SPLITS OF tops").to_pylist()
    assert {r["population"] for r in only} == {"*", "tops"}
    # the split column is queryable like any other
    n_test = s.sql("SELECT count(*) AS n FROM dark WHERE split = 'test'").to_pylist()[0]["n"]
    assert n_test == sum(1 for sid in dark if split[sid] == "test")
    with pytest.raises(PopQLError) as info:
        s.sql("SHOW SPLITS OF drak")
    assert info.value.code == "N004" and "did you mean 'dark'" in str(info.value)


def test_imported_split_takes_precedence(tmp_path: Path) -> None:
    folder = tmp_path / "img"
    write_images(folder, 0, 20, labels_csv=False)
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file_name", "split"])
        for i in range(10):
            w.writerow([f"fmnist_{i:05d}.png", "val" if i % 2 else "test"])
    ds = tmp_path / "ds"
    ingest_images(ds, folder)
    s = connect(ds)
    s.sql("CREATE POPULATION all_of_them AS SELECT * FROM samples")
    s.sql("HOLD OUT 50 PERCENT OF all_of_them")
    rows = s.sql("SELECT uri, split FROM samples").to_pylist()
    for r in rows:
        i = int(Path(r["uri"]).stem.split("_")[1])
        if i < 10:
            assert r["split"] == ("val" if i % 2 else "test")
        else:
            assert r["split"] in ("train", "test")
    assert s.describe("samples").to_pylist()[-1]["column"] == "split"


def test_holdout_needs_a_dataset_and_a_valid_percentage() -> None:
    s = connect()
    s.register("samples", pa.table({"sample_id": ["a"], "x": [1]}))
    s.sql("CREATE POPULATION p AS SELECT * FROM samples")
    with pytest.raises(PopQLError) as info:
        s.sql("HOLD OUT 10 PERCENT OF p")
    assert info.value.code == "X002"
    with pytest.raises(PopQLError) as info:
        s.sql("HOLD OUT 100 PERCENT OF p")
    assert info.value.code == "T005"


# ---------------------------------------------------------------------------------------------
# Python access: session.population('x')
# ---------------------------------------------------------------------------------------------


def test_population_as_arrow_paths_and_torch_dataset(ds: Path) -> None:
    s = connect(ds)
    s.sql("CREATE POPULATION shoes AS SELECT * FROM samples WHERE label IN ('sneaker', 'sandal')")
    s.sql("HOLD OUT 25 PERCENT OF shoes SALT 's'")
    pop = s.population("shoes")
    table = pop.to_arrow()
    assert "split" in table.column_names and table.num_rows > 0
    train = pop.to_arrow(split="train")
    test = pop.to_arrow(split="test")
    assert train.num_rows + test.num_rows == table.num_rows
    assert set(train.column("split").to_pylist()) <= {"train"}
    assert pop.paths(split="test") == test.column("uri").to_pylist()
    assert all(Path(p).is_file() for p in pop.paths())
    with pytest.raises(PopQLError) as info:
        s.population("shose")
    assert info.value.code == "N004"

    torch = pytest.importorskip("torch")
    data = pop.torch_dataset(
        split="train",
        transform=lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0),
        target_transform=CLASSES.index,
    )
    assert len(data) == train.num_rows
    x, y = data[0]
    assert tuple(x.shape) == (28, 28, 3) and CLASSES[y] in ("sneaker", "sandal")
    # the image is the file's pixels
    x_np = np.asarray(x)[:, :, 0] * 255.0
    from PIL import Image

    with Image.open(train.column("uri")[0].as_py()) as im:
        assert np.allclose(x_np, np.asarray(im, dtype=np.float32))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    batch_x, batch_y = next(iter(loader))
    assert tuple(batch_x.shape) == (min(4, len(data)), 28, 28, 3) and len(batch_y) == len(batch_x)
    assert len(pop.torch_dataset(target=None)) == table.num_rows


def test_import_popql_stays_free_of_torch() -> None:
    code = (
        "import sys, popql, popql.engine, popql.engine.populations\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------------------------------------
# embedder identity (issue 4 point 3)
# ---------------------------------------------------------------------------------------------


def _dataset_with_embedder(path: Path, identity: str) -> Dataset:
    d = Dataset.open(path, create=True)
    with d.transaction("samples") as tx:
        tx.append(
            "samples",
            pa.table({"sample_id": ["a", "b"], "uri": ["a.png", "b.png"], "width": [1, 2]}),
        )
        emb = pa.array([np.ones(4, np.float16)] * 2, pa.list_(pa.float16(), 4))
        tx.append("embeddings.clip", pa.table({"sample_id": ["a", "b"], "embedding": emb}))
        tx.set_embedder(
            "clip",
            {"spec": "clip", "dim": 4, "table": "embeddings.clip", "identity": identity},
        )
    return d


def test_query_embedders_records_identities() -> None:
    embedders = {
        "clip": {"spec": "ViT-B-32:laion2b_s34b_b79k", "identity": "ViT-B-32@sha256:aa"},
        "fmnist_clip": {"spec": "local-dir:/x/fmnist-clip", "identity": "fm@sha256:bb"},
    }

    def used(text: str) -> dict[str, str | None]:
        query = parse(text).statements[0]
        return query_embedders(query, embedders)

    assert used("SELECT * FROM samples WHERE image SIMILAR TO 'a dog' THRESHOLD 0.3") == {
        "clip": "ViT-B-32@sha256:aa"
    }
    assert used("SELECT * FROM samples WHERE SIMILAR TO 'a dog' USING fmnist_clip") == {
        "fmnist_clip": "fm@sha256:bb"
    }
    assert used("SELECT * FROM samples WHERE NEAR SAMPLE 'ab' TOP 5 USING clip") == {
        "clip": "ViT-B-32@sha256:aa"
    }
    assert used("SELECT SIMILARITY(image, 'x') AS s FROM samples") == {"clip": "ViT-B-32@sha256:aa"}
    assert used("SELECT * FROM samples WHERE name SIMILAR TO 'a%'") == {}  # a regex match
    assert used("SELECT * FROM samples WHERE brightness < 0.2") == {}


def test_population_refuses_to_run_on_another_embedder(tmp_path: Path) -> None:
    """A population written against one embedder identity refuses to run on another, and
    says which identities and what to do."""
    _dataset_with_embedder(tmp_path / "ds", "fmnist-clip@sha256:1111")
    s = connect(tmp_path / "ds")
    pop = PopulationDef(
        "dogs",
        "SELECT * FROM samples WHERE width > 0",
        query_hash("SELECT * FROM samples WHERE width > 0"),
        embedders={"clip": "ViT-B-32@sha256:2222"},
    )
    store_of(s).update("test", lambda st: st.populations.__setitem__("dogs", pop))
    s = connect(tmp_path / "ds")
    assert POPULATIONS_TABLE in s.tables()
    with pytest.raises(PopQLError) as info:
        s.execute("SELECT uri\nFROM dogs", file="q.popql")
    err = info.value
    assert err.code == "M005"
    text = str(err)
    assert "ViT-B-32@sha256:2222" in text and "fmnist-clip@sha256:1111" in text
    assert "q.popql:2:6" in text
    assert "CREATE OR REPLACE POPULATION dogs" in text and "USING" in text
    with pytest.raises(PopQLError):
        s.population("dogs").to_arrow()
    # the same identity runs
    _dataset_with_embedder(tmp_path / "ok", "ViT-B-32@sha256:2222")
    ok = connect(tmp_path / "ok")
    store_of(ok).update("test", lambda st: st.populations.__setitem__("dogs", pop))
    assert ok.sql("SELECT count(*) AS n FROM dogs").to_pylist() == [{"n": 2}]
    # DIFF explains a model change instead of refusing
    ok.sql("FREEZE POPULATION dogs AS 'before'")
    with Dataset.open(tmp_path / "ok").transaction("new model") as tx:
        tx.set_embedder(
            "clip",
            {"spec": "clip", "dim": 4, "table": "embeddings.clip", "identity": "new@sha256:3"},
        )
    ok.refresh()
    assert ok.sql("DIFF POPULATION dogs FROM 'before'").to_arrow().num_rows == 0
    with pytest.raises(PopQLError) as info:
        ok.sql("SELECT * FROM dogs")
    assert info.value.code == "M005"


# ---------------------------------------------------------------------------------------------
# leakage: near-duplicates across splits
# ---------------------------------------------------------------------------------------------


def test_leakage_finds_planted_near_duplicates(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    from PIL import Image

    from popql.engine.embedders import TEST_EMBEDDER

    x, _ = fmnist()
    folder = tmp_path / "img"
    write_images(folder, 0, 40, labels_csv=False)
    planted = []
    for i in (3, 17, 29):  # a copy with one pixel changed: other bytes, same picture
        arr = x[i].copy()
        arr[0, 0] = 255 - arr[0, 0]
        path = folder / f"dup_{i:05d}.png"
        Image.fromarray(arr).save(path)
        planted.append((f"fmnist_{i:05d}.png", path.name))
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file_name", "split"])
        for i in range(40):
            w.writerow([f"fmnist_{i:05d}.png", "train" if i % 4 else "test"])
        for original, dup in planted:  # the copy on the other side of the split
            w.writerow([dup, "test" if original.endswith(("03.png", "29.png")) else "val"])
    ds = tmp_path / "ds"
    ingest_images(ds, folder, embedder=TEST_EMBEDDER)
    s = connect(ds)
    threshold = 0.97
    rows = s.sql(f"SHOW LEAKAGE THRESHOLD {threshold}").to_pylist()
    found = {frozenset((Path(r["uri"]).name, Path(r["other_uri"]).name)) for r in rows}
    for original, dup in planted:
        assert frozenset((original, dup)) in found
    for r in rows:
        assert r["split"] != r["other_split"] and r["similarity"] >= threshold - 1e-6
    # independently: every cross-split pair at or above the threshold, by numpy
    snap = s.snapshot
    assert snap is not None
    key = next(iter(snap.embedders))
    emb = snap.table(f"embeddings.{key}")
    ids = emb.column("sample_id").to_pylist()
    m = np.array(emb.column("embedding").to_pylist(), dtype=np.float64)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    split = {
        r["sample_id"]: r["split"]
        for r in s.sql("SELECT sample_id, split FROM samples").to_pylist()
    }
    sims = m @ m.T
    expected = set()
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            if split[ids[i]] != split[ids[j]] and sims[i, j] >= threshold:
                expected.add(frozenset((ids[i], ids[j])))
    got = {frozenset((r["sample_id"], r["other_sample_id"])) for r in rows}
    assert got == expected


@pytest.mark.parametrize(
    "text",
    [
        "CREATE POPULATION night AS SELECT * FROM samples",
        "FREEZE POPULATION night AS 'v1'",
        "DIFF POPULATION night",
        "HOLD OUT 10 PERCENT OF night",
        "SHOW POPULATIONS",
        "SHOW SPLITS OF night",
        "SHOW LEAKAGE THRESHOLD 0.9",
        "DROP POPULATION night",
    ],
)
def test_population_statements_have_no_sql_form(text: str) -> None:
    from popql.engine.lower import compile_statement

    with pytest.raises(PopQLError) as info:
        compile_statement(parse(text).statements[0], None)
    assert info.value.code == "X002" and "a PopQL session executes it" in str(info.value)
    assert compile_statement(parse("SHOW TABLES").statements[0], None).sql == "SHOW TABLES"


def _perturbed_copy(tmp_path: Path) -> Path:
    """models/fmnist-clip with one weight changed: the same embedder name and key, another
    identity (sha256 of the weights)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from popql.engine.embedders import FMNIST_CLIP_DIR

    target = tmp_path / "other" / FMNIST_CLIP_DIR.name
    shutil.copytree(FMNIST_CLIP_DIR, target)
    weights = target / "open_clip_model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = (tensors[name] * 1.001).astype(tensors[name].dtype)
    save_file(tensors, str(weights))
    return target


def test_similarity_population_refuses_another_embedder_end_to_end(tmp_path: Path) -> None:
    """CREATE POPULATION with SIMILAR TO records the embedder's identity; after the dataset is
    re-embedded by other weights under the same name, using it is refused (M005), DIFF
    explains the change, and re-creating it works."""
    pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    pytest.importorskip("safetensors")
    from popql.engine.embedders import TEST_EMBEDDER

    folder = tmp_path / "img"
    write_images(folder, 0, 30)
    ds = tmp_path / "ds"
    ingest_images(ds, folder, embedder=TEST_EMBEDDER)
    s = connect(ds)
    assert s.snapshot is not None
    ((key, meta),) = s.snapshot.embedders.items()
    before = meta["identity"]
    query = "SELECT * FROM samples WHERE image SIMILAR TO 'a photo of a sneaker' TOP 5"
    s.sql(f"CREATE POPULATION sneakers AS {query}")
    shown = s.sql("SHOW POPULATIONS").to_pylist()[0]
    assert shown["embedders"] == f"{key}={before}"
    assert s.sql("SELECT count(*) AS n FROM sneakers").to_pylist() == [{"n": 5}]
    s.sql("FREEZE POPULATION sneakers AS 'v1'")

    other = _perturbed_copy(tmp_path)
    ingest_images(ds, folder, embedder=f"local-dir:{other}")
    s = connect(ds)
    assert s.snapshot is not None
    after = s.snapshot.embedders[key]["identity"]
    assert after != before
    with pytest.raises(PopQLError) as info:
        s.execute("SELECT count(*)\nFROM sneakers", file="q.popql")
    text = str(info.value)
    assert info.value.code == "M005" and before in text and after in text
    assert "q.popql:2:6" in text and "CREATE OR REPLACE POPULATION sneakers" in text
    diff = s.sql("DIFF POPULATION sneakers FROM 'v1'").to_pylist()
    assert {r["reason"] for r in diff} <= {"changed model"}
    s.sql(f"CREATE OR REPLACE POPULATION sneakers AS {query}")
    assert s.sql("SELECT count(*) AS n FROM sneakers").to_pylist() == [{"n": 5}]
    assert s.sql("SHOW POPULATIONS").to_pylist()[0]["embedders"] == f"{key}={after}"


def test_populations_defined_before_the_first_ingest_are_kept(tmp_path: Path) -> None:
    write_images(tmp_path / "img", 0, 5)
    s = connect(tmp_path / "ds")  # a plain directory: no manifest yet
    s.register("samples", pa.table({"sample_id": ["x"], "brightness": [0.5]}))
    s.sql("CREATE POPULATION bright AS SELECT * FROM samples WHERE brightness > 0.4")
    s.deregister("samples")
    s.ingest([str(p) for p in sorted((tmp_path / "img").glob("*.png"))], taggers=["image_stats"],
             embedder=None, progress=False)  # fmt: skip
    assert s.dataset is not None and s.population_names() == ["bright"]
    assert connect(tmp_path / "ds").population_names() == ["bright"]
    n = s.sql("SELECT count(*) AS n FROM samples WHERE brightness > 0.4").to_pylist()[0]["n"]
    assert s.sql("SELECT count(*) AS n FROM bright").to_pylist() == [{"n": n}]


@pytest.mark.parametrize("exact", [True, False])
def test_cross_split_pairs_exact_and_through_the_graph(
    exact: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leakage scan finds planted near-copies across splits, exactly (blocked matrix
    products) and through the HNSW graph (large inputs), and never pairs within a split."""
    pytest.importorskip("usearch")
    from popql.engine import populations
    from popql.engine.vector import VectorIndex

    if not exact:
        monkeypatch.setattr(populations, "EXACT_LEAKAGE_LIMIT", 0)
    rng = np.random.default_rng(1)
    n = 600
    m = rng.normal(size=(n, 64))
    for j in range(20):  # row n-1-j is a near copy of row j
        m[n - 1 - j] = m[j] + rng.normal(scale=0.02, size=64)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    index = VectorIndex.build(np.arange(n, dtype=np.int64), m.astype(np.float16))
    split = np.array(["train"] * n, dtype=object)
    split[n - 10 :] = "test"  # copies of rows 0..9 are in test, of rows 10..19 in train
    split[5] = "val"
    pairs = populations.cross_split_pairs(index, split, 0.9)
    got = {frozenset((a, b)) for a, b, _ in pairs}
    f = index.matrix.astype(np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    sims = f @ f.T
    expected = {
        frozenset((i, j))
        for i in range(n)
        for j in range(i + 1, n)
        if split[i] != split[j] and sims[i, j] >= 0.9
    }
    assert expected >= {frozenset((j, n - 1 - j)) for j in range(10)}
    assert got == expected
    for a, b, score in pairs:
        assert split[a] != split[b] and score == pytest.approx(sims[a, b], abs=1e-3)


def test_show_populations_has_a_stable_schema() -> None:
    s = connect()
    empty = s.sql("SHOW POPULATIONS").to_arrow()
    s.register("samples", pa.table({"sample_id": ["a"], "x": [1]}))
    s.sql("CREATE POPULATION p AS SELECT * FROM samples")
    one = s.sql("SHOW POPULATIONS").to_arrow()
    assert empty.num_rows == 0 and one.num_rows == 1
    assert empty.schema == one.schema
    assert one.schema.field("embedders").type == pa.string()
    assert one.schema.field("description").type == pa.string()
