#!/usr/bin/env python
"""PopQL front-end and end-to-end benchmark (a benchmark script, not a test).

    python benchmarks/bench_frontend.py              # 10M-row end-to-end table
    python benchmarks/bench_frontend.py --quick      # 1M rows, fewer repetitions
    python benchmarks/bench_frontend.py --rows 3_000_000 --only e2e

Every figure is printed next to a baseline measured in the same run, on the same machine:

1. Front-end cost per statement, over the PopQL corpus (``tests/corpus/queries/*.popql``) and
   the DataFusion conformance SQL (``../shared/conformance``, files of ``core_subset.txt``):
   ``popql.syntax.parse``, then ``popql.engine.lower.compile_statement`` (check + lower),
   against DataFusion's own planning of the same text (``SessionContext.sql``).  One-time
   costs (building or loading the Lark LALR tables, the first parse) are measured and
   reported separately, never mixed into the per-statement figures.
2. End to end on a generated Parquet table of image tags (``bench-data/tags_<rows>.parquet``):
   ``Session.sql(q).to_arrow()`` against ``SessionContext.sql(sql).to_arrow_table()`` on the
   equivalent plain DataFusion SQL, interleaved, median of several runs, with the targets
   "overhead <= 5 ms per query" and "overhead <= 5 % on queries slower than 100 ms".
3. A Markdown summary that can be pasted into benchmarks/README.md.

See benchmarks/README.md for what exactly is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import glob
import io
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFORMANCE = REPO.parent / "shared" / "conformance"
DEFAULT_DATA_DIR = REPO / "bench-data"
CORPUS_DIR = REPO / "tests" / "corpus" / "queries"

OVERHEAD_MS_TARGET = 5.0
OVERHEAD_PCT_TARGET = 5.0
SLOW_QUERY_MS = 100.0

_now = time.perf_counter_ns


def _ms(ns: int) -> float:
    return ns / 1e6


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def fmt_ms(v: float | None) -> str:
    if v is None or math.isnan(v):
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def print_table(headers: list[str], rows: list[list[str]], right: Iterable[int] = ()) -> None:
    right = set(right)
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def heading(text: str) -> None:
    print()
    print(text)
    print("=" * len(text))


# ================================================================================================
# 1. Front-end cost per statement
# ================================================================================================


@dataclass
class Item:
    source: str  # "corpus" or "conformance"
    file: str
    sql: str
    kind: str = ""  # slt record kind: "statement" / "query" ("" for the corpus)
    apply: bool = False  # run it (untimed) after timing, so later statements see its effects


@dataclass
class Timing:
    source: str
    parse_ms: float
    compile_ms: float
    df_ms: float
    parsed: bool
    statements: int
    lower_errors: int
    internal_errors: int
    df_status: str  # "ok", "refused" (planned; DDL/DML/SET stopped before running) or "error"

    @property
    def front_ms(self) -> float:
        return self.parse_ms + self.compile_ms


@dataclass
class OneTime:
    import_ms: float = 0.0
    parser_load_ms: float = 0.0
    parser_cache_hit: bool | None = None
    first_parse_ms: float = 0.0
    first_compile_ms: float = 0.0
    first_df_plan_ms: float = 0.0
    cold_build_ms: float | None = None
    lark_cache_dir: str = ""


def _lark_cache_files() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), ".lark_cache_*.tmp")))


def measure_one_time(cold_build: bool) -> OneTime:
    """Import, Lark table load (from the on-disk cache when present) and first-call costs."""
    out = OneTime(lark_cache_dir=tempfile.gettempdir())
    before = _lark_cache_files()
    t0 = _now()
    from popql import syntax

    t1 = _now()
    syntax.parser()
    t2 = _now()
    out.import_ms = _ms(t1 - t0)
    out.parser_load_ms = _ms(t2 - t1)
    out.parser_cache_hit = not (_lark_cache_files() - before)

    # The first parse compiles the contextual lexer's regular expressions lazily.
    text = "SELECT a, count(*) FROM t WHERE b > 1 AND labels TAGGED 'x' GROUP BY a ORDER BY a"
    t0 = _now()
    script = syntax.parse(text)
    out.first_parse_ms = _ms(_now() - t0)

    import popql.engine as pe
    from popql.diagnostics import PopQLError
    from popql.engine.lower import compile_statement

    session = pe.connect()
    t0 = _now()
    for stmt in script.statements:
        with contextlib.suppress(PopQLError):
            compile_statement(stmt, session.catalog)
    out.first_compile_ms = _ms(_now() - t0)
    t0 = _now()
    with contextlib.suppress(Exception):
        session.ctx.sql("SELECT 1 AS one WHERE 1 > 0")
    out.first_df_plan_ms = _ms(_now() - t0)

    if cold_build:
        from lark import Lark

        options = dict(syntax.parser().options.options)
        options["cache"] = False
        t0 = _now()
        Lark(syntax.grammar_text(), **options)
        out.cold_build_ms = _ms(_now() - t0)
    return out


def corpus_items() -> list[Item]:
    """One item per statement of every ``tests/corpus/queries/*.popql`` file."""
    from popql import syntax
    from popql.diagnostics import PopQLError

    items: list[Item] = []
    for path in sorted(CORPUS_DIR.glob("*.popql")):
        text = path.read_text(encoding="utf-8")
        try:
            script = syntax.parse(text, file=str(path))
        except PopQLError:
            items.append(Item("corpus", path.name, text))
            continue
        for stmt in script.statements:
            span = stmt.span
            piece = text if span is None else text[span.start : span.end]
            items.append(Item("corpus", path.name, piece))
    return items


def conformance_items(conformance: Path, workspace: str) -> list[Item]:
    """Statement and query records of the core-subset sqllogictest files, in file order.

    Paths in the SQL are rewritten into a scratch copy of DataFusion's test workspace (as the
    conformance runner does) so that CREATE EXTERNAL TABLE and friends find their data files.
    """
    listing = conformance / "core_subset.txt"
    if not listing.is_file():
        return []
    sys.path.insert(0, str(conformance))
    import slt_runner  # type: ignore[import-not-found]

    cwd = slt_runner.setup_workspace(str(conformance / "data"), workspace)
    items: list[Item] = []
    for raw in listing.read_text(encoding="utf-8").splitlines():
        name = raw.split("#", 1)[0].strip()
        if not name:
            continue
        path = conformance / "test_files" / name
        if not path.is_file():
            continue
        try:
            records = slt_runner.parse_file(str(path))
        except Exception as exc:
            print(f"warning: cannot parse {path}: {exc}", file=sys.stderr)
            continue
        planned, _ = slt_runner.plan_records(records, slt_runner.DEFAULT_LABELS)
        for rec, counted in planned:
            if not counted or rec.kind not in ("statement", "query"):
                continue
            sql = slt_runner.rewrite_paths(rec.sql, cwd)
            items.append(Item("conformance", name, sql, rec.kind, apply=rec.kind == "statement"))
    return items


def _plan_only_options() -> Any:
    from datafusion import SQLOptions

    # Same planning as ctx.sql(text); the verification step after planning refuses DDL, DML
    # and SET, so timing a CREATE TABLE measures its planning, never its execution.
    return SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)


_REFUSED = re.compile(r"\b(DDL|DML|Statement) not supported: ")


def time_item(item: Item, session: Any, repeat: int, options: Any) -> Timing:
    from popql import syntax
    from popql.diagnostics import PopQLError
    from popql.engine.lower import compile_statement

    text = item.sql
    catalog = session.catalog
    ctx = session.ctx
    best_parse = best_compile = best_df = None
    script = None
    parsed = False
    lower_errors = internal_errors = 0
    df_status = "error"
    for _ in range(repeat):
        # parse
        t0 = _now()
        try:
            script = syntax.parse(text)
            parsed = True
        except PopQLError:
            script = None
        except Exception:  # RecursionError and such: still timed
            script = None
        t1 = _now()
        # check + lower
        errors = internal = 0
        if script is not None:
            for stmt in script.statements:
                try:
                    compile_statement(stmt, catalog)
                except PopQLError:
                    errors += 1
                except Exception:
                    internal += 1
        t2 = _now()
        # DataFusion's planning of the same text (the baseline)
        try:
            ctx.sql_with_options(text, options)
            status = "ok"
        except Exception as exc:
            status = "refused" if _REFUSED.search(str(exc)) else "error"
        t3 = _now()
        lower_errors, internal_errors, df_status = errors, internal, status
        p, c, d = t1 - t0, t2 - t1, t3 - t2
        best_parse = p if best_parse is None else min(best_parse, p)
        best_compile = c if best_compile is None else min(best_compile, c)
        best_df = d if best_df is None else min(best_df, d)
    assert best_parse is not None and best_compile is not None and best_df is not None
    return Timing(
        source=item.source,
        parse_ms=_ms(best_parse),
        compile_ms=_ms(best_compile),
        df_ms=_ms(best_df),
        parsed=parsed,
        statements=len(script.statements) if script is not None else 0,
        lower_errors=lower_errors,
        internal_errors=internal_errors,
        df_status=df_status,
    )


def run_frontend(args: argparse.Namespace) -> dict[str, Any]:
    heading("1. Front-end cost per statement")
    one = measure_one_time(cold_build=not args.no_cold_build)
    hit = (
        "loaded from Lark's on-disk cache"
        if one.parser_cache_hit
        else "built and written to the cache (no cache file yet)"
    )
    print("One-time costs (excluded from the per-statement figures below):")
    rows = [
        ["import popql.syntax", fmt_ms(one.import_ms), ""],
        ["first popql.syntax.parser()", fmt_ms(one.parser_load_ms), hit],
        ["first parse (lexer set-up)", fmt_ms(one.first_parse_ms), ""],
        ["first compile_statement", fmt_ms(one.first_compile_ms), ""],
        ["first DataFusion ctx.sql", fmt_ms(one.first_df_plan_ms), ""],
    ]
    if one.cold_build_ms is not None:
        rows.append(
            [
                "Lark LALR build, cache=False",
                fmt_ms(one.cold_build_ms),
                "what a cold first run pays",
            ]
        )
    print_table(["step", "ms", "note"], rows, right=[1])
    print(f"(Lark cache files live in {one.lark_cache_dir}/.lark_cache_*.tmp)")

    import popql.engine as pe

    with tempfile.TemporaryDirectory(prefix="popql-bench-ws-") as workspace:
        items = corpus_items() + conformance_items(args.conformance, workspace)
        if not items:
            print("no statements found (no tests/corpus/queries and no conformance files)")
            return {}
        options = _plan_only_options()
        timings: list[Timing] = []
        started = time.perf_counter()
        session = None
        current = None
        for item in items:
            if (item.source, item.file) != current:
                current = (item.source, item.file)
                session = pe.connect()  # a fresh, empty session per file
            assert session is not None
            timings.append(time_item(item, session, args.repeat, options))
            if item.apply:
                # Untimed: let later statements of the file see the tables it creates.
                with contextlib.suppress(Exception):
                    session.ctx.sql(item.sql).collect()
        elapsed = time.perf_counter() - started

    n_files = len({(i.source, i.file) for i in items})
    print()
    print(
        f"{len(timings)} statements from {n_files} files "
        f"({sum(t.source == 'corpus' for t in timings)} corpus, "
        f"{sum(t.source == 'conformance' for t in timings)} conformance); "
        f"min of {args.repeat} repetition(s) per statement; {elapsed:.1f} s"
    )
    print(
        f"PopQL parse failures: {sum(not t.parsed for t in timings)}; "
        f"statements refused by check/lower (PopQLError): {sum(t.lower_errors for t in timings)}; "
        f"other exceptions in compile_statement: {sum(t.internal_errors for t in timings)}; "
        f"DataFusion: {sum(t.df_status == 'ok' for t in timings)} planned, "
        f"{sum(t.df_status == 'refused' for t in timings)} planned then stopped before running "
        f"(DDL/DML/SET), {sum(t.df_status == 'error' for t in timings)} errors"
    )

    summary: dict[str, Any] = {"one_time": one.__dict__, "groups": {}}
    for group in ("all", "corpus", "conformance"):
        sel = [t for t in timings if group == "all" or t.source == group]
        if not sel:
            continue
        print()
        print(f"{group}: {len(sel)} statements, ms per statement")
        stages: list[tuple[str, list[float]]] = [
            ("parse", [t.parse_ms for t in sel]),
            ("check + lower", [t.compile_ms for t in sel]),
            ("parse + check + lower", [t.front_ms for t in sel]),
            ("DataFusion ctx.sql (baseline)", [t.df_ms for t in sel]),
        ]
        rows = []
        stats: dict[str, dict[str, float]] = {}
        for name, values in stages:
            s = {
                "median": statistics.median(values),
                "p95": percentile(values, 95),
                "max": max(values),
                "total": sum(values),
            }
            stats[name] = s
            rows.append(
                [name, fmt_ms(s["median"]), fmt_ms(s["p95"]), fmt_ms(s["max"]), fmt_ms(s["total"])]
            )
        ratios = [t.front_ms / t.df_ms for t in sel if t.df_ms > 0]
        front, base = stats["parse + check + lower"], stats["DataFusion ctx.sql (baseline)"]
        ratio = {
            "median": statistics.median(ratios),
            "p95": percentile(ratios, 95),
            "max": max(ratios),
            "total": front["total"] / base["total"],
        }
        stats["ratio"] = ratio
        rows.append(
            [
                "ratio front end / DataFusion",
                f"{ratio['median']:.2f}x",
                f"{ratio['p95']:.2f}x",
                f"{ratio['max']:.1f}x",
                f"{ratio['total']:.2f}x",
            ]
        )
        print_table(["stage", "median", "p95", "max", "sum"], rows, right=[1, 2, 3, 4])
        if group == "all":
            print(
                "(ratio rows: per-statement ratio (PopQL parse+check+lower) / (DataFusion "
                "planning); the 'sum' column is the ratio of the sums)"
            )
        summary["groups"][group] = {"n": len(sel), **stats}

    if args.show_slowest:
        print()
        print(f"slowest {args.show_slowest} statements by parse + check + lower:")
        ranked = sorted(zip(timings, items, strict=True), key=lambda ti: -ti[0].front_ms)
        rows = []
        for t, it in ranked[: args.show_slowest]:
            snippet = " ".join(it.sql.split())[:70]
            rows.append(
                [it.file, fmt_ms(t.parse_ms), fmt_ms(t.compile_ms), fmt_ms(t.df_ms), snippet]
            )
        print_table(["file", "parse", "lower", "DF", "sql"], rows, right=[1, 2, 3])
    return summary


# ================================================================================================
# 2. End to end on a Parquet table of tags
# ================================================================================================

WEATHER = ["sunny", "rainy", "snowy", "foggy", "night"]
WEATHER_P = [0.45, 0.2, 0.08, 0.12, 0.15]
VOCAB = ["car", "person", "bus", "truck", "bicycle", "dog", "traffic_light", "night", "crosswalk"]
VOCAB_P = [0.25, 0.2, 0.06, 0.08, 0.07, 0.05, 0.12, 0.1, 0.07]
ROW_GROUP = 1_000_000
DATA_VERSION = "tags-v1-seed-20240611"


def tags_path(data_dir: Path, rows: int) -> Path:
    return data_dir / f"tags_{rows}.parquet"


def ensure_tags_table(data_dir: Path, rows: int) -> tuple[Path, float | None]:
    """Write ``tags_<rows>.parquet`` once (numpy, fixed seed); return (path, seconds or None)."""
    import pyarrow.parquet as pq

    path = tags_path(data_dir, rows)
    if path.exists():
        try:
            meta = pq.ParquetFile(path).metadata
            kv = meta.metadata or {}
            if meta.num_rows == rows and kv.get(b"popql_bench") == DATA_VERSION.encode():
                return path, None
        except Exception:
            pass
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    write_tags_table(path, rows)
    return path, time.perf_counter() - started


def tags_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("sample_id", pa.int64()),
            ("num_faces", pa.int32()),
            ("num_people", pa.int32()),
            ("brightness", pa.float32()),
            ("road_pct", pa.float32()),
            ("ocean_pct", pa.float32()),
            ("weather", pa.string()),
            ("labels", pa.list_(pa.string())),
        ],
        metadata={"popql_bench": DATA_VERSION},
    )


def write_tags_table(path: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(20240611)
    schema = tags_schema()
    weather_values = pa.array(WEATHER, pa.string())
    vocab_values = pa.array(VOCAB, pa.string())
    tmp = path.with_suffix(".parquet.tmp")
    with pq.ParquetWriter(tmp, schema, compression="snappy") as writer:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            counts = rng.integers(0, 4, n)  # 0-3 labels per sample
            offsets = np.zeros(n + 1, dtype=np.int32)
            np.cumsum(counts, out=offsets[1:])
            label_idx = rng.choice(len(VOCAB), int(offsets[-1]), p=VOCAB_P)
            weather_idx = rng.choice(len(WEATHER), n, p=WEATHER_P)
            columns = [
                pa.array(np.arange(start, start + n, dtype=np.int64)),
                pa.array(np.minimum(rng.poisson(0.8, n), 20).astype(np.int32)),
                pa.array(np.minimum(rng.poisson(2.5, n), 50).astype(np.int32)),
                pa.array(rng.random(n, dtype=np.float32)),
                pa.array(rng.beta(0.6, 1.8, n).astype(np.float32)),
                pa.array(rng.beta(0.5, 2.5, n).astype(np.float32)),
                weather_values.take(pa.array(weather_idx)),
                pa.ListArray.from_arrays(pa.array(offsets), vocab_values.take(pa.array(label_idx))),
            ]
            batch = pa.RecordBatch.from_arrays(columns, schema=schema)
            writer.write_batch(batch, row_group_size=ROW_GROUP)
    os.replace(tmp, path)


@dataclass(frozen=True)
class E2EQuery:
    name: str
    popql: str
    sql: str  # the equivalent plain DataFusion SQL


E2E_QUERIES: list[E2EQuery] = [
    E2EQuery(
        "count_all",
        "SELECT count(*) FROM samples",
        "SELECT count(*) FROM samples",
    ),
    E2EQuery(
        "people_sunny",
        "SELECT count(*) FROM samples WHERE num_people > 5 AND weather = 'sunny'",
        "SELECT count(*) FROM samples WHERE num_people > 5 AND weather = 'sunny'",
    ),
    E2EQuery(
        "road_ocean",
        "SELECT count(*) FROM samples WHERE road_pct < 0.1 AND ocean_pct > 0.7",
        "SELECT count(*) FROM samples WHERE road_pct < 0.1 AND ocean_pct > 0.7",
    ),
    E2EQuery(
        "by_weather",
        "SELECT weather, count(*) AS n, avg(brightness) AS brightness FROM samples"
        " GROUP BY weather ORDER BY weather",
        "SELECT weather, count(*) AS n, avg(brightness) AS brightness FROM samples"
        " GROUP BY weather ORDER BY weather",
    ),
    E2EQuery(
        "top_brightness",
        "SELECT sample_id, brightness, weather FROM samples"
        " ORDER BY brightness DESC, sample_id LIMIT 10",
        "SELECT sample_id, brightness, weather FROM samples"
        " ORDER BY brightness DESC, sample_id LIMIT 10",
    ),
    E2EQuery(
        "faces_stats",
        "SELECT num_faces, count(*) AS n, avg(road_pct) AS road, max(ocean_pct) AS ocean"
        " FROM samples GROUP BY num_faces ORDER BY num_faces",
        "SELECT num_faces, count(*) AS n, avg(road_pct) AS road, max(ocean_pct) AS ocean"
        " FROM samples GROUP BY num_faces ORDER BY num_faces",
    ),
    E2EQuery(
        "tagged_night",
        "SELECT count(*) FROM samples WHERE labels TAGGED 'night'",
        "SELECT count(*) FROM samples WHERE array_has(labels, 'night')",
    ),
    E2EQuery(
        "tagged_any",
        "SELECT count(*) FROM samples WHERE labels TAGGED ('bus', 'truck') AND brightness > 0.5",
        "SELECT count(*) FROM samples"
        " WHERE array_has_any(labels, make_array('bus', 'truck')) AND brightness > 0.5",
    ),
    E2EQuery(
        "tagged_all_by_weather",
        "SELECT weather, count(*) AS n FROM samples WHERE labels TAGGED ALL ('car', 'person')"
        " GROUP BY weather ORDER BY weather",
        "SELECT weather, count(*) AS n FROM samples"
        " WHERE array_has_all(labels, make_array('car', 'person'))"
        " GROUP BY weather ORDER BY weather",
    ),
    E2EQuery(
        "bare_tagged_not",
        "SELECT num_faces, count(*) AS n FROM samples"
        " WHERE TAGGED 'dog' AND labels NOT TAGGED 'night' GROUP BY num_faces ORDER BY num_faces",
        "SELECT num_faces, count(*) AS n FROM samples"
        " WHERE array_has(labels, 'dog') AND NOT array_has(labels, 'night')"
        " GROUP BY num_faces ORDER BY num_faces",
    ),
    E2EQuery(
        "filter_rows",
        "SELECT sample_id, brightness, labels FROM samples"
        " WHERE num_people > 6 AND weather IN ('rainy', 'snowy') AND labels TAGGED 'person'"
        " ORDER BY sample_id",
        "SELECT sample_id, brightness, labels FROM samples"
        " WHERE num_people > 6 AND weather IN ('rainy', 'snowy') AND array_has(labels, 'person')"
        " ORDER BY sample_id",
    ),
    E2EQuery(
        "label_histogram",
        "SELECT label, count(*) AS n FROM (SELECT unnest(labels) AS label FROM samples)"
        " GROUP BY label ORDER BY label",
        "SELECT label, count(*) AS n FROM (SELECT unnest(labels) AS label FROM samples)"
        " GROUP BY label ORDER BY label",
    ),
]


@dataclass
class E2EResult:
    query: E2EQuery
    df_runs: list[float] = field(default_factory=list)
    popql_runs: list[float] = field(default_factory=list)
    front_ms: float = 0.0
    rows: int = 0
    same: bool = True
    same_plan: bool = True
    plan_overhead_ms: float = 0.0
    control_ms: float | None = None  # A/A: plain DataFusion against a second plain context

    @property
    def df_ms(self) -> float:
        return statistics.median(self.df_runs)

    @property
    def popql_ms(self) -> float:
        return statistics.median(self.popql_runs)

    @property
    def overhead_ms(self) -> float:
        return self.popql_ms - self.df_ms

    @property
    def overhead_pct(self) -> float:
        return 100.0 * self.overhead_ms / self.df_ms

    @property
    def paired_ms(self) -> float:
        """Median of the run-by-run differences (PopQL run i - DataFusion run i)."""
        return statistics.median(p - d for p, d in zip(self.popql_runs, self.df_runs, strict=True))

    @property
    def min_overhead_ms(self) -> float:
        """min PopQL - min DataFusion: the least contended runs of each."""
        return min(self.popql_runs) - min(self.df_runs)

    @property
    def noise_ms(self) -> float:
        """Median absolute deviation of the DataFusion runs."""
        med = self.df_ms
        return statistics.median(abs(v - med) for v in self.df_runs)

    @property
    def ok_ms(self) -> bool:
        return self.overhead_ms <= OVERHEAD_MS_TARGET

    @property
    def slow(self) -> bool:
        return self.df_ms > SLOW_QUERY_MS

    @property
    def ok_pct(self) -> bool:
        return not self.slow or self.overhead_pct <= OVERHEAD_PCT_TARGET


def make_contexts(path: Path) -> tuple[Any, Any]:
    import popql.engine as pe

    session = pe.connect()
    session.register("samples", path)
    return session, plain_context(path)


def plain_context(path: Path) -> Any:
    """A plain DataFusion context configured like popql's Session, reading the same file."""
    import datafusion

    config = (
        datafusion.SessionConfig()
        .with_information_schema(True)
        .with_target_partitions(max(1, os.cpu_count() or 1))
    )
    ctx = datafusion.SessionContext(config)
    ctx.register_parquet("samples", str(path.resolve()), file_extension=".parquet")
    return ctx


PLAN_RUNS = 30


def interleave(
    first: Callable[[], Any], second: Callable[[], Any], runs: int, *, collect: bool
) -> tuple[list[float], list[float]]:
    """Time ``first`` and ``second`` ``runs`` times each, alternating which goes first (ms)."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(runs):
        order = [(0, first), (1, second)]
        if i % 2:
            order.reverse()
        for slot, fn in order:
            if collect:
                gc.collect()
            t0 = _now()
            fn()
            times[slot].append(_ms(_now() - t0))
    return times


def _explain(ctx: Any, sql: str) -> list[Any]:
    try:
        return ctx.sql("EXPLAIN " + sql).to_arrow_table().column(1).to_pylist()
    except Exception as exc:
        return [f"error: {exc}"]


def _values(table: Any) -> list[list[Any]]:
    return [col.to_pylist() for col in table.columns]


def run_e2e(args: argparse.Namespace) -> dict[str, Any]:
    heading(f"2. End to end: {args.rows:,} rows of tags in Parquet")
    path, generated = ensure_tags_table(args.data_dir, args.rows)
    size_mb = path.stat().st_size / 1e6
    how = f"generated in {generated:.1f} s" if generated is not None else "reused"
    print(f"table: {path} ({size_mb:.0f} MB, {how}; row groups of {ROW_GROUP:,})")

    from popql import syntax
    from popql.engine.lower import compile_statement

    session, ctx = make_contexts(path)
    control = plain_context(path) if args.control else None
    popql_tp = session.ctx.sql("SHOW datafusion.execution.target_partitions").to_arrow_table()
    plain_tp = ctx.sql("SHOW datafusion.execution.target_partitions").to_arrow_table()
    tp_popql = popql_tp.column(1)[0].as_py()
    tp_plain = plain_tp.column(1)[0].as_py()
    print(
        f"target_partitions: PopQL session {tp_popql}, plain DataFusion context {tp_plain}; "
        f"os.cpu_count() = {os.cpu_count()}"
    )
    print(
        f"{args.warmup} warm-up run(s) each, then {args.runs} interleaved runs "
        "(the order alternates every round); medians"
    )

    results: list[E2EResult] = []
    selected = [q for q in E2E_QUERIES if not args.queries or q.name in args.queries]
    for q in selected:
        res = E2EResult(q)
        # Front-end cost of this query alone (parse + check + lower), min of 20.
        best = None
        lowered = ""
        for _ in range(20):
            t0 = _now()
            for stmt in syntax.parse(q.popql).statements:
                lowered = compile_statement(stmt, session.catalog).sql
            dt = _now() - t0
            best = dt if best is None else min(best, dt)
        res.front_ms = _ms(best or 0)
        res.same_plan = _explain(session.ctx, lowered) == _explain(ctx, q.sql)

        def run_df(q: E2EQuery = q) -> Any:
            return ctx.sql(q.sql).to_arrow_table()

        def run_popql(q: E2EQuery = q) -> Any:
            return session.sql(q.popql).to_arrow()

        def plan_df(q: E2EQuery = q) -> Any:
            return ctx.sql(q.sql)

        def plan_popql(q: E2EQuery = q) -> Any:
            return session.sql(q.popql)  # a lazy Result: planned, not run

        a = b = None
        for _ in range(args.warmup):
            a = run_df()
            b = run_popql()
        assert a is not None and b is not None
        res.rows = a.num_rows
        res.same = a.num_rows == b.num_rows and _values(a) == _values(b)
        res.df_runs, res.popql_runs = interleave(run_df, run_popql, args.runs, collect=True)
        plan_d, plan_p = interleave(plan_df, plan_popql, PLAN_RUNS, collect=False)
        if control is not None:

            def run_control(q: E2EQuery = q) -> Any:
                return control.sql(q.sql).to_arrow_table()

            run_control()
            c_d, c_c = interleave(run_df, run_control, args.runs, collect=True)
            res.control_ms = statistics.median(c_c) - statistics.median(c_d)
        res.plan_overhead_ms = statistics.median(plan_p) - statistics.median(plan_d)
        results.append(res)
        print(
            f"  {q.name:<22} DataFusion {fmt_ms(res.df_ms):>7} ms   PopQL {fmt_ms(res.popql_ms):>7}"
            f" ms   overhead {res.overhead_ms:+.2f} ms   planning overhead "
            f"{res.plan_overhead_ms:+.2f} ms",
            flush=True,
        )

    print()
    rows = []
    for r in results:
        verdict = "PASS" if (r.ok_ms and r.ok_pct) else "FAIL"
        rows.append(
            [
                r.query.name,
                f"{r.rows:,}",
                fmt_ms(r.df_ms),
                fmt_ms(r.popql_ms),
                f"{r.overhead_ms:+.2f}",
                f"{r.overhead_pct:+.1f}%",
                fmt_ms(r.noise_ms),
                f"{r.min_overhead_ms:+.2f}",
                f"{r.plan_overhead_ms:+.2f}",
                fmt_ms(r.front_ms),
                *([f"{r.control_ms:+.2f}"] if r.control_ms is not None else []),
                ("yes" if r.same_plan else "NO") + "/" + ("yes" if r.same else "NO"),
                verdict,
            ]
        )
    print_table(
        [
            "query",
            "rows",
            "DataFusion ms",
            "PopQL ms",
            "overhead ms",
            "overhead %",
            "noise ms",
            "min ovh ms",
            "plan ovh ms",
            "front end ms",
            *(["A/A ms"] if control is not None else []),
            "same plan/rows",
            "target",
        ],
        rows,
        right=range(1, 11 if control is not None else 10),
    )
    print(
        f"(overhead = median PopQL - median DataFusion, end to end; noise = median absolute "
        "deviation of the DataFusion runs; min ovh = fastest PopQL run - fastest DataFusion "
        f"run; plan ovh = median of {PLAN_RUNS} Session.sql(q) "
        f"(planned, not run) - median of {PLAN_RUNS} ctx.sql(sql); front end = parse + check + "
        "lower of the query alone, min of 20; same plan = identical EXPLAIN output"
        + (
            "; A/A = the same overhead measured between two plain DataFusion contexts, "
            "i.e. what noise alone shows)"
            if control is not None
            else ")"
        )
    )

    worst_ms = max(results, key=lambda r: r.overhead_ms)
    slow = [r for r in results if r.slow]
    worst_pct = max(slow, key=lambda r: r.overhead_pct) if slow else None
    target_ms = all(r.ok_ms for r in results)
    target_pct = all(r.ok_pct for r in results)
    print()
    print(
        f"target overhead <= {OVERHEAD_MS_TARGET:g} ms on every query: "
        f"{'PASS' if target_ms else 'FAIL'} (worst {worst_ms.overhead_ms:+.2f} ms, "
        f"{worst_ms.query.name})"
    )
    if worst_pct is not None:
        print(
            f"target overhead <= {OVERHEAD_PCT_TARGET:g} % on queries > {SLOW_QUERY_MS:g} ms "
            f"({len(slow)} queries): {'PASS' if target_pct else 'FAIL'} "
            f"(worst {worst_pct.overhead_pct:+.1f} %, {worst_pct.query.name})"
        )
    else:
        print(
            f"target overhead <= {OVERHEAD_PCT_TARGET:g} % on queries > {SLOW_QUERY_MS:g} ms: "
            "no query took longer than that"
        )
    if not all(r.same for r in results):
        print("WARNING: PopQL and DataFusion returned different rows for some queries")
    if not all(r.same_plan for r in results):
        print("WARNING: PopQL's lowered SQL and the plain SQL plan differently for some queries")
    worst_plan = max(results, key=lambda r: r.plan_overhead_ms)
    print(
        f"planning overhead (Session.sql vs ctx.sql, no execution): worst "
        f"{worst_plan.plan_overhead_ms:+.2f} ms ({worst_plan.query.name}), median "
        f"{statistics.median(r.plan_overhead_ms for r in results):+.2f} ms"
    )

    if args.profile:
        profile_e2e(session, selected, args.profile)

    return {
        "rows": args.rows,
        "file_mb": size_mb,
        "target_partitions": tp_popql,
        "target_ms": target_ms,
        "target_pct": target_pct,
        "worst_ms": (worst_ms.query.name, worst_ms.overhead_ms),
        "worst_plan_ms": (worst_plan.query.name, worst_plan.plan_overhead_ms),
        "worst_pct": (worst_pct.query.name, worst_pct.overhead_pct) if worst_pct else None,
        "n_slow": len(slow),
        "queries": [
            {
                "name": r.query.name,
                "rows": r.rows,
                "df_ms": r.df_ms,
                "popql_ms": r.popql_ms,
                "overhead_ms": r.overhead_ms,
                "overhead_pct": r.overhead_pct,
                "paired_ms": r.paired_ms,
                "noise_ms": r.noise_ms,
                "min_overhead_ms": r.min_overhead_ms,
                "plan_overhead_ms": r.plan_overhead_ms,
                "control_ms": r.control_ms,
                "same_plan": r.same_plan,
                "front_ms": r.front_ms,
                "same": r.same,
                "df_runs": r.df_runs,
                "popql_runs": r.popql_runs,
            }
            for r in results
        ],
    }


def profile_e2e(session: Any, queries: list[E2EQuery], repeat: int) -> None:
    """cProfile of PopQL's own work on the way to DataFusion: ``Session.sql(q)``, planned only.

    Execution is left out: the plans are identical (checked above), so ``DataFrame.collect``
    would only bury PopQL's share under DataFusion's.
    """
    import cProfile
    import pstats

    print()
    print(f"cProfile of session.sql(q) (planned, not run), {len(queries)} queries x {repeat}")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(repeat):
        for q in queries:
            session.sql(q.popql)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(30)
    print(buf.getvalue())


# ================================================================================================
# 3. Summary
# ================================================================================================


def machine() -> str:
    import datafusion
    import pyarrow as pa

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}, nproc {nproc}, Python {platform.python_version()}, "
        f"datafusion {datafusion.__version__}, pyarrow {pa.__version__}"
    )


def print_summary(front: dict[str, Any], e2e: dict[str, Any], command: str) -> None:
    heading("3. Summary (Markdown)")
    print(f"`{command}` on {machine()}")
    print()
    if front:
        print("| front end, ms per statement | n | median | p95 | max |")
        print("|---|---:|---:|---:|---:|")
        for group in ("all", "corpus", "conformance"):
            g = front["groups"].get(group)
            if not g:
                continue
            for name, label in (
                ("parse", "parse"),
                ("parse + check + lower", "parse + check + lower"),
                ("DataFusion ctx.sql (baseline)", "DataFusion planning (baseline)"),
            ):
                s = g[name]
                print(
                    f"| {group}: {label} | {g['n']} | {fmt_ms(s['median'])} | "
                    f"{fmt_ms(s['p95'])} | {fmt_ms(s['max'])} |"
                )
            r = g["ratio"]
            print(
                f"| {group}: ratio front end / DataFusion | {g['n']} | {r['median']:.2f}x | "
                f"{r['p95']:.2f}x | {r['max']:.1f}x |"
            )
        one = front["one_time"]
        print()
        cold = fmt_ms(one["cold_build_ms"]) if one["cold_build_ms"] is not None else "not measured"
        print(
            f"One-time: Lark table build without cache {cold} ms; "
            f"load {'from cache ' if one['parser_cache_hit'] else ''}"
            f"{fmt_ms(one['parser_load_ms'])} ms; first parse {fmt_ms(one['first_parse_ms'])} ms."
        )
        print()
    if e2e:
        aa = any(q["control_ms"] is not None for q in e2e["queries"])
        print(
            f"| query ({e2e['rows']:,} rows, target_partitions {e2e['target_partitions']}) | "
            "DataFusion ms | PopQL ms | overhead ms | overhead % | noise ms | min ovh ms | "
            "planning overhead ms |" + (" A/A ms |" if aa else "")
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if aa else ""))
        for q in e2e["queries"]:
            control = f" {q['control_ms']:+.2f} |" if q["control_ms"] is not None else ""
            print(
                f"| {q['name']} | {fmt_ms(q['df_ms'])} | {fmt_ms(q['popql_ms'])} | "
                f"{q['overhead_ms']:+.2f} | {q['overhead_pct']:+.1f} % | "
                f"{fmt_ms(q['noise_ms'])} | {q['min_overhead_ms']:+.2f} | "
                f"{q['plan_overhead_ms']:+.2f} |" + control
            )
        print()
        wname, wms = e2e["worst_ms"]
        print(
            f"Overhead <= {OVERHEAD_MS_TARGET:g} ms per query: "
            f"**{'PASS' if e2e['target_ms'] else 'FAIL'}** (worst {wms:+.2f} ms, {wname})."
        )
        if e2e["worst_pct"]:
            pname, ppct = e2e["worst_pct"]
            print(
                f"Overhead <= {OVERHEAD_PCT_TARGET:g} % on the {e2e['n_slow']} queries over "
                f"{SLOW_QUERY_MS:g} ms: **{'PASS' if e2e['target_pct'] else 'FAIL'}** "
                f"(worst {ppct:+.1f} %, {pname})."
            )
        else:
            print(f"No query took over {SLOW_QUERY_MS:g} ms.")
        pname, pms = e2e["worst_plan_ms"]
        print(
            f"Planning overhead alone (no execution, {PLAN_RUNS} runs): "
            f"worst {pms:+.2f} ms ({pname})."
        )


# ================================================================================================


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--rows",
        type=lambda s: int(s.replace("_", "")),
        default=None,
        help="rows of the generated tags table (default 10_000_000; --quick: 1_000_000)",
    )
    p.add_argument(
        "--quick", action="store_true", help="1M rows, 5 runs, 1 repetition per front-end statement"
    )
    p.add_argument("--only", choices=("frontend", "e2e"), help="run one part only")
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="front end: repetitions per statement, the minimum is kept (default 3)",
    )
    p.add_argument(
        "--runs",
        type=int,
        default=None,
        help="end to end: timed runs per query and engine (default 7)",
    )
    p.add_argument("--warmup", type=int, default=2, help="end to end: warm-up runs (default 2)")
    p.add_argument("--queries", nargs="*", help="end to end: only these query names")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"where the Parquet table is written (default {DEFAULT_DATA_DIR})",
    )
    p.add_argument(
        "--conformance",
        type=Path,
        default=DEFAULT_CONFORMANCE,
        help=f"conformance folder (default {DEFAULT_CONFORMANCE})",
    )
    p.add_argument(
        "--no-cold-build",
        action="store_true",
        help="skip timing a Lark table build without the on-disk cache (~5 s)",
    )
    p.add_argument(
        "--show-slowest",
        type=int,
        default=0,
        metavar="N",
        help="front end: list the N statements with the slowest front end",
    )
    p.add_argument(
        "--control",
        action="store_true",
        help="end to end: also time plain DataFusion against a second plain context "
        "(an A/A run: the 'overhead' that noise alone produces)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="end to end: cProfile Session.sql (planning only) over every query N times",
    )
    p.add_argument("--json", type=Path, help="also write the raw figures to this JSON file")
    args = p.parse_args(argv)
    if args.rows is None:
        args.rows = 1_000_000 if args.quick else 10_000_000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.runs is None:
        args.runs = 5 if args.quick else 7
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/bench_frontend.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print(f"PopQL benchmark: {machine()}")
    front: dict[str, Any] = {}
    e2e: dict[str, Any] = {}
    if args.only in (None, "frontend"):
        front = run_frontend(args)
    if args.only in (None, "e2e"):
        e2e = run_e2e(args)
    print_summary(front, e2e, command.strip())
    if args.json:
        args.json.write_text(json.dumps({"frontend": front, "e2e": e2e}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
