"""The checker's view of a live DataFusion session (the ``popql.check.Catalog`` protocol).

Everything is read from the :class:`datafusion.SessionContext` on each call, so tables created
by SQL DDL (``CREATE TABLE``/``CREATE VIEW``/``DROP``) in the same session, and tables added
with ``Session.register``, are visible immediately. Reading the in-memory catalog is cheap
(tens of microseconds for a handful of tables): ``ctx.catalog().schema().names()`` and
``.table(name).schema`` do not touch data.

Function names are DataFusion's built-in scalar, aggregate, window and table functions, read
once per process from ``information_schema.routines`` (about 5 ms; it lists aliases such as
``list_append`` and aggregates such as ``count``, which ``SHOW FUNCTIONS`` omits), plus the
live lists ``ctx.udfs()``, ``ctx.udafs()`` and ``ctx.udwfs()`` so that user-registered
functions appear as soon as they are registered.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    import datafusion

__all__ = ["DataFusionCatalog", "arrow_type_name", "builtin_function_names"]

_builtin_lock = threading.Lock()
_builtin_cache: frozenset[str] | None = None


def builtin_function_names() -> frozenset[str]:
    """Names of DataFusion's built-in functions (cached for the process)."""
    global _builtin_cache
    with _builtin_lock:
        if _builtin_cache is None:
            import datafusion

            config = datafusion.SessionConfig().with_information_schema(True)
            ctx = datafusion.SessionContext(config)
            names: set[str] = set()
            try:
                table = ctx.sql(
                    "SELECT DISTINCT routine_name FROM information_schema.routines"
                ).to_arrow_table()
                names.update(str(n) for n in table.column(0).to_pylist() if n)
            except Exception:  # pragma: no cover - older DataFusion without routines
                pass
            names.update(ctx.udfs())
            names.update(ctx.udafs())
            names.update(ctx.udwfs())
            _builtin_cache = frozenset(names)
        return _builtin_cache


def arrow_type_name(data_type: pa.DataType) -> str:
    """The Arrow type string the checker sees for a column (``str(pyarrow type)``)."""
    return str(data_type)


class DataFusionCatalog:
    """Tables, columns and functions of a live DataFusion session.

    Only the default catalog and schema (``datafusion.public``) are listed by
    :meth:`table_names`; :meth:`columns` also accepts ``schema.table`` and
    ``catalog.schema.table`` names. Lookups try the exact name first, then its lower-case
    form (DataFusion folds unquoted identifiers to lower case).
    """

    def __init__(self, ctx: datafusion.SessionContext) -> None:
        self._ctx = ctx

    @property
    def ctx(self) -> datafusion.SessionContext:
        return self._ctx

    # -- the Catalog protocol ---------------------------------------------------------------

    def table_names(self) -> list[str]:
        """Tables and views in the default schema, sorted."""
        return sorted(self._ctx.catalog().schema().names())

    def columns(self, table: str) -> list[tuple[str, str]] | None:
        """``(column name, arrow type string)`` pairs, or None for an unknown table.

        A population's name (not shadowed by a table) gives the columns of its query."""
        schema = self.schema(table)
        if schema is None:
            fields = self.population_columns(table)
            if fields is None:
                return None
            return [(name, arrow_type_name(t)) for name, t in fields]
        return [(f.name, arrow_type_name(f.type)) for f in schema]

    def function_names(self) -> list[str]:
        """Built-in and registered function names, sorted."""
        names = set(builtin_function_names())
        names.update(self._ctx.udfs())
        names.update(self._ctx.udafs())
        names.update(self._ctx.udwfs())
        return sorted(names)

    # -- extras -------------------------------------------------------------------------------

    version_resolver: Any = None  # set by a Session over a versioned dataset
    similarity_search: Any = None  # set by a Session: runs one SearchRequest (similarity.py)

    def versioned_table(self, name: str, version: int, span: Any = None) -> str:
        """Register ``name`` as it was at dataset version ``version``; return its name."""
        if self.version_resolver is None:
            from popql.diagnostics import Diagnostic, PopQLError

            raise PopQLError(
                Diagnostic("D006", "AS OF VERSION needs a versioned dataset", span)
            )
        return str(self.version_resolver(name, version, span))

    population_resolver: Any = None  # set by a Session: (name, span) -> popql.ast.Query | None

    def population_query(self, name: str, span: Any = None) -> Any:
        """The stored query (a ``popql.ast.Query``) of population ``name``, or None when
        ``name`` is a table or no population. Raises M005 when the population was written
        against another embedder identity than the dataset's (see engine/populations.py)."""
        if self.population_resolver is None or self.resolve(name) is not None:
            return None
        return self.population_resolver(name, span)

    def population_columns(self, name: str) -> list[tuple[str, pa.DataType]] | None:
        """Output columns of population ``name``'s query (None: not a population, or its
        query does not plan). Cached until :meth:`clear_population_cache`."""
        if self.population_resolver is None or "." in name:
            return None
        cache: dict[Any, Any] = self.__dict__.setdefault("_population_columns", {})
        try:
            query = self.population_query(name)
        except Exception:
            return None
        if query is None:
            return None
        key = (name, id(query), tuple(self.table_names()))
        if key not in cache:
            from .lower import compile_statement

            try:
                sql = compile_statement(query, self).sql
                cache[key] = self.query_columns(sql)
            except Exception:
                cache[key] = None
        result: list[tuple[str, pa.DataType]] | None = cache[key]
        return result

    def clear_population_cache(self) -> None:
        self.__dict__.pop("_population_columns", None)

    def query_columns(self, sql: str) -> list[tuple[str, pa.DataType]]:
        """Output columns of a query, planned by DataFusion without running it (for typing
        derived tables and CTEs)."""
        schema = self._ctx.sql(sql).schema()
        return [(f.name, f.type) for f in schema]

    def register_udf(self, udf: Any) -> None:
        self._ctx.register_udf(udf)

    def has_table(self, table: str) -> bool:
        return self.resolve(table) is not None

    def resolve(self, table: str) -> tuple[str, str, str] | None:
        """``(catalog, schema, table)`` of ``table`` as the session knows it, or None."""
        candidates = [table]
        if table.lower() != table:
            candidates.append(table.lower())
        for name in candidates:
            found = self._lookup(name)
            if found is not None:
                return found
        return None

    def schema(self, table: str) -> pa.Schema | None:
        """The Arrow schema of ``table`` (None when unknown). Does not read any data."""
        found = self.resolve(table)
        if found is None:
            return None
        catalog, schema, name = found
        try:
            result = self._ctx.catalog(catalog).schema(schema).table(name).schema
        except Exception:
            return None
        return result if isinstance(result, pa.Schema) else pa.schema(result)

    def _lookup(self, table: str) -> tuple[str, str, str] | None:
        default = self._ctx.catalog().schema()
        if table in default.names():
            return ("datafusion", "public", table)
        parts = table.split(".")
        if len(parts) == 2:
            catalog, schema, name = "datafusion", parts[0], parts[1]
        elif len(parts) == 3:
            catalog, schema, name = parts[0], parts[1], parts[2]
        else:
            return None
        try:
            if catalog not in self._ctx.catalog_names():
                return None
            cat = self._ctx.catalog(catalog)
            if schema not in cat.names():
                return None
            if name in cat.schema(schema).names():
                return (catalog, schema, name)
        except Exception:
            return None
        return None

    def __repr__(self) -> str:
        return f"DataFusionCatalog(tables={self.table_names()!r})"
