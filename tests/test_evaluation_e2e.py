"""End to end on real labelled images: ingest Fashion-MNIST (or scikit-learn's digits when
``dataset-fashion-mnist`` is not installed), tag (image_stats, faces), train a logistic
regression inside the test, log its predictions, EVALUATE / COMPARE / FIND FAILURES, run
``popql test`` (table, exit code, JUnit, HTML opened in headless Chromium) and the pytest
plugin; every number is checked against scikit-learn or an independent Wilson interval.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")
sklearn_linear = pytest.importorskip("sklearn.linear_model")
sklearn_metrics = pytest.importorskip("sklearn.metrics")

from PIL import Image  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from popql.engine import Session, connect  # noqa: E402

FMNIST = Path(os.environ.get("FASHION_MNIST_DIR") or "/usr/share/datasets/fashion-mnist")
CLASSES = [
    "tshirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "boot",
]
N_TEST = 1500
N_TRAIN = 3000


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    _, _, ndim = struct.unpack(">HBB", data[:4])
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(train images, train labels, test images, test labels, class names), uint8 images."""
    if (FMNIST / "t10k-images-idx3-ubyte.gz").is_file():
        xtr = _idx(FMNIST / "train-images-idx3-ubyte.gz")[:N_TRAIN]
        ytr = _idx(FMNIST / "train-labels-idx1-ubyte.gz")[:N_TRAIN].astype(np.int64)
        xte = _idx(FMNIST / "t10k-images-idx3-ubyte.gz")[:N_TEST]
        yte = _idx(FMNIST / "t10k-labels-idx1-ubyte.gz")[:N_TEST].astype(np.int64)
        return xtr, ytr, xte, yte, CLASSES
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images * (255 / 16)).astype(np.uint8)
    y = digits.target.astype(np.int64)
    return x[:1000], y[:1000], x[1000:], y[1000:], [str(i) for i in range(10)]


class World:
    """The dataset, the trained model's predictions and the truth, computed independently."""

    def __init__(self, root: Path) -> None:
        xtr, ytr, xte, yte, names = load_data()
        folder = root / "images"
        folder.mkdir()
        lines = ["file_name,label"]
        for i, (img, y) in enumerate(zip(xte, yte, strict=True)):
            Image.fromarray(img).save(folder / f"{i:05d}.png")
            lines.append(f"{i:05d}.png,{names[y]}")
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
        self.dataset = root / "ds"
        session = connect(self.dataset)
        session.ingest(
            folder,
            taggers=["image_stats", "faces"],
            embedder=None,
            labels=root / "labels.csv",
            progress=False,
        )
        rows = session.sql(
            "SELECT sample_id, uri, label, brightness, num_faces FROM samples ORDER BY uri"
        ).to_pydict()
        self.ids = np.array(rows["sample_id"])
        index = np.array([int(Path(u).stem) for u in rows["uri"]])
        self.truth = np.array(rows["label"])
        assert (self.truth == np.array(names)[yte[index]]).all()
        self.brightness = np.array(rows["brightness"], dtype=np.float64)
        self.faces = np.array(rows["num_faces"])
        # the model: a logistic regression trained here on other images
        clf = sklearn_linear.LogisticRegression(max_iter=150, C=0.05)
        with warnings.catch_warnings():  # a few more iterations would not change the test
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(xtr.reshape(len(xtr), -1) / 255.0, ytr)
        features = xte[index].reshape(len(index), -1) / 255.0
        self.pred = np.array(names)[clf.predict(features)]
        self.score = clf.predict_proba(features).max(axis=1)
        # the same model, broken on dark images without faces (80 % of them wrong)
        rng = np.random.default_rng(11)
        self.planted = (self.brightness < 0.2) & (self.faces == 0)
        hit = self.planted & (rng.random(len(self.ids)) < 0.8)
        wrong = np.array([names[(names.index(p) + 1) % len(names)] for p in self.pred])
        self.broken = np.where(hit, wrong, self.pred)
        import pandas as pd

        session.log_predictions(
            "clf",
            "1",
            pd.DataFrame({"sample_id": self.ids, "label": self.pred, "score": self.score}),
        )
        session.log_predictions(
            "broken",
            "1",
            [{"sample_id": i, "label": p} for i, p in zip(self.ids, self.broken, strict=True)],
        )
        self.session = session

    def fresh(self) -> Session:
        s = connect(self.dataset)
        s.sql("CREATE VIEW dark AS SELECT * FROM samples WHERE brightness < 0.2")
        s.sql("CREATE VIEW bright AS SELECT * FROM samples WHERE brightness >= 0.2")
        return s


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("e2e"))


def wilson(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_evaluate_against_sklearn(world: World) -> None:
    s = world.fresh()
    assert s.model_names() == ["broken", "clf"]
    rows = s.sql(
        "EVALUATE clf ON samples, dark, bright METRICS accuracy, f1, precision, recall, mean(score)"
    ).to_pylist()
    masks = {
        "samples": np.ones(len(world.ids), bool),
        "dark": world.brightness < 0.2,
        "bright": world.brightness >= 0.2,
    }
    assert masks["dark"].sum() > 50 and masks["bright"].sum() > 50
    for row in rows:
        m = masks[row["population"]]
        t, p = world.truth[m], world.pred[m]
        assert row["n"] == m.sum()
        assert row["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(t, p))
        lo, hi = wilson(int((t == p).sum()), len(t))
        assert row["accuracy_lo"] == pytest.approx(lo, abs=1e-9)
        assert row["accuracy_hi"] == pytest.approx(hi, abs=1e-9)
        for name in ("f1", "precision", "recall"):
            ref = getattr(sklearn_metrics, f"{name}_score")(t, p, average="macro", zero_division=0)
            assert row[name] == pytest.approx(ref)
            assert row[f"{name}_lo"] <= ref <= row[f"{name}_hi"]
        assert row["mean(score)"] == pytest.approx(world.score[m].mean())
    by = s.sql("EVALUATE clf BY label METRICS accuracy").to_pylist()
    for row in by:
        m = world.truth == row["label"]
        assert row["accuracy"] == pytest.approx(float((world.pred[m] == row["label"]).mean()))


def test_compare_flags_the_planted_regression(world: World) -> None:
    s = world.fresh()
    rows = {
        r["population"]: r
        for r in s.sql("COMPARE broken WITH clf ON dark, bright METRICS accuracy").to_pylist()
    }
    dark = world.brightness < 0.2
    ref = (world.broken[dark] == world.truth[dark]).mean() - (
        world.pred[dark] == world.truth[dark]
    ).mean()
    assert rows["dark"]["diff"] == pytest.approx(ref)
    assert rows["dark"]["flag"] == "regression"
    assert rows["bright"]["diff"] == 0 and rows["bright"]["flag"] == ""


def test_find_failures_recovers_the_planted_slice(world: World) -> None:
    s = world.fresh()
    rows = s.sql("FIND FAILURES FOR MODEL broken").to_pylist()
    top = rows[0]
    assert "brightness" in top["slice"]
    from popql import parse

    parse(top["statement"])  # a ready statement
    query = top["statement"][top["statement"].index("AS\n") + 3 :]
    found = set(s.sql(f"SELECT sample_id FROM ({query})").to_pydict()["sample_id"])
    planted = set(world.ids[world.planted])
    assert len(found & planted) / len(found | planted) >= 0.9


def suite_text(world: World) -> str:
    acc = float((world.pred == world.truth).mean())
    return f"""-- quality gates of the classifier
CREATE VIEW dark AS SELECT * FROM samples WHERE brightness < 0.2;
CREATE VIEW bright AS SELECT * FROM samples WHERE brightness >= 0.2;
EXPECT accuracy >= {acc - 0.08:.2f} ON samples;
EXPECT f1 >= 0.5 ON bright FOR MODEL clf;
EXPECT accuracy >= 0.98 ON samples FOR MODEL clf;
EXPECT accuracy >= {acc - 0.08:.2f} ON dark FOR MODEL broken;
EXPECT accuracy >= 0.5 ON samples FOR MODEL clf MIN SUPPORT 100000;
"""


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "popql.repl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_popql_test_cli_junit_and_html(world: World, tmp_path: Path) -> None:
    suite = tmp_path / "quality.popql"
    suite.write_text(suite_text(world))
    proc = run_cli(
        "test",
        str(suite),
        "--dataset",
        str(world.dataset),
        "--model",
        "clf",
        "--junit",
        "junit.xml",
        "--report",
        "report.html",
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    statuses = [line.split("|")[0].strip() for line in lines if "| EXPECT" in line]
    assert statuses == ["PASS", "PASS", "FAIL", "FAIL", "INCONCLUSIVE"]
    assert "2 passed, 2 failed, 1 inconclusive, 0 errors" in proc.stdout
    junit = ET.parse(tmp_path / "junit.xml").getroot()
    assert (junit.get("tests"), junit.get("failures"), junit.get("skipped")) == ("5", "2", "1")
    cases = junit.findall(".//testcase")
    assert cases[2].find("failure") is not None and cases[4].find("skipped") is not None
    props = {p.get("name"): p.get("value") for p in cases[0].iter("property")}
    acc = float((world.pred == world.truth).mean())
    assert float(props["value"]) == pytest.approx(acc)
    # a passing suite exits 0, also with an inconclusive expectation unless --inconclusive fail
    ok = tmp_path / "ok.popql"
    ok.write_text(
        "EXPECT accuracy >= 0.5 ON samples FOR MODEL clf;\n"
        "EXPECT accuracy >= 0.5 ON samples FOR MODEL clf MIN SUPPORT 100000;\n"
    )
    args = ("test", str(ok), "--dataset", str(world.dataset))
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    assert run_cli(*args, "--inconclusive", "fail", cwd=tmp_path).returncode == 1
    # EXPECT without FOR MODEL and two models, no --model: an error outcome, exit 1
    amb = tmp_path / "ambiguous.popql"
    amb.write_text("EXPECT accuracy >= 0.5 ON samples;\n")
    proc = run_cli("test", str(amb), "--dataset", str(world.dataset), cwd=tmp_path)
    assert proc.returncode == 1 and "which model?" in proc.stdout
    check_report(tmp_path / "report.html", tmp_path)


def check_report(html: Path, tmp: Path) -> None:
    text = html.read_text()
    assert "<svg" in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip(
            "chromium is not installed (apt-get install chromium); the report was not opened"
        )
    base = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={tmp / 'chrome-profile'}",
    ]
    shot = tmp / "report.png"
    proc = subprocess.run(
        [*base, "--window-size=1200,1000", f"--screenshot={shot}", html.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    dom = subprocess.run(
        [*base, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120
    )
    console = [line for line in (proc.stderr + dom.stderr).splitlines() if "CONSOLE" in line]
    assert console == [], console
    assert 'data-charts="2"' in dom.stdout  # the page's script ran: accuracy and f1 charts
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def count(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(image - np.array(rgb)).sum(axis=2) < 30).sum())

    assert count((0x1A, 0x7F, 0x37)) > 200  # pass dots and interval bars
    assert count((0xCF, 0x22, 0x2E)) > 200  # fail dots and bars
    assert count((0xBF, 0x87, 0x00)) > 50  # inconclusive
    keep = os.environ.get("POPQL_TEST_ARTIFACTS")
    if keep:  # e.g. CI uploads the screenshot
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")
        shutil.copy(html, Path(keep) / "report.html")


def test_pytest_plugin_runs_expectations(world: World, tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    (tmp_path / "test_quality.popql").write_text(suite_text(world))
    (tmp_path / "test_code.py").write_text("def test_code():\n    assert 1 + 1 == 2\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-rs",
            "--popql-dataset",
            str(world.dataset),
            "--popql-model",
            "clf",
            "--junitxml",
            "out.xml",
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "2 failed, 3 passed, 1 skipped" in out, out
    assert "inconclusive: support" in out
    assert "FAIL: EXPECT accuracy >= 0.98 ON samples FOR MODEL clf" in out
    cases = ET.parse(tmp_path / "out.xml").getroot().findall(".//testcase")
    assert len(cases) == 6


def test_pytest_plugin_session_hook(world: World, tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\naddopts = -p no:cacheprovider\npopql_suites = suites/*.popql\n"
    )
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "gates.popql").write_text(
        "EXPECT accuracy >= 0.5 ON dark_from_hook FOR MODEL clf;\n"
    )
    (tmp_path / "test_other.popql").write_text("EXPECT accuracy >= 0.5 ON samples;\n")
    (tmp_path / "conftest.py").write_text(
        "import popql\n"
        "def pytest_popql_session(path, config):\n"
        f"    s = popql.connect({str(world.dataset)!r})\n"
        '    s.sql("CREATE VIEW dark_from_hook AS SELECT * FROM samples WHERE brightness < 0.2")\n'
        "    return s\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(
        r"gates\.popql::EXPECT accuracy >= 0(\.|::)5 ON dark_from_hook FOR MODEL clf "
        r"\[line 1\]\s+PASSED",
        proc.stdout,
    ), proc.stdout
    assert "test_other.popql" not in proc.stdout  # not matched by popql_suites
    assert "1 passed" in proc.stdout


def test_populations_and_hold_out(world: World) -> None:
    """Real populations (engine/populations.py): by name, printed by FIND FAILURES, and the
    ``split`` column a hold-out assigns (runs last: it writes populations to the dataset)."""
    s = connect(world.dataset)
    s.sql(
        "CREATE POPULATION dim DESCRIPTION 'dark' AS SELECT * FROM samples WHERE brightness < 0.2"
    )
    s.sql("HOLD OUT 30 PERCENT OF dim SALT 'eval'")
    s.sql("CREATE POPULATION dim_test AS SELECT * FROM dim WHERE split = 'test'")
    rows = {
        r["population"]: r
        for r in s.sql("EVALUATE clf ON dim, dim_test METRICS accuracy").to_pylist()
    }
    split = dict(
        zip(*s.sql("SELECT sample_id, split FROM samples").to_pydict().values(), strict=True)
    )
    dark = world.brightness < 0.2
    held = dark & np.array([split[i] == "test" for i in world.ids])
    assert 0 < held.sum() < dark.sum()
    for name, mask in (("dim", dark), ("dim_test", held)):
        assert rows[name]["n"] == mask.sum()
        ref = sklearn_metrics.accuracy_score(world.truth[mask], world.pred[mask])
        assert rows[name]["accuracy"] == pytest.approx(ref)
    by = {r["split"]: r for r in s.sql("EVALUATE clf BY split METRICS accuracy").to_pylist()}
    assert by["test"]["n"] == held.sum()
    top = s.sql("FIND FAILURES FOR MODEL broken").to_pylist()[0]
    assert "split" not in top["slice"]
    s.sql(top["statement"])  # the printed population is a working population
    found = s.sql("EXPECT accuracy >= 0.9 ON failures_broken_1 FOR MODEL broken").to_pylist()[0]
    assert found["status"] == "fail" and found["n"] == top["n"]
