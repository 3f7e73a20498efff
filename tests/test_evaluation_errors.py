"""Snapshot tests of the evaluation diagnostics (V001-V003, M002 for models without
predictions): rendered text in ``tests/snapshots/evaluation/<name>.txt`` (input, ``----``,
output), the JSON form, and no Python traceback. Regenerate with
``POPQL_UPDATE_GOLDEN=1 python -m pytest tests/test_evaluation_errors.py``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from popql.diagnostics import CODES, PopQLError
from popql.engine import Session, connect

SNAPSHOTS = Path(__file__).parent / "snapshots" / "evaluation"
UPDATE = os.environ.get("POPQL_UPDATE_GOLDEN", "") not in ("", "0")


def make_session() -> Session:
    s = connect()
    s.register(
        "samples",
        pa.table(
            {
                "sample_id": ["a", "b", "c"],
                "label": ["cat", "dog", "cat"],
                "brightness": [0.1, 0.5, 0.9],
            }
        ),
    )
    s.register("meta", pa.table({"id": [1, 2]}))
    s.sql("CREATE VIEW dark AS SELECT * FROM samples WHERE brightness < 0.3")
    s.log_predictions("resnet", "1", [{"sample_id": "a", "label": "cat"}])
    s.log_predictions("vit", "2", [{"sample_id": "a", "label": "dog"}])
    s.log_predictions("reg", "1", [{"sample_id": "a", "value": 2.5}])
    return s


@dataclass(frozen=True)
class Case:
    text: str
    code: str
    call: Callable[[Session], object] | None = None


CASES: dict[str, Case] = {
    "unknown_model": Case("EVALUATE resnt ON samples, dark", "M002"),
    "unknown_model_version": Case(
        "COMPARE resnet VERSION 'v3' WITH resnet\nON dark METRICS accuracy", "M002"
    ),
    "unknown_metric": Case("EVALUATE resnet ON dark\nMETRICS accuracy, f_1", "V002"),
    "metric_without_column": Case("EVALUATE resnet ON dark METRICS mean", "V002"),
    "metric_needs_other_predictions": Case("EXPECT mae <= 0.5 ON dark FOR MODEL resnet", "V003"),
    "metric_needs_ground_truth": Case("EVALUATE reg ON dark", "V003"),
    "population_without_sample_id": Case("EVALUATE resnet ON meta", "V003"),
    "unknown_population": Case("EXPECT accuracy >= 0.9 ON drak FOR MODEL resnet", "N001"),
    "expect_which_model": Case("EXPECT accuracy >= 0.9 ON dark", "V003"),
    "find_failures_detection": Case("FIND FAILURES FOR MODEL det", "V003"),
    "predictions_without_sample_id": Case(
        "session.log_predictions('m', '1', [{'label': 'cat'}])",
        "V001",
        call=lambda s: s.log_predictions("m", "1", [{"label": "cat"}]),
    ),
    "import_missing_file": Case("IMPORT PREDICTIONS FOR MODEL m FROM 'preds.parquet'", "F001"),
}


def provoke(name: str) -> PopQLError:
    case = CASES[name]
    session = make_session()
    if name == "find_failures_detection":
        session.log_predictions("det", "1", [{"sample_id": "a", "detections": []}])
    with pytest.raises(PopQLError) as info:
        if case.call is not None:
            case.call(session)
        else:
            for r in session.execute(case.text, file="query.popql"):
                r.to_arrow()
    return info.value


@pytest.mark.parametrize("name", sorted(CASES))
def test_snapshot(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    case = CASES[name]
    err = provoke(name)
    assert err.code == case.code, str(err)
    assert err.code in CODES
    rendered = str(err)
    for marker in ("Traceback", 'File "'):
        assert marker not in rendered
    data = json.loads(err.to_json())
    assert data[0]["code"] == case.code
    if case.call is None:
        assert data[0]["span"] is not None and data[0]["file"] == "query.popql"
    text = case.text if case.text.endswith("\n") else case.text + "\n"
    actual = f"{text}----\n{rendered}\n"
    path = SNAPSHOTS / f"{name}.txt"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"missing snapshot {path}; run with POPQL_UPDATE_GOLDEN=1"
    assert actual == path.read_text(encoding="utf-8")
