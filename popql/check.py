"""Typed AST → checked AST: name scopes and the types that decide what PopQL constructs mean.

The checker does not re-implement DataFusion's name resolution for plain SQL (DataFusion stays the
authority there, and its errors are turned into diagnostics by the engine).  It resolves what PopQL
itself must know before lowering:

* the operand of ``x SIMILAR TO ...``: a text column keeps SQL's pattern match, an image column
  means similarity search;
* the operands of tag predicates (``TAGGED``, ``COUNT(list WHERE ...)``), which must be lists.

Column types come from a :class:`Catalog` as Arrow type strings (``str(pyarrow.DataType)``), so the
front end needs neither pyarrow nor DataFusion.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from popql import ast as A


class Catalog(Protocol):
    def table_names(self) -> list[str]: ...

    def columns(self, table: str) -> list[tuple[str, str]] | None: ...

    def function_names(self) -> list[str]: ...


@dataclass(frozen=True)
class ColumnInfo:
    table: str
    name: str
    type: str  # Arrow type string, e.g. "int64", "list<item: string>"
    kind: str | None = None  # "image" for image columns
    arrow_type: object = None  # the engine's pyarrow type, when it knows it


IMAGE_COLUMN_NAMES = frozenset({"image"})
DEFAULT_LABEL_COLUMNS = ("labels", "tags")


def is_text_type(t: str) -> bool:
    return t in ("string", "large_string", "string_view", "utf8", "large_utf8", "utf8_view")


def is_list_type(t: str) -> bool:
    return t.startswith(("list<", "large_list<", "fixed_size_list<", "list_view<"))


def list_item_type(t: str) -> str:
    inner = t[t.index("<") + 1 : t.rindex(">")]
    # Arrow names the child field "item" (pyarrow) or "element" (Parquet): drop "<name>: ".
    inner = re.sub(r"^[A-Za-z_][A-Za-z0-9_]*: ", "", inner)
    # fixed_size_list<item: float>[4]
    return inner.split(" not null")[0]


def is_image_column(info: ColumnInfo) -> bool:
    return info.kind == "image" or info.name.lower() in IMAGE_COLUMN_NAMES


SqlOf = Callable[[A.Query], str]


class Scope:
    """The relations visible in one SELECT, for typing the operands PopQL needs.

    Base tables are typed by the catalog; derived tables and CTE references by asking the
    catalog's ``query_columns(sql)`` (DataFusion plans the subquery) when it offers it.
    """

    def __init__(
        self,
        catalog: Catalog | None,
        parent: Scope | None = None,
        ctes: dict[str, str] | None = None,
        sql_of: SqlOf | None = None,
    ) -> None:
        self.catalog = catalog
        self.parent = parent
        self.ctes = ctes or {}
        self.sql_of = sql_of
        # (qualifier, table name or None, SQL of a derived relation or None)
        self.relations: list[tuple[str | None, str | None, str | None]] = []
        self._derived_cache: dict[str, list[ColumnInfo] | None] = {}

    @classmethod
    def for_select(
        cls,
        select: A.Select,
        catalog: Catalog | None,
        parent: Scope | None,
        ctes: dict[str, str] | None = None,
        sql_of: SqlOf | None = None,
    ) -> Scope:
        scope = cls(catalog, parent, ctes, sql_of)
        for item in select.from_:
            scope._add(item)
        return scope

    @classmethod
    def for_table(cls, table: tuple[A.Identifier, ...], catalog: Catalog | None) -> Scope:
        scope = cls(catalog)
        scope.relations.append((_norm(table[-1]), ".".join(_norm(p) for p in table), None))
        return scope

    def _add(self, item: A.TableRef) -> None:
        if isinstance(item, A.TableName):
            name = ".".join(_norm(p) for p in item.name)
            qualifier = _norm(item.alias.name) if item.alias else _norm(item.name[-1])
            if len(item.name) == 1 and name in self.ctes:
                self.relations.append((qualifier, None, self.ctes[name]))
            else:
                self.relations.append((qualifier, name, None))
        elif isinstance(item, A.Join):
            self._add(item.left)
            self._add(item.right)
        elif isinstance(item, A.ParenTable):
            self._add(item.table)
        elif isinstance(item, A.DerivedTable) and self.sql_of is not None:
            derived_qualifier = _norm(item.alias.name) if item.alias else None
            sql = self.sql_of(item.query)
            if item.alias and item.alias.columns:
                cols = ", ".join(f'"{_norm(c)}"' for c in item.alias.columns)
                sql = f"SELECT * FROM ({sql}) AS __popql_t({cols})"
            self.relations.append((derived_qualifier, None, sql))

    def columns_of(self, table: str) -> list[tuple[str, str]] | None:
        if self.catalog is None:
            return None
        try:
            return self.catalog.columns(table)
        except Exception:
            return None

    def kind_of(self, table: str, column: str) -> str | None:
        kind_fn = getattr(self.catalog, "column_kind", None)
        if kind_fn is None:
            return None
        try:
            result = kind_fn(table, column)
        except Exception:
            return None
        return result if isinstance(result, str) else None

    def _relation_columns(self, table: str | None, sql: str | None) -> list[ColumnInfo]:
        if table is not None:
            return [
                ColumnInfo(table, n, t, self.kind_of(table, n))
                for n, t in self.columns_of(table) or []
            ]
        assert sql is not None
        if sql not in self._derived_cache:
            self._derived_cache[sql] = self._query_columns(sql)
        return self._derived_cache[sql] or []

    def _query_columns(self, sql: str) -> list[ColumnInfo] | None:
        fn = getattr(self.catalog, "query_columns", None)
        if fn is None:
            return None
        try:
            fields = fn(sql)
        except Exception:
            return None
        return [ColumnInfo("", name, str(t), None, t) for name, t in fields]

    def resolve(self, column: A.Column) -> ColumnInfo | None:
        parts = [_norm(p) for p in column.parts]
        name = parts[-1]
        qualifier = parts[-2] if len(parts) >= 2 else None
        for q, table, sql in self.relations:
            if qualifier is not None and qualifier != q:
                continue
            for info in self._relation_columns(table, sql):
                if info.name == name:
                    return info
        if self.parent is not None:
            return self.parent.resolve(column)
        return None

    def all_columns(self) -> list[ColumnInfo]:
        out = []
        for _, table, sql in self.relations:
            out.extend(self._relation_columns(table, sql))
        return out

    def default_column(self, predicate: str) -> list[ColumnInfo]:
        """Columns that a bare form (``TAGGED 'x'``, ``SIMILAR TO 'x'``) could stand for."""
        cols = self.all_columns()
        if predicate == "labels":
            return [
                c for c in cols if c.name.lower() in DEFAULT_LABEL_COLUMNS and is_list_type(c.type)
            ]
        return [c for c in cols if is_image_column(c)]


def _norm(ident: A.Identifier) -> str:
    """DataFusion's identifier normalisation: unquoted names are lower-cased."""
    return ident.value if ident.quote else ident.value.lower()
