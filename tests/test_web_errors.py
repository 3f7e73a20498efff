"""Snapshot tests of the web view's diagnostics (W001, W002), rendered as the page shows them.

Each case screens PopQL text (``query``) with a read-only :class:`popql.web.WebService` and
compares the rendered error with ``tests/snapshots/web/<name>.txt`` (the input, a ``----`` line,
the rendered output). Regenerate with ``POPQL_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from popql.diagnostics import CODES, PopQLError, from_json, render
from popql.web.service import WebService

SNAPSHOTS = Path(__file__).parent / "snapshots" / "web"
UPDATE = os.environ.get("POPQL_UPDATE_GOLDEN", "") not in ("", "0")

CASES = {
    "write_refused": "CREATE POPULATION dark AS\n  SELECT * FROM samples WHERE brightness < 0.2",
    "write_after_read": "SELECT count(*) FROM samples;\nDROP TABLE samples",
    "explain_analyze_write": "EXPLAIN ANALYZE INSERT INTO samples SELECT * FROM samples",
    "near_image_outside": "SELECT uri FROM samples\nWHERE NEAR IMAGE '/etc/passwd' TOP 5",
    "similarity_image_url": "SELECT SIMILARITY(IMAGE 'http://example.com/x.jpg') FROM samples",
}


@pytest.fixture(scope="module")
def service() -> WebService:
    s = WebService(None)
    s.session.register(
        "samples",
        pa.table({"sample_id": ["0123456789abcdef"], "uri": ["/data/a.jpg"], "brightness": [0.1]}),
    )
    return s


@pytest.mark.parametrize("name", sorted(CASES))
def test_web_error_snapshot(service: WebService, name: str) -> None:
    text = CASES[name]
    with pytest.raises(PopQLError) as info:
        service.screen(text)
    err = info.value
    assert all(d.code in CODES and d.code.startswith("W") for d in err.diagnostics)
    rendered = render(err.diagnostics, text, "query")
    assert "Traceback" not in rendered
    assert from_json(json.dumps([d.to_dict() for d in err.diagnostics])) == list(err.diagnostics)
    snapshot = f"{text}\n----\n{rendered}\n"
    path = SNAPSHOTS / f"{name}.txt"
    if UPDATE or not path.exists():
        path.write_text(snapshot, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == snapshot


def test_reads_pass_the_screen(service: WebService) -> None:
    script = service.screen("SELECT * FROM samples WHERE NEAR IMAGE '/data/a.jpg' TOP 1")
    assert len(script.statements) == 1
