"""Dataset columns as the query compiler sees them: Arrow type names from the catalog, mapped to classes."""

from __future__ import annotations

import datetime as dt
import math
import re
import struct
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

TypeClass = Literal["bool", "int", "float", "string", "date", "timestamp", "other"]

_INT = re.compile(r"^u?int(8|16|32|64)$")
_FLOAT = {"halffloat", "float", "double", "float16", "float32", "float64"}
_STRING = {"string", "large_string", "utf8", "large_utf8", "string_view"}
# Floating types narrower than double, by the struct format that rounds a Python float to their precision.
_NARROW_FLOAT = {"halffloat": "e", "float16": "e", "float": "f", "float32": "f"}
_INT64_REACH = 2**63
# The value formats docs/queries.md documents, and no others. Python's `fromisoformat` reads more
# (`20180101`, `2018-W01-1`, `2018-01-01 00:00`, `+0100`, a comma before the fraction, …), and each such
# spelling of one value would be another query to the identical-query limit. ASCII digits only.
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)


def type_class(arrow_type: str) -> TypeClass:
    """The class of an Arrow type name as the catalog writes it ('int32', 'date32[day]', …)."""
    if arrow_type == "bool":
        return "bool"
    if _INT.match(arrow_type):
        return "int"
    if arrow_type in _FLOAT or arrow_type.startswith("decimal"):
        return "float"
    if arrow_type in _STRING:
        return "string"
    if arrow_type.startswith(("date32", "date64")):
        return "date"
    if arrow_type.startswith("timestamp"):
        return "timestamp"
    return "other"


@dataclass(frozen=True)
class DatasetColumn:
    """One catalog column: its name, Arrow type name and class."""

    name: str
    arrow_type: str

    @property
    def type_class(self) -> TypeClass:
        """bool, int, float, string, date, timestamp or other."""
        return type_class(self.arrow_type)

    @property
    def numeric(self) -> bool:
        """True for the columns summaries, histograms and quantiles can read."""
        return self.type_class in ("int", "float")

    @property
    def has_timezone(self) -> bool:
        """True for a timestamp column with a time zone."""
        return "tz=" in self.arrow_type

    def sa_type(self) -> sa.types.TypeEngine[Any]:
        """The SQLAlchemy type bound values of this column take."""
        types: dict[str, sa.types.TypeEngine[Any]] = {
            "bool": sa.Boolean(),
            "int": _WholeNumber(),
            "float": sa.Double(),
            "string": sa.Text(),
            "date": sa.Date(),
            "timestamp": sa.DateTime(timezone=self.has_timezone),
        }
        return types.get(self.type_class, sa.Text())

    def compared(self, column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
        """`column`, this dataset column in a select for `dialect`, as its values compare with a value
        (`python_value`), a histogram's edges (`edge_value`) and each other, and as statistics read them.

        On PostgreSQL a float32 (or float16) column is read as `CAST(column AS REAL)`: a no-op on the REAL
        column a store publishes it as, while a table published before the store kept float32 as REAL holds
        each value as the double its decimal text parses to (0.6, not the float32 0.6000000238…), which
        the cast rounds back to the float32 ingested. Either way the column holds the float32 values a
        DuckDB store's FLOAT does. The value compared stays a double: PostgreSQL widens a REAL compared
        with a double exactly, and a value beyond float32's range compares instead of overflowing."""
        if dialect == "postgresql" and self.arrow_type in _NARROW_FLOAT:
            return sa.cast(column, sa.REAL())
        return column

    def pandas_dtype(self) -> str:
        """The dtype of this column in a result frame (nullable: a group may be missing)."""
        return {
            "bool": "boolean",
            "int": "Int64",
            "float": "float64",
            "string": "string",
            "date": "datetime64[s]",
            "timestamp": "datetime64[us, UTC]" if self.has_timezone else "datetime64[us]",
        }.get(self.type_class, "object")


class _WholeNumber(sa.types.TypeDecorator[Any]):
    """An integer column, and the values compared with it.

    On PostgreSQL a value goes without a cast, as its own type (psycopg sends an int as smallint, integer
    or bigint, a float as double precision), as DuckDB binds it: a cast to BIGINT would round `age = 1.5`
    to `age = 2` and refuse 1e300. A whole value comes as an int (`python_value`) and compares as integers;
    a fractional one compares in double precision, exactly too: an integer rounded to double stays on its
    side of any fractional double, which is below 2**52 in magnitude."""

    impl = sa.BigInteger
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(sa.types.NullType())
        return dialect.type_descriptor(sa.BigInteger())


def python_value(column: DatasetColumn, value: object) -> object:
    """A spec value coerced to this column's type; ValueError says what was expected."""
    kind = column.type_class
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"must be true or false for boolean column {column.name!r}")
    if kind in ("int", "float"):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _number(column, value)
        raise ValueError(f"must be a number for numeric column {column.name!r}")
    if kind == "string":
        if isinstance(value, str):
            return value
        raise ValueError(f"must be a string for text column {column.name!r}")
    if kind == "date":
        day = iso_date(value) if isinstance(value, str) else None
        if day is not None:
            return day
        raise ValueError(f"must be a date 'YYYY-MM-DD' for date column {column.name!r}")
    if kind == "timestamp":
        stamp = iso_timestamp(value) if isinstance(value, str) else None
        if stamp is not None and (stamp.tzinfo is not None) == column.has_timezone:
            return stamp
        offset = "with a UTC offset 'Z' or '±HH:MM'" if column.has_timezone else "without a UTC offset"
        raise ValueError(
            f"must be a timestamp 'YYYY-MM-DDTHH:MM:SS[.ffffff]' {offset} for column {column.name!r}"
        )
    raise ValueError(f"column {column.name!r} has type {column.arrow_type}, which queries cannot compare")


def iso_date(text: str) -> dt.date | None:
    """`text` as a date if it is written 'YYYY-MM-DD' and is a day of the calendar, else None."""
    if not _DATE.fullmatch(text):
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def iso_timestamp(text: str) -> dt.datetime | None:
    """`text` as a timestamp if it is written 'YYYY-MM-DDTHH:MM:SS', optionally with a fraction of a second
    of 1 to 6 digits and an offset 'Z' or '±HH:MM' (which makes it an aware datetime), and names a moment
    whose UTC instant lies in the years 1 to 9999; else None."""
    if not _TIMESTAMP.fullmatch(text):
        return None
    try:
        stamp = dt.datetime.fromisoformat(text)
        if stamp.tzinfo is not None:
            stamp.astimezone(dt.UTC)  # an instant beyond year 1 or 9999 in UTC has no UTC spelling
    except (ValueError, OverflowError):
        return None
    return stamp


def timestamp_spelling(text: str) -> str:
    """The one spelling of a timestamp value that the query hash and the identical-query key take: the
    instant in UTC for a value with an offset (`2018-01-01T01:00:00+01:00` and `…T00:00:00Z` are
    `2018-01-01T00:00:00+00:00`, as a zoned column compares them), a fraction of a second as 6 digits or
    none when it is zero (`isoformat`, as answers write timestamps). `text` itself when it is not such a
    value or already spelled so, so the hash of a value already written this way does not change."""
    stamp = iso_timestamp(text)
    if stamp is None:
        return text
    return (stamp.astimezone(dt.UTC) if stamp.tzinfo is not None else stamp).isoformat()


def edge_value(column: DatasetColumn, edge: float) -> float:
    """A histogram's or Kaplan–Meier's bin edge as it compares with `column`'s values: rounded as a filter
    value is (`_number`), so the bin (−∞, e] holds the rows `column <= e` selects. Only the comparison
    takes the rounded edge; an answer gives the edge as written."""
    if column.arrow_type not in _NARROW_FLOAT:
        return edge
    return float(_number(column, edge))


def _number(column: DatasetColumn, value: int | float) -> int | float:
    """A number as it compares with `column`'s values.

    An integer column takes a whole float as the int it is (`age = 2.0` compares as integers, exactly, and
    DuckDB keeps its integer plan); a fractional one stays a float, which no integer equals. A float32
    (or float16) column takes the value rounded to its own precision, so `x = 0.6` matches the values
    stored as the float32 nearest 0.6, as a researcher reading them as 0.6 expects; a value beyond the
    type's range stays as it is and compares in double precision."""
    if column.type_class == "int":
        if isinstance(value, float) and value.is_integer() and abs(value) <= _INT64_REACH:
            return int(value)
        return value
    number = float(value)
    narrow = _NARROW_FLOAT.get(column.arrow_type)
    if narrow is None:
        return number
    try:
        (rounded,) = struct.unpack(narrow, struct.pack(narrow, number))
    except OverflowError:  # float16 refuses what it cannot hold; float32 turns it infinite
        return number
    return number if math.isinf(rounded) else float(rounded)
