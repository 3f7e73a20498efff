"""What the web server lets a browser run: read-only statements, files of the dataset only.

The web view runs PopQL typed into a browser, so the server decides from the parsed statements
(the AST, never the text) whether a statement may run:

* **Writes.** Only the statement kinds in :data:`READ_ONLY` run on a server started without
  ``--allow-writes``; every other kind (``CREATE``/``INSERT``/``DROP``/``HOLD OUT``/``FREEZE``/
  ``IMPORT``/``SET``/``COPY``/``PREPARE``...) is refused with ``W001``. ``EXPLAIN`` is judged
  by the statement it explains (``EXPLAIN ANALYZE`` runs it).
* **Files.** ``NEAR IMAGE 'path'`` reads a file on the server. The server accepts a path only
  when it names an image of the open dataset (a sample's ``uri``) or a file inside the dataset
  directory; anything else (``/etc/passwd``, ``../../secret.png``, URLs) is refused with
  ``W002`` before the file is opened.

>>> from popql import syntax
>>> refusal(syntax.parse("SELECT 1").statements[0], allow_writes=False) is None
True
>>> refusal(syntax.parse("DROP TABLE t").statements[0], allow_writes=False).code
'W001'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from popql import ast as A
from popql.diagnostics import Diagnostic

__all__ = ["READ_ONLY", "image_path_refusal", "is_read_only", "refusal"]


def _evaluation_nodes() -> tuple[type, ...]:
    # EVALUATE / COMPARE / EXPECT / FIND FAILURES read predictions and compute metrics.
    names = ("Evaluate", "Compare", "Expect", "FindFailures")
    return tuple(getattr(A, n) for n in names if hasattr(A, n))


#: Statement kinds that read and never change data or session state.
READ_ONLY: tuple[type, ...] = (
    A.Query,
    A.Show,
    A.Describe,
    A.ShowSplits,
    A.ShowLeakage,
    A.DiffPopulation,
    *_evaluation_nodes(),
)


def is_read_only(stmt: A.Statement) -> bool:
    """Whether ``stmt`` only reads (``EXPLAIN`` is judged by what it explains)."""
    if isinstance(stmt, A.Explain):
        return is_read_only(stmt.statement)
    return isinstance(stmt, READ_ONLY)


_NAMES: dict[str, str] = {
    "CreateTable": "CREATE TABLE",
    "CreateExternalTable": "CREATE EXTERNAL TABLE",
    "CreateView": "CREATE VIEW",
    "CreateSchema": "CREATE SCHEMA",
    "CreateFunction": "CREATE FUNCTION",
    "Drop": "DROP",
    "Insert": "INSERT",
    "Update": "UPDATE",
    "Delete": "DELETE",
    "SetVariable": "SET",
    "SetTimeZone": "SET TIME ZONE",
    "Reset": "RESET",
    "Copy": "COPY",
    "Truncate": "TRUNCATE",
    "Prepare": "PREPARE",
    "Execute": "EXECUTE",
    "Deallocate": "DEALLOCATE",
    "CreatePopulation": "CREATE POPULATION",
    "FreezePopulation": "FREEZE POPULATION",
    "HoldOut": "HOLD OUT",
    "ImportPredictions": "IMPORT PREDICTIONS",
    "Explain": "EXPLAIN",
}


def statement_name(stmt: A.Statement) -> str:
    """The statement's keyword(s) as a user writes them (``CREATE POPULATION``)."""
    inner = stmt.statement if isinstance(stmt, A.Explain) else stmt
    name = type(inner).__name__
    return _NAMES.get(name, name.upper())


def refusal(stmt: A.Statement, *, allow_writes: bool) -> Diagnostic | None:
    """``W001`` when ``stmt`` changes data or state and writes are not allowed, else None."""
    if allow_writes or is_read_only(stmt):
        return None
    return Diagnostic(
        "W001",
        f"{statement_name(stmt)} changes data: this web server is read-only",
        getattr(stmt, "span", None),
        hints=(
            "start the server with `popql serve DATASET --allow-writes` to run statements that"
            " change data (saving a population is one), or run it in the REPL or Python",
        ),
    )


def image_path_refusal(
    stmt: A.Statement,
    *,
    root: Path | None,
    is_sample_uri: Callable[[str], bool],
) -> Diagnostic | None:
    """``W002`` for the first ``NEAR IMAGE 'path'`` in ``stmt`` that is neither a sample's
    uri (``is_sample_uri``) nor a file inside the dataset directory ``root``."""
    for node in stmt.walk():
        if not (isinstance(node, A.NearExample) and node.kind == "IMAGE"):
            continue
        value = node.value.value if isinstance(node.value, A.String) else None
        if isinstance(value, str) and _allowed_image(value, root, is_sample_uri):
            continue
        shown = value if isinstance(value, str) and len(value) <= 80 else "..."
        return Diagnostic(
            "W002",
            f"IMAGE '{shown}' is not an image of the open dataset: this web server reads no"
            " other file",
            node.span,
            hints=(
                "click an image and use 'more like this' (NEAR SAMPLE 'sample_id'), or give the"
                " uri of one of the dataset's samples",
            ),
        )
    return None


def _allowed_image(value: str, root: Path | None, is_sample_uri: Callable[[str], bool]) -> bool:
    if "\x00" in value:
        return False
    if is_sample_uri(value):
        return True
    if "://" in value or root is None:
        return False
    try:
        resolved = Path(os.path.realpath(value))
        base = Path(os.path.realpath(root))
    except (OSError, ValueError):
        return False
    if is_sample_uri(str(resolved)):
        return True
    return resolved.is_relative_to(base) and resolved.is_file()
