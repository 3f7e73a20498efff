"""Vectorised predicates over lists of structs, for ``COUNT(detections WHERE ...)``.

DataFusion 55 has no lambdas over list elements, so a list quantifier becomes a scalar UDF made
for its predicate: it flattens the list column into its struct elements, evaluates the predicate
with ``pyarrow.compute`` over the struct's fields (bare names in the predicate are field names),
and counts the matches of each row with the list offsets.  A NULL list counts as NULL; a NULL
predicate result does not count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from popql import ast as A
from popql.diagnostics import Diagnostic, PopQLError, did_you_mean
from popql.format import to_sql

_COMPARE: dict[str, Callable[..., Any]] = {
    "=": pc.equal,
    "==": pc.equal,
    "<>": pc.not_equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
    "+": pc.add,
    "-": pc.subtract,
    "*": pc.multiply,
    "/": pc.divide,
    "AND": pc.and_kleene,
    "OR": pc.or_kleene,
}


def _describe(node: A.Node) -> str:
    from popql.format import format_node

    if isinstance(node, A.Binary):
        return f"the operator {node.op}"
    if isinstance(node, A.IsTest):
        return f"IS {'NOT ' if node.negated else ''}{node.test}"
    if isinstance(node, A.Like) and node.escape is not None:
        return "LIKE ... ESCAPE"
    if isinstance(node, A.String):
        return "a prefixed string literal"
    text = format_node(node)
    return f"'{text if len(text) < 40 else text[:37] + '...'}'"


def _unsupported(node: A.Node) -> PopQLError:
    return PopQLError(
        (
            Diagnostic(
                "X002",
                f"{_describe(node)} is not supported inside COUNT/ANY/ALL(... WHERE ...)",
                node.span,
                hints=(
                    "use field comparisons (=, <>, <, >, BETWEEN, IN, LIKE, IS NULL)"
                    " combined with AND / OR / NOT",
                ),
            ),
        )
    )


def _check_fields(node: A.Expr, fields: list[str]) -> None:
    for sub in node.walk():
        if isinstance(sub, A.Column):
            name = sub.parts[-1].value if len(sub.parts) == 1 else None
            if name is None or name not in fields:
                shown = ".".join(p.value for p in sub.parts)
                hints = tuple(f"did you mean '{m}'?" for m in did_you_mean(shown, fields))
                raise PopQLError(
                    (
                        Diagnostic(
                            "N002",
                            f"unknown field '{shown}' in the list's elements",
                            sub.span,
                            hints=(*hints, f"the elements have fields {', '.join(fields)}"),
                        ),
                    )
                )


def evaluate(node: A.Expr, batch: pa.RecordBatch) -> Any:
    """Evaluate a predicate AST over the columns of ``batch`` (one row per list element)."""
    if isinstance(node, A.Column):
        return batch.column(node.parts[-1].value)
    if isinstance(node, A.Number):
        text = node.text
        return pa.scalar(float(text) if any(c in text for c in ".eE") else int(text))
    if isinstance(node, A.String) and not node.prefix:
        return pa.scalar(node.value.replace("''", "'"))
    if isinstance(node, A.Boolean):
        return pa.scalar(node.value)
    if isinstance(node, A.Unary) and node.op == "-":
        return pc.negate(evaluate(node.operand, batch))
    if isinstance(node, A.Binary) and node.op in _COMPARE:
        return _COMPARE[node.op](evaluate(node.left, batch), evaluate(node.right, batch))
    if isinstance(node, A.Not):
        return pc.invert(evaluate(node.operand, batch))
    if isinstance(node, A.IsTest) and node.test == "NULL":
        result = pc.is_null(evaluate(node.operand, batch))
        return pc.invert(result) if node.negated else result
    if isinstance(node, A.Between):
        v = evaluate(node.operand, batch)
        result = pc.and_kleene(
            pc.greater_equal(v, evaluate(node.low, batch)),
            pc.less_equal(v, evaluate(node.high, batch)),
        )
        return pc.invert(result) if node.negated else result
    if isinstance(node, A.InList):
        values = [evaluate(i, batch) for i in node.items]
        operand = evaluate(node.operand, batch)
        result = pc.is_in(operand, value_set=pa.array([v.as_py() for v in values]))
        if node.negated:
            result = pc.invert(result)
        # SQL: a NULL operand gives NULL (is_in says False), so NOT IN must not count it.
        return pc.if_else(pc.is_valid(operand), result, pa.scalar(None, pa.bool_()))
    if isinstance(node, A.Like) and node.escape is None:
        pattern = evaluate(node.pattern, batch).as_py()
        result = pc.match_like(
            evaluate(node.operand, batch), pattern, ignore_case=node.op == "ILIKE"
        )
        return pc.invert(result) if node.negated else result
    raise _unsupported(node)


def _validate(node: A.Expr, item_type: pa.StructType) -> None:
    """Reject unsupported forms and type errors at planning time, not at execution."""
    for sub in node.walk():
        supported = isinstance(sub, (A.Column, A.Number, A.Boolean, A.Not, A.Between, A.InList))
        supported = supported or isinstance(sub, A.Identifier)
        supported = supported or (isinstance(sub, A.String) and not sub.prefix)
        supported = supported or (isinstance(sub, A.Unary) and sub.op == "-")
        supported = supported or (isinstance(sub, A.Binary) and sub.op in _COMPARE)
        supported = supported or (isinstance(sub, A.IsTest) and sub.test == "NULL")
        supported = supported or (isinstance(sub, A.Like) and sub.escape is None)
        if not supported:
            raise _unsupported(sub)
    # Evaluate once over an empty batch of the element type: Arrow's kernels type-check there.
    empty = pa.RecordBatch.from_struct_array(pa.array([], type=item_type))
    try:
        result = evaluate(node, empty)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise PopQLError(
            (
                Diagnostic(
                    "T001",
                    "type mismatch in the list predicate: " + str(exc).split("\n")[0],
                    node.span,
                    hints=("compare each field with a value of its type", _fields_hint(item_type)),
                ),
            )
        ) from None
    result_type = getattr(result, "type", None)
    if result_type != pa.bool_():
        raise PopQLError(
            (
                Diagnostic(
                    "T001",
                    "the WHERE of a list quantifier must be a condition (boolean),"
                    f" not {result_type}",
                    node.span,
                    hints=("for example: label = 'person' AND score > 0.5",),
                ),
            )
        )


def _fields_hint(item_type: pa.StructType) -> str:
    fields = ", ".join(f"{f.name} {f.type}" for f in item_type)
    return f"the elements have fields: {fields}"


def count_matches(lists: pa.Array, predicate: A.Expr) -> pa.Array:
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    offsets = np.asarray(lists.offsets)
    values = lists.values
    if lists.offset or (len(offsets) and offsets[0]):
        pass  # offsets are absolute into values; the arithmetic below uses them as they are
    if len(values):
        batch = pa.RecordBatch.from_struct_array(values)
        mask = evaluate(predicate, batch)
        if isinstance(mask, pa.Scalar):
            mask = pa.array([mask.as_py()] * len(values), pa.bool_())
        hits = np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=np.int64)
    else:
        hits = np.zeros(0, dtype=np.int64)
    csum = np.concatenate([[0], np.cumsum(hits)])
    counts = csum[offsets[1:]] - csum[offsets[:-1]]
    return pa.array(counts, pa.int64(), mask=np.asarray(lists.is_null()))


def make_count_udf(predicate: A.Expr, list_type: pa.DataType) -> tuple[Any, str]:
    from datafusion import udf

    from popql.engine.lower import udf_name

    item = list_type.value_type
    fields = [item.field(i).name for i in range(item.num_fields)]
    _check_fields(predicate, fields)
    _validate(predicate, item)
    name = udf_name("popql_count", f"{to_sql(predicate)}|{list_type}")

    def count(lists: pa.Array) -> pa.Array:
        return count_matches(lists, predicate)

    return udf(count, [list_type], pa.int64(), "immutable", name), name
