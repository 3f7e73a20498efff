"""Crash safety: a writer killed with SIGKILL at random moments never damages a dataset.

A small writer script commits many small transactions in a loop (appending new ids to
``samples`` and a tag table, sometimes deleting and re-adding an id, sometimes vacuuming). It is
idempotent the way ingest is: each transaction skips ids the dataset already holds. Each run
starts the writer on a fresh dataset, kills it after a random delay, then checks that

* the dataset opens and ``check()`` reports no error (leftovers are notes only);
* its version is the last one the writer reported committing, or the one it was committing;
* that version holds exactly the rows of that many commits, with the tag table in step;
* re-running the writer finishes the job with every id exactly once, and vacuum then leaves
  no leftovers.

Python and pyarrow take seconds to start here, so the writers are forked from one "zygote"
process that imported everything once (nothing that starts threads runs before the fork).
"""

from __future__ import annotations

import os
import random
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from popql.engine.dataset import Dataset

RUNS = int(os.environ.get("POPQL_KILL_RUNS", "24"))
TOTAL = 10_000  # ids the writer would add (it is always killed long before)
BATCH = 5

WRITER = r'''
import os
import sys

import pyarrow as pa

from popql.engine.dataset import Dataset

TAGGER = {"version": "1", "table": "tags.t@1", "columns": {"score": "double"}}


def all_ids(total):
    return [f"id{i:06d}" for i in range(total)]


def write(root, total, batch, vacuum_every=0, emit=print):
    """Add ids in chunks of ``batch``, one transaction each, skipping ids already there."""
    ds = Dataset.open(root, create=True, lock_timeout=30)
    emit("ready")
    wanted = all_ids(total)
    commits = 0
    while True:
        with ds.transaction("chunk") as tx:
            if "samples" in tx.base.tables:
                have = set(tx.base.table("samples").column("sample_id").to_pylist())
            else:
                have = set()
            todo = [i for i in wanted if i not in have][:batch]
            if not todo:
                tx.rollback()
                break
            emit(f"begin {tx.base.version + 1}")
            if commits % 3 == 2 and have:
                # rewrite a committed row: delete it and add it again (copy on write)
                victim = min(have)
                tx.delete_where("samples", {victim})
                tx.delete_where("tags.t@1", {victim})
                todo.append(victim)
            tx.append("samples", pa.table({"sample_id": todo, "uri": [f"u/{i}" for i in todo]}))
            tx.append("tags.t@1", pa.table({"sample_id": todo, "score": [1.0] * len(todo)}))
            tx.set_tagger("t", TAGGER)
            version = tx.commit()
            emit(f"committed {version}")
        commits += 1
        if vacuum_every and commits % vacuum_every == 0:
            emit("vacuum")
            ds.vacuum(keep_versions=2)
            emit("vacuumed")
    emit("done")


def zygote():
    """Fork a writer per request: 'fork ROOT LOG' -> 'pid N'; 'wait N' -> 'status S'."""
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "fork":
            root, log, total, batch, vacuum_every = args
            pid = os.fork()
            if pid == 0:
                try:
                    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

                    def emit(text):
                        os.write(fd, (text + "\n").encode())

                    write(root, int(total), int(batch), int(vacuum_every), emit)
                    os._exit(0)
                except BaseException:
                    import traceback

                    traceback.print_exc()
                    os._exit(1)
            print(f"pid {pid}", flush=True)
        elif cmd == "wait":
            _, status = os.waitpid(int(args[0]), 0)
            print(f"status {status}", flush=True)


if __name__ == "__main__":
    print("zygote", flush=True)
    zygote()
'''


@pytest.fixture(scope="module")
def writer_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("writer") / "writer.py"
    path.write_text(WRITER, encoding="utf-8")
    return path


class Zygote:
    def __init__(self, script: Path) -> None:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self._read() == "zygote"

    def _read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, "the zygote process died"
        return line

    def _ask(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._read()

    def fork(self, root: Path, log: Path, vacuum_every: int) -> int:
        reply = self._ask(f"fork {root} {log} {TOTAL} {BATCH} {vacuum_every}")
        return int(reply.split()[1])

    def wait(self, pid: int) -> int:
        return int(self._ask(f"wait {pid}").split()[1])

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(30)
        self.proc.stdout.close()


def _wait_for(log: Path, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text().split("\n"):
            return
        time.sleep(0.002)
    raise AssertionError(f"the writer never printed {text!r}: {log.read_text()!r}")


def _events(log: Path) -> list[str]:
    return [line for line in log.read_text().split("\n") if line]


def _verify(root: Path, events: list[str], context: str) -> int:
    """Everything that must hold after a kill; returns the dataset version."""
    ds = Dataset.open(root)
    found = ds.check(leftovers=True)
    assert [d for d in found if d.severity != "note"] == [], f"{context}: {found}"
    assert ds.check() == [], context
    committed = [int(e.split()[1]) for e in events if e.startswith("committed ")]
    begun = [int(e.split()[1]) for e in events if e.startswith("begin ")]
    last = max(committed, default=0)
    version = ds.version()
    assert version == last or (version == last + 1 and version in begun), (
        f"{context}: version {version}, writer reported {events[-3:]}"
    )
    snap = ds.snapshot()
    if version == 0:
        assert snap.tables == {}
        return version
    ids = snap.table("samples").column("sample_id").to_pylist()
    tagged = snap.table("tags.t@1").column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == version * BATCH, f"{context}: {len(ids)} rows"
    assert sorted(ids) == sorted(tagged), context
    assert snap.taggers["t"]["table"] == "tags.t@1"
    return version


@pytest.mark.slow
def test_sigkill_at_random_moments(writer_script: Path, tmp_path: Path) -> None:
    write: Any = runpy.run_path(str(writer_script))["write"]
    seed = int(os.environ.get("POPQL_KILL_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    zygote = Zygote(writer_script)
    started = time.monotonic()
    stats: dict[str, int] = {}
    try:
        for run in range(RUNS):
            root = tmp_path / f"run{run}"
            log = tmp_path / f"run{run}.log"
            vacuum_every = rng.choice([0, 2, 3])
            pid = zygote.fork(root, log, vacuum_every)
            _wait_for(log, "ready")
            # mostly somewhere in the first few commits, sometimes right at the start
            delay = rng.uniform(0, 0.02) if run % 4 == 0 else rng.uniform(0, 0.5)
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            status = zygote.wait(pid)
            events = _events(log)
            context = f"run {run} (seed {seed}, delay {delay:.3f}s)"
            assert "done" not in events, f"{context}: the writer finished before the kill"
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, context
            last = events[-1].split()[0]
            stats[last] = stats.get(last, 0) + 1
            version = _verify(root, events, context)
            # re-running the writer completes the job: every id exactly once
            write(str(root), TOTAL, TOTAL, emit=lambda _: None)
            ds = Dataset.open(root)
            assert ds.version() == version + 1, context
            ids = ds.snapshot().table("samples").column("sample_id").to_pylist()
            assert sorted(ids) == [f"id{i:06d}" for i in range(TOTAL)], context
            tagged = ds.snapshot().table("tags.t@1").column("sample_id").to_pylist()
            assert sorted(tagged) == sorted(ids), context
            assert ds.check() == [], context
            ds.vacuum()
            assert ds.check(leftovers=True) == [], context
    finally:
        zygote.close()
    elapsed = time.monotonic() - started
    print(f"\n{RUNS} SIGKILL runs in {elapsed:.1f}s (seed {seed}); killed after: {stats}")
