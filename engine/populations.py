"""Populations, frozen memberships, hold-outs and leakage: the statements behind the testing loop.

A *population* is a named query over the samples: ``CREATE POPULATION dark AS SELECT * FROM
samples WHERE brightness < 0.2``. Its name can stand wherever a table can
(``SELECT count(*) FROM dark``, ``SELECT sample_id FROM a INTERSECT SELECT sample_id FROM b``):
the lowering expands it into a derived table running the stored query, so membership follows
the data. ``FREEZE POPULATION`` records the member ids (with the dataset version, the query's
hash and the embedder identities) and ``DIFF POPULATION`` explains what changed since.
``HOLD OUT 10 PERCENT OF dark`` assigns the members to the test split by a hash of each sample
id, so no assignment ever changes as the data grows; the ``split`` column of ``samples`` shows
it. ``SHOW SPLITS`` breaks populations down by split, ``SHOW LEAKAGE`` lists near-duplicate
pairs across splits. See docs/populations.md.

Storage: in a versioned dataset the state lives in four dataset tables written in ordinary
transactions (writer lock, atomic manifest swap), so concurrent writers never lose each other's
populations; an in-memory session keeps it in memory.

=======================  ===========================================================
table                    one row per
=======================  ===========================================================
``popql.populations``    population: name, description, query, query_hash, embedders,
                         created_version, created_at
``popql.freezes``        frozen membership: population, tag, dataset_version, query,
                         query_hash, embedders, members (list of sample ids), created_at
``popql.holdouts``       hold-out: population, percent, salt, created_version, created_at
``popql.splits``         assigned sample: sample_id, split, population (the hold-out that
                         assigned it), u (its hash draw in [0, 1))
=======================  ===========================================================
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from popql import ast as A
from popql.diagnostics import Diagnostic, PopQLError, Span, did_you_mean_hint

if TYPE_CHECKING:
    from .commands import CommandContext
    from .result import Result
    from .session import Session

__all__ = [
    "FREEZES_TABLE",
    "HOLDOUTS_TABLE",
    "POPULATIONS_TABLE",
    "SPLITS_TABLE",
    "Freeze",
    "HoldOutDef",
    "Population",
    "PopulationDef",
    "PopulationState",
    "holdout_draw",
    "query_embedders",
    "query_hash",
]

POPULATIONS_TABLE = "popql.populations"
FREEZES_TABLE = "popql.freezes"
HOLDOUTS_TABLE = "popql.holdouts"
SPLITS_TABLE = "popql.splits"
STATE_TABLES = (POPULATIONS_TABLE, FREEZES_TABLE, HOLDOUTS_TABLE, SPLITS_TABLE)

#: The split of a sample that no hold-out assigned and no imported label names.
DEFAULT_SPLIT = "train"
SPLITS = ("train", "val", "test")
DEFAULT_LEAKAGE_THRESHOLD = 0.95
LEAKAGE_NEIGHBOURS = 10

POPULATIONS_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("description", pa.string()),
        ("query", pa.string()),
        ("query_hash", pa.string()),
        ("embedders", pa.string()),  # JSON {key: identity}
        ("created_version", pa.int64()),
        ("created_at", pa.string()),
    ]
)
FREEZES_SCHEMA = pa.schema(
    [
        ("population", pa.string()),
        ("tag", pa.string()),
        ("dataset_version", pa.int64()),
        ("query", pa.string()),
        ("query_hash", pa.string()),
        ("embedders", pa.string()),
        ("members", pa.list_(pa.string())),
        ("created_at", pa.string()),
    ]
)
HOLDOUTS_SCHEMA = pa.schema(
    [
        ("population", pa.string()),
        ("percent", pa.float64()),
        ("salt", pa.string()),
        ("created_version", pa.int64()),
        ("created_at", pa.string()),
    ]
)
SPLITS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("split", pa.string()),
        ("population", pa.string()),
        ("u", pa.float64()),
    ]
)

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# The state
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PopulationDef:
    """A stored population: its query is re-run at each use."""

    name: str
    query: str  # canonical PopQL text of the query (popql.format)
    query_hash: str  # sha256 of ``query``, 16 hex digits
    description: str | None = None
    embedders: dict[str, str | None] = field(default_factory=dict)  # key -> identity
    created_version: int | None = None
    created_at: str = ""


@dataclass(frozen=True)
class Freeze:
    """A population's members recorded at one moment (``FREEZE POPULATION x AS 'tag'``)."""

    population: str
    tag: str
    dataset_version: int | None
    query: str
    query_hash: str
    embedders: dict[str, str | None]
    members: tuple[str, ...]
    created_at: str = ""


@dataclass(frozen=True)
class HoldOutDef:
    """``HOLD OUT <percent> PERCENT OF <population> SALT '<salt>'``."""

    population: str
    percent: float
    salt: str
    created_version: int | None = None
    created_at: str = ""


@dataclass
class PopulationState:
    """Everything the population statements store (one dataset version's worth)."""

    populations: dict[str, PopulationDef] = field(default_factory=dict)
    freezes: list[Freeze] = field(default_factory=list)
    holdouts: list[HoldOutDef] = field(default_factory=list)
    splits: pa.Table = field(default_factory=SPLITS_SCHEMA.empty_table)

    def copy(self) -> PopulationState:
        return PopulationState(
            dict(self.populations), list(self.freezes), list(self.holdouts), self.splits
        )

    def holdout_of(self, population: str) -> HoldOutDef | None:
        return next((h for h in self.holdouts if h.population == population), None)

    # -- Arrow ----------------------------------------------------------------------------------

    def tables(self) -> dict[str, pa.Table]:
        pops = list(self.populations.values())
        return {
            POPULATIONS_TABLE: pa.table(
                {
                    "name": [p.name for p in pops],
                    "description": [p.description for p in pops],
                    "query": [p.query for p in pops],
                    "query_hash": [p.query_hash for p in pops],
                    "embedders": [json.dumps(p.embedders, sort_keys=True) for p in pops],
                    "created_version": [p.created_version for p in pops],
                    "created_at": [p.created_at for p in pops],
                },
                schema=POPULATIONS_SCHEMA,
            ),
            FREEZES_TABLE: pa.table(
                {
                    "population": [f.population for f in self.freezes],
                    "tag": [f.tag for f in self.freezes],
                    "dataset_version": [f.dataset_version for f in self.freezes],
                    "query": [f.query for f in self.freezes],
                    "query_hash": [f.query_hash for f in self.freezes],
                    "embedders": [json.dumps(f.embedders, sort_keys=True) for f in self.freezes],
                    "members": [list(f.members) for f in self.freezes],
                    "created_at": [f.created_at for f in self.freezes],
                },
                schema=FREEZES_SCHEMA,
            ),
            HOLDOUTS_TABLE: pa.table(
                {
                    "population": [h.population for h in self.holdouts],
                    "percent": [h.percent for h in self.holdouts],
                    "salt": [h.salt for h in self.holdouts],
                    "created_version": [h.created_version for h in self.holdouts],
                    "created_at": [h.created_at for h in self.holdouts],
                },
                schema=HOLDOUTS_SCHEMA,
            ),
            SPLITS_TABLE: self.splits.cast(SPLITS_SCHEMA),
        }

    @classmethod
    def from_tables(cls, read: Callable[[str], pa.Table | None]) -> PopulationState:
        state = cls()
        pops = read(POPULATIONS_TABLE)
        for r in pops.to_pylist() if pops is not None else []:
            state.populations[r["name"]] = PopulationDef(
                r["name"],
                r["query"],
                r["query_hash"],
                r["description"],
                json.loads(r["embedders"] or "{}"),
                r["created_version"],
                r["created_at"] or "",
            )
        freezes = read(FREEZES_TABLE)
        for r in freezes.to_pylist() if freezes is not None else []:
            state.freezes.append(
                Freeze(
                    r["population"],
                    r["tag"],
                    r["dataset_version"],
                    r["query"],
                    r["query_hash"],
                    json.loads(r["embedders"] or "{}"),
                    tuple(r["members"] or ()),
                    r["created_at"] or "",
                )
            )
        holdouts = read(HOLDOUTS_TABLE)
        for r in holdouts.to_pylist() if holdouts is not None else []:
            state.holdouts.append(
                HoldOutDef(
                    r["population"],
                    float(r["percent"]),
                    r["salt"] or "",
                    r["created_version"],
                    r["created_at"] or "",
                )
            )
        splits = read(SPLITS_TABLE)
        if splits is not None:
            state.splits = splits.select(SPLITS_SCHEMA.names).cast(SPLITS_SCHEMA)
        return state

    @classmethod
    def from_snapshot(cls, snapshot: Any) -> PopulationState:
        names = set(snapshot.table_names())
        return cls.from_tables(lambda t: snapshot.table(t) if t in names else None)


class MemoryStore:
    """Population state of an in-memory session (or of the scratch session of a check)."""

    def __init__(self, state: PopulationState | None = None) -> None:
        self.state = state or PopulationState()

    def read(self) -> PopulationState:
        return self.state

    def update(self, message: str, change: Callable[[PopulationState], T]) -> T:
        new = self.state.copy()
        out = change(new)
        self.state = new
        return out


class DatasetStore:
    """Population state of a versioned dataset: read from the session's snapshot, written in
    a dataset transaction (the writer lock serialises writers; each change is applied to the
    latest committed state, so concurrent writers never lose each other's work)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._cache: tuple[int, PopulationState] | None = None

    def read(self) -> PopulationState:
        snap = self.session.snapshot
        if snap is None:
            return PopulationState()
        if self._cache is None or self._cache[0] != snap.version:
            self._cache = (snap.version, PopulationState.from_snapshot(snap))
        return self._cache[1]

    def update(self, message: str, change: Callable[[PopulationState], T]) -> T:
        dataset = self.session.dataset
        assert dataset is not None
        with dataset.transaction(message) as txn:
            state = PopulationState.from_snapshot(txn._staged())
            before = state.tables()
            out = change(state)
            after = state.tables()
            for name, table in after.items():
                if name not in txn.table_names() and table.num_rows == 0:
                    continue
                if not table.equals(before[name]) or name not in txn.table_names():
                    txn.replace(name, table)
        self.session.refresh()
        return out


def store_of(session: Session) -> MemoryStore | DatasetStore:
    store = getattr(session, "_population_store", None)
    if isinstance(store, DatasetStore) and session.dataset is None:
        store = None  # the session left its dataset
    if store is None or (isinstance(store, MemoryStore) and session.dataset is not None):
        # a session that just became a dataset (its first ingest) starts from the dataset's
        # populations, carrying over those defined in memory
        old = store.read() if isinstance(store, MemoryStore) else None
        store = DatasetStore(session) if session.dataset is not None else MemoryStore()
        if old is not None and old.populations and isinstance(store, DatasetStore):
            store.update(
                "populations defined before the first ingest",
                lambda s: s.populations.update(
                    {k: v for k, v in old.populations.items() if k not in s.populations}
                ),
            )
        session._population_store = store
    return store


# ---------------------------------------------------------------------------------------------
# Queries, hashes and embedder identities
# ---------------------------------------------------------------------------------------------


def norm_name(ident: A.Identifier) -> str:
    """A population name as the catalog compares it (unquoted names fold to lower case)."""
    return ident.value if ident.quote else ident.value.lower()


def query_text(query: A.Query) -> str:
    from popql.format import format_node

    return format_node(query)


def query_hash(text: str) -> str:
    """sha256 of a population's canonical query text, 16 hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def resolve_embedder(embedders: dict[str, Any], using: str | None) -> str | None:
    """The key of the dataset embedder that ``USING name`` (or no USING: the default) means.

    A name matches a key, a spec, the key derived from it, or a built-in alias (``clip``,
    ``fmnist-clip``). Without USING the dataset's only embedder (or its first) is meant.
    """
    if not embedders:
        return None
    if using is None:
        return next(iter(embedders))
    from .embedders import _BUILTIN_ALIASES, embedder_key

    candidates = {using, using.lower(), embedder_key(using)}
    target = _BUILTIN_ALIASES.get(using.lower())
    if target is not None:
        candidates.add(embedder_key(target))
        candidates.add(target)
    for key, meta in embedders.items():
        spec = meta.get("spec") if isinstance(meta, dict) else None
        if key in candidates or spec in candidates:
            return key
        if isinstance(spec, str) and embedder_key(spec) in candidates:
            return key
    return None


def _is_similarity(node: A.Node) -> tuple[bool, tuple[A.Identifier, ...]]:
    if isinstance(node, A.SimilarTo):
        o = node.options
        has_options = bool(o.using or o.top_k or o.threshold or o.exact)
        operand = node.operand
        image = (
            operand is None
            or has_options
            or (
                isinstance(operand, A.Column)
                and operand.parts[-1].value.lower() in ("image", "img")
            )
        )
        return image, o.using
    if isinstance(node, A.Near):
        return True, node.options.using
    if isinstance(node, A.SimilarityScore):
        return True, node.using
    return False, ()


def query_embedders(
    query: A.Node, embedders: dict[str, Any], populations: dict[str, PopulationDef] | None = None
) -> dict[str, str | None]:
    """``{embedder key: identity}`` of every embedder a query's similarity searches use
    (``SIMILAR TO`` on an image, ``NEAR``, ``SIMILARITY()``), including those of the
    populations it names. ``USING name`` is resolved among the dataset's embedders; without
    USING the default embedder is meant. A search naming an embedder the dataset lacks is
    recorded under that name with identity None."""
    out: dict[str, str | None] = {}
    for node in query.walk():
        if isinstance(node, A.TableName) and populations and len(node.name) == 1:
            pop = populations.get(norm_name(node.name[0]))
            if pop is not None:
                out.update(pop.embedders)
            continue
        similar, using = _is_similarity(node)
        if not similar:
            continue
        name = ".".join(p.value for p in using) if using else None
        key = resolve_embedder(embedders, name)
        if key is None:
            if name is not None:
                out[name] = None
            continue
        meta = embedders.get(key)
        out[key] = str(meta.get("identity")) if isinstance(meta, dict) else None
    return out


def identity_problem(
    pop: PopulationDef, embedders: dict[str, Any], span: Span | None
) -> PopQLError | None:
    """M005 when ``pop`` was written against an embedder whose identity this dataset lacks."""
    for key, identity in pop.embedders.items():
        if identity is None:
            continue
        meta = embedders.get(key)
        now = str(meta.get("identity")) if isinstance(meta, dict) else None
        if now == identity:
            continue
        if now is None:
            found = ", ".join(
                f"{k} ({m.get('identity') if isinstance(m, dict) else '?'})"
                for k, m in embedders.items()
            )
            what = f"this dataset has no embedder '{key}'" + (f" (it has {found})" if found else "")
        else:
            what = f"this dataset's '{key}' is now {now}"
        return PopQLError(
            Diagnostic(
                "M005",
                f"population '{pop.name}' was written against embedder '{key}' with identity"
                f" {identity}, but {what}: its similarity thresholds do not carry over",
                span,
                hints=(
                    f"re-create it for the new embedder: CREATE OR REPLACE POPULATION {pop.name}"
                    f" AS {pop.query}",
                    f"or re-embed the dataset with the original model ({identity}) and query it"
                    " with USING <that embedder>",
                ),
            )
        )
    return None


# ---------------------------------------------------------------------------------------------
# The session's side (resolving names, reading members)
# ---------------------------------------------------------------------------------------------


def _snapshot_embedders(session: Session) -> dict[str, Any]:
    snap = session.snapshot
    return dict(snap.embedders) if snap is not None else {}


def lookup(session: Session, name: str) -> PopulationDef | None:
    pops = store_of(session).read().populations
    return pops.get(name) or pops.get(name.lower())


def require(session: Session, ident: A.Identifier | str, span: Span | None = None) -> PopulationDef:
    name = norm_name(ident) if isinstance(ident, A.Identifier) else ident
    if isinstance(ident, A.Identifier) and span is None:
        span = ident.span
    pop = lookup(session, name)
    if pop is None:
        known = sorted(store_of(session).read().populations)
        hint = did_you_mean_hint(name, known)
        hints: tuple[str, ...] = (hint,) if hint else ()
        if not known:
            hints += ("no population is defined yet: CREATE POPULATION name AS SELECT ...",)
        raise PopQLError(Diagnostic("N004", f"unknown population '{name}'", span, hints=hints))
    return pop


def resolve_query(
    session: Session, name: str, span: Span | None, *, check_identity: bool = True
) -> A.Query | None:
    """The parsed query of population ``name`` for the lowering (None: not a population).

    Raises M005 when the population was written against another embedder identity."""
    pop = lookup(session, name)
    if pop is None:
        return None
    if check_identity:
        problem = identity_problem(pop, _snapshot_embedders(session), span)
        if problem is not None:
            raise problem
    return parse_query(pop.query)


@functools.lru_cache(maxsize=256)
def parse_query(text: str) -> A.Query:
    """A stored population query, parsed (cached: AST nodes are immutable)."""
    from popql import syntax

    script = syntax.parse(text)
    stmt = script.statements[0]
    assert isinstance(stmt, A.Query)
    return stmt


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def members_table(
    session: Session, pop: PopulationDef, *, check_identity: bool = True, query: str | None = None
) -> pa.Table:
    """``sample_id`` of every member (distinct), running the population's query now.

    A query without a ``sample_id`` column is matched to the samples by ``uri``."""
    text = query if query is not None else pop.query
    if not check_identity or query is not None:
        sql_from = f"({text}) AS __popql_pop"
    else:
        sql_from = f"{_quote(pop.name)} AS __popql_pop"
    columns = _output_columns(session, pop, text)
    if "sample_id" in columns:
        sql = f"SELECT DISTINCT __popql_pop.sample_id FROM {sql_from}"
    elif "uri" in columns and session.catalog.has_table("samples"):
        sql = (
            f"SELECT DISTINCT s.sample_id FROM samples AS s JOIN {sql_from}"
            " ON s.uri = __popql_pop.uri"
        )
    else:
        raise PopQLError(
            Diagnostic(
                "N002",
                f"population '{pop.name}' has no sample_id (or uri) column: its members cannot"
                " be identified",
                hints=(
                    f"select sample_id in its query: CREATE OR REPLACE POPULATION {pop.name}"
                    " AS SELECT sample_id, ... FROM samples ...",
                ),
            )
        )
    with _identity_check(session, check_identity):
        table = session.sql(sql).to_arrow()
    ids = table.column(0).cast(pa.string())
    return pa.table({"sample_id": ids}).filter(pc.is_valid(ids))


class _identity_check:
    """Turn the embedder identity check of population expansion off for a while (DIFF)."""

    def __init__(self, session: Session, on: bool) -> None:
        self.session = session
        self.on = on

    def __enter__(self) -> None:
        if not self.on:
            self.session._population_identity_check = False

    def __exit__(self, *exc: object) -> None:
        self.session._population_identity_check = True


@contextlib.contextmanager
def searches(session: Session, execute: bool = True) -> Iterator[None]:
    """One statement's worth of similarity searches (their result tables are dropped after):
    a handler that compiles a query itself (rather than through ``session.sql``) brackets it
    with this, as ``Session._run_statement`` does for a lowered statement."""
    service = getattr(session, "similarity", None)
    if service is None:
        yield
        return
    service.begin("run" if execute else "check")
    try:
        yield
    finally:
        service.end()


def _output_columns(session: Session, pop: PopulationDef, text: str) -> list[str]:
    from .lower import compile_statement

    with _identity_check(session, False), searches(session):
        lowered = compile_statement(parse_query(text), session.catalog)
        return [name for name, _ in session.catalog.query_columns(lowered.sql)]


def member_ids(session: Session, pop: PopulationDef, **kw: Any) -> set[str]:
    return set(members_table(session, pop, **kw).column(0).to_pylist())


def holdout_draw(salt: str, sample_id: str) -> float:
    """The uniform number in [0, 1) that decides a sample's hold-out: the first 8 bytes of
    sha256(salt NUL sample_id). It depends on nothing else, so it never changes as data
    grows."""
    digest = hashlib.sha256(salt.encode("utf-8") + b"\0" + sample_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


# ---------------------------------------------------------------------------------------------
# Statement handlers (engine/commands.py COMMANDS)
# ---------------------------------------------------------------------------------------------


def _result(table: pa.Table, context: CommandContext, kind: str = "query") -> Result:
    from .result import Result

    return Result(table, kind=kind, statement=context.statement, sql=None)


def _refresh(session: Session) -> None:
    if session.dataset is not None:
        session.refresh()


def create_population(
    session: Session, stmt: A.CreatePopulation, context: CommandContext
) -> Result:
    from .lower import compile_statement

    name = norm_name(stmt.name)
    if context.execute:
        _refresh(session)
    state = store_of(session).read()
    if name in state.populations and not stmt.or_replace:
        if stmt.if_not_exists:
            return _result(pa.table({}), context, "command")
        raise PopQLError(
            Diagnostic(
                "N006",
                f"population '{name}' already exists",
                stmt.name.span,
                hints=(
                    "replace it: CREATE OR REPLACE POPULATION ...",
                    "or keep it: CREATE POPULATION IF NOT EXISTS ...",
                ),
            )
        )
    if session.catalog.has_table(name):
        raise PopQLError(
            Diagnostic(
                "N006",
                f"'{name}' is the name of a table: a population needs a name of its own",
                stmt.name.span,
            )
        )
    for node in stmt.query.walk():
        if (
            isinstance(node, A.TableName)
            and len(node.name) == 1
            and norm_name(node.name[0]) == name
        ):
            raise PopQLError(
                Diagnostic(
                    "N006",
                    f"population '{name}' cannot be defined in terms of itself",
                    node.span,
                )
            )
    # Check and plan the query now: its errors point into the statement being written.
    with searches(session, context.execute):
        lowered = compile_statement(stmt.query, session.catalog)
        for udf in lowered.udfs:
            session.ctx.register_udf(udf)
        if context.execute:
            try:
                session.ctx.sql(lowered.sql).schema()
            except Exception as exc:
                text = context.text
                span = stmt.query.span
                rng = (span.start, span.end) if span is not None else (0, len(text))
                raise session._translate(exc, text, rng, context.file, lowered.sql) from exc
    text = query_text(stmt.query)
    snap = session.snapshot
    pop = PopulationDef(
        name=name,
        query=text,
        query_hash=query_hash(text),
        description=stmt.description.value if stmt.description is not None else None,
        embedders=query_embedders(stmt.query, _snapshot_embedders(session), state.populations),
        created_version=snap.version if snap is not None else None,
        created_at=_now(),
    )

    def change(s: PopulationState) -> None:
        if name in s.populations and not stmt.or_replace:
            if stmt.if_not_exists:
                return
            raise PopQLError(
                Diagnostic("N006", f"population '{name}' already exists", stmt.name.span)
            )
        s.populations[name] = pop

    store_of(session).update(f"create population {name}", change)
    session.catalog.clear_population_cache()
    return _result(pa.table({"population": [name]}), context, "command")


def drop_population(session: Session, stmt: A.Drop, context: CommandContext) -> Result | None:
    if stmt.kind != "POPULATION":
        return None
    if context.execute:
        _refresh(session)
    state = store_of(session).read()
    names = []
    for qualified in stmt.names:
        ident = qualified[-1]
        name = norm_name(ident)
        if name not in state.populations:
            if stmt.if_exists:
                continue
            require(session, ident)
        users = [
            p.name
            for p in state.populations.values()
            if p.name != name and _names_population(p.query, name)
        ]
        if users:
            raise PopQLError(
                Diagnostic(
                    "N006",
                    f"population '{name}' is used by population(s) {', '.join(sorted(users))}",
                    ident.span,
                    hints=("drop or re-create those first",),
                )
            )
        names.append(name)
    if not names:
        return _result(pa.table({}), context, "command")

    def change(s: PopulationState) -> None:
        for n in names:
            s.populations.pop(n, None)
            s.holdouts = [h for h in s.holdouts if h.population != n]
        # frozen memberships and split assignments stay: they are history

    store_of(session).update(f"drop population {', '.join(names)}", change)
    session.catalog.clear_population_cache()
    return _result(pa.table({"population": names}), context, "command")


def _names_population(query: str, name: str) -> bool:
    try:
        parsed = parse_query(query)
    except PopQLError:
        return False
    return any(
        isinstance(n, A.TableName) and len(n.name) == 1 and norm_name(n.name[0]) == name
        for n in parsed.walk()
    )


def show(session: Session, stmt: A.Show, context: CommandContext) -> Result | None:
    if stmt.kind != "POPULATIONS":
        return None
    state = store_of(session).read()
    pops = sorted(state.populations.values(), key=lambda p: p.name)
    holdouts = {h.population: h for h in state.holdouts}
    freezes: dict[str, list[str]] = {}
    for f in state.freezes:
        freezes.setdefault(f.population, []).append(f.tag)
    table = pa.table(
        {
            "name": pa.array([p.name for p in pops], pa.string()),
            "description": pa.array([p.description for p in pops], pa.string()),
            "query": pa.array([p.query for p in pops], pa.string()),
            "query_hash": pa.array([p.query_hash for p in pops], pa.string()),
            "embedders": pa.array(
                [
                    ", ".join(f"{k}={v}" for k, v in sorted(p.embedders.items())) or None
                    for p in pops
                ],
                pa.string(),
            ),
            "hold_out_percent": pa.array(
                [holdouts[p.name].percent if p.name in holdouts else None for p in pops],
                pa.float64(),
            ),
            "frozen_tags": pa.array([freezes.get(p.name, []) for p in pops], pa.list_(pa.string())),
            "created_version": pa.array([p.created_version for p in pops], pa.int64()),
        }
    )
    return _result(table, context)


def freeze_population(
    session: Session, stmt: A.FreezePopulation, context: CommandContext
) -> Result:
    if context.execute:
        _refresh(session)
    pop = require(session, stmt.name)
    state = store_of(session).read()
    existing = [f.tag for f in state.freezes if f.population == pop.name]
    tag = stmt.tag.value if stmt.tag is not None else _next_tag(existing)
    if tag in existing:
        raise PopQLError(
            Diagnostic(
                "N006",
                f"population '{pop.name}' is already frozen as '{tag}' (frozen memberships"
                " never change)",
                (stmt.tag or stmt).span,
                hints=(f"use another tag; frozen so far: {', '.join(existing)}",),
            )
        )
    if not context.execute:
        return _result(pa.table({}), context, "command")
    members = tuple(sorted(member_ids(session, pop)))
    snap = session.snapshot
    freeze = Freeze(
        pop.name,
        tag,
        snap.version if snap is not None else None,
        pop.query,
        pop.query_hash,
        dict(pop.embedders),
        members,
        _now(),
    )

    def change(s: PopulationState) -> None:
        if any(f.population == pop.name and f.tag == tag for f in s.freezes):
            raise PopQLError(
                Diagnostic("N006", f"population '{pop.name}' is already frozen as '{tag}'")
            )
        s.freezes.append(freeze)

    store_of(session).update(f"freeze population {pop.name} as {tag}", change)
    return _result(
        pa.table(
            {
                "population": [pop.name],
                "tag": [tag],
                "members": pa.array([len(members)], pa.int64()),
                "dataset_version": pa.array([freeze.dataset_version], pa.int64()),
                "query_hash": [pop.query_hash],
            }
        ),
        context,
    )


def _next_tag(existing: Sequence[str]) -> str:
    n = len(existing) + 1
    while f"v{n}" in existing:
        n += 1
    return f"v{n}"


DIFF_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("uri", pa.string()),
        ("change", pa.string()),
        ("reason", pa.string()),
    ]
)


def diff_population(session: Session, stmt: A.DiffPopulation, context: CommandContext) -> Result:
    """Members added and removed since a freeze, each with why:

    * ``new data``: the sample was not in the dataset when the population was frozen;
    * ``removed data``: the sample is no longer in the dataset;
    * ``changed query``: the population's query changed since, and the old query would still
      (not) select it on today's data;
    * ``changed model``: an embedder the query uses changed identity;
    * ``changed data``: the sample's tags (or labels) changed under the same query and model.
    """
    pop = require(session, stmt.name)
    state = store_of(session).read()
    freezes = [f for f in state.freezes if f.population == pop.name]
    if stmt.tag is not None:
        chosen = [f for f in freezes if f.tag == stmt.tag.value]
        if not chosen:
            tags = [f.tag for f in freezes]
            hint = did_you_mean_hint(stmt.tag.value, tags)
            raise PopQLError(
                Diagnostic(
                    "N004",
                    f"population '{pop.name}' has no freeze tagged '{stmt.tag.value}'",
                    stmt.tag.span,
                    hints=(hint,) if hint else (f"its freezes: {', '.join(tags) or 'none'}",),
                )
            )
        frozen = chosen[-1]
    elif freezes:
        frozen = freezes[-1]
    else:
        raise PopQLError(
            Diagnostic(
                "N004",
                f"population '{pop.name}' was never frozen: there is nothing to compare with",
                stmt.span,
                hints=(f"record its members first: FREEZE POPULATION {pop.name} AS 'v1'",),
            )
        )
    if not context.execute:
        return _result(DIFF_SCHEMA.empty_table(), context)
    now = member_ids(session, pop, check_identity=False)
    before = set(frozen.members)
    query_changed = frozen.query_hash != pop.query_hash
    old = (
        member_ids(session, pop, query=frozen.query, check_identity=False) if query_changed else now
    )
    current = _embedder_identities(session)
    model_changed = any(
        identity is not None and current.get(key) != identity
        for key, identity in frozen.embedders.items()
    )
    existed = _samples_at(session, frozen.dataset_version)
    present = _samples_at(session, None)
    rows: list[tuple[str, str, str]] = []
    for sid in sorted(now - before):
        if existed is not None and sid not in existed:
            reason = "new data"
        elif query_changed and sid not in old:
            reason = "changed query"
        elif model_changed:
            reason = "changed model"
        else:
            reason = "changed data"
        rows.append((sid, "added", reason))
    for sid in sorted(before - now):
        if present is not None and sid not in present:
            reason = "removed data"
        elif query_changed and sid in old:
            reason = "changed query"
        elif model_changed:
            reason = "changed model"
        else:
            reason = "changed data"
        rows.append((sid, "removed", reason))
    uris = _uris(session, [r[0] for r in rows])
    table = pa.table(
        {
            "sample_id": [r[0] for r in rows],
            "uri": [uris.get(r[0]) for r in rows],
            "change": [r[1] for r in rows],
            "reason": [r[2] for r in rows],
        },
        schema=DIFF_SCHEMA,
    )
    return _result(table, context)


def _embedder_identities(session: Session) -> dict[str, str | None]:
    return {
        k: (str(m.get("identity")) if isinstance(m, dict) else None)
        for k, m in _snapshot_embedders(session).items()
    }


def _samples_at(session: Session, version: int | None) -> set[str] | None:
    """Sample ids of the dataset at ``version`` (None: the session's), or None if unknown."""
    if session.dataset is None:
        if version is None and session.catalog.has_table("samples"):
            try:
                t = session.sql("SELECT sample_id FROM samples").to_arrow()
                return set(t.column(0).cast(pa.string()).to_pylist())
            except PopQLError:
                return None
        return None
    try:
        snap = session.snapshot if version is None else session.dataset.snapshot(version)
    except PopQLError:
        return None  # vacuumed
    if snap is None or "samples" not in snap.table_names():
        return set()
    return set(snap.dataset("samples").to_table(columns=["sample_id"]).column(0).to_pylist())


def _uris(session: Session, ids: Sequence[str]) -> dict[str, str]:
    if not ids or not session.catalog.has_table("samples"):
        return {}
    columns = session.catalog.columns("samples") or []
    if not {"sample_id", "uri"} <= {c for c, _ in columns}:
        return {}
    table = session.sql("SELECT sample_id, uri FROM samples").to_arrow()
    table = table.filter(pc.is_in(table.column("sample_id"), pa.array(list(ids), pa.string())))
    return dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))


def hold_out(session: Session, stmt: A.HoldOut, context: CommandContext) -> Result:
    percent = float(stmt.percent)
    if not math.isfinite(percent) or not 0 < percent < 100:
        raise PopQLError(
            Diagnostic(
                "T005",
                f"HOLD OUT needs a percentage between 0 and 100 (exclusive), not {stmt.percent}",
                stmt.span,
            )
        )
    if session.dataset is None and context.execute:
        raise PopQLError(
            Diagnostic(
                "X002",
                "HOLD OUT needs a versioned dataset (popql.connect(DIR) on a directory that"
                " `popql ingest` wrote): assignments are stored with the data",
                stmt.span,
            )
        )
    if context.execute:
        _refresh(session)
    pop = require(session, stmt.population)
    salt = stmt.salt.value if stmt.salt is not None else ""
    state = store_of(session).read()
    previous = state.holdout_of(pop.name)
    if previous is not None and (previous.percent != percent or previous.salt != salt):
        raise PopQLError(
            Diagnostic(
                "T005",
                f"population '{pop.name}' is already held out at {previous.percent:g} PERCENT"
                f" SALT '{previous.salt}': changing it would move samples between splits",
                stmt.span,
                hints=(
                    f"repeat it as it was to assign new members: HOLD OUT {previous.percent:g}"
                    f" PERCENT OF {pop.name} SALT '{previous.salt}'",
                    "or hold out another population",
                ),
            )
        )
    if not context.execute:
        return _result(pa.table({}), context, "command")
    spec = previous or HoldOutDef(
        pop.name, percent, salt, session.snapshot.version if session.snapshot else None, _now()
    )
    members = {pop.name: member_ids(session, pop)}
    counts = store_of(session).update(
        f"hold out {percent:g} percent of {pop.name}",
        lambda s: _assign(s, [spec], members, add_holdout=previous is None),
    )
    return _result(_holdout_summary(pop.name, counts), context)


def _assign(
    state: PopulationState,
    specs: Sequence[HoldOutDef],
    members: dict[str, set[str]],
    *,
    add_holdout: bool,
) -> dict[str, dict[str, int]]:
    """Assign the members that no earlier hold-out assigned; returns counts per population."""
    assigned = set(state.splits.column("sample_id").to_pylist())
    new_ids: list[str] = []
    new_split: list[str] = []
    new_pop: list[str] = []
    new_u: list[float] = []
    counts: dict[str, dict[str, int]] = {}
    if add_holdout:
        state.holdouts = [*state.holdouts, *specs]
    for spec in specs:
        c = {"members": len(members[spec.population]), "assigned_now": 0, "test": 0, "train": 0}
        for sid in sorted(members[spec.population]):
            if sid in assigned:
                continue
            u = holdout_draw(spec.salt, sid)
            split = "test" if u < spec.percent / 100.0 else "train"
            assigned.add(sid)
            new_ids.append(sid)
            new_split.append(split)
            new_pop.append(spec.population)
            new_u.append(u)
            c["assigned_now"] += 1
        counts[spec.population] = c
    if new_ids:
        extra = pa.table(
            {"sample_id": new_ids, "split": new_split, "population": new_pop, "u": new_u},
            schema=SPLITS_SCHEMA,
        )
        state.splits = pa.concat_tables([state.splits.cast(SPLITS_SCHEMA), extra])
    splits = state.splits
    for spec in specs:
        ids = pa.array(sorted(members[spec.population]), pa.string())
        mine = splits.filter(pc.is_in(splits.column("sample_id"), ids))
        for value in mine.column("split").to_pylist():
            counts[spec.population][value] = counts[spec.population].get(value, 0) + 1
    return counts


def _holdout_summary(name: str, counts: dict[str, dict[str, int]]) -> pa.Table:
    c = counts[name]
    return pa.table(
        {
            "population": [name],
            "members": pa.array([c["members"]], pa.int64()),
            "test": pa.array([c["test"]], pa.int64()),
            "train": pa.array([c["train"]], pa.int64()),
            "assigned_now": pa.array([c["assigned_now"]], pa.int64()),
        }
    )


def reapply_holdouts(session: Session) -> dict[str, dict[str, int]]:
    """Assign the members that joined held-out populations since (new data): called after
    ingest. Earlier assignments never change. Returns counts per population."""
    if session.dataset is None:
        return {}
    _refresh(session)
    state = store_of(session).read()
    if not state.holdouts:
        return {}
    members = {}
    for h in state.holdouts:
        pop = lookup(session, h.population)
        if pop is not None:
            members[h.population] = member_ids(session, pop)
    specs = [h for h in state.holdouts if h.population in members]
    assigned = set(state.splits.column("sample_id").to_pylist())
    if all(m <= assigned for m in members.values()):
        return {}
    return store_of(session).update(
        "assign new members of held-out populations",
        lambda s: _assign(s, specs, members, add_holdout=False),
    )


# ---------------------------------------------------------------------------------------------
# SHOW SPLITS and SHOW LEAKAGE
# ---------------------------------------------------------------------------------------------


def sample_splits(session: Session) -> pa.Table:
    """``sample_id, split`` of every sample of the session's dataset."""
    if not session.catalog.has_table("samples"):
        raise PopQLError(Diagnostic("N001", "splits need a 'samples' table (a dataset)"))
    cols = {c for c, _ in session.catalog.columns("samples") or []}
    if "split" not in cols:
        raise PopQLError(
            Diagnostic(
                "N002",
                "the samples table has no split column",
                hints=("open a dataset that `popql ingest` wrote: popql.connect(DIR)",),
            )
        )
    table = session.sql("SELECT sample_id, split FROM samples").to_arrow()
    return table.cast(pa.schema([("sample_id", pa.string()), ("split", pa.string())]))


BREAKDOWN_SCHEMA = pa.schema(
    [
        ("population", pa.string()),
        ("split", pa.string()),
        ("samples", pa.int64()),
        ("share_of_population", pa.float64()),
        ("share_of_split", pa.float64()),
    ]
)


def show_splits(session: Session, stmt: A.ShowSplits, context: CommandContext) -> Result:
    """Per population and split: how many members, their share of the population, and the
    population's share of the split (of all samples in that split). The first rows,
    population ``*``, are the whole dataset."""
    if stmt.populations:
        pops = [require(session, ident) for ident in stmt.populations]
    else:
        pops = sorted(store_of(session).read().populations.values(), key=lambda p: p.name)
    if not context.execute:
        return _result(BREAKDOWN_SCHEMA.empty_table(), context)
    splits = sample_splits(session)
    split_of = dict(zip(splits.column(0).to_pylist(), splits.column(1).to_pylist(), strict=True))
    totals: dict[str, int] = {}
    for value in split_of.values():
        totals[value] = totals.get(value, 0) + 1
    names = sorted(totals, key=lambda s: (SPLITS.index(s) if s in SPLITS else 9, s))
    rows: list[tuple[str, str, int, float | None, float | None]] = []
    everything = len(split_of)
    for s in names:
        rows.append(("*", s, totals[s], totals[s] / everything if everything else None, 1.0))
    for pop in pops:
        ids = [sid for sid in member_ids(session, pop) if sid in split_of]
        counts: dict[str, int] = {}
        for sid in ids:
            counts[split_of[sid]] = counts.get(split_of[sid], 0) + 1
        for s in names:
            n = counts.get(s, 0)
            rows.append(
                (
                    pop.name,
                    s,
                    n,
                    n / len(ids) if ids else None,
                    n / totals[s] if totals[s] else None,
                )
            )
    table = pa.table(
        {name: [r[i] for r in rows] for i, name in enumerate(BREAKDOWN_SCHEMA.names)},
        schema=BREAKDOWN_SCHEMA,
    )
    return _result(table, context)


LEAKAGE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("split", pa.string()),
        ("uri", pa.string()),
        ("other_sample_id", pa.string()),
        ("other_split", pa.string()),
        ("other_uri", pa.string()),
        ("similarity", pa.float32()),
    ]
)


#: Above this many (query row x indexed row) similarities, SHOW LEAKAGE searches the HNSW
#: graph (top LEAKAGE_NEIGHBOURS per sample, approximate) instead of scanning exactly.
EXACT_LEAKAGE_LIMIT = 4_000_000_000


def cross_split_pairs(index: Any, row_split: Any, threshold: float) -> list[tuple[int, int, float]]:
    """``(row, other row, cosine)`` for pairs of rows of ``index`` (a
    :class:`~popql.engine.vector.VectorIndex`) in different splits scoring at least
    ``threshold``; ``row_split[i]`` is the split of row ``i`` ("" = none, skipped).

    The rows of every split but the largest are the queries. Up to ``EXACT_LEAKAGE_LIMIT``
    similarities the scan is exact: the index's float16 matrix in blocks through matrix
    products, candidates rescored in float64 as ``VectorIndex`` scores them. Beyond it each
    query asks the HNSW graph for its nearest rows in the other splits (``search(...,
    approximate=True)``), so a sample with more than LEAKAGE_NEIGHBOURS near-duplicates may
    show only that many."""
    import numpy as np

    row_split = np.asarray(row_split, dtype=object)
    valid = row_split != ""
    sizes = {str(v): int((row_split == v).sum()) for v in set(row_split[valid].tolist())}
    if len(sizes) < 2:
        return []
    largest = max(sizes, key=lambda v: (sizes[v], v))
    queries = np.flatnonzero(valid & (row_split != largest))
    matrix = index.matrix
    n = len(row_split)
    out: list[tuple[int, int, float]] = []
    if len(queries) * n > EXACT_LEAKAGE_LIMIT:
        masks = {v: valid & (row_split != v) for v in sizes}
        for row in queries.tolist():
            q = np.asarray(matrix[row], dtype=np.float32)
            found = index.search(
                q, k=LEAKAGE_NEIGHBOURS, allowed=masks[row_split[row]], approximate=True
            )
            rows = index.rows_of(found.keys)[0] if len(found.keys) else []
            for other, score in zip(list(rows), found.scores.tolist(), strict=True):
                if score >= threshold:
                    out.append((row, int(other), float(score)))
        return out
    codes = {v: i for i, v in enumerate(sorted(sizes))}
    split_code = np.array([codes.get(v, -1) for v in row_split.tolist()], dtype=np.int64)
    slack = 1e-3  # float32 products, then an exact float64 rescoring of the candidates
    block = 65536
    for q0 in range(0, len(queries), 1024):
        qrows = queries[q0 : q0 + 1024]
        q64 = np.asarray(matrix[qrows], dtype=np.float64)
        qn = np.linalg.norm(q64, axis=1)
        q32 = (q64 / np.where(qn == 0, 1, qn)[:, None]).astype(np.float32)
        for b0 in range(0, n, block):
            b64 = np.asarray(matrix[b0 : b0 + block], dtype=np.float64)
            bn = np.linalg.norm(b64, axis=1)
            b32 = (b64 / np.where(bn == 0, 1, bn)[:, None]).astype(np.float32)
            scores = q32 @ b32.T
            qi, bi = np.nonzero(scores >= threshold - slack)
            if not len(qi):
                continue
            rows_a = qrows[qi]
            rows_b = bi + b0
            keep = (split_code[rows_a] != split_code[rows_b]) & (split_code[rows_b] >= 0)
            rows_a, rows_b = rows_a[keep], rows_b[keep]
            qi, bi = qi[keep], bi[keep]
            exact = np.einsum("ij,ij->i", q64[qi], b64[bi]) / (qn[qi] * bn[bi])
            hit = exact.astype(np.float32) >= np.float32(threshold)
            for a, b, sc in zip(
                rows_a[hit].tolist(), rows_b[hit].tolist(), exact[hit].tolist(), strict=True
            ):
                out.append((a, b, float(np.float32(sc))))
    return out


def show_leakage(session: Session, stmt: A.ShowLeakage, context: CommandContext) -> Result:
    """Near-duplicate pairs across splits: every pair of samples in different splits whose
    embeddings' cosine similarity is at least the threshold (default 0.95), best first
    (see :func:`cross_split_pairs` for how the embedder's vector index is scanned)."""
    threshold = DEFAULT_LEAKAGE_THRESHOLD if stmt.threshold is None else float(stmt.threshold)
    if not -1.0 <= threshold <= 1.0:
        raise PopQLError(
            Diagnostic(
                "T005",
                f"a cosine similarity threshold is between -1 and 1, not {stmt.threshold}",
                stmt.span,
            )
        )
    if not context.execute:
        return _result(LEAKAGE_SCHEMA.empty_table(), context)
    snap = session.snapshot
    embedders = dict(snap.embedders) if snap is not None else {}
    using = ".".join(p.value for p in stmt.using) if stmt.using else None
    key = resolve_embedder(embedders, using)
    if key is None:
        have = ", ".join(embedders) or "none"
        raise PopQLError(
            Diagnostic(
                "N001",
                (
                    f"no embedder '{using}' in this dataset (it has: {have})"
                    if using
                    else "SHOW LEAKAGE needs a dataset with embeddings"
                ),
                stmt.span,
                hints=("ingest with an embedder: popql ingest DIR --dataset DS --embedder SPEC",),
            )
        )
    import numpy as np

    from .images import sample_key_of
    from .vector import VectorIndex

    assert snap is not None
    index = VectorIndex.from_snapshot(snap, key)
    splits = sample_splits(session)
    ids = splits.column(0).to_pylist()
    split_of = dict(zip(ids, splits.column(1).to_pylist(), strict=True))
    id_of_key = {sample_key_of(sid): sid for sid in ids}
    keys = index.keys
    row_split = np.array([split_of.get(id_of_key.get(int(k), ""), "") for k in keys], dtype=object)
    sizes = {s: int((row_split == s).sum()) for s in set(row_split.tolist()) if s}
    if len(sizes) < 2:
        return _result(LEAKAGE_SCHEMA.empty_table(), context)
    largest = max(sizes, key=lambda s: (sizes[s], s))
    pairs: dict[tuple[str, str], float] = {}
    for ra, rb, score in cross_split_pairs(index, row_split, threshold):
        a, b = id_of_key.get(int(keys[ra])), id_of_key.get(int(keys[rb]))
        if a is None or b is None or a == b:
            continue
        pair = (a, b) if a < b else (b, a)
        pairs[pair] = max(pairs.get(pair, -2.0), score)
    ordered = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
    uris = _uris(session, sorted({x for (a, b), _ in ordered for x in (a, b)}))
    # the sample of the smaller split first
    out: list[tuple[str, str, float]] = []
    for (a, b), score in ordered:
        if sizes.get(split_of[a], 0) > sizes.get(split_of[b], 0) or split_of[a] == largest:
            a, b = b, a
        out.append((a, b, score))
    table = pa.table(
        {
            "sample_id": [a for a, _, _ in out],
            "split": [split_of[a] for a, _, _ in out],
            "uri": [uris.get(a) for a, _, _ in out],
            "other_sample_id": [b for _, b, _ in out],
            "other_split": [split_of[b] for _, b, _ in out],
            "other_uri": [uris.get(b) for _, b, _ in out],
            "similarity": pa.array([s for _, _, s in out], pa.float32()),
        },
        schema=LEAKAGE_SCHEMA,
    )
    return _result(table, context)


# ---------------------------------------------------------------------------------------------
# Python access: session.population('x')
# ---------------------------------------------------------------------------------------------


class Population:
    """A population as data for training code: ``session.population('dark')``.

    >>> pop = session.population("dark")                     # doctest: +SKIP
    >>> pop.to_arrow(split="train")                          # doctest: +SKIP
    >>> pop.paths(split="test")                              # doctest: +SKIP
    >>> ds = pop.torch_dataset(split="train", transform=tf)  # doctest: +SKIP

    Rows are the population query's columns plus ``split`` (when the dataset has one and the
    query did not select it), ordered by ``sample_id`` when there is one. Each call re-runs
    the query on the session's current version.
    """

    def __init__(self, session: Session, definition: PopulationDef) -> None:
        self.session = session
        self.definition = definition

    @property
    def name(self) -> str:
        return self.definition.name

    def __repr__(self) -> str:
        return f"<popql.Population {self.name}: {self.definition.query}>"

    def to_arrow(self, split: str | Iterable[str] | None = None) -> pa.Table:
        """The members' rows (all columns of the population's query), optionally only those
        in ``split`` (``'train'``, ``'test'``..., or several)."""
        name = _quote(self.name)
        with searches(self.session):
            columns = [c for c, _ in self.session.catalog.columns(self.name) or []]
        has_split = self.session.catalog.has_table("samples") and "split" in {
            c for c, _ in self.session.catalog.columns("samples") or []
        }
        if "split" in columns:
            sql = f"SELECT p.* FROM {name} AS p"
        elif has_split and "sample_id" in columns:
            sql = (
                f"SELECT p.*, s.split FROM {name} AS p LEFT JOIN samples AS s"
                " ON s.sample_id = p.sample_id"
            )
        elif has_split and "uri" in columns:
            sql = f"SELECT p.*, s.split FROM {name} AS p LEFT JOIN samples AS s ON s.uri = p.uri"
        else:
            if split is not None:
                raise PopQLError(
                    Diagnostic(
                        "N002",
                        f"population '{self.name}' has no split column to filter by",
                        hints=("splits exist in datasets: popql.connect(DIR)",),
                    )
                )
            sql = f"SELECT p.* FROM {name} AS p"
        params: dict[str, Any] = {}
        if split is not None:
            wanted = [split] if isinstance(split, str) else list(split)
            marks = ", ".join(f"$split{i}" for i in range(len(wanted)))
            sql += f" WHERE split IN ({marks})" if "WHERE" not in sql else ""
            params = {f"split{i}": w for i, w in enumerate(wanted)}
        if "sample_id" in columns:
            sql += " ORDER BY sample_id"
        return self.session.sql(sql, params or None).to_arrow()

    def paths(self, split: str | Iterable[str] | None = None) -> list[str]:
        """The members' image uris (paths or URLs), in :meth:`to_arrow` order."""
        table = self.to_arrow(split)
        if "uri" in table.column_names:
            return [str(u) for u in table.column("uri").to_pylist()]
        if "sample_id" not in table.column_names:
            raise PopQLError(
                Diagnostic("N002", f"population '{self.name}' has no uri or sample_id column")
            )
        uris = _uris(self.session, table.column("sample_id").to_pylist())
        return [uris[s] for s in table.column("sample_id").to_pylist() if s in uris]

    def torch_dataset(
        self,
        split: str | Iterable[str] | None = None,
        *,
        transform: Callable[[Any], Any] | None = None,
        target: str | None = "label",
        target_transform: Callable[[Any], Any] | None = None,
    ) -> Any:
        """A ``torch.utils.data.Dataset`` over the members (in ``split`` if given).

        Item ``i`` is ``(image, target)``: the decoded RGB ``PIL.Image`` passed through
        ``transform``, and the row's ``target`` column (``label`` by default) through
        ``target_transform``; with ``target=None`` just the image. Images are read lazily
        in ``__getitem__`` (safe with ``DataLoader`` workers). torch is imported here only.
        """
        table = self.to_arrow(split)
        uris = self.paths(split) if "uri" not in table.column_names else None
        if uris is None:
            uris = [str(u) for u in table.column("uri").to_pylist()]
        targets: list[Any] | None = None
        if target is not None:
            if target not in table.column_names:
                raise PopQLError(
                    Diagnostic(
                        "N002",
                        f"population '{self.name}' has no column '{target}' for the targets",
                        hints=(
                            "pass target=None for images alone, or target='<column>'",
                            f"its columns: {', '.join(table.column_names)}",
                        ),
                    )
                )
            targets = table.column(target).to_pylist()
        return _make_torch_dataset(uris, targets, transform, target_transform)


def _make_torch_dataset(
    uris: list[str],
    targets: list[Any] | None,
    transform: Callable[[Any], Any] | None,
    target_transform: Callable[[Any], Any] | None,
) -> Any:
    import torch.utils.data

    from .images import open_image

    class PopulationDataset(torch.utils.data.Dataset):  # type: ignore[misc]
        """Images of a population's members (see :meth:`Population.torch_dataset`)."""

        def __init__(self) -> None:
            self.uris = uris
            self.targets = targets

        def __len__(self) -> int:
            return len(self.uris)

        def __getitem__(self, i: int) -> Any:
            image = open_image(self.uris[i]).image
            if transform is not None:
                image = transform(image)
            if self.targets is None:
                return image
            y = self.targets[i]
            if target_transform is not None:
                y = target_transform(y)
            return image, y

    return PopulationDataset()
