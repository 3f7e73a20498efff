"""Statements that the session executes itself instead of handing SQL to DataFusion.

Populations, hold-outs, predictions, evaluation and tests are PopQL statements with no SQL
equivalent: each is a Python function that may run SQL through the session, read or write the
dataset, and returns a :class:`~popql.engine.result.Result`. ``COMMANDS`` maps an AST node type to
``"module:function"`` (imported on first use, so ``import popql.engine`` stays light); the
function is called as ``fn(session, stmt, context)`` where ``context`` is a
:class:`CommandContext`. A handler may decline a statement by returning ``None`` (then the
statement is lowered to SQL as usual: e.g. ``SHOW TABLES`` shares the Show node with
``SHOW POPULATIONS``).

Statements without a handler are lowered by :mod:`popql.engine.lower`, which refuses PopQL
statements that nothing executes yet with diagnostic X001.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .result import Result
    from .session import Session


@dataclass(frozen=True)
class CommandContext:
    """Where a statement came from: the whole text, the statement's own text and file."""

    text: str
    statement: str
    file: str | None
    params: Mapping[str, Any] | None
    execute: bool  # False: only check it (Session.check / popql check), change nothing


CommandHandler = Callable[["Session", Any, CommandContext], "Result | None"]

#: AST node class name -> "module:function" (module relative to popql.engine).
COMMANDS: dict[str, str] = {
    "CreatePopulation": ".populations:create_population",
    "Drop": ".populations:drop_population",
    "Show": ".populations:show",
    "FreezePopulation": ".populations:freeze_population",
    "DiffPopulation": ".populations:diff_population",
    "HoldOut": ".populations:hold_out",
    "ShowSplits": ".populations:show_splits",
    "ShowLeakage": ".populations:show_leakage",
    "ImportPredictions": ".predictions:import_predictions",
    "Evaluate": ".evaluate:evaluate",
    "Compare": ".evaluate:compare",
    "Expect": ".testing:expect",
    "FindFailures": ".failures:find_failures",
}


def handler_for(stmt: object) -> CommandHandler | None:
    target = COMMANDS.get(type(stmt).__name__)
    if target is None:
        return None
    module, _, name = target.partition(":")
    fn: CommandHandler = getattr(importlib.import_module(module, __package__), name)
    return fn
