"""Predictions, EVALUATE, COMPARE, EXPECT: every number checked against an independent
computation (scikit-learn's metrics, textbook Wilson intervals, hand-computed AP/IoU)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import popql
from popql.diagnostics import PopQLError
from popql.engine import Session, connect
from popql.engine import metrics as M
from popql.engine.dataset import Dataset

sklearn_metrics = pytest.importorskip("sklearn.metrics")

CLASSES = ["cat", "dog", "bird"]


def wilson_reference(k: int, n: int) -> tuple[float, float]:
    """Wilson (1927) score interval written out independently (z = 1.96)."""
    z = 1.96
    p = k / n
    a = 2 * n * p + z**2
    b = z * math.sqrt(z**2 + 4 * n * p * (1 - p))
    c = 2 * (n + z**2)
    return (a - b) / c, (a + b) / c


def test_wilson_textbook_values() -> None:
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 and 15/148
    lo, hi = M.wilson(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    lo, hi = M.wilson(15, 148)
    assert (round(lo, 4), round(hi, 4)) == (0.0624, 0.1605)
    for k, n in [(0, 10), (10, 10), (7, 40), (399, 400)]:
        ref = wilson_reference(k, n)
        assert M.wilson(k, n) == pytest.approx(ref, abs=2e-5)
    assert all(math.isnan(x) for x in M.wilson(0, 0))


@pytest.fixture
def cls_session() -> tuple[Session, dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    n = 600
    ids = np.array([f"s{i:04d}" for i in range(n)])
    truth = rng.choice(CLASSES, n)
    brightness = rng.random(n)
    pred = np.where(rng.random(n) < 0.75, truth, rng.choice(CLASSES, n))
    pred2 = np.where(rng.random(n) < 0.9, truth, rng.choice(CLASSES, n))
    s = connect()
    s.register(
        "samples",
        pa.table(
            {
                "sample_id": ids,
                "label": truth,
                "brightness": brightness,
                "weather": rng.choice(["sun", "rain"], n),
                "loss": rng.random(n),
            }
        ),
    )
    s.sql("CREATE VIEW dark AS SELECT * FROM samples WHERE brightness < 0.3")
    import pandas as pd

    s.log_predictions(
        "m", "1", pd.DataFrame({"sample_id": ids, "label": pred, "score": rng.random(n)})
    )
    s.log_predictions("m", "2", pa.table({"sample_id": ids, "prediction": pred2}))
    data = {
        "ids": ids,
        "truth": truth,
        "pred": pred,
        "pred2": pred2,
        "brightness": brightness,
    }
    return s, data


def test_evaluate_matches_sklearn(cls_session: tuple[Session, dict[str, np.ndarray]]) -> None:
    s, d = cls_session
    out = s.sql(
        "EVALUATE m VERSION 1 ON samples, dark "
        "METRICS accuracy, f1, precision, recall, precision('cat'), recall('dog'), f1('bird')"
    ).to_pylist()
    assert [r["population"] for r in out] == ["samples", "dark"]
    for row, mask in zip(out, [np.ones(len(d["ids"]), bool), d["brightness"] < 0.3], strict=True):
        t, p = d["truth"][mask], d["pred"][mask]
        assert row["n"] == mask.sum()
        assert row["model"] == "m" and row["version"] == "1"
        assert row["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(t, p))
        k = int((t == p).sum())
        assert (row["accuracy_lo"], row["accuracy_hi"]) == pytest.approx(
            wilson_reference(k, len(t)), abs=2e-5
        )
        for name in ("f1", "precision", "recall"):
            fn = getattr(sklearn_metrics, f"{name}_score")
            ref = fn(t, p, average="macro", zero_division=0)
            assert row[name] == pytest.approx(ref)
            assert row[f"{name}_lo"] < ref < row[f"{name}_hi"]
        prec_cat = sklearn_metrics.precision_score(t, p, labels=["cat"], average="macro")
        assert row["precision(cat)"] == pytest.approx(prec_cat)
        tp = int(((t == "cat") & (p == "cat")).sum())
        assert (row["precision(cat)_lo"], row["precision(cat)_hi"]) == pytest.approx(
            wilson_reference(tp, int((p == "cat").sum())), abs=2e-5
        )
        assert row["recall(dog)"] == pytest.approx(
            sklearn_metrics.recall_score(t, p, labels=["dog"], average="macro")
        )
        assert row["f1(bird)"] == pytest.approx(
            sklearn_metrics.f1_score(t, p, labels=["bird"], average="macro")
        )


def test_latest_version_is_default_and_alias_columns(
    cls_session: tuple[Session, dict[str, np.ndarray]],
) -> None:
    s, d = cls_session
    row = s.sql("EVALUATE m ON samples METRICS accuracy").to_pylist()[0]
    assert row["version"] == "2"  # the latest logged; 'prediction' was read as the label
    assert row["accuracy"] == pytest.approx(float((d["truth"] == d["pred2"]).mean()))
    assert s.model_names() == ["m"]
    versions = s.sql(
        'SELECT version, count(*) AS n FROM "predictions.m" GROUP BY version ORDER BY version'
    )
    assert versions.to_pylist() == [{"version": "1", "n": 600}, {"version": "2", "n": 600}]


def test_default_metrics_and_bootstrap_reproducible(
    cls_session: tuple[Session, dict[str, np.ndarray]],
) -> None:
    s, _ = cls_session
    a = s.sql("EVALUATE m ON dark").to_pylist()
    b = s.sql("EVALUATE m ON dark").to_pylist()
    assert a == b
    assert {"accuracy", "f1", "f1_lo", "f1_hi"} <= set(a[0])


def test_evaluate_by_matches_groupby(cls_session: tuple[Session, dict[str, np.ndarray]]) -> None:
    s, d = cls_session
    weather = np.array(
        s.sql("SELECT weather FROM samples ORDER BY sample_id").to_pydict()["weather"]
    )
    rows = s.sql("EVALUATE m VERSION '1' BY weather METRICS accuracy").to_pylist()
    assert [r["weather"] for r in rows] == ["rain", "sun"]
    for r in rows:
        mask = weather == r["weather"]
        assert r["n"] == mask.sum()
        assert r["accuracy"] == pytest.approx(float((d["truth"][mask] == d["pred"][mask]).mean()))


def test_mean_of_a_column(cls_session: tuple[Session, dict[str, np.ndarray]]) -> None:
    s, _ = cls_session
    row = s.sql("EVALUATE m VERSION 1 ON dark METRICS mean(score), mean(loss)").to_pylist()[0]
    scores = s.sql(
        "SELECT p.score FROM \"predictions.m\" p JOIN dark USING (sample_id) WHERE p.version = '1'"
    ).to_pydict()["score"]
    assert row["mean(score)"] == pytest.approx(float(np.mean(scores)))
    assert row["mean(score)_lo"] < row["mean(score)"] < row["mean(score)_hi"]
    losses = s.sql("SELECT loss FROM dark").to_pydict()["loss"]
    assert row["mean(loss)"] == pytest.approx(float(np.mean(losses)))


def test_compare_paired_mcnemar(cls_session: tuple[Session, dict[str, np.ndarray]]) -> None:
    s, d = cls_session
    rows = s.sql(
        "COMPARE m VERSION 1 WITH m VERSION 2 ON samples, dark METRICS accuracy"
    ).to_pylist()
    assert [r["population"] for r in rows] == ["samples", "dark"]
    r = rows[0]
    c1 = d["truth"] == d["pred"]
    c2 = d["truth"] == d["pred2"]
    assert r["diff"] == pytest.approx(c1.mean() - c2.mean())
    assert r["test"] == "mcnemar"
    b, c = int((c2 & ~c1).sum()), int((~c2 & c1).sum())
    scipy_stats = pytest.importorskip("scipy.stats")
    ref = scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue
    assert r["p_value"] == pytest.approx(ref, rel=1e-6)
    assert r["diff_lo"] < r["diff"] < r["diff_hi"] < 0
    assert r["flag"] == "regression"  # version 1 is worse than version 2
    back = s.sql("COMPARE m VERSION 2 WITH m VERSION 1 ON samples METRICS accuracy").to_pylist()[0]
    assert back["flag"] == "improvement" and back["diff"] == pytest.approx(-r["diff"])
    same = s.sql("COMPARE m VERSION 1 WITH m VERSION 1 ON samples METRICS accuracy, f1").to_pylist()
    assert all(x["diff"] == 0 and x["flag"] == "" for x in same)


def test_holm_adjustment() -> None:
    assert M.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


# -- detection and segmentation ---------------------------------------------------------------


def test_average_precision_hand_computed() -> None:
    # 3 true objects; ranked predictions TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/3, 2/3
    ap = M.average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 3)
    # all-point interpolation: 1/3 * 1 + 1/3 * 2/3 = 0.5556
    assert ap == pytest.approx(1 / 3 + (1 / 3) * (2 / 3))


def test_map50_on_detections() -> None:
    s = connect()
    gt = pa.list_(pa.struct([("label", pa.string()), ("box", pa.list_(pa.float32(), 4))]))
    s.register(
        "labels",
        pa.table(
            {
                "sample_id": ["a", "b"],
                "gt_detections": pa.array(
                    [
                        [
                            {"label": "car", "box": [0, 0, 0.5, 0.5]},
                            {"label": "person", "box": [0.5, 0.5, 1, 1]},
                        ],
                        [{"label": "car", "box": [0.1, 0.1, 0.3, 0.3]}],
                    ],
                    gt,
                ),
            }
        ),
    )
    s.register("pop", pa.table({"sample_id": ["a", "b"]}))
    s.log_predictions(
        "det",
        "1",
        [
            {
                "sample_id": "a",
                "detections": [
                    {"label": "car", "score": 0.9, "box": [0, 0, 0.5, 0.45]},  # IoU 0.9: TP
                    {"label": "person", "score": 0.8, "box": [0, 0, 0.2, 0.2]},  # IoU 0: FP
                ],
            },
            {
                "sample_id": "b",
                "detections": [
                    {"label": "car", "score": 0.6, "box": [0.2, 0.2, 0.4, 0.4]},  # IoU 1/7: FP
                    {"label": "car", "score": 0.95, "box": [0.1, 0.1, 0.3, 0.3]},  # TP
                ],
            },
        ],
    )
    row = s.sql("EVALUATE det ON pop").to_pylist()[0]
    # car: ranked 0.95 TP, 0.9 TP, 0.6 FP with 2 true cars -> AP 1; person: 1 true, only FP -> 0
    assert row["n"] == 2
    assert row["map50"] == pytest.approx(0.5)
    assert row["map50_lo"] <= 0.5 <= row["map50_hi"]


def test_miou_masks_and_class_iou() -> None:
    s = connect()
    s.register(
        "samples",
        pa.table(
            {
                "sample_id": ["a", "b"],
                "gt_mask": pa.array([[0, 0, 1, 1], [1, 1, 1, 0]], pa.list_(pa.int32())),
            }
        ),
    )
    s.log_predictions(
        "seg",
        "1",
        [
            {"sample_id": "a", "mask": [0, 1, 1, 1]},
            {"sample_id": "b", "mask": [1, 1, 0, 0]},
        ],
    )
    row = s.sql("EVALUATE seg ON samples METRICS miou").to_pylist()[0]
    # class 0: inter 1+1=2, union 2+2=4 -> 0.5; class 1: inter 2+2=4, union 3+3=6 -> 2/3
    assert row["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    s.log_predictions(
        "seg2",
        "1",
        [
            {"sample_id": "a", "class_iou": {"road": 0.5, "sky": 0.9}},
            {"sample_id": "b", "class_iou": {"road": 0.7}},
        ],
    )
    row = s.sql("EVALUATE seg2 ON samples").to_pylist()[0]
    assert row["miou"] == pytest.approx((0.6 + 0.9) / 2)


def test_mae_regression() -> None:
    s = connect()
    s.register("samples", pa.table({"sample_id": ["a", "b", "c"], "target": [1.0, 2.0, 4.0]}))
    s.log_predictions(
        "reg",
        None,
        [{"sample_id": x, "value": v} for x, v in zip("abc", [1.5, 2.0, 3.0], strict=True)],
    )
    row = s.sql("EVALUATE reg ON samples").to_pylist()[0]
    assert row["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error([1, 2, 4], [1.5, 2, 3]))
    assert row["version"] == "1"


# -- storage --------------------------------------------------------------------------------------


def _tiny(n: int = 20) -> pa.Table:
    return pa.table({"sample_id": [f"x{i}" for i in range(n)], "label": ["a"] * n})


def test_relogging_a_version_replaces_it_atomically_in_a_dataset(tmp_path: Path) -> None:
    ds = Dataset.open(tmp_path / "ds", create=True)
    with ds.transaction("samples") as tx:
        tx.append("samples", pa.table({"sample_id": ["x0", "x1"], "uri": ["0.png", "1.png"]}))
    s = connect(tmp_path / "ds")
    v0 = s.version
    s.log_predictions("m", "1", _tiny())
    assert s.version == v0 + 1
    s.log_predictions("m", "2", _tiny(5))
    s.log_predictions("m", "1", pa.table({"sample_id": ["x0"], "label": ["b"]}))
    assert s.version == v0 + 3
    rows = s.sql(
        'SELECT version, count(*) AS n FROM "predictions.m" GROUP BY version ORDER BY version'
    )
    assert rows.to_pylist() == [{"version": "1", "n": 1}, {"version": "2", "n": 5}]
    # the previous dataset version still has the old rows: each log was one commit
    old = s.at_version(v0 + 2)
    assert old.sql("SELECT count(*) FROM \"predictions.m\" WHERE version = '1'").scalar() == 20
    # a fresh session sees the predictions
    assert connect(tmp_path / "ds").model_names() == ["m"]
    # one row per (sample, version) is fine for predictions: the integrity check agrees
    assert [d for d in ds.check(deep=True) if d.severity == "error"] == []


def test_plain_directory_and_memory(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    s = connect(folder)
    s.log_predictions("m", "1", _tiny())
    assert (folder / "tables" / "predictions.m.parquet").is_file()
    assert connect(folder).model_names() == ["m"]
    s.log_predictions("m", "1", _tiny(3))
    assert pq.read_table(folder / "tables" / "predictions.m.parquet").num_rows == 3
    mem = connect()
    assert mem.model_names() == []
    assert mem.log_predictions("m", 7, _tiny(4).to_pylist()) == 4
    assert mem.sql('SELECT DISTINCT version FROM "predictions.m"').scalar() == "7"


def test_import_predictions(tmp_path: Path) -> None:
    pq.write_table(_tiny(6), tmp_path / "preds.parquet")
    (tmp_path / "preds.csv").write_text("sample_id,label\nx0,a\nx1,b\n")
    s = connect()
    out = s.sql(f"IMPORT PREDICTIONS FOR MODEL m VERSION 'v2' FROM '{tmp_path / 'preds.parquet'}'")
    assert out.to_pylist() == [{"model": "m", "version": "v2", "rows": 6}]
    s.sql(f"IMPORT PREDICTIONS FOR MODEL c FROM '{tmp_path / 'preds.csv'}'")
    assert s.model_names() == ["c", "m"]
    # relative to the .popql file that imports
    (tmp_path / "suite.popql").write_text("IMPORT PREDICTIONS FOR MODEL r FROM 'preds.parquet';\n")
    s.run_file(tmp_path / "suite.popql")
    assert "r" in s.model_names()


def test_check_does_not_log(tmp_path: Path) -> None:
    pq.write_table(_tiny(6), tmp_path / "preds.parquet")
    s = connect()
    s.check(f"IMPORT PREDICTIONS FOR MODEL m FROM '{tmp_path / 'preds.parquet'}'")
    assert s.model_names() == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([{"label": "a"}], "no sample_id column"),
        ([{"sample_id": "a"}, {"sample_id": "a"}], "several rows for one sample_id"),
        ([{"sample_id": None, "label": "a"}], "rows without a sample_id"),
        (
            [{"sample_id": "a", "detections": [{"label": "x", "score": 1, "box": [0, 1]}]}],
            "detections",
        ),
    ],
)
def test_invalid_predictions(data: list[dict[str, object]], message: str) -> None:
    with pytest.raises(PopQLError) as info:
        connect().log_predictions("m", "1", data)
    assert info.value.codes == ("V001",)
    assert message in str(info.value)


def test_errors_point_at_the_statement(cls_session: tuple[Session, dict[str, np.ndarray]]) -> None:
    s, _ = cls_session
    cases = [
        ("EVALUATE mm ON samples", "M002", "mm", "did you mean 'm'?"),
        ("EVALUATE m ON sampels", "N001", "sampels", None),
        ("EVALUATE m ON samples METRICS acuracy", "V002", "acuracy", "did you mean 'accuracy'?"),
        ("EVALUATE m ON samples METRICS mae", "V003", "samples", None),
        ("EVALUATE m VERSION 9 ON samples", "M002", "m VERSION 9", None),
        ("EXPECT accuracy >= 0.9 ON nowhere FOR MODEL m", "N001", "nowhere", None),
    ]
    for text, code, at, hint in cases:
        with pytest.raises(PopQLError) as info:
            s.execute(text, file="q.popql")
        d = info.value.diagnostic
        assert d.code == code, (text, str(info.value))
        assert d.span is not None and text[d.span.start : d.span.end] == at, (text, d.span)
        if hint:
            assert hint in d.hints
        assert "Traceback" not in str(info.value)


def test_expect_rows_and_policy(cls_session: tuple[Session, dict[str, np.ndarray]]) -> None:
    from popql.engine.testing import Policy, decide

    s, d = cls_session
    acc = float((d["truth"] == d["pred2"]).mean())
    row = s.sql("EXPECT accuracy >= 0.8 ON samples FOR MODEL m").to_pylist()[0]
    assert row["status"] == "pass" and row["value"] == pytest.approx(acc)
    row = s.sql("EXPECT accuracy >= 0.99 ON samples FOR MODEL m").to_pylist()[0]
    assert row["status"] == "fail"
    row = s.sql(f"EXPECT accuracy >= {acc:.3f} ON samples FOR MODEL m").to_pylist()[0]
    assert row["status"] == "inconclusive" and "straddles" in row["reason"]
    row = s.sql("EXPECT accuracy >= 0.5 ON dark FOR MODEL m MIN SUPPORT 1000").to_pylist()[0]
    assert row["status"] == "inconclusive" and "below the minimum 1000" in row["reason"]
    # EXPECT without FOR MODEL: the only model
    assert s.sql("EXPECT accuracy < 0.99 ON samples").to_pylist()[0]["status"] == "pass"
    point = Policy(decide="point")
    assert decide(0.91, 0.85, 0.95, 100, ">=", 0.9, 1, point)[0] == "pass"
    assert decide(0.91, 0.85, 0.95, 100, ">=", 0.9, 1, Policy())[0] == "inconclusive"
    assert decide(0.5, 0.4, 0.6, 100, "<", 0.7, 1, Policy())[0] == "pass"
    assert decide(0.5, 0.4, 0.6, 100, ">", 0.6, 1, Policy())[0] == "fail"


def test_popql_connect_is_the_engine_session() -> None:
    assert isinstance(popql.connect(), Session)


def test_popql_test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    from popql.repl.cli import main

    assert main(["test", "--help"]) == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "1    an expectation failed" in out
    assert "95% interval straddles" in out and "--junit FILE" in out and "--report FILE" in out
    assert main(["test"]) == 2  # a suite is required: usage error


def test_confusion_bootstrap_matches_a_naive_bootstrap(
    cls_session: tuple[Session, dict[str, np.ndarray]],
) -> None:
    """The macro-f1 interval (multinomial draws of confusion cells) agrees with resampling
    the samples and calling scikit-learn on each resample."""
    s, d = cls_session
    row = s.sql("EVALUATE m VERSION 1 ON samples METRICS f1").to_pylist()[0]
    rng = np.random.default_rng(0)
    n = len(d["truth"])
    values = []
    for _ in range(400):
        idx = rng.integers(0, n, n)
        values.append(
            sklearn_metrics.f1_score(
                d["truth"][idx], d["pred"][idx], average="macro", zero_division=0
            )
        )
    lo, hi = np.quantile(values, [0.025, 0.975])
    assert row["f1_lo"] == pytest.approx(lo, abs=0.012)
    assert row["f1_hi"] == pytest.approx(hi, abs=0.012)


def test_population_without_predictions_has_n_zero() -> None:
    s = connect()
    s.register("samples", pa.table({"sample_id": ["a", "b"], "label": ["x", "y"]}))
    s.register("elsewhere", pa.table({"sample_id": ["z"]}))
    s.log_predictions("m", "1", [{"sample_id": "a", "label": "x"}])
    row = s.sql("EVALUATE m ON elsewhere METRICS accuracy, f1").to_pylist()[0]
    assert row["n"] == 0 and row["accuracy"] is None and row["f1"] is None
    out = s.sql("EXPECT accuracy >= 0.5 ON elsewhere").to_pylist()[0]
    assert out["status"] == "inconclusive"
