"""Readers never see errors or partial versions while a writer commits.

Two reader processes query the dataset in a loop through ``popql.connect`` -- one opens a new
session per query, one keeps a session and calls ``refresh()`` -- while this process commits
versions (appends, copy-on-write deletes, tag-table replaces). Every observation must be
exactly the row counts of the version the reader's session reports, and the tag table must
always be in step with the samples of the same version.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from popql.engine.dataset import Dataset

COMMITS = 40

READER = r"""
import json
import os
import sys

import popql

root, stop, mode = sys.argv[1:4]
session = popql.connect(root)
print("ready", flush=True)
while not os.path.exists(stop):
    try:
        if mode == "connect":
            session = popql.connect(root)
        else:
            session.refresh()
        row = session.sql(
            "SELECT count(*) AS n, count(score) AS tagged, count(DISTINCT sample_id) AS ids "
            "FROM samples"
        ).to_pylist()[0]
        tags = 0
        if "tags.t@1" in session.tables():
            tags = session.sql('SELECT count(*) AS n FROM "tags.t@1"').to_pylist()[0]["n"]
        print(json.dumps({"version": session.version, "tags": tags, **row}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
"""


def _ids(start: int, n: int) -> list[str]:
    return [f"s{i:05d}" for i in range(start, start + n)]


@pytest.mark.slow
def test_readers_see_only_committed_versions(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    ds = Dataset.open(root, create=True)
    # version -> (rows in samples, tagged rows, rows in the tag table)
    expected: dict[int, tuple[int, int, int]] = {}
    live: list[str] = []
    next_id = 0

    def commit(i: int) -> None:
        nonlocal live, next_id
        with ds.transaction(f"commit {i}") as tx:
            new = _ids(next_id, 7 + i % 5)
            next_id += len(new)
            tx.append("samples", pa.table({"sample_id": new, "uri": new}))
            live += new
            gone: set[str] = set()
            if i % 4 == 3:  # delete a few (rewrites data files)
                gone = set(live[::5])
                tx.delete_where("samples", gone)
                live = [x for x in live if x not in gone]
            # the tag table follows the samples: replaced every 3rd commit, else the rows
            # of deleted samples are deleted and the new samples' rows appended
            if i % 3 == 0:
                tx.replace("tags.t@1", pa.table({"sample_id": live, "score": [0.5] * len(live)}))
            else:
                tx.delete_where("tags.t@1", gone)
                added = [x for x in new if x not in gone]
                tx.append("tags.t@1", pa.table({"sample_id": added, "score": [0.5] * len(added)}))
            tx.set_tagger("t", {"version": "1", "table": "tags.t@1"})
            version = tx.commit()
        expected[version] = (len(live), len(live), len(live))

    commit(0)  # the readers' query needs the tagger's column
    script = tmp_path / "reader.py"
    script.write_text(READER, encoding="utf-8")
    stop = tmp_path / "stop"
    readers = [
        subprocess.Popen(
            [sys.executable, str(script), str(root), str(stop), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in ("connect", "refresh")
    ]
    lines: list[list[str]] = [[] for _ in readers]
    try:
        for proc in readers:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        started = time.monotonic()
        for i in range(1, COMMITS):
            commit(i)
            # Pace the writer on the readers: each reader answers one more query before the
            # next commit, so the readers overlap the writes however loaded the machine is.
            for proc, got in zip(readers, lines, strict=True):
                assert proc.stdout is not None
                got.append(proc.stdout.readline())
        writing = time.monotonic() - started
        # let each reader see the last version (its output is read as it comes)
        for proc, got in zip(readers, lines, strict=True):
            assert proc.stdout is not None
            while True:
                line = proc.stdout.readline()
                if not line:
                    break
                got.append(line)
                if json.loads(line).get("version") == COMMITS:
                    break
    finally:
        stop.touch()
        outputs = []
        for proc, got in zip(readers, lines, strict=True):
            out, err = proc.communicate(timeout=60)
            outputs.append(("".join(got) + out, err, proc.returncode))
    for (out, err, rc), mode in zip(outputs, ("connect", "refresh"), strict=True):
        assert rc == 0, err
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        failures = [r for r in rows if "error" in r]
        assert failures == [], failures[:3]
        for r in rows:
            assert (r["n"], r["tagged"], r["tags"]) == expected[r["version"]], (mode, r)
            assert r["ids"] == r["n"], (mode, r)
        seen = {r["version"] for r in rows}
        assert len(seen) >= 3, f"{mode}: saw versions {sorted(seen)}"
        assert max(seen) == COMMITS, mode
        print(
            f"\n{mode}: {len(rows)} queries, {len(seen)} of {COMMITS} versions seen, "
            f"{COMMITS - 1} commits in {writing:.1f}s"
        )
    assert Dataset.open(root).check() == []
