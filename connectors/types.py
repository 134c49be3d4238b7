"""Declared column types: names a steward writes in options (`"int64"`, `"date32"`) as Arrow types."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from connectors.errors import InvalidOption

_DECIMAL = re.compile(r"decimal(?:128)?\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_MAX_DECIMAL_PRECISION = 38
_TIMESTAMP_TZ = re.compile(r"timestamp\[(s|ms|us|ns),\s*tz=([^\]]+)\]")


def parse_type(source: str, column: str, spec: str | pa.DataType) -> pa.DataType:
    """The Arrow type a declaration names; `InvalidOption` names the column when the name is unknown."""
    if isinstance(spec, pa.DataType):
        return spec
    text = spec.strip().lower()
    if match := _DECIMAL.fullmatch(text):
        precision, scale = int(match[1]), int(match[2])
        if not 1 <= precision <= _MAX_DECIMAL_PRECISION or scale > precision:
            raise InvalidOption(
                source,
                f"{spec!r} is no decimal type: the precision must be 1 to {_MAX_DECIMAL_PRECISION} and the "
                "scale at most the precision",
                column=column,
            )
        return pa.decimal128(precision, scale)
    if match := _TIMESTAMP_TZ.fullmatch(spec.strip()):
        kind = pa.timestamp(match[1], tz=match[2].strip())
        try:
            pc.hour(pa.array([0], kind))  # the zone is looked up only when a value is read in it
        except pa.ArrowInvalid:
            raise InvalidOption(
                source,
                f"unknown time zone in {spec!r}; use an IANA name such as UTC or Europe/Berlin, or an "
                "offset such as +01:00",
                column=column,
            ) from None
        return kind
    try:
        return pa.type_for_alias(text)
    except ValueError:
        raise InvalidOption(
            source,
            f"unknown type name {spec!r}; use an Arrow type name such as int64, float64, string, bool, "
            "date32, timestamp[us] or decimal128(10,2)",
            column=column,
        ) from None
