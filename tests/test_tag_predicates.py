"""Tag predicates (``TAGGED``, ``COUNT/ANY/ALL(list WHERE ...)``) against a plain-Python oracle.

One in-memory session holds a small ``samples`` table with tag columns of every kind: booleans,
numbers, strings, a ``labels`` list<string> (with NULL lists, empty lists, NULL elements) and
``detections``, a list<struct<label, score: float32, box: fixed_size_list<float32>[4]>> (with
NULL lists, empty lists, NULL elements and NULL fields). Every query is compared with the same
computation written in plain Python over the same rows, using the semantics documented in
``popql.engine.lower`` / ``popql.engine.listpred``:

* ``labels TAGGED 'x'`` is ``array_has``: NULL for a NULL list, False for an empty list;
* ``NOT TAGGED`` is ``NOT (...)`` (so NULL stays NULL);
* ``COUNT(dets WHERE p)`` counts the elements where ``p`` is TRUE (NULL does not count) and is
  NULL for a NULL list; ``ANY`` is ``count > 0``; ``ALL`` is ``count = cardinality(dets)``;
* a field of a NULL element is NULL.

Scores are chosen to be exact in float32 so that Python floats compare the same way.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from popql.diagnostics import PopQLError
from popql.engine import Session, connect
from popql.engine.lower import compile_statement
from popql.syntax import parse

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

BOX = pa.list_(pa.float32(), 4)
DETECTION = pa.struct([("label", pa.string()), ("score", pa.float32()), ("box", BOX)])
DETECTIONS = pa.list_(DETECTION)
LABELS = pa.list_(pa.string())


def det(label: str | None, score: float | None, box: list[float] | None = None) -> dict:
    return {"label": label, "score": score, "box": [0.0, 0.0, 1.0, 1.0] if box is None else box}


NO_BOX = {"box": None}

ROWS: list[dict[str, Any]] = [
    {
        "id": 1,
        "uri": "s3://a/1.jpg",
        "camera_id": "cam1",
        "is_blurry": False,
        "num_faces": 3,
        "num_people": 7,
        "brightness": 0.25,
        "road_pct": 0.5,
        "ocean_pct": 0.0,
        "weather": "rain",
        "labels": ["night", "rain", "highway"],
        "detections": [det("person", 0.75)] * 7 + [det("car", 0.875)],
    },
    {
        "id": 2,
        "uri": "s3://a/2.jpg",
        "camera_id": "cam1",
        "is_blurry": True,
        "num_faces": 0,
        "num_people": 8,
        "brightness": 0.75,
        "road_pct": 0.05,
        "ocean_pct": 0.75,
        "weather": "sunny",
        "labels": ["day", "highway"],
        "detections": [det("person", 0.625)] * 6
        + [det("person", 0.25)] * 2
        + [det("bicycle", 0.5, [0.0, 0.0, 0.5, 0.5])],
    },
    {
        "id": 3,
        "uri": "s3://a/3.jpg",
        "camera_id": "cam2",
        "is_blurry": False,
        "num_faces": 1,
        "num_people": 0,
        "brightness": 0.125,
        "road_pct": 0.0,
        "ocean_pct": 0.875,
        "weather": "fog",
        "labels": ["night", "snow"],
        "detections": [det("car", 0.9375), det("car", 0.125)],
    },
    {
        "id": 4,
        "uri": "s3://a/4.jpg",
        "camera_id": "cam2",
        "is_blurry": None,
        "num_faces": 2,
        "num_people": 6,
        "brightness": 0.5,
        "road_pct": 0.25,
        "ocean_pct": 0.5,
        "weather": "sunny",
        "labels": [],
        "detections": [],
    },
    {
        "id": 5,
        "uri": "s3://a/5.jpg",
        "camera_id": "cam3",
        "is_blurry": None,
        "num_faces": None,
        "num_people": None,
        "brightness": None,
        "road_pct": None,
        "ocean_pct": None,
        "weather": None,
        "labels": None,
        "detections": None,
    },
    {
        "id": 6,
        "uri": "s3://a/6.jpg",
        "camera_id": "cam3",
        "is_blurry": True,
        "num_faces": 5,
        "num_people": 9,
        "brightness": 0.0625,
        "road_pct": 0.0625,
        "ocean_pct": 0.8125,
        "weather": "sunny",
        "labels": ["night", None],
        "detections": [det("person", None), det(None, 0.75), {**det("person", 0.5), **NO_BOX}],
    },
    {
        "id": 7,
        "uri": "s3://a/7.jpg",
        "camera_id": "cam1",
        "is_blurry": False,
        "num_faces": 6,
        "num_people": 6,
        "brightness": 0.9375,
        "road_pct": 0.75,
        "ocean_pct": 0.0,
        "weather": "sunny",
        "labels": ["blurry", "day"],
        "detections": [det("person", s) for s in (1.0, 0.9375, 0.875, 0.75, 0.625, 0.5625)],
    },
    {
        "id": 8,
        "uri": "s3://a/8.jpg",
        "camera_id": "cam2",
        "is_blurry": False,
        "num_faces": 0,
        "num_people": 2,
        "brightness": 0.375,
        "road_pct": 0.125,
        "ocean_pct": 0.125,
        "weather": "rain",
        "labels": ["rain", "snow", "night"],
        "detections": [det("bicycle", 0.875, [0.0, 0.0, 0.75, 0.5]), det("pedestrian", 0.5)],
    },
    {
        "id": 9,
        "uri": "s3://a/9.jpg",
        "camera_id": "cam3",
        "is_blurry": True,
        "num_faces": 4,
        "num_people": 1,
        "brightness": 0.6875,
        "road_pct": 0.0,
        "ocean_pct": 0.9375,
        "weather": "fog",
        "labels": ["NIGHT"],
        "detections": [None],
    },
    {
        "id": 10,
        "uri": "s3://a/10.jpg",
        "camera_id": "cam1",
        "is_blurry": False,
        "num_faces": 1,
        "num_people": 3,
        "brightness": 0.8125,
        "road_pct": 0.03125,
        "ocean_pct": 0.71875,
        "weather": "sunny",
        "labels": ["highway"],
        "detections": [det("truck", 0.25), det("car", 0.5625)],
    },
    {
        "id": 11,
        "uri": "s3://a/11.jpg",
        "camera_id": "cam2",
        "is_blurry": None,
        "num_faces": 2,
        "num_people": 12,
        "brightness": 0.5625,
        "road_pct": 0.5,
        "ocean_pct": None,
        "weather": "snow",
        "labels": ["it's", "night"],
        "detections": [det("o'brien", 0.5), det("person", 0.6875)] * 3,
    },
    {
        "id": 12,
        "uri": "s3://a/12.jpg",
        "camera_id": None,
        "is_blurry": False,
        "num_faces": 0,
        "num_people": 0,
        "brightness": 1.0,
        "road_pct": 0.09375,
        "ocean_pct": 0.75,
        "weather": "sunny",
        "labels": ["rain"],
        "detections": [det("person", 0.5), det("person", 0.5)],
    },
]

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("uri", pa.string()),
        ("camera_id", pa.string()),
        ("is_blurry", pa.bool_()),
        ("num_faces", pa.int64()),
        ("num_people", pa.int32()),
        ("brightness", pa.float64()),
        ("road_pct", pa.float64()),
        ("ocean_pct", pa.float64()),
        ("weather", pa.string()),
        ("labels", LABELS),
        ("detections", DETECTIONS),
    ]
)

CAMERAS = pa.table(
    {
        "camera_id": ["cam1", "cam2", "cam3"],
        "city": ["Oslo", "Lima", "Pune"],
        "tags": pa.array([["urban", "coast"], ["rural"], None], LABELS),
    }
)


def samples_table() -> pa.Table:
    return pa.Table.from_pylist(ROWS, schema=SCHEMA)


@pytest.fixture(scope="module")
def session() -> Session:
    s = connect()
    s.register("samples", samples_table())
    s.register("cameras", CAMERAS)
    return s


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    # What the engine stores (e.g. float32 scores), read back through Arrow.
    return samples_table().to_pylist()


def values(session: Session, expr: str, where: str = "") -> list[Any]:
    """``expr`` for every row of samples, in id order."""
    out = session.sql(f"SELECT id, {expr} AS v FROM samples {where} ORDER BY id").to_pylist()
    return [r["v"] for r in out]


def ids(session: Session, query: str, params: dict[str, Any] | None = None) -> list[int]:
    return sorted(r["id"] for r in session.sql(query, params).to_pylist())


# ---------------------------------------------------------------------------------------------
# The oracle: SQL three-valued logic in plain Python
# ---------------------------------------------------------------------------------------------

Pred = Callable[[dict[str, Any]], bool | None]


def and_(*vals: bool | None) -> bool | None:
    if any(v is False for v in vals):
        return False
    if any(v is None for v in vals):
        return None
    return True


def or_(*vals: bool | None) -> bool | None:
    if any(v is True for v in vals):
        return True
    if any(v is None for v in vals):
        return None
    return False


def not_(v: bool | None) -> bool | None:
    return None if v is None else not v


def cmp(a: Any, op: str, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    return {
        "=": a == b,
        "<>": a != b,
        "<": a < b,
        "<=": a <= b,
        ">": a > b,
        ">=": a >= b,
    }[op]


def field(d: dict | None, name: str) -> Any:
    return None if d is None else d[name]


def like(value: str | None, pattern: str) -> bool | None:
    if value is None:
        return None
    rx = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, re.DOTALL) is not None


def in_(value: Any, items: tuple[Any, ...]) -> bool | None:
    return None if value is None else value in items


def tagged(labels: list | None, label: str) -> bool | None:
    return None if labels is None else label in labels


def tagged_any(labels: list | None, wanted: tuple[str, ...]) -> bool | None:
    return None if labels is None else any(w in labels for w in wanted)


def tagged_all(labels: list | None, wanted: tuple[str, ...]) -> bool | None:
    return None if labels is None else all(w in labels for w in wanted)


def count(dets: list | None, pred: Pred) -> int | None:
    if dets is None:
        return None
    return sum(1 for d in dets if pred(d) is True)


def any_(dets: list | None, pred: Pred) -> bool | None:
    n = count(dets, pred)
    return None if n is None else n > 0


def all_(dets: list | None, pred: Pred) -> bool | None:
    n = count(dets, pred)
    return None if n is None else n == len(dets)  # type: ignore[arg-type]


def minus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a - b


def person_over_half(d: dict | None) -> bool | None:
    return and_(cmp(field(d, "label"), "=", "person"), cmp(field(d, "score"), ">", 0.5))


# (PopQL expression over one samples row, the oracle over the row dict)
CASES: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    # -- TAGGED -------------------------------------------------------------------------------
    ("labels TAGGED 'night'", lambda r: tagged(r["labels"], "night")),
    ("TAGGED 'night'", lambda r: tagged(r["labels"], "night")),
    ("samples.labels TAGGED 'highway'", lambda r: tagged(r["labels"], "highway")),
    ("labels TAGGED 'it''s'", lambda r: tagged(r["labels"], "it's")),
    ("labels TAGGED 'NIGHT'", lambda r: tagged(r["labels"], "NIGHT")),
    ("labels TAGGED 'absent'", lambda r: tagged(r["labels"], "absent")),
    ("labels TAGGED ('rain', 'snow')", lambda r: tagged_any(r["labels"], ("rain", "snow"))),
    ("TAGGED ('day', 'absent')", lambda r: tagged_any(r["labels"], ("day", "absent"))),
    ("labels TAGGED ALL ('night', 'rain')", lambda r: tagged_all(r["labels"], ("night", "rain"))),
    (
        "TAGGED ALL ('rain', 'snow', 'night')",
        lambda r: tagged_all(r["labels"], ("rain", "snow", "night")),
    ),
    (
        "labels TAGGED ALL ('night', 'absent')",
        lambda r: tagged_all(r["labels"], ("night", "absent")),
    ),
    ("labels NOT TAGGED 'blurry'", lambda r: not_(tagged(r["labels"], "blurry"))),
    (
        "labels NOT TAGGED ('rain', 'snow')",
        lambda r: not_(tagged_any(r["labels"], ("rain", "snow"))),
    ),
    (
        "labels NOT TAGGED ALL ('night', 'rain')",
        lambda r: not_(tagged_all(r["labels"], ("night", "rain"))),
    ),
    ("NOT TAGGED 'night'", lambda r: not_(tagged(r["labels"], "night"))),
    ("NOT labels TAGGED 'night'", lambda r: not_(tagged(r["labels"], "night"))),
    (
        "labels TAGGED 'night' AND labels TAGGED 'rain'",
        lambda r: and_(tagged(r["labels"], "night"), tagged(r["labels"], "rain")),
    ),
    (
        "labels TAGGED 'day' OR labels TAGGED 'snow'",
        lambda r: or_(tagged(r["labels"], "day"), tagged(r["labels"], "snow")),
    ),
    ("labels TAGGED 'night' IS NULL", lambda r: tagged(r["labels"], "night") is None),
    (
        "(labels TAGGED 'night') = (labels TAGGED 'rain')",
        lambda r: cmp(tagged(r["labels"], "night"), "=", tagged(r["labels"], "rain")),
    ),
    # -- COUNT(list WHERE ...) --------------------------------------------------------------------
    (
        "COUNT(detections WHERE label = 'person' AND score > 0.5)",
        lambda r: count(r["detections"], person_over_half),
    ),
    (
        "COUNT(detections WHERE label = 'person' AND score > 0.5) > 5",
        lambda r: cmp(count(r["detections"], person_over_half), ">", 5),
    ),
    (
        "COUNT(detections WHERE label = 'person' AND score > 0.5) >= 6",
        lambda r: cmp(count(r["detections"], person_over_half), ">=", 6),
    ),
    (
        "COUNT(detections WHERE label = 'person') = 0",
        lambda r: cmp(
            count(r["detections"], lambda d: cmp(field(d, "label"), "=", "person")), "=", 0
        ),
    ),
    (
        "COUNT(detections WHERE label = 'car')",
        lambda r: count(r["detections"], lambda d: cmp(field(d, "label"), "=", "car")),
    ),
    (
        "count(detections where label = 'car')",
        lambda r: count(r["detections"], lambda d: cmp(field(d, "label"), "=", "car")),
    ),
    (
        "COUNT(samples.detections WHERE label <> 'person')",
        lambda r: count(r["detections"], lambda d: cmp(field(d, "label"), "<>", "person")),
    ),
    (
        "COUNT(detections WHERE label != 'person')",
        lambda r: count(r["detections"], lambda d: cmp(field(d, "label"), "<>", "person")),
    ),
    (
        "COUNT(detections WHERE score >= 0.5 AND score <= 0.75)",
        lambda r: count(
            r["detections"],
            lambda d: and_(cmp(field(d, "score"), ">=", 0.5), cmp(field(d, "score"), "<=", 0.75)),
        ),
    ),
    (
        "COUNT(detections WHERE score < 0.5)",
        lambda r: count(r["detections"], lambda d: cmp(field(d, "score"), "<", 0.5)),
    ),
    (
        "COUNT(detections WHERE score BETWEEN 0.5 AND 0.875)",
        lambda r: count(
            r["detections"],
            lambda d: and_(cmp(field(d, "score"), ">=", 0.5), cmp(field(d, "score"), "<=", 0.875)),
        ),
    ),
    (
        "COUNT(detections WHERE score NOT BETWEEN 0.5 AND 0.875)",
        lambda r: count(
            r["detections"],
            lambda d: not_(
                and_(cmp(field(d, "score"), ">=", 0.5), cmp(field(d, "score"), "<=", 0.875))
            ),
        ),
    ),
    (
        "COUNT(detections WHERE label IN ('car', 'truck'))",
        lambda r: count(r["detections"], lambda d: in_(field(d, "label"), ("car", "truck"))),
    ),
    (
        "COUNT(detections WHERE score IN (0.5, 0.875))",
        lambda r: count(r["detections"], lambda d: in_(field(d, "score"), (0.5, 0.875))),
    ),
    (
        "COUNT(detections WHERE label LIKE 'p%')",
        lambda r: count(r["detections"], lambda d: like(field(d, "label"), "p%")),
    ),
    (
        "COUNT(detections WHERE label LIKE '_ar')",
        lambda r: count(r["detections"], lambda d: like(field(d, "label"), "_ar")),
    ),
    (
        "COUNT(detections WHERE label NOT LIKE 'p%')",
        lambda r: count(r["detections"], lambda d: not_(like(field(d, "label"), "p%"))),
    ),
    (
        "COUNT(detections WHERE label ILIKE 'PERSON')",
        lambda r: count(r["detections"], lambda d: cmp(field(d, "label"), "=", "person")),
    ),
    (
        "COUNT(detections WHERE label = 'o''brien')",
        lambda r: count(r["detections"], lambda d: cmp(field(d, "label"), "=", "o'brien")),
    ),
    (
        "COUNT(detections WHERE label IS NULL)",
        lambda r: count(r["detections"], lambda d: field(d, "label") is None),
    ),
    (
        "COUNT(detections WHERE score IS NOT NULL)",
        lambda r: count(r["detections"], lambda d: field(d, "score") is not None),
    ),
    (
        "COUNT(detections WHERE box IS NULL)",
        lambda r: count(r["detections"], lambda d: field(d, "box") is None),
    ),
    (
        "COUNT(detections WHERE label = 'car' OR score > 0.875)",
        lambda r: count(
            r["detections"],
            lambda d: or_(cmp(field(d, "label"), "=", "car"), cmp(field(d, "score"), ">", 0.875)),
        ),
    ),
    (
        "COUNT(detections WHERE NOT (label = 'person'))",
        lambda r: count(r["detections"], lambda d: not_(cmp(field(d, "label"), "=", "person"))),
    ),
    (
        "COUNT(detections WHERE NOT label = 'person' AND score > 0.25)",
        lambda r: count(
            r["detections"],
            lambda d: and_(
                not_(cmp(field(d, "label"), "=", "person")), cmp(field(d, "score"), ">", 0.25)
            ),
        ),
    ),
    (
        "COUNT(detections WHERE (label = 'car' OR label = 'truck') AND score > 0.5)",
        lambda r: count(
            r["detections"],
            lambda d: and_(
                or_(cmp(field(d, "label"), "=", "car"), cmp(field(d, "label"), "=", "truck")),
                cmp(field(d, "score"), ">", 0.5),
            ),
        ),
    ),
    (
        "COUNT(detections WHERE score * 2 >= 1.5)",
        lambda r: count(
            r["detections"],
            lambda d: cmp(None if field(d, "score") is None else field(d, "score") * 2, ">=", 1.5),
        ),
    ),
    (
        "COUNT(detections WHERE score + 0.25 > 1)",
        lambda r: count(
            r["detections"],
            lambda d: cmp(None if field(d, "score") is None else field(d, "score") + 0.25, ">", 1),
        ),
    ),
    (
        "COUNT(detections WHERE 1 - score < 0.25)",
        lambda r: count(
            r["detections"],
            lambda d: cmp(None if field(d, "score") is None else 1 - field(d, "score"), "<", 0.25),
        ),
    ),
    (
        "COUNT(detections WHERE score / 2 = 0.25)",
        lambda r: count(
            r["detections"],
            lambda d: cmp(None if field(d, "score") is None else field(d, "score") / 2, "=", 0.25),
        ),
    ),
    (
        "COUNT(detections WHERE -score < -0.9)",
        lambda r: count(
            r["detections"],
            lambda d: cmp(None if field(d, "score") is None else -field(d, "score"), "<", -0.9),
        ),
    ),
    ("COUNT(detections WHERE true)", lambda r: count(r["detections"], lambda d: True)),
    ("COUNT(detections WHERE false)", lambda r: count(r["detections"], lambda d: False)),
    (
        "COUNT(detections WHERE label = 'person') - COUNT(detections WHERE label = 'car')",
        lambda r: minus(
            count(r["detections"], lambda d: cmp(field(d, "label"), "=", "person")),
            count(r["detections"], lambda d: cmp(field(d, "label"), "=", "car")),
        ),
    ),
    # -- ANY / ALL ------------------------------------------------------------------------------
    (
        "ANY(detections WHERE label = 'car')",
        lambda r: any_(r["detections"], lambda d: cmp(field(d, "label"), "=", "car")),
    ),
    (
        "NOT ANY(detections WHERE label = 'bicycle' AND score > 0.75)",
        lambda r: not_(
            any_(
                r["detections"],
                lambda d: and_(
                    cmp(field(d, "label"), "=", "bicycle"), cmp(field(d, "score"), ">", 0.75)
                ),
            )
        ),
    ),
    (
        "ALL(detections WHERE score >= 0.5)",
        lambda r: all_(r["detections"], lambda d: cmp(field(d, "score"), ">=", 0.5)),
    ),
    (
        "ALL(detections WHERE label = 'person')",
        lambda r: all_(r["detections"], lambda d: cmp(field(d, "label"), "=", "person")),
    ),
    (
        "ALL(detections WHERE label IS NOT NULL)",
        lambda r: all_(r["detections"], lambda d: field(d, "label") is not None),
    ),
    (
        "ANY(detections WHERE label = 'person') AND ALL(detections WHERE score > 0.25)",
        lambda r: and_(
            any_(r["detections"], lambda d: cmp(field(d, "label"), "=", "person")),
            all_(r["detections"], lambda d: cmp(field(d, "score"), ">", 0.25)),
        ),
    ),
    # -- scalar tags used as they are ---------------------------------------------------------
    (
        "road_pct < 0.1 AND ocean_pct > 0.7",
        lambda r: and_(cmp(r["road_pct"], "<", 0.1), cmp(r["ocean_pct"], ">", 0.7)),
    ),
    (
        "num_people > 5 AND weather = 'sunny'",
        lambda r: and_(cmp(r["num_people"], ">", 5), cmp(r["weather"], "=", "sunny")),
    ),
    (
        "num_faces BETWEEN 1 AND 3",
        lambda r: and_(cmp(r["num_faces"], ">=", 1), cmp(r["num_faces"], "<=", 3)),
    ),
    ("weather IN ('rain', 'fog')", lambda r: in_(r["weather"], ("rain", "fog"))),
    ("weather LIKE 's%'", lambda r: like(r["weather"], "s%")),
    ("is_blurry", lambda r: r["is_blurry"]),
    (
        "NOT is_blurry AND brightness > 0.3",
        lambda r: and_(not_(r["is_blurry"]), cmp(r["brightness"], ">", 0.3)),
    ),
    (
        "is_blurry IS NULL OR brightness IS NULL",
        lambda r: r["is_blurry"] is None or r["brightness"] is None,
    ),
    # -- tags combined with scalar attributes ----------------------------------------------------
    (
        "labels TAGGED 'night' AND (weather = 'rain' OR weather = 'fog')"
        " AND COUNT(detections WHERE label = 'pedestrian') >= 1",
        lambda r: and_(
            tagged(r["labels"], "night"),
            or_(cmp(r["weather"], "=", "rain"), cmp(r["weather"], "=", "fog")),
            cmp(
                count(r["detections"], lambda d: cmp(field(d, "label"), "=", "pedestrian")), ">=", 1
            ),
        ),
    ),
    (
        "COUNT(detections WHERE label = 'person') > num_faces",
        lambda r: cmp(
            count(r["detections"], lambda d: cmp(field(d, "label"), "=", "person")),
            ">",
            r["num_faces"],
        ),
    ),
    (
        "TAGGED 'highway' OR num_people > 10",
        lambda r: or_(tagged(r["labels"], "highway"), cmp(r["num_people"], ">", 10)),
    ),
    (
        "CASE WHEN labels TAGGED ('rain', 'snow') THEN 'wet' ELSE 'dry' END",
        lambda r: "wet" if tagged_any(r["labels"], ("rain", "snow")) else "dry",
    ),
    (
        "CASE WHEN COUNT(detections WHERE label = 'person') > 5 THEN 'crowd'"
        " WHEN ANY(detections WHERE label = 'car') THEN 'traffic' ELSE 'other' END",
        lambda r: (
            "crowd"
            if cmp(count(r["detections"], lambda d: cmp(field(d, "label"), "=", "person")), ">", 5)
            else "traffic"
            if any_(r["detections"], lambda d: cmp(field(d, "label"), "=", "car"))
            else "other"
        ),
    ),
    (
        "coalesce(COUNT(detections WHERE label = 'person'), -1)",
        lambda r: (
            -1
            if r["detections"] is None
            else count(r["detections"], lambda d: cmp(field(d, "label"), "=", "person"))
        ),
    ),
]


def _is_boolean(oracle: Callable[[dict[str, Any]], Any]) -> bool:
    results = [oracle(r) for r in samples_table().to_pylist()]
    return all(v is None or isinstance(v, bool) for v in results) and any(
        isinstance(v, bool) for v in results
    )


def _over_one(oracle: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    return lambda r: cmp(oracle(r), ">", 1)


# The boolean cases also run as WHERE filters, and each count as `COUNT(...) > 1`.
WHERE_CASES = [(expr, oracle) for expr, oracle in CASES if _is_boolean(oracle)] + [
    (f"{expr} > 1", _over_one(oracle))
    for expr, oracle in CASES
    if expr.upper().startswith("COUNT(") and not _is_boolean(oracle)
]


def _id(case: tuple[str, Any]) -> str:
    return case[0]


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_projection_matches_python(session: Session, rows: list[dict], case) -> None:
    expr, oracle = case
    assert values(session, expr) == [oracle(r) for r in rows]


@pytest.mark.parametrize("case", WHERE_CASES, ids=_id)
def test_filter_matches_python(session: Session, rows: list[dict], case) -> None:
    expr, oracle = case
    expected = [r["id"] for r in rows if oracle(r) is True]
    assert ids(session, f"SELECT id FROM samples WHERE {expr}") == expected


def test_where_cases_are_most_cases() -> None:
    assert len(CASES) >= 70
    assert len(WHERE_CASES) >= 65


# Known bugs in the list-predicate UDF (engine/listpred.py), each with a failing input.
def test_not_in_with_null_field_does_not_count(session: Session, rows: list[dict]) -> None:
    expr = "COUNT(detections WHERE label NOT IN ('car', 'truck'))"
    expected = [
        count(r["detections"], lambda d: not_(in_(field(d, "label"), ("car", "truck"))))
        for r in rows
    ]
    assert values(session, expr) == expected


# ---------------------------------------------------------------------------------------------
# NULL semantics
# ---------------------------------------------------------------------------------------------


def test_null_list_gives_null_everywhere(session: Session) -> None:
    row = session.sql(
        "SELECT labels TAGGED 'night' AS t, labels NOT TAGGED 'night' AS nt,"
        " labels TAGGED ('a', 'b') AS ta, labels TAGGED ALL ('a', 'b') AS tl,"
        " COUNT(detections WHERE label = 'person') AS c,"
        " ANY(detections WHERE label = 'person') AS a,"
        " ALL(detections WHERE label = 'person') AS l"
        " FROM samples WHERE id = 5"
    ).to_pylist()
    assert row == [{"t": None, "nt": None, "ta": None, "tl": None, "c": None, "a": None, "l": None}]


def test_empty_list_semantics(session: Session) -> None:
    row = session.sql(
        "SELECT labels TAGGED 'night' AS t, labels NOT TAGGED 'night' AS nt,"
        " labels TAGGED ALL ('a') AS tl,"
        " COUNT(detections WHERE true) AS c,"
        " ANY(detections WHERE true) AS a,"
        " ALL(detections WHERE false) AS l"
        " FROM samples WHERE id = 4"
    ).to_pylist()
    # ALL over no elements is vacuously true, as documented: count = cardinality = 0.
    assert row == [{"t": False, "nt": True, "tl": False, "c": 0, "a": False, "l": True}]


def test_null_rows_are_filtered_out_by_both_tagged_and_not_tagged(session: Session) -> None:
    tagged_ids = ids(session, "SELECT id FROM samples WHERE labels TAGGED 'night'")
    untagged_ids = ids(session, "SELECT id FROM samples WHERE labels NOT TAGGED 'night'")
    assert 5 not in tagged_ids and 5 not in untagged_ids
    assert sorted(tagged_ids + untagged_ids) == [i for i in range(1, 13) if i != 5]


def test_count_null_list_is_null_and_is_not_counted_by_aggregates(
    session: Session, rows: list[dict]
) -> None:
    out = session.sql(
        "SELECT count(COUNT(detections WHERE true)) AS n, sum(COUNT(detections WHERE true)) AS s"
        " FROM samples"
    ).to_pylist()
    with_lists = [r for r in rows if r["detections"] is not None]
    assert out == [{"n": len(with_lists), "s": sum(len(r["detections"]) for r in with_lists)}]


def test_null_element_fields_are_null(session: Session) -> None:
    # Row 9 holds one NULL detection: it matches IS NULL on every field and nothing else.
    row = session.sql(
        "SELECT COUNT(detections WHERE label IS NULL AND score IS NULL AND box IS NULL) AS a,"
        " COUNT(detections WHERE score > 0 OR score <= 0) AS b,"
        " ALL(detections WHERE label = 'x' OR true) AS c"
        " FROM samples WHERE id = 9"
    ).to_pylist()
    assert row == [{"a": 1, "b": 0, "c": True}]


def test_null_element_with_non_null_children_is_null() -> None:
    """A NULL struct whose child arrays hold values (as Parquet readers produce) is NULL."""
    child = pa.StructArray.from_arrays(
        [
            pa.array(["car", "car", "car"]),
            pa.array([0.75, 0.75, 0.75], pa.float32()),
            pa.array([[0, 0, 1, 1]] * 3, BOX),
        ],
        fields=list(DETECTION),
        mask=pa.array([False, True, True]),
    )
    lists = pa.ListArray.from_arrays(pa.array([0, 1, 3], pa.int32()), child)
    s = connect()
    s.register("t", pa.table({"id": [1, 2], "detections": lists}))
    out = s.sql(
        "SELECT id, COUNT(detections WHERE label = 'car') AS c,"
        " COUNT(detections WHERE label IS NULL) AS n FROM t ORDER BY id"
    ).to_pylist()
    assert out == [{"id": 1, "c": 1, "n": 0}, {"id": 2, "c": 0, "n": 2}]


def test_sliced_and_multi_batch_input() -> None:
    """The UDF works on batches that are slices of a larger array (offsets not at zero)."""
    table = samples_table()
    s = connect()
    # Registering a table whose chunks are slices: the list offsets do not start at zero.
    chunks = [table.slice(0, 5), table.slice(5, 4), table.slice(9)]
    s.register("samples", pa.concat_tables(chunks))
    expected = [count(r["detections"], person_over_half) for r in table.to_pylist()]
    got = s.sql(
        "SELECT COUNT(detections WHERE label = 'person' AND score > 0.5) AS c FROM samples"
        " ORDER BY id"
    ).to_pylist()
    assert [r["c"] for r in got] == expected
    reader = pa.RecordBatchReader.from_batches(
        table.schema, [b for c in chunks for b in c.to_batches()]
    )
    s.register("streamed", reader)
    got = s.sql(
        "SELECT id FROM streamed WHERE COUNT(detections WHERE label = 'person' AND score > 0.5) > 5"
    ).to_pylist()
    assert sorted(r["id"] for r in got) == [
        i for i, c in zip(range(1, 13), expected, strict=True) if c and c > 5
    ]


def test_parquet_source(tmp_path, rows: list[dict]) -> None:
    """Parquet names list elements ``element`` and DataFusion may read strings as views."""
    path = tmp_path / "samples.parquet"
    pq.write_table(samples_table(), path)
    s = connect()
    s.register("samples", path)
    got = s.sql(
        "SELECT id, labels TAGGED 'night' AS t, TAGGED ('rain', 'snow') AS w,"
        " COUNT(detections WHERE label = 'person' AND score > 0.5) AS c,"
        " ANY(detections WHERE label LIKE 'c%') AS a, weather = 'sunny' AS sunny"
        " FROM samples ORDER BY id"
    ).to_pylist()
    assert got == [
        {
            "id": r["id"],
            "t": tagged(r["labels"], "night"),
            "w": tagged_any(r["labels"], ("rain", "snow")),
            "c": count(r["detections"], person_over_half),
            "a": any_(r["detections"], lambda d: like(field(d, "label"), "c%")),
            "sunny": cmp(r["weather"], "=", "sunny"),
        }
        for r in rows
    ]


# ---------------------------------------------------------------------------------------------
# Tag predicates inside larger queries
# ---------------------------------------------------------------------------------------------


def night(r: dict) -> bool | None:
    return tagged(r["labels"], "night")


def persons(r: dict) -> int | None:
    return count(r["detections"], lambda d: cmp(field(d, "label"), "=", "person"))


def test_documented_corpus_queries(session: Session, rows: list[dict]) -> None:
    got = session.sql(
        "SELECT uri, COUNT(detections WHERE label = 'car') AS n_cars FROM samples"
        " ORDER BY n_cars DESC NULLS LAST, uri LIMIT 3"
    ).to_pylist()
    cars = [
        {
            "uri": r["uri"],
            "n_cars": count(r["detections"], lambda d: cmp(field(d, "label"), "=", "car")),
        }
        for r in rows
    ]
    cars = [c for c in cars if c["n_cars"] is not None]
    cars.sort(key=lambda c: (-c["n_cars"], c["uri"]))
    assert got == cars[:3]

    got_uris = sorted(
        r["uri"]
        for r in session.sql(
            "SELECT uri FROM samples"
            " WHERE COUNT(detections WHERE label = 'person' AND score > 0.5) > 5"
        ).to_pylist()
    )
    assert got_uris == sorted(
        r["uri"] for r in rows if cmp(count(r["detections"], person_over_half), ">", 5)
    )


def test_in_group_by_and_aggregates(session: Session, rows: list[dict]) -> None:
    got = session.sql(
        "SELECT labels TAGGED 'night' AS is_night,"
        " CASE WHEN labels TAGGED ('rain', 'snow') THEN 'wet' ELSE 'dry' END AS road,"
        " count(*) AS n FROM samples GROUP BY 1, 2"
    ).to_pylist()
    expected = Counter(
        (night(r), "wet" if tagged_any(r["labels"], ("rain", "snow")) else "dry") for r in rows
    )
    assert Counter({(g["is_night"], g["road"]): g["n"] for g in got}) == expected
    assert len(got) == len(expected)


def test_aggregate_of_count(session: Session, rows: list[dict]) -> None:
    got = session.sql(
        "SELECT camera_id, avg(COUNT(detections WHERE label = 'person')) AS people_per_frame,"
        " sum(CASE WHEN TAGGED 'night' THEN 1 ELSE 0 END) AS nights"
        " FROM samples GROUP BY camera_id"
    ).to_pylist()
    expected: dict[Any, tuple[float | None, int]] = {}
    for cam in {r["camera_id"] for r in rows}:
        group = [r for r in rows if r["camera_id"] == cam]
        counts = [persons(r) for r in group if persons(r) is not None]
        avg = sum(counts) / len(counts) if counts else None  # type: ignore[arg-type]
        expected[cam] = (avg, sum(1 for r in group if night(r)))
    assert len(got) == len(expected)
    for g in got:
        avg, nights = expected[g["camera_id"]]
        assert g["nights"] == nights
        assert g["people_per_frame"] == (None if avg is None else pytest.approx(avg))


def test_group_by_tag_with_having(session: Session, rows: list[dict]) -> None:
    got = session.sql(
        "SELECT weather, count(*) AS n FROM samples"
        " WHERE ANY(detections WHERE label = 'person')"
        " GROUP BY weather HAVING count(*) >= 2"
    ).to_pylist()
    c = Counter(
        r["weather"]
        for r in rows
        if any_(r["detections"], lambda d: cmp(field(d, "label"), "=", "person"))
    )
    assert {g["weather"]: g["n"] for g in got} == {w: n for w, n in c.items() if n >= 2}


def test_having_with_tag(session: Session, rows: list[dict]) -> None:
    got = ids(session, "SELECT id FROM samples GROUP BY id, labels HAVING labels TAGGED 'night'")
    assert got == [r["id"] for r in rows if night(r)]


def test_in_subquery(session: Session, rows: list[dict]) -> None:
    got = ids(
        session,
        "SELECT id FROM samples WHERE id IN (SELECT id FROM samples WHERE TAGGED 'night')"
        " AND NOT id IN (SELECT id FROM samples WHERE ANY(detections WHERE label = 'car'))",
    )
    cars = lambda r: any_(r["detections"], lambda d: cmp(field(d, "label"), "=", "car"))  # noqa: E731
    assert got == [r["id"] for r in rows if night(r) and not cars(r)]


def test_in_derived_table(session: Session, rows: list[dict]) -> None:
    got = session.sql(
        "SELECT id, n FROM (SELECT id, COUNT(detections WHERE label = 'person') AS n,"
        " labels TAGGED 'night' AS dark FROM samples) AS t WHERE dark AND n > 0"
    ).to_pylist()
    assert sorted((g["id"], g["n"]) for g in got) == [
        (r["id"], persons(r)) for r in rows if night(r) and cmp(persons(r), ">", 0)
    ]


def test_in_correlated_exists(session: Session, rows: list[dict]) -> None:
    cams = CAMERAS.to_pylist()
    got = sorted(
        r["city"]
        for r in session.sql(
            "SELECT city FROM cameras c WHERE EXISTS (SELECT 1 FROM samples s"
            " WHERE s.camera_id = c.camera_id AND s.labels TAGGED 'night'"
            " AND ANY(s.detections WHERE label = 'car'))"
        ).to_pylist()
    )
    expected = sorted(
        c["city"]
        for c in cams
        if any(
            r["camera_id"] == c["camera_id"]
            and night(r)
            and any_(r["detections"], lambda d: cmp(field(d, "label"), "=", "car"))
            for r in rows
        )
    )
    assert got == expected


def test_correlated_tag_of_outer_table(session: Session, rows: list[dict]) -> None:
    got = sorted(
        r["city"]
        for r in session.sql(
            "SELECT city FROM cameras c WHERE c.tags TAGGED 'urban' AND EXISTS"
            " (SELECT 1 FROM samples s WHERE s.camera_id = c.camera_id AND s.labels TAGGED 'day')"
        ).to_pylist()
    )
    cams = CAMERAS.to_pylist()
    assert got == sorted(
        c["city"]
        for c in cams
        if tagged(c["tags"], "urban")
        and any(r["camera_id"] == c["camera_id"] and tagged(r["labels"], "day") for r in rows)
    )


def test_in_cte_body(session: Session, rows: list[dict]) -> None:
    got = ids(
        session,
        "WITH dark AS (SELECT * FROM samples WHERE labels TAGGED 'night'"
        " AND COUNT(detections WHERE score > 0.5) >= 1)"
        " SELECT id FROM dark",
    )
    assert got == [
        r["id"]
        for r in rows
        if night(r)
        and cmp(count(r["detections"], lambda d: cmp(field(d, "score"), ">", 0.5)), ">=", 1)
    ]


def test_tagged_over_cte_column(session: Session, rows: list[dict]) -> None:
    got = ids(
        session,
        "WITH x AS (SELECT id, labels FROM samples) SELECT id FROM x WHERE labels TAGGED 'night'",
    )
    assert got == [r["id"] for r in rows if night(r)]


def test_count_over_cte_column(session: Session, rows: list[dict]) -> None:
    got = ids(
        session,
        "WITH x AS (SELECT id, detections FROM samples)"
        " SELECT id FROM x WHERE COUNT(detections WHERE label = 'person') > 5",
    )
    assert got == [r["id"] for r in rows if cmp(persons(r), ">", 5)]


def test_bare_tagged_over_derived_table(session: Session, rows: list[dict]) -> None:
    got = ids(session, "SELECT id FROM (SELECT id, labels FROM samples) AS t WHERE TAGGED 'night'")
    assert got == [r["id"] for r in rows if night(r)]


def test_count_in_order_by(session: Session, rows: list[dict]) -> None:
    got = session.sql(
        "SELECT id FROM samples WHERE detections IS NOT NULL"
        " ORDER BY COUNT(detections WHERE label = 'person') DESC, id"
    ).to_pylist()
    with_lists = [r for r in rows if r["detections"] is not None]
    assert [g["id"] for g in got] == [
        r["id"]
        for r in sorted(with_lists, key=lambda r: (-persons(r), r["id"]))  # type: ignore[operator]
    ]


def test_tagged_in_order_by(session: Session, rows: list[dict]) -> None:
    got = session.sql(
        "SELECT id FROM samples WHERE labels IS NOT NULL ORDER BY labels TAGGED 'night', id"
    ).to_pylist()
    with_labels = [r for r in rows if r["labels"] is not None]
    assert [g["id"] for g in got] == [
        r["id"] for r in sorted(with_labels, key=lambda r: (bool(night(r)), r["id"]))
    ]


def test_in_join(session: Session, rows: list[dict]) -> None:
    got = session.sql(
        "SELECT s.id, c.city, COUNT(s.detections WHERE label = 'person') AS n"
        " FROM samples s JOIN cameras c ON s.camera_id = c.camera_id"
        " WHERE s.labels TAGGED 'highway' AND c.tags NOT TAGGED 'rural'"
    ).to_pylist()
    cams = {c["camera_id"]: c for c in CAMERAS.to_pylist()}
    expected = [
        (r["id"], cams[r["camera_id"]]["city"], persons(r))
        for r in rows
        if r["camera_id"] in cams
        and tagged(r["labels"], "highway")
        and not_(tagged(cams[r["camera_id"]]["tags"], "rural"))
    ]
    assert sorted((g["id"], g["city"], g["n"]) for g in got) == sorted(expected)


def test_in_left_join_condition(session: Session, rows: list[dict]) -> None:
    got = session.sql(
        "SELECT s.id, c.city FROM samples s LEFT JOIN cameras c"
        " ON s.camera_id = c.camera_id AND c.tags TAGGED 'urban'"
    ).to_pylist()
    cams = {c["camera_id"]: c for c in CAMERAS.to_pylist()}
    expected = [
        (
            r["id"],
            cams[r["camera_id"]]["city"]
            if r["camera_id"] in cams and tagged(cams[r["camera_id"]]["tags"], "urban")
            else None,
        )
        for r in rows
    ]
    assert sorted((g["id"], g["city"]) for g in got) == sorted(expected, key=lambda t: t[0])


def test_in_union_and_window(session: Session, rows: list[dict]) -> None:
    got = ids(
        session,
        "SELECT id FROM samples WHERE TAGGED 'snow'"
        " UNION SELECT id FROM samples WHERE ANY(detections WHERE label = 'truck')",
    )
    assert got == [
        r["id"]
        for r in rows
        if tagged(r["labels"], "snow")
        or any_(r["detections"], lambda d: cmp(field(d, "label"), "=", "truck"))
    ]
    got_rows = session.sql(
        "SELECT id, sum(COUNT(detections WHERE label = 'person'))"
        " OVER (ORDER BY id ROWS UNBOUNDED PRECEDING) AS running FROM samples ORDER BY id"
    ).to_pylist()
    running, out = 0, []
    for r in rows:
        running += persons(r) or 0
        out.append(running)
    assert [g["running"] for g in got_rows] == out


def test_with_parameters(session: Session, rows: list[dict]) -> None:
    got = ids(
        session,
        "SELECT id FROM samples WHERE COUNT(detections WHERE label = 'person') > $n"
        " AND weather = $w",
        {"n": 2, "w": "sunny"},
    )
    assert got == [r["id"] for r in rows if cmp(persons(r), ">", 2) and r["weather"] == "sunny"]


def test_dml_with_tag_predicates(rows: list[dict]) -> None:
    s = connect()
    s.register("samples", samples_table())
    s.sql("DELETE FROM samples WHERE labels TAGGED 'night' OR ANY(detections WHERE label = 'car')")
    left = ids(s, "SELECT id FROM samples")
    cars = lambda r: any_(r["detections"], lambda d: cmp(field(d, "label"), "=", "car"))  # noqa: E731
    assert left == [r["id"] for r in rows if or_(night(r), cars(r)) is not True]


def test_create_table_as_keeps_types(session: Session, rows: list[dict]) -> None:
    s = connect()
    s.register("samples", samples_table())
    s.sql(
        "CREATE TABLE summary AS SELECT id, labels TAGGED 'night' AS night,"
        " COUNT(detections WHERE label = 'person') AS persons FROM samples"
    )
    schema = s.schema("summary")
    assert schema.field("night").type == pa.bool_()
    assert schema.field("persons").type == pa.int64()
    got = s.sql("SELECT * FROM summary ORDER BY id").to_pylist()
    assert got == [{"id": r["id"], "night": night(r), "persons": persons(r)} for r in rows]


def test_unaliased_count_column_name_hides_udf(session: Session) -> None:
    result = session.sql("SELECT COUNT(detections WHERE label = 'car') FROM samples")
    assert not any("popql_count_" in name for name in result.to_arrow().column_names)


# ---------------------------------------------------------------------------------------------
# Errors of tag predicates (their rendering is snapshot-tested in test_semantic_errors.py)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "code", "pointed"),
    [
        ("SELECT id FROM samples WHERE num_faces TAGGED 'x'", "T003", "num_faces"),
        ("SELECT id FROM samples WHERE weather TAGGED ('x', 'y')", "T003", "weather"),
        ("SELECT id FROM samples WHERE is_blurry NOT TAGGED 'x'", "T003", "is_blurry"),
        (
            "SELECT id FROM samples WHERE COUNT(num_faces WHERE label = 'x') > 0",
            "T003",
            "num_faces",
        ),
        ("SELECT id FROM samples WHERE ANY(labels WHERE label = 'x')", "T003", "labels"),
        ("SELECT id FROM samples WHERE COUNT(detections WHERE lable = 'x') > 0", "N002", "lable"),
        ("SELECT id FROM samples WHERE ALL(detections WHERE s.score > 1)", "N002", "s.score"),
        ("SELECT id FROM samples WHERE COUNT(detections WHERE box[1] > 0) > 0", "X002", "box[1]"),
        (
            "SELECT id FROM samples WHERE COUNT(detections WHERE score % 2 > 0) > 0",
            "X002",
            "score % 2",
        ),
        ("SELECT id FROM samples WHERE COUNT(detections WHERE label = NULL) > 0", "X002", "NULL"),
        ("SELECT s.id FROM samples s, cameras c WHERE TAGGED 'x'", "N005", "TAGGED 'x'"),
        ("SELECT 1 AS one WHERE TAGGED 'x'", "N002", "TAGGED 'x'"),
    ],
)
def test_tag_errors_point_at_the_operand(
    session: Session, query: str, code: str, pointed: str
) -> None:
    with pytest.raises(PopQLError) as info:
        session.sql(query)
    err = info.value
    assert err.code == code
    span = err.diagnostic.span
    assert span is not None
    assert query[span.start : span.end] == pointed


@pytest.mark.parametrize(
    "predicate",
    ["(score > 0.5) IS TRUE", "label LIKE 'p!%' ESCAPE '!'", "+score > 0.1", "label = E'person'"],
)
def test_unsupported_predicate_forms_fail_at_planning(session: Session, predicate: str) -> None:
    query = f"SELECT id FROM samples WHERE COUNT(detections WHERE {predicate}) > 0"
    with pytest.raises(PopQLError) as info:
        compile_statement(parse(query).statements[0], session.catalog)
    assert info.value.code == "X002"


# ---------------------------------------------------------------------------------------------
# The lowered SQL is what the docs say
# ---------------------------------------------------------------------------------------------

UDF = r"popql_count_[0-9a-f]{12}"


@pytest.mark.parametrize(
    ("popql", "sql"),
    [
        ("labels TAGGED 'night'", re.escape("array_has(labels, 'night')")),
        ("labels TAGGED ('a', 'b')", re.escape("array_has_any(labels, make_array('a', 'b'))")),
        ("labels TAGGED ALL ('a', 'b')", re.escape("array_has_all(labels, make_array('a', 'b'))")),
        ("labels NOT TAGGED 'night'", r"NOT \(?array_has\(labels, 'night'\)\)?"),
        (
            "labels NOT TAGGED ('a', 'b')",
            r"NOT \(?array_has_any\(labels, make_array\('a', 'b'\)\)\)?",
        ),
        (
            "labels NOT TAGGED ALL ('a', 'b')",
            r"NOT \(?array_has_all\(labels, make_array\('a', 'b'\)\)\)?",
        ),
        ("TAGGED 'x'", re.escape("""array_has("labels", 'x')""")),
        ("TAGGED ('x', 'y')", re.escape("""array_has_any("labels", make_array('x', 'y'))""")),
        ("labels TAGGED 'it''s'", re.escape("array_has(labels, 'it''s')")),
        ("s.labels TAGGED 'night'", re.escape("array_has(s.labels, 'night')")),
        (
            "COUNT(detections WHERE label = 'person' AND score > 0.5) > 5",
            rf"\(?{UDF}\(detections\) > 5\)?",
        ),
        ("ANY(detections WHERE label = 'car')", rf"\(?{UDF}\(detections\) > 0\)?"),
        (
            "ALL(detections WHERE score >= 0.9)",
            rf"\(?{UDF}\(detections\) = cardinality\(detections\)\)?",
        ),
        ("NOT ANY(detections WHERE label = 'car')", rf"NOT \(?\(?{UDF}\(detections\) > 0\)?\)?"),
    ],
)
def test_lowered_sql_matches_docs(session: Session, popql: str, sql: str) -> None:
    stmt = parse(f"SELECT id FROM samples AS s WHERE {popql}").statements[0]
    lowered = compile_statement(stmt, session.catalog)
    assert re.fullmatch(rf"SELECT id FROM samples AS s WHERE {sql}", lowered.sql), lowered.sql
    assert lowered.kind == "query"
    udfs = re.findall(UDF, lowered.sql)
    assert len(lowered.udfs) == len(set(udfs))


def test_lowered_udfs_are_shared_per_predicate_and_type(session: Session) -> None:
    stmt = parse(
        "SELECT COUNT(detections WHERE label = 'person') AS a,"
        " COUNT(detections WHERE label='person') AS b,"
        " COUNT(detections WHERE label = 'car') AS c FROM samples"
    ).statements[0]
    lowered = compile_statement(stmt, session.catalog)
    names = re.findall(UDF, lowered.sql)
    assert len(names) == 3 and names[0] == names[1] != names[2]
    assert len(lowered.udfs) == 2


def test_plain_comparisons_on_scalar_tags_are_not_rewritten(session: Session) -> None:
    text = "SELECT uri FROM samples WHERE road_pct < 0.1 AND ocean_pct > 0.7"
    lowered = compile_statement(parse(text).statements[0], session.catalog)
    assert lowered.udfs == ()
    assert lowered.sql.replace("(", "").replace(")", "") == text
