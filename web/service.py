"""The web view's engine side: one PopQL session behind a lock, no HTTP.

:class:`WebService` is what the HTTP layer (:mod:`popql.web.server`) calls, in worker threads:
it runs statements (refusing writes and foreign files, see :mod:`popql.web.policy`), keeps the
results for paging, completes and checks text with the REPL's engine, finds thumbnails, builds
the statements that clicks make, and gathers the populations page (sizes, splits, metrics with
intervals, expectations, failure discovery). Every call first moves the session to the
dataset's latest version (``Session.refresh``), so data written by the REPL, Python or another
process shows up; the session only reads, so nobody is locked out.

>>> service = WebService(None)                      # an in-memory session
>>> service.run("SELECT 1 AS x")["rows"]
[[1]]
>>> service.run("CREATE TABLE t AS SELECT 1")       # doctest: +ELLIPSIS
Traceback (most recent call last):
popql.diagnostics.PopQLError: ...W001...
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from popql import ast as A
from popql.diagnostics import Diagnostic, PopQLError, render
from popql.engine.result import json_value

from .policy import image_path_refusal, refusal

__all__ = [
    "PAGE_SIZE",
    "WebService",
    "build_near",
    "build_similar",
    "create_population_statement",
    "jsonable",
    "quote_string",
]

#: Rows sent with a query's first page (the grid asks for more while scrolling).
PAGE_SIZE = 200
#: Largest page a client may ask for.
MAX_PAGE = 2000
#: Results kept for paging (least recently used dropped first), and the most rows kept in all
#: (the newest result is always kept).
KEEP_RESULTS = 16
KEEP_ROWS = 5_000_000

_SAMPLE_ID = re.compile(r"^[0-9a-f]{8,64}$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


# ---------------------------------------------------------------------------------------------
# Statements that clicks build
# ---------------------------------------------------------------------------------------------


def quote_string(text: str) -> str:
    """A PopQL string literal: ``quote_string("it's")`` is ``'it''s'``."""
    return "'" + text.replace("'", "''") + "'"


def _check_ids(ids: Iterable[str]) -> list[str]:
    out = []
    for sid in ids:
        if not isinstance(sid, str) or not _SAMPLE_ID.match(sid):
            raise PopQLError(Diagnostic("S003", f"not a sample id: {sid!r}"))
        out.append(sid)
    return out


def build_similar(text: str, top: int = 100, where: str | None = None) -> str:
    """The statement of the search box: ``SELECT * FROM samples WHERE image SIMILAR TO
    'text' TOP k``; ``where`` (PopQL text) is ANDed in, so the search ranks only those rows.

    >>> build_similar("a red shoe", 50)
    "SELECT * FROM samples WHERE image SIMILAR TO 'a red shoe' TOP 50"
    """
    cond = f"image SIMILAR TO {quote_string(text)} TOP {int(top)}"
    if where and where.strip():
        cond = f"({where.strip()}) AND {cond}"
    return f"SELECT * FROM samples WHERE {cond}"


def build_near(positives: Sequence[str], negatives: Sequence[str] = (), top: int = 100) -> str:
    """The statement that "more like this" and the positive/negative selection build.

    >>> build_near(["ab12cd34ef56ab78"], top=20)
    "SELECT * FROM samples WHERE NEAR SAMPLE 'ab12cd34ef56ab78' TOP 20"
    >>> build_near(["ab12cd34ef56ab78", "0011223344556677"], ["ffeeddccbbaa9988"], 20)
    "SELECT * FROM samples WHERE NEAR (SAMPLE 'ab12cd34ef56ab78', SAMPLE '0011223344556677', \
NOT SAMPLE 'ffeeddccbbaa9988') TOP 20"
    """
    pos, neg = _check_ids(positives), _check_ids(negatives)
    if not pos:
        raise PopQLError(
            Diagnostic(
                "S003",
                "a search needs at least one positive example",
                hints=("select one image as positive (left click) before refining",),
            )
        )
    examples = [f"SAMPLE {quote_string(s)}" for s in pos]
    examples += [f"NOT SAMPLE {quote_string(s)}" for s in neg]
    near = examples[0] if len(examples) == 1 else "(" + ", ".join(examples) + ")"
    return f"SELECT * FROM samples WHERE NEAR {near} TOP {int(top)}"


def create_population_statement(name: str, query: str, description: str | None = None) -> str:
    """``CREATE OR REPLACE POPULATION name [DESCRIPTION '...'] AS query`` (the save button).

    >>> create_population_statement("shoes", "SELECT * FROM samples WHERE label = 'sneaker';")
    "CREATE OR REPLACE POPULATION shoes AS SELECT * FROM samples WHERE label = 'sneaker'"
    """
    if not name or not name.strip():
        raise ValueError("a population needs a name")
    body = query.strip().rstrip(";").strip()
    desc = f" DESCRIPTION {quote_string(description)}" if description else ""
    return f"CREATE OR REPLACE POPULATION {_ident(name)}{desc} AS {body}"


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """A JSON-ready version of an Arrow value (NaN and infinities become None)."""
    return json_value(value)


def _rows(table: pa.Table) -> list[list[Any]]:
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return [[jsonable(c[r]) for c in columns] for r in range(table.num_rows)]


def _type_name(t: pa.DataType) -> str:
    try:
        from popql.engine.catalog import arrow_type_name

        return str(arrow_type_name(t))
    except Exception:
        return str(t)


@dataclass
class _Stored:
    table: pa.Table
    statement: str
    kind: str
    image: bool


@dataclass(frozen=True)
class _SampleIndex:
    version: int | None
    ids: dict[str, tuple[str, str]]  # sample_id -> (content_hash, uri)
    uris: frozenset[str]


class WebService:
    """The session the web view uses, with everything the pages ask of it.

    ``dataset``: a dataset directory (None: in memory). ``allow_writes``: run statements that
    change data (else W001). ``suites``: ``.popql`` files whose ``EXPECT`` statements the
    populations page checks. ``cache_dir``: where thumbnails missing from the dataset are
    generated (default ``$XDG_CACHE_HOME/popql/web/<hash of the dataset path>``).
    """

    def __init__(
        self,
        dataset: str | os.PathLike[str] | None,
        *,
        allow_writes: bool = False,
        suites: Sequence[str | os.PathLike[str]] = (),
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        import popql

        self.session = popql.connect(dataset)
        self.allow_writes = allow_writes
        self.suites = [Path(s) for s in suites]
        self.lock = threading.RLock()
        self._results: OrderedDict[str, _Stored] = OrderedDict()
        self._index: _SampleIndex | None = None
        self._meta: Any = None
        self._meta_version: object = object()
        root = self.session.path
        if cache_dir is None:
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
            key = hashlib.sha256(str(Path(root).resolve() if root else "memory").encode())
            cache_dir = base / "popql" / "web" / key.hexdigest()[:16]
        self.cache_dir = Path(cache_dir)

    # -- state --------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Move to the dataset's latest committed version (cheap when nothing changed)."""
        with self.lock:
            self.session.refresh()

    def info(self) -> dict[str, Any]:
        with self.lock:
            self.session.refresh()
            s = self.session
            return {
                "dataset": None if s.path is None else str(s.path),
                "version": s.version,
                "allow_writes": self.allow_writes,
                "tables": s.tables(),
                "populations": self._population_names(),
                "models": self._model_names(),
                "features": {
                    "completion": _repl_completion() is not None,
                    "evaluation": hasattr(A, "Evaluate") and hasattr(s, "model_names"),
                },
            }

    def _population_names(self) -> list[str]:
        try:
            return list(self.session.population_names())
        except PopQLError:
            return []

    def _model_names(self) -> list[str]:
        names = getattr(self.session, "model_names", None)
        if names is None:
            return []
        try:
            return list(names())
        except PopQLError:
            return []

    # -- running ------------------------------------------------------------------------------

    def screen(self, text: str) -> A.Script:
        """Parse ``text`` and refuse it (PopQLError W001/W002) if a statement may not run."""
        from popql import syntax

        try:
            script = syntax.parse(text)
        except PopQLError as err:
            raise (err if err.source is not None else err.with_context(text)) from None
        problems: list[Diagnostic] = []
        for stmt in script.statements:
            found = refusal(stmt, allow_writes=self.allow_writes) or image_path_refusal(
                stmt, root=self.session.path, is_sample_uri=self._is_sample_uri
            )
            if found is not None:
                problems.append(found)
        if problems:
            raise PopQLError(problems, source=text)
        return script

    def run(self, text: str, page_size: int = PAGE_SIZE) -> dict[str, Any]:
        """Run ``text`` (every statement, the last one's result kept) and return its first page:
        ``id``, ``kind``, ``columns``, ``types``, ``total``, ``rows``, ``image`` (the rows are
        samples: the grid shows them), ``statement``."""
        with self.lock:
            self.session.refresh()
            self.screen(text)
            results = self.session.execute(text)
            if not results:
                return {
                    "id": None,
                    "kind": "empty",
                    "columns": [],
                    "types": [],
                    "total": 0,
                    "rows": [],
                    "image": False,
                    "statement": text,
                }
            last = results[-1]
            table = last.to_arrow()
            kind = last.kind
            # a statement that changed data: later reads see it
            if any(r.kind != "query" for r in results):
                self.session.refresh()
            image = "sample_id" in table.column_names and pa.types.is_string(
                table.schema.field("sample_id").type
            )
            rid = uuid.uuid4().hex
            self._results[rid] = _Stored(table, text, kind, image)
            while len(self._results) > 1 and (
                len(self._results) > KEEP_RESULTS
                or sum(r.table.num_rows for r in self._results.values()) > KEEP_ROWS
            ):
                self._results.popitem(last=False)
            page = self._page(table, 0, page_size)
            return {
                "id": rid,
                "kind": kind,
                "columns": table.column_names,
                "types": [_type_name(f.type) for f in table.schema],
                "total": table.num_rows,
                "rows": page,
                "image": image,
                "statement": text,
            }

    def page(self, result_id: str, offset: int, limit: int) -> dict[str, Any]:
        """Rows ``offset`` to ``offset + limit`` of a kept result (KeyError: expired)."""
        with self.lock:
            stored = self._results[result_id]
            self._results.move_to_end(result_id)
        return {
            "id": result_id,
            "offset": offset,
            "total": stored.table.num_rows,
            "rows": self._page(stored.table, offset, limit),
        }

    @staticmethod
    def _page(table: pa.Table, offset: int, limit: int) -> list[list[Any]]:
        offset = max(0, int(offset))
        limit = max(0, min(int(limit), MAX_PAGE))
        return _rows(table.slice(offset, limit))

    def check(self, text: str) -> dict[str, Any]:
        """The REPL's diagnostics for ``text`` without running it: ``diagnostics`` (JSON
        objects as :func:`popql.diagnostics.to_json` writes them) and ``rendered`` (the text
        with carets and hints)."""
        with self.lock:
            self.session.refresh()
            try:
                self.screen(text)
                self.session.check(text)
            except PopQLError as err:
                return diagnostics_payload(err, text)
        return {"diagnostics": [], "rendered": ""}

    # -- completion and keywords (the REPL's engine, popql.repl.completion) -----------------

    def keywords(self) -> dict[str, list[str]]:
        """The grammar's keywords for highlighting (``keywords``; ``popql`` = PopQL's own)."""
        highlight = _repl_highlight()
        if highlight is None:
            return {"keywords": [], "popql": []}
        return {
            "keywords": sorted(highlight.grammar_keywords()),
            "popql": sorted(highlight.POPQL_ONLY_KEYWORDS),
        }

    def complete(self, text: str, cursor: int | None = None) -> list[dict[str, Any]]:
        """Suggestions at ``cursor`` from the REPL's completion engine over the live catalog."""
        completion = _repl_completion()
        if completion is None:
            return []
        with self.lock:
            self.session.refresh()
            version = (self.session.version, tuple(self._population_names()))
            if self._meta is None or self._meta_version != version:
                meta = completion.load_metadata(self.session, self._meta)
                loader = getattr(completion, "load_tag_values", None)
                if loader is not None:
                    # values are a nicety; columns still complete without them
                    with contextlib.suppress(Exception):
                        loader(self.session, meta)
                self._meta, self._meta_version = meta, version
            meta = self._meta
        suggestions = completion.complete(text, cursor, meta, cwd=self.session.path)
        return [
            {
                "text": s.text,
                "start": s.start,
                "kind": s.kind,
                "display": s.display or s.text,
                "meta": s.meta,
            }
            for s in suggestions
            if s.kind not in ("meta", "path")  # no file listing through the browser
        ][:50]

    # -- samples and thumbnails ---------------------------------------------------------------

    def _sample_index(self) -> _SampleIndex:
        index = self._index  # thumbnails need no lock while a query runs
        if index is not None and index.version == self.session.version:
            return index
        with self.lock:
            version = self.session.version
            if self._index is not None and self._index.version == version:
                return self._index
            ids: dict[str, tuple[str, str]] = {}
            if "samples" in self.session.tables():
                cols = {f.name for f in self.session.schema("samples")}
                if {"sample_id", "uri"} <= cols:
                    hashes = "content_hash" if "content_hash" in cols else "''"
                    t = self.session.sql(f"SELECT sample_id, {hashes}, uri FROM samples").to_arrow()
                    ids = dict(
                        zip(
                            t.column(0).to_pylist(),
                            zip(t.column(1).to_pylist(), t.column(2).to_pylist(), strict=True),
                            strict=True,
                        )
                    )
            self._index = _SampleIndex(version, ids, frozenset(u for _, u in ids.values()))
            return self._index

    def _is_sample_uri(self, value: str) -> bool:
        return value in self._sample_index().uris

    def sample(self, sample_id: str) -> dict[str, Any] | None:
        """Every column of the sample (its tags), or None when there is no such sample."""
        if not _SAMPLE_ID.match(sample_id or ""):
            return None
        with self.lock:
            self.session.refresh()
            if sample_id not in self._sample_index().ids:
                return None
            table = self.session.sql(
                "SELECT * FROM samples WHERE sample_id = $sid", {"sid": sample_id}
            ).to_arrow()
        if table.num_rows == 0:
            return None
        row = table.slice(0, 1).to_pylist()[0]
        return {k: jsonable(v) for k, v in row.items()}

    def thumbnail(self, sample_id: str) -> Path | None:
        """The JPEG thumbnail of a sample of the open dataset (None: not one of its samples, or
        its image cannot be read). Ingest's thumbnail when there is one; else one generated
        into :attr:`cache_dir` from the sample's file, which must still hash to the sample's
        ``content_hash`` (so a uri can never make the server read another file)."""
        if not _SAMPLE_ID.match(sample_id or ""):
            return None
        index = self._sample_index()
        found = index.ids.get(sample_id)
        if found is None:
            return None
        content_hash, uri = found
        if not content_hash or not re.fullmatch(r"[0-9a-f]{16,128}", content_hash):
            return None
        from popql.engine.images import thumbnail_path

        if self.session.path is not None:
            stored = thumbnail_path(self.session.path, content_hash)
            if stored.is_file():
                return stored
        cached = thumbnail_path(self.cache_dir, content_hash)
        if cached.is_file():
            return cached
        return self._generate_thumbnail(content_hash, uri)

    def _generate_thumbnail(self, content_hash: str, uri: str) -> Path | None:
        from popql.engine.images import ImageError, decode_image, make_thumbnail, read_bytes

        try:
            data = read_bytes(uri)
        except (ImageError, OSError, ValueError):
            return None
        if hashlib.sha256(data).hexdigest() != content_hash:
            return None  # the file changed since ingest, or the uri names another file
        try:
            decoded = decode_image(data, uri=uri, max_side=512)
        except ImageError:
            return None
        return make_thumbnail(self.cache_dir, content_hash, decoded.image)

    # -- populations page ---------------------------------------------------------------------

    def save_population(self, name: str, query: str, description: str | None) -> dict[str, Any]:
        """Run ``CREATE OR REPLACE POPULATION`` for the current query (needs allow_writes)."""
        statement = create_population_statement(name, query, description)
        self.run(statement)
        return {"statement": statement, "name": name}

    def populations(self) -> dict[str, Any]:
        """Each population's name, description, query and size, and the split breakdown."""
        with self.lock:
            self.session.refresh()
            pops = self.session.sql("SHOW POPULATIONS").to_pylist()
            out = []
            for p in pops:
                size: int | None
                error = None
                try:
                    size = int(
                        self.session.sql(f"SELECT count(*) FROM {_ident(p['name'])}").scalar()
                    )
                except PopQLError as err:
                    size, error = None, err.diagnostics[0].message
                out.append(
                    {
                        "name": p["name"],
                        "description": p.get("description"),
                        "query": p.get("query"),
                        "size": size,
                        "hold_out_percent": jsonable(p.get("hold_out_percent")),
                        "error": error,
                    }
                )
            splits: list[dict[str, Any]] = []
            if pops:
                try:
                    splits = [
                        {k: jsonable(v) for k, v in r.items()}
                        for r in self.session.sql("SHOW SPLITS").to_pylist()
                    ]
                except PopQLError:
                    splits = []
            return {
                "populations": out,
                "splits": splits,
                "models": self._model_names(),
                "allow_writes": self.allow_writes,
            }

    def evaluate(self, model: str, populations: Sequence[str] = ()) -> dict[str, Any]:
        """``EVALUATE model ON pops`` (all populations by default): ``metrics`` (names),
        ``rows`` (one per population: estimate, lo, hi per metric), ``expectations`` (the
        suites' EXPECT outcomes for this model), ``statement``."""
        if not _NAME.match(model or ""):
            raise PopQLError(Diagnostic("M002", f"unknown model {model!r}"))
        with self.lock:
            self.session.refresh()
            names = list(populations) or self._population_names()
            if not names:
                return {"metrics": [], "rows": [], "expectations": [], "statement": None}
            statement = f"EVALUATE {_ident(model)} ON " + ", ".join(_ident(n) for n in names)
            table = self.session.sql(statement).to_arrow()
            cols = table.column_names
            metrics = [c for c in cols if f"{c}_lo" in cols and f"{c}_hi" in cols]
            rows = [{k: jsonable(v) for k, v in r.items()} for r in table.to_pylist()]
            return {
                "metrics": metrics,
                "rows": rows,
                "expectations": self._expectations(model),
                "statement": statement,
            }

    def _expectations(self, model: str) -> list[dict[str, Any]]:
        from popql import syntax

        outcomes: list[dict[str, Any]] = []
        expect = getattr(A, "Expect", None)
        if expect is None:
            return outcomes
        from popql.format import format_node

        previous = getattr(self.session, "default_model", None)
        self.session.default_model = model
        try:
            for suite in self.suites:
                text = suite.read_text(encoding="utf-8")
                script = syntax.parse(text, file=str(suite))
                for stmt in script.statements:
                    if not isinstance(stmt, expect):
                        continue
                    named = getattr(stmt, "model", None)
                    if named is not None and _ident_text(named) != model:
                        continue
                    shown = format_node(stmt)
                    try:
                        rows = self.session.sql(shown).to_pylist()
                    except PopQLError as err:
                        outcomes.append(
                            {
                                "expectation": shown,
                                "status": "error",
                                "reason": err.diagnostics[0].message,
                                "file": str(suite),
                            }
                        )
                        continue
                    for r in rows:
                        row = {k: jsonable(v) for k, v in r.items()}
                        row["file"] = str(suite)
                        outcomes.append(row)
        finally:
            self.session.default_model = previous
        return outcomes

    def failures(self, model: str) -> dict[str, Any]:
        """``FIND FAILURES FOR MODEL model``: the slices and their ready CREATE POPULATION
        statements."""
        if not _NAME.match(model or ""):
            raise PopQLError(Diagnostic("M002", f"unknown model {model!r}"))
        statement = f"FIND FAILURES FOR MODEL {_ident(model)}"
        with self.lock:
            self.session.refresh()
            rows = self.session.sql(statement).to_pylist()
        return {
            "statement": statement,
            "rows": [{k: jsonable(v) for k, v in r.items()} for r in rows],
        }


def _ident(name: str) -> str:
    from popql.engine.session import quote_identifier

    if _NAME.match(name) and name.lower() == name and name.upper() not in _reserved():
        return name
    return quote_identifier(name)


def _reserved() -> frozenset[str]:
    highlight = _repl_highlight()
    if highlight is None:
        return frozenset({"SELECT", "FROM", "WHERE", "ON", "AS", "BY", "ORDER", "GROUP", "TABLE"})
    return frozenset(highlight.grammar_keywords())


def _ident_text(node: Any) -> str:
    if isinstance(node, A.ModelRef):
        return _ident_text(node.name)
    if isinstance(node, A.Identifier):
        return node.value if node.quote else node.value.lower()
    if isinstance(node, tuple) and node:
        return _ident_text(node[-1])
    return str(getattr(node, "value", node))


def diagnostics_payload(err: PopQLError, text: str) -> dict[str, Any]:
    """``{"diagnostics": [...], "rendered": "..."}`` for a PopQLError about ``text``."""
    return {
        "diagnostics": [d.to_dict() for d in err.diagnostics],
        "rendered": render(err.diagnostics, text, "query"),
    }


def _repl_completion() -> Any:
    try:
        from popql.repl import completion
    except ImportError:
        return None
    return completion


def _repl_highlight() -> Any:
    try:
        from popql.repl import highlight
    except ImportError:
        return None
    return highlight
