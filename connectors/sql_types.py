"""Arrow types for reflected SQLAlchemy column types, and the conversion of fetched values to them."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

_MAX_DECIMAL_PRECISION = 38

_PYTHON_TYPES: tuple[tuple[type, pa.DataType], ...] = (
    (bool, pa.bool_()),
    (int, pa.int64()),
    (float, pa.float64()),
    (dt.datetime, pa.timestamp("us")),
    (dt.date, pa.date32()),
    (dt.time, pa.time64("us")),
    (dt.timedelta, pa.duration("us")),
    (bytes, pa.binary()),
    (str, pa.string()),
)


@dataclass(frozen=True)
class ColumnMapping:
    """How one column travels: the SQL type to select it as, its Arrow type, and a per-value conversion."""

    name: str
    select_type: sa.types.TypeEngine[Any]
    arrow_type: pa.DataType
    convert: Callable[[Any], Any] | None = None


def map_column(column: sa.Column[Any]) -> ColumnMapping:
    """The mapping for one reflected column; types Arrow cannot hold exactly travel as text."""
    kind = column.type
    name = column.name
    if isinstance(kind, sa.Boolean):
        # Fetched untyped: SQLAlchemy's SQLite processor takes any value for true, the text 'false' too.
        return ColumnMapping(name, sa.types.NullType(), pa.bool_(), _boolean)
    if isinstance(kind, sa.SmallInteger):
        return ColumnMapping(name, kind, pa.int16())
    if isinstance(kind, sa.Integer):
        # INTEGER is 32 bits on PostgreSQL but 64 on SQLite; int64 holds both.
        return ColumnMapping(name, kind, pa.int64())
    if isinstance(kind, sa.Float):
        return ColumnMapping(name, sa.Float(asdecimal=False), pa.float64())
    if isinstance(kind, sa.Numeric):
        return _numeric(name, kind)
    if isinstance(kind, sa.DateTime):
        return ColumnMapping(name, kind, pa.timestamp("us", tz="UTC" if kind.timezone else None))
    if isinstance(kind, sa.Date):
        return ColumnMapping(name, kind, pa.date32())
    if isinstance(kind, sa.Time):
        return ColumnMapping(name, kind, pa.time64("us"))
    if isinstance(kind, sa.Interval):
        return ColumnMapping(name, kind, pa.duration("us"))
    if isinstance(kind, sa.LargeBinary):
        return ColumnMapping(name, kind, pa.binary())
    if isinstance(kind, sa.Uuid):
        return ColumnMapping(name, kind, pa.string(), str)
    if isinstance(kind, sa.JSON):
        return ColumnMapping(name, kind, pa.string(), _json_text)
    if isinstance(kind, sa.String):
        return ColumnMapping(name, kind, pa.string())
    return _by_python_type(name, kind)


def _by_python_type(name: str, kind: sa.types.TypeEngine[Any]) -> ColumnMapping:
    """Dialect-specific types (PostgreSQL INTERVAL, MONEY, ...) by the Python values their driver returns."""
    try:
        python_type = kind.python_type
    except NotImplementedError:
        python_type = object
    for candidate, arrow_type in _PYTHON_TYPES:
        if python_type is candidate:
            return ColumnMapping(name, kind, arrow_type)
    # Untyped SQLite columns, arrays and the like: their text is what a steward can check.
    return ColumnMapping(name, kind, pa.string(), str)


def _numeric(name: str, kind: sa.Numeric[Any]) -> ColumnMapping:
    precision, scale = kind.precision, kind.scale
    if precision is not None and 0 < precision <= _MAX_DECIMAL_PRECISION:
        # Fetched untyped: drivers hand back Decimal (PostgreSQL) or int/float (SQLite), and SQLAlchemy's
        # Decimal coercion would warn on the latter. A value with more digits than the scale fails loudly.
        return ColumnMapping(name, sa.types.NullType(), pa.decimal128(precision, scale or 0), _decimal)
    # Without a bounded precision no Arrow decimal is sure to hold the values; float64 is the honest choice.
    return ColumnMapping(name, sa.Numeric(asdecimal=False), pa.float64())


def _boolean(value: Any) -> bool:
    """A database's boolean: True or False, or (SQLite, MySQL) the integer 1 or 0; anything else is no
    boolean, whatever its text says."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    raise ValueError("not a boolean")


def _decimal(value: Any) -> Decimal:
    """A decimal from a driver's Decimal, int or float, or SQLite's text; `ValueError` for text that is no
    number (Decimal's own error is no `ValueError`) and for NaN and infinities, which no decimal holds."""
    if isinstance(value, bool):
        raise ValueError("not a number")
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except ArithmeticError:
        raise ValueError("not a number") from None
    if not number.is_finite():
        raise ValueError("not a finite number")
    return number


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def column_array(values: tuple[Any, ...], mapping: ColumnMapping) -> pa.Array:
    """An Arrow array of one fetched column; raises pyarrow's errors when a value does not convert."""
    if mapping.convert is not None:
        convert = mapping.convert
        values = tuple(None if value is None else convert(value) for value in values)
    return pa.array(values, type=mapping.arrow_type)


#: what `column_array` raises for a value that does not convert
CONVERSION_ERRORS = (pa.ArrowException, TypeError, ValueError, ArithmeticError)


def first_unconvertible(values: tuple[Any, ...], mapping: ColumnMapping) -> int | None:
    """Index of the first value that does not convert (the slow path after `column_array` failed)."""
    for index, value in enumerate(values):
        try:
            column_array((value,), mapping)
        except CONVERSION_ERRORS:
            return index
    return None
