"""Similarity search inside PopQL statements, on real data: 1,000 Fashion-MNIST test images
ingested with the offline test CLIP (models/fmnist-clip).

Every result is checked against an independent numpy computation over the stored embeddings
(cosine in float64, ties by sample key), not against PopQL's own vector code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from fmnist_data import build
from hypothesis import given, settings
from hypothesis import strategies as st

import popql
from popql.diagnostics import PopQLError
from popql.engine.images import sample_key_of

N = 1000
SNEAKER = "a photo of a sneaker"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("fmnist"), N)


@pytest.fixture(scope="module")
def session(dataset: Path) -> popql.Session:
    return popql.connect(dataset)


@pytest.fixture(scope="module")
def truth(session: popql.Session) -> dict[str, object]:
    """Stored vectors (float64, unit), ids, labels and tags: the independent side."""
    table = session.sql(
        "SELECT s.sample_id, s.label, s.brightness, s.uri, e.embedding"
        ' FROM samples s JOIN "embeddings.fmnist_clip" e ON s.sample_id = e.sample_id'
    ).to_arrow()
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float64)
    ids = table.column("sample_id").to_pylist()
    return {
        "ids": ids,
        "keys": np.array([sample_key_of(i) for i in ids], np.int64),
        "labels": table.column("label").to_pylist(),
        "brightness": np.asarray(table.column("brightness").to_pylist(), np.float64),
        "uris": table.column("uri").to_pylist(),
        "unit": vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
    }


@pytest.fixture(scope="module")
def embedder():
    from popql.engine.embedders import load_embedder

    return load_embedder("fmnist-clip")


def text_vector(embedder, text: str) -> np.ndarray:
    v = np.asarray(embedder.embed_texts([text])[0], np.float64)
    return v / np.linalg.norm(v)


def brute_force(truth, query: np.ndarray, allowed=None, k=None, threshold=None):
    """(ids, scores) best first, ties by key: numpy over the stored vectors."""
    q = query / np.linalg.norm(query)
    scores = truth["unit"] @ q
    rows = np.arange(len(scores)) if allowed is None else np.flatnonzero(allowed)
    order = sorted(rows, key=lambda r: (-round(float(scores[r]), 6), truth["keys"][r]))
    if threshold is not None:
        order = [r for r in order if scores[r] >= threshold]
    if k is not None:
        order = order[:k]
    return [truth["ids"][r] for r in order], np.array([scores[r] for r in order])


def rows(session: popql.Session, sql: str) -> list[dict[str, object]]:
    return session.sql(sql).to_pylist()


# -- the semantic checks of the issue ----------------------------------------------------------


def test_sneaker_top_50_is_mostly_sneakers(session: popql.Session) -> None:
    got = rows(session, f"SELECT label FROM samples WHERE image SIMILAR TO '{SNEAKER}' TOP 50")
    assert len(got) == 50
    share = sum(r["label"] == "sneaker" for r in got) / 50
    assert share >= 0.70, share


def test_near_sample_on_a_bag_returns_mostly_bags(session: popql.Session) -> None:
    bags = rows(session, "SELECT sample_id FROM samples WHERE label = 'bag' ORDER BY sample_id")
    for bag in bags[:5]:
        got = rows(
            session,
            f"SELECT label FROM samples WHERE NEAR SAMPLE '{bag['sample_id']}' TOP 20",
        )
        assert len(got) == 20
        assert sum(r["label"] == "bag" for r in got) / 20 >= 0.6


def test_exact_equals_numpy(session: popql.Session, truth, embedder) -> None:
    got = session.sql(
        f"SELECT sample_id, SIMILARITY('{SNEAKER}') AS score FROM samples"
        f" WHERE image SIMILAR TO '{SNEAKER}' TOP 25 EXACT ORDER BY score DESC, sample_id"
    ).to_arrow()
    ids, scores = brute_force(truth, text_vector(embedder, SNEAKER), k=25)
    assert got.column("sample_id").to_pylist() == ids
    assert np.allclose(got.column("score").to_numpy(), scores, atol=1e-6)
    # without ORDER BY, a search's rows come best first
    plain = rows(
        session, f"SELECT sample_id FROM samples WHERE SIMILAR TO '{SNEAKER}' TOP 25 EXACT"
    )
    assert [r["sample_id"] for r in plain] == ids


def test_filtered_top_k_returns_k_rows_that_pass(session, truth, embedder) -> None:
    # the query's own class is filtered out: the allowed rows lie deep in the ranking
    got = rows(
        session,
        "SELECT sample_id, label FROM samples"
        f" WHERE label <> 'sneaker' AND image SIMILAR TO '{SNEAKER}' TOP 20",
    )
    allowed = np.array([lab != "sneaker" for lab in truth["labels"]])
    ids, _ = brute_force(truth, text_vector(embedder, SNEAKER), allowed, k=20)
    assert len(got) == 20 and all(r["label"] != "sneaker" for r in got)
    assert {r["sample_id"] for r in got} == set(ids)


def test_threshold_is_every_row_at_least_t(session, truth, embedder) -> None:
    got = rows(session, f"SELECT sample_id FROM samples WHERE SIMILAR TO '{SNEAKER}' THRESHOLD 0.6")
    ids, _ = brute_force(truth, text_vector(embedder, SNEAKER), threshold=0.6)
    assert 0 < len(ids) < N
    assert {r["sample_id"] for r in got} == set(ids)


def test_planned_top_k_matches_brute_force(session, truth, embedder) -> None:
    vectors = {
        t: text_vector(embedder, t) for t in (SNEAKER, "a photo of a bag", "a photo of a dress")
    }

    @settings(max_examples=25, deadline=None)
    @given(
        t=st.floats(0.0, 0.6),
        classes=st.sets(
            st.sampled_from(["bag", "sneaker", "sandal", "coat", "dress", "trouser"]), min_size=1
        ),
        k=st.integers(1, 120),
        text=st.sampled_from(sorted(vectors)),
        exact=st.booleans(),
    )
    def check(t: float, classes: set[str], k: int, text: str, exact: bool) -> None:
        listed = ", ".join(f"'{c}'" for c in sorted(classes))
        got = rows(
            session,
            f"SELECT sample_id FROM samples WHERE brightness > {t!r} AND label IN ({listed})"
            f" AND image SIMILAR TO '{text}' TOP {k}{' EXACT' if exact else ''}",
        )
        allowed = (truth["brightness"] > t) & np.isin(truth["labels"], sorted(classes))
        ids, _ = brute_force(truth, vectors[text], allowed, k=k)
        assert len(got) == len(ids) == min(k, int(allowed.sum()))
        overlap = len({r["sample_id"] for r in got} & set(ids)) / len(ids) if ids else 1.0
        assert overlap == 1.0 if exact else overlap >= 0.95

    check()


# -- membership, boolean logic and the rest of SQL ---------------------------------------------


def test_order_by_score_with_limit_is_top_k(session, truth, embedder) -> None:
    got = session.sql(
        "SELECT sample_id, SIMILARITY('a photo of a bag') AS s FROM samples"
        " WHERE brightness > 0.2 ORDER BY s DESC LIMIT 7"
    ).to_arrow()
    ids, scores = brute_force(
        truth, text_vector(embedder, "a photo of a bag"), truth["brightness"] > 0.2, k=7
    )
    assert got.column("sample_id").to_pylist() == ids
    assert np.allclose(got.column("s").to_numpy(), scores, atol=1e-6)
    # the ORDER BY LIMIT membership also feeds a SIMILAR TO without TOP
    again = session.sql(
        "SELECT sample_id FROM samples WHERE brightness > 0.2"
        " AND image SIMILAR TO 'a photo of a bag'"
        " ORDER BY SIMILARITY('a photo of a bag') DESC LIMIT 7"
    ).to_arrow()
    assert again.column("sample_id").to_pylist() == ids


def test_not_and_or(session, truth, embedder) -> None:
    top10, _ = brute_force(truth, text_vector(embedder, SNEAKER), k=10)
    rest = rows(
        session, f"SELECT sample_id FROM samples WHERE NOT SIMILAR TO '{SNEAKER}' TOP 10 EXACT"
    )
    assert len(rest) == N - 10 and not {r["sample_id"] for r in rest} & set(top10)
    same = rows(
        session,
        f"SELECT sample_id FROM samples WHERE image NOT SIMILAR TO '{SNEAKER}' TOP 10 EXACT",
    )
    assert {r["sample_id"] for r in same} == {r["sample_id"] for r in rest}
    either = rows(
        session,
        f"SELECT sample_id FROM samples WHERE label = 'bag' OR SIMILAR TO '{SNEAKER}' TOP 10 EXACT",
    )
    bags = {i for i, lab in zip(truth["ids"], truth["labels"], strict=True) if lab == "bag"}
    assert {r["sample_id"] for r in either} == bags | set(top10)


def test_similarity_in_select_group_by_and_having(session, truth, embedder) -> None:
    got = session.sql(
        "SELECT label, avg(SIMILARITY('a photo of a bag')) AS s, count(*) AS n FROM samples"
        " GROUP BY label HAVING count(*) > 0 ORDER BY s DESC"
    ).to_arrow()
    scores = truth["unit"] @ text_vector(embedder, "a photo of a bag")
    assert got.column("label")[0].as_py() == "bag"
    means = {
        lab: float(np.mean([s for s, x in zip(scores, truth["labels"], strict=True) if x == lab]))
        for lab in set(truth["labels"])
    }
    for lab, s in zip(got.column("label").to_pylist(), got.column("s").to_pylist(), strict=True):
        assert abs(s - means[lab]) < 1e-5


def test_joins_subqueries_ctes(session, truth, embedder) -> None:
    joined = rows(
        session,
        "SELECT s.sample_id, l.label FROM samples s JOIN labels l ON s.sample_id = l.sample_id"
        f" WHERE s.image SIMILAR TO '{SNEAKER}' TOP 5",
    )
    top5, _ = brute_force(truth, text_vector(embedder, SNEAKER), k=5)
    assert sorted(r["sample_id"] for r in joined) == sorted(top5)
    nested = rows(
        session,
        "SELECT count(*) AS n FROM samples WHERE sample_id IN"
        f" (SELECT sample_id FROM samples WHERE SIMILAR TO '{SNEAKER}' TOP 12)",
    )
    assert nested == [{"n": 12}]
    # a search over a subquery ranks the subquery's rows: the best sneakers among bags
    bags = np.array([lab == "bag" for lab in truth["labels"]])
    ids, _ = brute_force(truth, text_vector(embedder, SNEAKER), bags, k=3)
    for sql in (
        "SELECT sample_id FROM (SELECT * FROM samples WHERE label = 'bag') b"
        f" WHERE SIMILAR TO '{SNEAKER}' TOP 3",
        "WITH b AS (SELECT sample_id, label FROM samples WHERE label = 'bag')"
        f" SELECT sample_id FROM b WHERE b.image SIMILAR TO '{SNEAKER}' TOP 3",
    ):
        assert {r["sample_id"] for r in rows(session, sql)} == set(ids), sql


def test_create_table_as_and_views(session) -> None:
    session.sql(
        f"CREATE TABLE sneakers AS SELECT sample_id FROM samples WHERE SIMILAR TO '{SNEAKER}'"
        " TOP 30"
    )
    assert rows(session, "SELECT count(*) AS n FROM sneakers") == [{"n": 30}]
    session.sql("DROP TABLE sneakers")


def test_near_image_file_and_several_examples(session, truth) -> None:
    i = truth["labels"].index("trouser")
    uri = truth["uris"][i]
    path = uri.removeprefix("file://")
    got = session.sql(
        f"SELECT sample_id, SIMILARITY(IMAGE '{path}') AS s FROM samples"
        f" WHERE NEAR IMAGE '{path}' TOP 3 ORDER BY s DESC"
    ).to_arrow()
    assert got.column("sample_id")[0].as_py() == truth["ids"][i]
    assert got.column("s")[0].as_py() > 0.99
    # positives averaged, negatives subtracted: against numpy
    a, b, c = (truth["ids"][truth["labels"].index(x)] for x in ("bag", "coat", "sneaker"))
    got = rows(
        session,
        f"SELECT sample_id FROM samples WHERE NEAR (SAMPLE '{a}', SAMPLE '{b}', NOT SAMPLE '{c}')"
        " TOP 15 EXACT",
    )
    unit = truth["unit"]
    ra, rb, rc = (truth["ids"].index(x) for x in (a, b, c))
    q = (unit[ra] + unit[rb]) / 2 - unit[rc]
    ids, _ = brute_force(truth, q, k=15)
    assert [r["sample_id"] for r in got] == ids


def test_as_of_version_searches_that_version(session, dataset) -> None:
    old = popql.connect(dataset, version=2)
    old_ids = {r["sample_id"] for r in old.sql("SELECT sample_id FROM samples").to_pylist()}
    assert 0 < len(old_ids) < N
    got = rows(
        session,
        f"SELECT sample_id FROM samples AS OF VERSION 2 WHERE SIMILAR TO '{SNEAKER}' TOP 10",
    )
    assert len(got) == 10 and {r["sample_id"] for r in got} <= old_ids


def test_using_names_the_embedder(session) -> None:
    assert (
        len(
            rows(
                session,
                f"SELECT 1 FROM samples WHERE SIMILAR TO '{SNEAKER}' USING fmnist_clip TOP 4",
            )
        )
        == 4
    )
    with pytest.raises(PopQLError) as err:
        session.sql(f"SELECT 1 FROM samples WHERE SIMILAR TO '{SNEAKER}' USING clip TOP 4")
    d = err.value.diagnostics[0]
    assert d.code == "S002" and "fmnist_clip" in " ".join(d.hints)


# -- caching, EXPLAIN, checking ----------------------------------------------------------------


def test_query_embedded_once_and_cached(dataset) -> None:
    s = popql.connect(dataset)
    text = "a photo of a pullover"
    s.sql(
        f"SELECT SIMILARITY('{text}') AS x FROM samples WHERE SIMILAR TO '{text}' TOP 3"
        f" ORDER BY SIMILARITY('{text}') DESC"
    ).to_arrow()
    assert s.similarity.embeddings_computed == 1
    s.sql(f"SELECT 1 FROM samples WHERE SIMILAR TO '{text}' THRESHOLD 0.5").to_arrow()
    assert s.similarity.embeddings_computed == 1
    assert not [t for t in s.tables() if t.startswith("__popql")]  # result tables dropped


def test_explain_shows_strategy_and_reason(session) -> None:
    def explain(sql: str) -> list[str]:
        t = session.sql("EXPLAIN " + sql).to_arrow()
        return [
            p
            for k, p in zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True)
            if k == "popql_similarity_search"
        ]

    plain = explain(f"SELECT sample_id FROM samples WHERE SIMILAR TO '{SNEAKER}' TOP 10")
    assert len(plain) == 1 and "hnsw" in plain[0] and "no filter" in plain[0]
    filtered = explain(
        f"SELECT sample_id FROM samples WHERE label = 'bag' AND SIMILAR TO '{SNEAKER}' TOP 10"
    )
    assert "exact" in filtered[0] and "candidates" in filtered[0]
    forced = explain(f"SELECT sample_id FROM samples WHERE SIMILAR TO '{SNEAKER}' TOP 10 EXACT")
    assert "EXACT requested" in forced[0]
    analyzed = session.sql(
        f"EXPLAIN ANALYZE SELECT sample_id FROM samples WHERE SIMILAR TO '{SNEAKER}' TOP 10"
    ).to_arrow()
    assert any("-> 10 rows" in p for p in analyzed.column(1).to_pylist())


def test_check_validates_without_running(session) -> None:
    session.check(f"SELECT sample_id FROM samples WHERE SIMILAR TO '{SNEAKER}' TOP 10")
    with pytest.raises(PopQLError) as err:
        session.check(f"SELECT sample_id FROM samples WHERE SIMILAR TO '{SNEAKER}'")
    assert err.value.diagnostics[0].code == "S001"


def test_text_columns_keep_sql_similar_to(session) -> None:
    got = rows(session, "SELECT count(*) AS n FROM samples WHERE format SIMILAR TO 'PN.'")
    assert got == [{"n": N}]


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "code", "needle"),
    [
        (f"SELECT 1 FROM samples WHERE SIMILAR TO '{SNEAKER}'", "S001", "TOP k"),
        ("SELECT 1 FROM samples WHERE NEAR IMAGE 'missing.png' TOP 3", "S003", "not found"),
        ("SELECT 1 FROM samples WHERE NEAR SAMPLE 'abc' TOP 3", "S003", "no sample"),
        ("SELECT 1 FROM samples WHERE NEAR NOT SAMPLE 'abc' TOP 3", "S003", "no sample"),
        ("SELECT 1 FROM samples WHERE image SIMILAR TO label TOP 3", "S003", "text literal"),
        ("SELECT 1 FROM samples WHERE SIMILAR TO 'x' THRESHOLD 2", "T005", "[-1, 1]"),
        (
            "SELECT 1 FROM samples a JOIN samples b ON a.sample_id = b.sample_id"
            " WHERE SIMILAR TO 'x' TOP 3",
            "N005",
            "a.image",
        ),
        (
            "SELECT 1 FROM labels l, (VALUES (1)) v(x) WHERE v.image SIMILAR TO 'x' TOP 3",
            "N002",
            "sample_id",
        ),
        ("SELECT 1 FROM samples WHERE brightness SIMILAR TO 'x' TOP 3", "T002", "brightness"),
    ],
)
def test_errors(session, sql: str, code: str, needle: str) -> None:
    with pytest.raises(PopQLError) as err:
        session.sql(sql).to_arrow()
    d = err.value.diagnostics[0]
    assert d.code == code, err.value
    assert needle in d.message + " ".join(d.hints)
    assert d.span is not None


def test_in_memory_session_says_it_needs_a_dataset() -> None:
    s = popql.connect()
    s.register("t", pa.table({"sample_id": ["0123456789abcdef"]}))
    with pytest.raises(PopQLError) as err:
        s.sql("SELECT * FROM t WHERE SIMILAR TO 'x' TOP 3")
    assert err.value.diagnostics[0].code == "S002"


def test_changed_embedder_weights_are_refused(dataset) -> None:
    s = popql.connect(dataset)
    meta = s.snapshot.embedders["fmnist_clip"]
    # as if the dataset's vectors had been computed by other weights of the same model
    meta["identity"] = "fmnist-clip@sha256:" + "0" * 64
    with pytest.raises(PopQLError) as err:
        s.sql(f"SELECT 1 FROM samples WHERE SIMILAR TO '{SNEAKER}' TOP 3")
    d = err.value.diagnostics[0]
    assert d.code == "S004" and "now loads as" in d.message and "0000" in d.message


def test_dataset_without_embeddings(tmp_path: Path, dataset: Path) -> None:
    copy = tmp_path / "noemb"
    shutil.copytree(dataset.parent / "img", tmp_path / "img")
    popql.connect(copy).ingest(tmp_path / "img", taggers=[], embedder=None, progress=False)
    with pytest.raises(PopQLError) as err:
        popql.connect(copy).sql("SELECT 1 FROM samples WHERE SIMILAR TO 'x' TOP 1")
    assert err.value.diagnostics[0].code == "S002"


def test_near_text_examples_positive_and_negative(session, truth, embedder) -> None:
    got = rows(
        session,
        f"SELECT sample_id FROM samples WHERE NEAR ('{SNEAKER}', NOT 'a photo of a sandal')"
        " TOP 20 EXACT",
    )
    q = text_vector(embedder, SNEAKER) - text_vector(embedder, "a photo of a sandal")
    ids, _ = brute_force(truth, q, k=20)
    assert [r["sample_id"] for r in got] == ids
    # a caption alone is SIMILAR TO
    same = rows(session, f"SELECT sample_id FROM samples WHERE image NEAR '{SNEAKER}' TOP 9 EXACT")
    ids, _ = brute_force(truth, text_vector(embedder, SNEAKER), k=9)
    assert [r["sample_id"] for r in same] == ids


def test_membership_as_a_column_and_under_or(session, truth, embedder) -> None:
    top60, _ = brute_force(truth, text_vector(embedder, SNEAKER), k=60)
    for k, inline in ((60, True), (1500, False)):  # small results are inlined as IN lists
        got = session.sql(
            f"SELECT sample_id, image SIMILAR TO '{SNEAKER}' TOP {k} EXACT AS hit,"
            f" CASE WHEN NEAR '{SNEAKER}' TOP {k} EXACT THEN 'yes' ELSE 'no' END AS word"
            " FROM samples ORDER BY sample_id"
        ).to_arrow()
        hits = [
            i
            for i, h in zip(got.column(0).to_pylist(), got.column(1).to_pylist(), strict=True)
            if h
        ]
        words = got.column(2).to_pylist()
        assert len(hits) == min(k, N) and words.count("yes") == len(hits)
        if inline:
            assert set(hits) == set(top60)


# -- populations by similarity, evaluated (issues 4 and 5 together) -----------------------------


def test_population_by_similarity_evaluated_against_sklearn(tmp_path: Path, dataset: Path) -> None:
    from sklearn.metrics import accuracy_score

    shutil.copytree(dataset, tmp_path / "ds")
    s = popql.connect(tmp_path / "ds")
    truth = s.sql("SELECT sample_id, label FROM samples ORDER BY sample_id").to_pydict()
    # a "model" that calls every other sneaker a sandal, and is right elsewhere
    preds = [
        "sandal" if lab == "sneaker" and i % 2 else lab for i, lab in enumerate(truth["label"])
    ]
    ids = truth["sample_id"]
    s.log_predictions(
        model="clf", data=[{"sample_id": i, "label": p} for i, p in zip(ids, preds, strict=True)]
    )
    s.sql(
        "CREATE POPULATION sneaker_like DESCRIPTION 'looks like a sneaker' AS"
        f" SELECT * FROM samples WHERE image SIMILAR TO '{SNEAKER}' TOP 60"
    )
    members = {r["sample_id"] for r in rows(s, "SELECT sample_id FROM sneaker_like")}
    assert len(members) == 60
    got = s.sql("EVALUATE clf ON sneaker_like METRICS accuracy").to_pylist()[0]
    idx = [i for i, sid in enumerate(truth["sample_id"]) if sid in members]
    want = accuracy_score([truth["label"][i] for i in idx], [preds[i] for i in idx])
    assert got["n"] == 60 and got["accuracy"] == pytest.approx(want)
    assert got["accuracy_lo"] < got["accuracy"] < got["accuracy_hi"]
    verdict = s.sql("EXPECT accuracy >= 0.95 ON sneaker_like FOR MODEL clf").to_pylist()[0]
    assert verdict["status"] in ("fail", "inconclusive") and want < 0.95


def test_scores_of_rows_outside_a_negated_search(session, truth, embedder) -> None:
    # NOT (...) and NOT SIMILAR TO keep the rows outside the top 10: their scores are real,
    # and ORDER BY ... LIMIT ranks among them
    ids, scores = brute_force(truth, text_vector(embedder, SNEAKER), k=13)
    for negation in (
        f"NOT SIMILAR TO '{SNEAKER}' TOP 10 EXACT",
        f"NOT (image SIMILAR TO '{SNEAKER}' TOP 10 EXACT)",
    ):
        got = session.sql(
            f"SELECT sample_id, SIMILARITY('{SNEAKER}') AS s FROM samples WHERE {negation}"
            " ORDER BY s DESC LIMIT 3"
        ).to_arrow()
        assert got.column("sample_id").to_pylist() == ids[10:13], negation
        assert np.allclose(got.column("s").to_numpy(), scores[10:13], atol=1e-6)
