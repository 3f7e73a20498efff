"""Conformance adapter: DataFusion's sqllogictest files run through PopQL.

Every statement goes through the PopQL grammar, typed AST, checker and lowering
(``popql.engine.Session``); nothing falls back to handing the raw text to DataFusion.

    python ../shared/conformance/slt_runner.py --engine tests/conformance/engine.py:run \\
        --files @core_subset.txt --error-mode any --skip-explain
"""

from __future__ import annotations

import pyarrow as pa
from datafusion import SessionConfig

from popql.engine.session import Session

TARGET_PARTITIONS = 4  # as DataFusion's own sqllogictest TestContext


def new_session(slt_file: str | None = None):  # type: ignore[no-untyped-def]
    session = Session(config=SessionConfig().with_target_partitions(TARGET_PARTITIONS))

    def run(sql: str) -> pa.Table:
        results = session.execute(sql)
        return results[-1].to_arrow() if results else pa.table({})

    run.session = session  # type: ignore[attr-defined]
    return run


_shared = None


def run(sql: str) -> pa.Table:
    global _shared
    if _shared is None:
        _shared = new_session()
    return _shared(sql)
