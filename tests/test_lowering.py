"""Lowering: plain SQL keeps its meaning; PopQL constructs that nothing executes give X001.

Plain SQL is printed back by ``popql.format.to_sql`` before DataFusion plans it, so every query
here runs twice on the same registered data: through a PopQL session and through a plain
:class:`datafusion.SessionContext` on the original text. Both must give the same column names,
the same column types and the same rows (compared as multisets unless the query has a total
ORDER BY).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from typing import Any

import datafusion
import pyarrow as pa
import pytest

from popql.diagnostics import PopQLError
from popql.engine import Session, connect
from popql.engine.lower import compile_statement
from popql.syntax import parse

# ---------------------------------------------------------------------------------------------
# Data, registered identically in both engines
# ---------------------------------------------------------------------------------------------


def _tables() -> dict[str, pa.Table]:
    t = pa.table(
        {
            "id": pa.array([1, 2, 3, 4, 5, 6, 7, 8], pa.int64()),
            "name": ["alpha", "beta", "gamma", None, "delta", "alphabet", "it's", "Ålesund"],
            "grp": ["a", "b", "a", "b", "c", "a", None, "c"],
            "x": [1.5, 2.25, None, -3.0, 0.0, 10.125, 7.5, 2.25],
            "n": pa.array([10, None, 30, 40, 10, 60, 70, None], pa.int32()),
            "flag": [True, False, None, True, False, True, False, True],
            "ts": pa.array(
                [dt.datetime(2024, 1, d, 12, d) for d in range(1, 9)], pa.timestamp("us")
            ),
            "d": pa.array(
                [dt.date(2023, 12, 28 + i) if i < 4 else dt.date(2024, 1, i) for i in range(8)],
                pa.date32(),
            ),
            "tags": pa.array(
                [["a", "b"], [], None, ["c"], ["a"], ["b", "c"], ["a", None], []],
                pa.list_(pa.string()),
            ),
        }
    )
    u = pa.table(
        {
            "id": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
            "t_id": pa.array([1, 1, 2, 3, 9, None], pa.int64()),
            "val": [0.5, 1.5, 2.5, None, 4.5, 5.5],
            "kind": ["p", "q", "p", "q", "p", "r"],
        }
    )
    words = pa.table(
        {
            "w": ["abc", "abd", "xbc", "aaa", "", None, "a.c", "ABC", "a%c", "ab"],
            "k": pa.array(range(10), pa.int64()),
        }
    )
    return {"t": t, "u": u, "words": words}


def _config() -> datafusion.SessionConfig:
    # The PopQL session's configuration, so SHOW / information_schema agree too.
    return (
        datafusion.SessionConfig()
        .with_information_schema(True)
        .with_target_partitions(max(1, os.cpu_count() or 1))
    )


def popql_session() -> Session:
    s = connect()
    for name, table in _tables().items():
        s.register(name, table)
    return s


def plain_context() -> datafusion.SessionContext:
    ctx = datafusion.SessionContext(_config())
    for name, table in _tables().items():
        ctx.register_record_batches(name, [table.to_batches()])
    return ctx


@pytest.fixture(scope="module")
def session() -> Session:
    return popql_session()


@pytest.fixture(scope="module")
def plain() -> datafusion.SessionContext:
    return plain_context()


def _sortable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=repr)


def assert_same(popql: pa.Table, expected: pa.Table, ordered: bool) -> None:
    assert popql.schema.names == expected.schema.names
    assert popql.schema.types == expected.schema.types
    got, want = popql.to_pylist(), expected.to_pylist()
    if not ordered:
        got, want = _sortable(got), _sortable(want)
    assert got == want


def _ordered(query: str) -> bool:
    # A top-level ORDER BY (the queries below only order totally at the top level).
    return (
        bool(re.search(r"ORDER BY [^)]*$", query, re.S))
        and "OVER" not in query.split("ORDER BY")[-1]
    )


# ---------------------------------------------------------------------------------------------
# Plain SQL: ~50 queries compared with DataFusion
# ---------------------------------------------------------------------------------------------

QUERIES: list[str] = [
    # projections, filters, literals
    "SELECT * FROM t",
    "SELECT id, name FROM t WHERE x > 1.5 AND flag",
    "SELECT id, x * 2 + 1, -x, x / 4, n % 7, n / 3, 1 + 2 * 3 - 4 / 2 FROM t",
    "SELECT (1 + 2) * 3 AS a, 2 * (3 + 4) - (5 - 1) AS b, 10 - 3 - 2 AS c, 2 ^ 3 AS e",
    "SELECT 1, 1.0, 1e3, .5, 0x1F, 'it''s', TRUE, FALSE, NULL, 'Ålesund ✓'",
    "SELECT DATE '2024-02-29' AS d, TIMESTAMP '2024-01-01 10:00:00' AS ts,"
    " INTERVAL '1 day' AS i, INTERVAL '3' MONTH AS m",
    "SELECT E'a\\nb' AS e, X'4142' AS x, e'tab\\there' AS t",
    "SELECT id FROM t WHERE name IS NULL OR x IS NOT NULL AND NOT flag",
    "SELECT id, flag IS TRUE, flag IS NOT FALSE, flag IS UNKNOWN FROM t",
    "SELECT id FROM t WHERE n BETWEEN 10 AND 40 AND id NOT BETWEEN 2 AND 3",
    "SELECT id FROM t WHERE grp IN ('a', 'c') OR n NOT IN (10, 70)",
    "SELECT id, name LIKE 'al%', name ILIKE 'AL%', name NOT LIKE '%a', name ~ '^a.*t$',"
    " name !~* 'BETA' FROM t",
    "SELECT id, x IS DISTINCT FROM 2.25, n IS NOT DISTINCT FROM NULL FROM t",
    "SELECT id, COALESCE(name, grp, 'none'), NULLIF(n, 10), greatest(n, 35), least(x, 2) FROM t",
    # casts
    "SELECT CAST(x AS INT) AS i, x::VARCHAR AS v, TRY_CAST(name AS INT) AS tc,"
    " CAST(n AS DOUBLE) AS dbl, CAST('2024-01-02' AS DATE) AS dt,"
    " CAST(id AS DECIMAL(10, 2)) AS dec, CAST(CAST(x AS BIGINT) AS VARCHAR) AS nested FROM t",
    "SELECT id, CAST(ts AS DATE), date_trunc('day', ts), extract(hour FROM ts),"
    " d + INTERVAL '1 day', ts - INTERVAL '2 hours' FROM t",
    # strings
    "SELECT upper(name), lower(grp), name || '-' || grp, concat(name, n), length(name),"
    " substring(name FROM 2 FOR 3), substr(name, 1, 2), trim(BOTH 'a' FROM name),"
    " position('a' IN name), replace(name, 'a', 'A') FROM t",
    # CASE
    "SELECT id, CASE WHEN x > 2 THEN 'big' WHEN x > 0 THEN 'small' ELSE 'other' END,"
    " CASE grp WHEN 'a' THEN 1 WHEN 'b' THEN 2 END FROM t",
    # aggregates
    "SELECT grp, count(*), count(n), sum(x), avg(n), min(name), max(ts) FROM t GROUP BY grp",
    "SELECT grp, count(DISTINCT n) AS dn FROM t GROUP BY grp HAVING count(*) > 1",
    "SELECT count(*) FILTER (WHERE x > 1) AS big, sum(n) FILTER (WHERE flag) AS s,"
    " array_agg(id ORDER BY id DESC) AS ids FROM t",
    "SELECT grp, flag, count(*) AS c FROM t GROUP BY GROUPING SETS ((grp), (flag), ())",
    "SELECT grp, flag, sum(n) AS s FROM t GROUP BY ROLLUP (grp, flag)",
    "SELECT grp, flag, count(*) AS c FROM t GROUP BY CUBE (grp, flag)",
    "SELECT DISTINCT grp FROM t",
    "SELECT DISTINCT ON (grp) grp, id FROM t ORDER BY grp, id",
    # joins
    "SELECT t.id, u.val FROM t JOIN u ON t.id = u.t_id",
    "SELECT t.id, u.val FROM t LEFT JOIN u ON t.id = u.t_id AND u.kind = 'p'",
    "SELECT t.id, u.id AS uid FROM t RIGHT OUTER JOIN u ON t.id = u.t_id",
    "SELECT t.id, u.id AS uid FROM t FULL OUTER JOIN u ON t.id = u.t_id",
    "SELECT a.id, b.id AS bid FROM t a CROSS JOIN t b WHERE a.id + b.id = 5",
    "SELECT * FROM t JOIN u USING (id)",
    "SELECT * FROM t NATURAL JOIN u",
    "SELECT t.id FROM t LEFT SEMI JOIN u ON t.id = u.t_id",
    "SELECT t.id FROM t LEFT ANTI JOIN u ON t.id = u.t_id",
    "SELECT a.id, b.id AS bid FROM t AS a, u AS b WHERE a.id = b.t_id AND b.val > 1",
    # windows
    "SELECT id, grp, row_number() OVER (PARTITION BY grp ORDER BY id) AS rn FROM t",
    "SELECT id, sum(x) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) AS s,"
    " avg(n) OVER (PARTITION BY grp) AS a FROM t",
    "SELECT id, rank() OVER w AS r, dense_rank() OVER w AS dr, lag(id) OVER w AS l,"
    " lead(id, 2, -1) OVER w AS ld FROM t WINDOW w AS (ORDER BY n, id)",
    "SELECT id, first_value(name) OVER (PARTITION BY grp ORDER BY id"
    " RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS f FROM t",
    # CTEs and subqueries
    "WITH a AS (SELECT id, x FROM t WHERE x > 0), b AS (SELECT * FROM a WHERE id > 1)"
    " SELECT count(*) AS c, sum(x) AS s FROM b",
    "WITH RECURSIVE r(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM r WHERE k < 5) SELECT k FROM r",
    "SELECT id, (SELECT max(val) FROM u) AS m FROM t",
    "SELECT id FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.t_id = t.id AND u.val > 1)",
    "SELECT id FROM t WHERE id IN (SELECT t_id FROM u WHERE kind = 'p')",
    "SELECT id FROM t WHERE id NOT IN (SELECT t_id FROM u WHERE t_id IS NOT NULL)",
    "SELECT s.g, s.c FROM (SELECT grp AS g, count(*) AS c FROM t GROUP BY grp) AS s WHERE s.c >= 2",
    "SELECT id FROM t WHERE x > (SELECT avg(x) FROM t)",
    # set operations, VALUES, ordering
    "SELECT id FROM t UNION SELECT t_id FROM u",
    "SELECT grp FROM t UNION ALL SELECT kind FROM u",
    "SELECT id FROM t INTERSECT SELECT t_id FROM u",
    "SELECT id FROM t EXCEPT SELECT t_id FROM u",
    "SELECT * FROM (VALUES (1, 'one'), (2, 'two')) AS v(num, word)",
    "SELECT id, n FROM t ORDER BY n DESC NULLS LAST, id LIMIT 4 OFFSET 1",
    "SELECT id, name FROM t ORDER BY name NULLS FIRST, id",
    # arrays, structs, identifiers, comments
    "SELECT make_array(1, 2, 3) AS a, [4, 5][2] AS e, array_length(tags) AS l,"
    " cardinality(tags) AS c, array_has(tags, 'a') AS h FROM t",
    "SELECT id, unnest(tags) AS tag FROM t",
    "SELECT named_struct('a', id, 'b', name) AS s, {'k': 1, 'v': 'x'} AS lit FROM t",
    'SELECT "id" AS "Id With Space", t."name" AS "MiXeD" FROM t -- trailing comment',
    "SELECT /* block */ id FROM t WHERE /* inline */ id < 3",
    "SELECT t.* EXCLUDE (tags, ts) FROM t",
    # SIMILAR TO on text keeps SQL's regular-expression meaning
    "SELECT k, w SIMILAR TO 'ab.' AS m FROM words",
    "SELECT k FROM words WHERE w SIMILAR TO 'a.*'",
    "SELECT k FROM words WHERE w NOT SIMILAR TO '(abc|xbc)'",
    "SELECT k, lower(w) SIMILAR TO 'abc' AS m FROM words",
    "SELECT k FROM (SELECT w AS v, k FROM words) AS s WHERE v SIMILAR TO '.b.'",
    "SELECT k, w SIMILAR TO 'a%c' AS m FROM words",
    # information schema and SHOW
    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    "SHOW TABLES",
]

# DDL/DML sequences: every statement runs in order in both engines, then the query compares.
SEQUENCES: list[list[str]] = [
    [
        "CREATE TABLE x (a INT, b VARCHAR, c DOUBLE)",
        "INSERT INTO x VALUES (1, 'one', 1.5), (2, 'two', NULL)",
        "INSERT INTO x (a, b) SELECT CAST(id AS INT), name FROM t WHERE id > 6",
        "SELECT * FROM x",
    ],
    [
        "CREATE TABLE y AS SELECT grp, sum(n) AS total FROM t GROUP BY grp",
        "CREATE VIEW v AS SELECT grp FROM y WHERE total > 20",
        "SELECT * FROM v",
    ],
    [
        "CREATE TABLE z AS SELECT id, x FROM t",
        "UPDATE z SET x = x * 10 WHERE id < 4",
        "DELETE FROM z WHERE x IS NULL",
        "SELECT * FROM z",
    ],
    [
        "CREATE TABLE w (k BIGINT, s TEXT)",
        "INSERT INTO w VALUES (1, 'a')",
        "DROP TABLE w",
        "CREATE TABLE IF NOT EXISTS w (k BIGINT)",
        "INSERT INTO w VALUES (5), (6)",
        "SELECT * FROM w",
    ],
    [
        "CREATE OR REPLACE VIEW big AS SELECT id FROM t WHERE x > 2",
        "CREATE OR REPLACE VIEW big AS SELECT id, n FROM t WHERE x > 5",
        "SELECT * FROM big",
    ],
    [
        "SET datafusion.execution.batch_size = 2",
        "SELECT id, n FROM t WHERE n > 10",
    ],
]


def _qid(q: str) -> str:
    return q[:60]


@pytest.mark.parametrize("query", QUERIES, ids=_qid)
def test_plain_sql_means_the_same(
    session: Session, plain: datafusion.SessionContext, query: str
) -> None:
    expected = plain.sql(query).to_arrow_table()
    got = session.sql(query).to_arrow()
    assert_same(got, expected, ordered=_ordered(query))


def test_enough_plain_queries() -> None:
    assert len(QUERIES) + len(SEQUENCES) >= 40


@pytest.mark.parametrize("statements", SEQUENCES, ids=lambda s: _qid(s[0]))
def test_ddl_dml_sequences(statements: list[str]) -> None:
    ctx = plain_context()
    for stmt in statements[:-1]:
        ctx.sql(stmt).collect()
    expected = ctx.sql(statements[-1]).to_arrow_table()
    results = popql_session().execute(";\n".join(statements))
    assert len(results) == len(statements)
    assert_same(results[-1].to_arrow(), expected, ordered=False)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT id FROM t WHERE n = ANY(SELECT n FROM t WHERE n > 30)",
        "SELECT id FROM t WHERE n > ALL(SELECT n FROM t WHERE n < 30)",
    ],
)
def test_quantified_subquery_with_where(
    session: Session, plain: datafusion.SessionContext, query: str
) -> None:
    expected = plain.sql(query).to_arrow_table()
    assert_same(session.sql(query).to_arrow(), expected, ordered=False)


@pytest.mark.parametrize("query", ["SELECT $$dollar 'quoted'$$ AS q", "SELECT $tag$x$tag$ AS q"])
def test_dollar_quoted_strings(
    session: Session, plain: datafusion.SessionContext, query: str
) -> None:
    assert_same(session.sql(query).to_arrow(), plain.sql(query).to_arrow_table(), True)


def test_quantified_subquery_without_where(
    session: Session, plain: datafusion.SessionContext
) -> None:
    query = "SELECT id FROM t WHERE n = ANY(SELECT n FROM t)"
    assert_same(session.sql(query).to_arrow(), plain.sql(query).to_arrow_table(), False)


def test_lowered_plain_sql_is_reparsed_to_the_same_tree(session: Session) -> None:
    """The printed SQL of a plain statement parses back to an equal AST (no PopQL rewrite)."""
    for query in QUERIES:
        stmt = parse(query).statements[0]
        lowered = compile_statement(stmt, session.catalog)
        assert lowered.udfs == ()
        assert parse(lowered.sql).statements[0] == stmt, query


def test_similar_to_on_text_is_not_rewritten(session: Session) -> None:
    stmt = parse("SELECT k FROM words WHERE w SIMILAR TO 'a.*'").statements[0]
    assert compile_statement(stmt, session.catalog).sql == (
        "SELECT k FROM words WHERE w SIMILAR TO 'a.*'"
    )


# ---------------------------------------------------------------------------------------------
# PopQL-only constructs: X001 pointing at the construct
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images() -> Session:
    s = connect()
    s.register(
        "samples",
        pa.table(
            {
                "id": [1, 2],
                "sample_id": ["0123456789abcdef", "fedcba9876543210"],
                "uri": ["a.jpg", "b.jpg"],
                "image": pa.array([b"\x89PNG", b"\xff\xd8"], pa.binary()),
                "brightness": [0.1, 0.9],
            }
        ),
    )
    return s


# Similarity search in a session without a dataset: S001 (no membership, found while lowering)
# or S002 (no embeddings to search), pointing at the construct.
# (query, the text the span must cover, a word the message must contain)
SEARCH_EXPRESSIONS: list[tuple[str, str, str]] = [
    (
        "SELECT id FROM samples WHERE image SIMILAR TO 'a dog' TOP 10",
        "image SIMILAR TO 'a dog' TOP 10",
        "SIMILAR TO",
    ),
    (
        "SELECT id FROM samples WHERE image SIMILAR TO 'a dog' THRESHOLD 0.25",
        "image SIMILAR TO 'a dog' THRESHOLD 0.25",
        "SIMILAR TO",
    ),
    (
        "SELECT id FROM samples WHERE image SIMILAR TO 'a dog' USING clip_vit",
        "image SIMILAR TO 'a dog' USING clip_vit",
        "SIMILAR TO",
    ),
    (
        "SELECT id FROM samples WHERE image SIMILAR TO 'a dog' USING clip TOP 5 EXACT",
        "image SIMILAR TO 'a dog' USING clip TOP 5 EXACT",
        "SIMILAR TO",
    ),
    (
        "SELECT id FROM samples WHERE image SIMILAR TO 'a dog' EXACT",
        "image SIMILAR TO 'a dog' EXACT",
        "SIMILAR TO",
    ),
    (
        "SELECT id FROM samples WHERE image SIMILAR TO 'a dog'",
        "image SIMILAR TO 'a dog'",
        "SIMILAR TO",
    ),
    (
        "SELECT id FROM samples WHERE SIMILAR TO 'a dog on a beach'",
        "SIMILAR TO 'a dog on a beach'",
        "SIMILAR TO",
    ),
    (
        "SELECT id FROM samples WHERE brightness > 0.5 AND SIMILAR TO 'snow' TOP 3",
        "SIMILAR TO 'snow' TOP 3",
        "SIMILAR TO",
    ),
    ("SELECT id FROM samples WHERE NEAR IMAGE 'query.jpg'", "NEAR IMAGE 'query.jpg'", "NEAR"),
    (
        "SELECT id FROM samples WHERE image NEAR IMAGE 'q.jpg' TOP 20",
        "image NEAR IMAGE 'q.jpg' TOP 20",
        "NEAR",
    ),
    ("SELECT id FROM samples WHERE NEAR SAMPLE 'img_0042'", "NEAR SAMPLE 'img_0042'", "NEAR"),
    (
        "SELECT id FROM samples WHERE image NEAR SAMPLE 42 THRESHOLD 0.5",
        "image NEAR SAMPLE 42 THRESHOLD 0.5",
        "NEAR",
    ),
    (
        "SELECT id FROM samples WHERE image NEAR (IMAGE 'a.jpg', NOT SAMPLE 'b')",
        "image NEAR (IMAGE 'a.jpg', NOT SAMPLE 'b')",
        "NEAR",
    ),
    (
        "SELECT id FROM samples WHERE image NOT NEAR IMAGE 'a.jpg'",
        "image NOT NEAR IMAGE 'a.jpg'",
        "NEAR",
    ),
    ("SELECT id, SIMILARITY('a dog') AS s FROM samples", "SIMILARITY('a dog')", "SIMILARITY"),
    (
        "SELECT id, SIMILARITY(image, IMAGE 'x.jpg') AS s FROM samples",
        "SIMILARITY(image, IMAGE 'x.jpg')",
        "SIMILARITY",
    ),
    (
        "SELECT id FROM samples ORDER BY SIMILARITY(SAMPLE 'img_1' USING clip) DESC",
        "SIMILARITY(SAMPLE 'img_1' USING clip)",
        "SIMILARITY",
    ),
    ("SELECT id,\n  SIMILARITY('a cat') AS s\nFROM samples", "SIMILARITY('a cat')", "SIMILARITY"),
]



def _x001(session: Session, text: str, codes: tuple[str, ...] = ("X001",)) -> PopQLError:
    with pytest.raises(PopQLError) as info:
        session.execute(text, file="query.popql")
    err = info.value
    assert err.codes[0] in codes and len(err.codes) == 1, str(err)
    return err


@pytest.mark.parametrize(("query", "construct", "word"), SEARCH_EXPRESSIONS, ids=_qid)
def test_search_without_dataset_points_at_construct(
    images: Session, query: str, construct: str, word: str
) -> None:
    err = _x001(images, query, ("S001", "S002"))
    diag = err.diagnostic
    assert diag.span is not None
    assert query[diag.span.start : diag.span.end] == construct
    line = query.count("\n", 0, query.index(construct)) + 1
    assert diag.span.line == line
    assert word in diag.message
    has_membership = any(w in construct for w in ("TOP", "THRESHOLD")) or "SIMILARITY" in word
    assert diag.code == ("S002" if has_membership else "S001")
    assert diag.file == "query.popql"
    assert diag.hints
    rendered = str(err)
    assert f"query.popql:{diag.span.line}:{diag.span.column}" in rendered
    assert "^" * min(len(construct), 20) in rendered


def test_x001_statement_stops_the_script(images: Session) -> None:
    s = connect()
    with pytest.raises(PopQLError):
        s.execute(
            "CREATE TABLE before (a INT); EVALUATE detector ON night; "
            "CREATE TABLE after (a INT)"
        )
    assert "before" in s.tables() and "after" not in s.tables()


def test_search_compile_statement_directly(images: Session) -> None:
    for query, _construct, _word in SEARCH_EXPRESSIONS:
        with pytest.raises(PopQLError) as info:
            compile_statement(parse(query).statements[0], images.catalog)
        assert info.value.code in ("S001", "S002"), query


def test_search_inside_subquery_and_cte(images: Session) -> None:
    query = (
        "WITH hits AS (SELECT id FROM samples WHERE image SIMILAR TO 'a dog' TOP 5)"
        " SELECT * FROM hits WHERE id IN (SELECT id FROM samples WHERE NEAR IMAGE 'x.jpg')"
    )
    err = _x001(images, query, ("S002",))
    span = err.diagnostic.span
    assert span is not None
    # the CTE is lowered first: its search is the one that finds no dataset
    assert query[span.start : span.end] == "image SIMILAR TO 'a dog' TOP 5"


def test_search_options_on_text_column_message(images: Session) -> None:
    with pytest.raises(PopQLError) as info:
        images.sql("SELECT id FROM samples WHERE uri SIMILAR TO 'a' TOP 5")
    message = info.value.diagnostic.message
    assert "but 'uri' is string" not in message


def test_similar_to_on_image_column_is_a_search_not_regex(images: Session) -> None:
    err = _x001(images, "SELECT id FROM samples s WHERE s.image SIMILAR TO 'dog' TOP 2", ("S002",))
    assert err.diagnostic.span is not None
