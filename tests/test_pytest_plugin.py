"""The pytest plugin's collection is opt-in: the project's own corpus is never collected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def pytest_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_plugin_is_registered() -> None:
    proc = pytest_run("--help", cwd=ROOT)
    assert "--popql-model" in proc.stdout and "popql_suites" in proc.stdout


def test_the_parser_corpus_is_not_collected() -> None:
    corpus = sorted((ROOT / "tests" / "corpus").rglob("*.popql"))
    assert len(corpus) > 20
    assert any("EXPECT" in f.read_text() for f in corpus)  # they would be collectable
    proc = pytest_run("--collect-only", "-q", "tests/corpus", cwd=ROOT)
    assert proc.returncode == 5, proc.stdout + proc.stderr  # pytest: no tests collected
    assert ".popql" not in proc.stdout


def test_suite_files_with_expectations_are_collected(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    pq.write_table(
        pa.table({"sample_id": ["a", "b", "c", "d"], "label": ["x", "y", "x", "y"]}),
        tmp_path / "samples.parquet",
    )
    pq.write_table(
        pa.table({"sample_id": ["a", "b", "c", "d"], "label": ["x", "y", "x", "x"]}),
        tmp_path / "preds.parquet",
    )
    setup = (
        "CREATE EXTERNAL TABLE samples STORED AS PARQUET "
        f"LOCATION '{tmp_path / 'samples.parquet'}';\n"
        "IMPORT PREDICTIONS FOR MODEL m FROM 'preds.parquet';\n"
    )
    (tmp_path / "test_gates.popql").write_text(
        setup + "EXPECT accuracy >= 0.5 ON samples;\nEXPECT accuracy >= 0.9 ON samples;\n"
    )
    (tmp_path / "test_queries.popql").write_text("SELECT 1;\n")  # no EXPECT: not a suite
    (tmp_path / "gates.popql").write_text(setup + "EXPECT accuracy >= 0.5 ON samples;\n")  # name
    # 3 of 4 right: the Wilson interval [0.30, 0.95] straddles both thresholds
    proc = pytest_run("-q", "-rs", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 skipped" in proc.stdout and "straddles the threshold" in proc.stdout
    # the point estimate decides under popql_decide = point
    (tmp_path / "pytest.ini").write_text("[pytest]\npopql_decide = point\n")
    proc = pytest_run("-q", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout
    assert "FAIL: EXPECT accuracy >= 0.9 ON samples" in proc.stdout
    proc = pytest_run("--collect-only", "-q", str(tmp_path), cwd=tmp_path)
    assert "test_gates.popql::" in proc.stdout
    assert "test_queries.popql" not in proc.stdout and "gates.popql::" not in proc.stdout.replace(
        "test_gates.popql::", ""
    )


def test_a_suite_that_does_not_parse_is_reported(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_broken.popql").write_text("EXPECT accuracy >= ON samples;\n")
    proc = pytest_run("-q", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # pytest: collection errors
    assert "error[P001]" in proc.stdout and "test_broken.popql:1:" in proc.stdout
    assert "Traceback" not in proc.stdout
