"""Errors of the query component: a bad spec, a column it may not read, or a store that failed to answer.

QueryError                  base; `.field` is the path in the spec that is at fault ("" when none is)
├── QuerySpecError          the spec is malformed or asks something the dataset's types cannot answer
├── UnknownColumn           a column the dataset does not have
├── ColumnNotAllowed        a column the decision's `allowed_columns` does not grant
├── UnsupportedStore        the store's SQL dialect has no compiler here (only duckdb and postgresql do)
└── ExecutionError          the store could not run the compiled query; the message holds no SQL values
    └── ValueMismatch       a filter value the store cannot read as its column's type (a token column
                            holds UUID values, so 'abc' is no value of it)

Every message is safe to show to the requester: it names fields and columns, never a patient's value or
a bound parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class QueryError(Exception):
    """Base of every error the query component raises."""

    def __init__(self, message: str, field: str = "") -> None:
        self.message = message
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


@dataclass(frozen=True)
class FieldProblem:
    """One thing wrong with a spec: where (a path like "filters.and[1].value") and what."""

    field: str
    message: str


class QuerySpecError(QueryError):
    """The spec is malformed; `problems` lists every fault found, `field` is the first one's path."""

    def __init__(self, message: str, field: str = "", problems: Sequence[FieldProblem] = ()) -> None:
        super().__init__(message, field)
        self.problems: tuple[FieldProblem, ...] = tuple(problems) or (FieldProblem(field, message),)


class UnknownColumn(QueryError):
    """The spec names a column the dataset does not have."""

    def __init__(self, column: str, field: str) -> None:
        self.column = column
        super().__init__(f"the dataset has no column {column!r}", field)


class ColumnNotAllowed(QueryError):
    """The spec names a column the agreement does not grant."""

    def __init__(self, column: str, field: str) -> None:
        self.column = column
        super().__init__(f"column {column!r} is not allowed under this agreement", field)


class UnsupportedStore(QueryError):
    """The store's SQL dialect has no consent-filter compiler."""


class ExecutionError(QueryError):
    """The store failed to run a compiled query (unreachable, locked, out of resources, timed out)."""


class ValueMismatch(ExecutionError):
    """The store could not read a filter value as its column's stored type: the request's fault."""

    def __init__(self) -> None:
        super().__init__("a filter value cannot be read as its column's type in the store", "filters")
