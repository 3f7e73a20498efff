"""PopQL: find, name and test populations of images with an SQL superset.

>>> import popql
>>> session = popql.connect()
>>> session.sql("SELECT 1 + 1 AS two").to_pylist()
[{'two': 2}]

``import popql`` imports nothing heavy: the parser, DataFusion and (later) the models load on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["PopQLError", "Session", "__version__", "connect", "format_script", "parse"]

if TYPE_CHECKING:
    from popql.diagnostics import PopQLError
    from popql.engine.session import Session, connect
    from popql.format import format_script
    from popql.syntax import parse

_LAZY = {
    "connect": ("popql.engine.session", "connect"),
    "Session": ("popql.engine.session", "Session"),
    "parse": ("popql.syntax", "parse"),
    "format_script": ("popql.format", "format_script"),
    "PopQLError": ("popql.diagnostics", "PopQLError"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'popql' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value
