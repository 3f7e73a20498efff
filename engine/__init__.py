"""PopQL's engine: lowering to Apache DataFusion, sessions and results.

``from popql.engine import connect`` is the entry point; see :mod:`popql.engine.session`.
"""

from __future__ import annotations

from .catalog import DataFusionCatalog
from .result import Result, ResultConsumedError
from .session import Session, connect

__all__ = ["DataFusionCatalog", "Result", "ResultConsumedError", "Session", "connect"]
