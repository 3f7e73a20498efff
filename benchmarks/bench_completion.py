"""Benchmark of the shell's completion (``popql.repl.completion``) on a large catalog.

The catalog: 500 columns (a ``samples`` table of 300 columns, 100 of them tag columns with
known values, and four tables of 50), 100 populations, 20 models, 3 embedders and DataFusion's
~300 functions. Each of 24 requests (statement start, table after FROM, columns in WHERE,
``alias.``, tag values inside a string, populations after ON, models, embedders after USING,
meta-commands, a second statement of a multi-line buffer...) is completed ``--repeat`` times;
the figures are p50 and p95 per call over all requests, in milliseconds, for:

* ``complete()``: PopQL's context-aware completion (pure function over the text);
* ``prompt_toolkit``: the same through :class:`PopQLCompleter` (``Document`` in, ``Completion``
  objects out), what the shell runs on each key press;
* the baseline, measured in the same run: a naive prefix scan of every name (tables, columns,
  functions, keywords, populations) against the last word, with no context at all.

Also timed: rebuilding the catalog snapshot (``load_metadata``) from a live session holding the
same 500 columns, which the shell does after every statement.

A benchmark, not a test: it prints a table and a PASS/FAIL line against the 50 ms target and
exits 0.

    python benchmarks/bench_completion.py [--repeat 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
TARGET_MS = 50.0

REQUESTS: list[tuple[str, str]] = [
    ("statement start", ""),
    ("statement prefix", "SEL"),
    ("keyword phrase", "CREATE POP"),
    ("meta-command", ".sch"),
    ("meta argument", ".schema sam"),
    ("table after FROM", "SELECT * FROM "),
    ("table prefix", "SELECT * FROM pre"),
    ("columns, no FROM", "SELECT tag_0"),
    ("columns in WHERE", "SELECT * FROM samples WHERE "),
    ("column prefix", "SELECT * FROM samples WHERE tag_1"),
    ("column substring", "SELECT * FROM samples WHERE _42"),
    ("alias.", "SELECT * FROM samples s JOIN preds_1 p ON s.sample_id = p."),
    ("after an expression", "SELECT * FROM samples WHERE tag_3 > 2 "),
    ("tag value", "SELECT * FROM samples WHERE tag_7 = 'val"),
    ("tag value in IN", "SELECT * FROM samples WHERE tag_9 IN ('value_1', 'v"),
    ("TAGGED value", "SELECT * FROM samples WHERE labels TAGGED 'val"),
    ("population after ON", "EVALUATE model_1 ON "),
    ("population prefix", "HOLD OUT 10 PERCENT OF population_4"),
    ("model", "FIND FAILURES FOR MODEL model_"),
    ("embedder", "SELECT uri FROM samples WHERE image SIMILAR TO 'a dog' TOP 5 USING "),
    ("function", "SELECT array_"),
    ("second statement", "SELECT 1;\nSELECT * FROM samples\nWHERE col_2"),
    ("long buffer", "SELECT " + ", ".join(f"col_{i}" for i in range(100)) + " FROM samples WHERE "),
    ("in a comment", "SELECT * FROM samples -- tag_"),
]


def build_catalog() -> tuple[object, object]:
    """A live session with 500 columns, and the Metadata snapshot of it plus populations,
    models, embedders and tag values."""
    import popql.engine as pe
    from popql.repl.completion import load_metadata
    from popql.repl.meta import META_COMMANDS

    session = pe.connect()
    n = 10
    samples: dict[str, object] = {
        "sample_id": ["a"] * n,
        "uri": ["x.jpg"] * n,
        "labels": [["a"]] * n,
    }
    for i in range(100):
        samples[f"tag_{i}"] = [f"value_{j}" for j in range(n)]
    for i in range(197):
        samples[f"col_{i}"] = list(range(n))
    session.register("samples", pa.table(samples))  # 300 columns
    for t in range(4):
        cols: dict[str, object] = {"sample_id": ["a"] * n}
        for i in range(49):
            cols[f"p{t}_col_{i}"] = [0.5] * n
        session.register(f"preds_{t}", pa.table(cols))  # 4 x 50 columns
    meta = load_metadata(session)
    assert sum(len(c) for c in meta.tables.values()) == 500, "the catalog has 500 columns"
    meta.populations = [f"population_{i}" for i in range(100)]
    meta.models = [f"model_{i}" for i in range(20)]
    meta.embedders = ["clip", "fmnist_clip", "siglip"]
    meta.meta_commands = tuple(META_COMMANDS)
    for i in range(100):
        meta.tag_values[("samples", f"tag_{i}")] = tuple(f"value_{j}" for j in range(30))
    meta.tag_values[("samples", "labels")] = tuple(f"value_{j}" for j in range(30))
    return session, meta


def naive_names(meta: object) -> list[str]:
    from popql.repl.highlight import grammar_keywords

    names = list(meta.tables)  # type: ignore[attr-defined]
    for cols in meta.tables.values():  # type: ignore[attr-defined]
        names.extend(c.name for c in cols)
    names.extend(meta.functions)  # type: ignore[attr-defined]
    names.extend(meta.populations)  # type: ignore[attr-defined]
    names.extend(sorted(grammar_keywords()))
    return names


def naive_complete(text: str, names: list[str]) -> list[str]:
    """The baseline: the last word, prefix-matched against every name."""
    word = ""
    for ch in reversed(text):
        if not (ch.isalnum() or ch == "_"):
            break
        word = ch + word
    w = word.lower()
    return [n for n in names if n.lower().startswith(w)]


def timed(fn: Callable[[str], object], texts: list[str], repeat: int) -> list[float]:
    out = []
    for text in texts:
        fn(text)  # warm
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn(text)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200, help="timed calls per request")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    from popql.repl.completion import PopQLCompleter, complete, load_metadata

    session, meta = build_catalog()
    names = naive_names(meta)
    texts = [t for _, t in REQUESTS]
    completer = PopQLCompleter(lambda: meta)  # type: ignore[arg-type, return-value]
    event = CompleteEvent(completion_requested=True)

    per_request = []
    for label, text in REQUESTS:
        got = complete(text, None, meta)  # type: ignore[arg-type]
        per_request.append((label, len(got), got[0].text if got else "-"))

    ours = timed(lambda t: complete(t, None, meta), texts, args.repeat)  # type: ignore[arg-type]
    via_pt = timed(
        lambda t: list(completer.get_completions(Document(t), event)), texts, args.repeat
    )
    naive = timed(lambda t: naive_complete(t, names), texts, args.repeat)
    refresh = timed(lambda _t: load_metadata(session), ["x"], max(5, args.repeat // 10))

    columns: int = sum(len(c) for c in meta.tables.values())  # type: ignore[attr-defined, misc]
    print(
        f"catalog: {len(meta.tables)} tables, {columns} columns, "  # type: ignore[attr-defined]
        f"{len(meta.populations)} populations, {len(meta.models)} models, "  # type: ignore[attr-defined]
        f"{len(meta.functions)} functions, {len(names)} names in the baseline's list; "  # type: ignore[attr-defined]
        f"{len(REQUESTS)} requests x {args.repeat} calls\n"
    )
    print("| request | suggestions | first |")
    print("|---|---:|---|")
    for label, count, first in per_request:
        print(f"| {label} | {count} | `{first}` |")
    print()
    print("| what | p50 ms | p95 ms | max ms |")
    print("|---|---:|---:|---:|")
    rows = [
        ("complete() (context-aware)", ours),
        ("through prompt_toolkit (PopQLCompleter)", via_pt),
        ("baseline: naive prefix scan, no context", naive),
        ("catalog snapshot rebuild (load_metadata, after each statement)", refresh),
    ]
    for label, values in rows:
        print(f"| {label} | {pct(values, 0.5):.3f} | {pct(values, 0.95):.3f} | {max(values):.3f} |")
    ratio50 = pct(ours, 0.5) / pct(naive, 0.5)
    ratio95 = pct(ours, 0.95) / pct(naive, 0.95)
    print(f"\ncomplete() / baseline: {ratio50:.1f}x at p50, {ratio95:.1f}x at p95")
    worst = pct(via_pt, 0.95)
    verdict = "PASS" if worst < TARGET_MS else "FAIL"
    print(f"{verdict}: p95 through prompt_toolkit {worst:.2f} ms (target < {TARGET_MS:.0f} ms)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "complete_ms": ours,
                    "prompt_toolkit_ms": via_pt,
                    "baseline_ms": naive,
                    "refresh_ms": refresh,
                    "median_complete_ms": statistics.median(ours),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
