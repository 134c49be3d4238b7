"""Declared column types: names a steward writes in options (`"int64"`, `"date32"`) as Arrow types."""

from __future__ import annotations

import re

import pyarrow as pa

from connectors.errors import InvalidOption

_DECIMAL = re.compile(r"decimal(?:128)?\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_TIMESTAMP_TZ = re.compile(r"timestamp\[(s|ms|us|ns),\s*tz=([^\]]+)\]")


def parse_type(source: str, column: str, spec: str | pa.DataType) -> pa.DataType:
    """The Arrow type a declaration names; `InvalidOption` names the column when the name is unknown."""
    if isinstance(spec, pa.DataType):
        return spec
    text = spec.strip().lower()
    if match := _DECIMAL.fullmatch(text):
        return pa.decimal128(int(match[1]), int(match[2]))
    if match := _TIMESTAMP_TZ.fullmatch(spec.strip()):
        return pa.timestamp(match[1], tz=match[2].strip())
    try:
        return pa.type_for_alias(text)
    except ValueError:
        raise InvalidOption(
            source,
            f"unknown type name {spec!r}; use an Arrow type name such as int64, float64, string, bool, "
            "date32, timestamp[us] or decimal128(10,2)",
            column=column,
        ) from None
