"""Choose the connector for a source string: a database URL, a file by its suffix, or an NDJSON folder."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from connectors.base import Connector
from connectors.csv import CsvConnector
from connectors.errors import InvalidOption, SourceNotFound
from connectors.fhir import FhirNdjsonConnector
from connectors.fhir_resources import RESOURCES
from connectors.parquet import ParquetConnector
from connectors.sql import SqlConnector, shown_url

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_KINDS = "a .csv, .tsv, .parquet or .ndjson file, a folder of FHIR NDJSON, or a database URL"


def open_source(source: str, **options: Any) -> Connector:
    """The connector for `source`; `options` go to its constructor (e.g. `table=` for a database URL,
    `resource_type=` for NDJSON, `columns=` for CSV types or Parquet/SQL selection).

    A `.ndjson` file named after a resource type (`Patient.ndjson`) needs no `resource_type`.
    """
    if _URL.match(source):
        return _sql(source, options)
    path = Path(source)
    name = path.name.lower()
    if path.is_dir():
        return _build(FhirNdjsonConnector, source, options, required=("resource_type",))
    if name.endswith((".csv", ".tsv")):
        if name.endswith(".tsv"):
            options.setdefault("delimiter", "\t")
        return _build(CsvConnector, source, options)
    if name.endswith((".parquet", ".pq")):
        return _build(ParquetConnector, source, options)
    if name.endswith(".ndjson"):
        prefix = re.match(r"[A-Za-z]+", path.name)
        if prefix and prefix[0] in RESOURCES:
            options.setdefault("resource_type", prefix[0])
        return _build(FhirNdjsonConnector, source, options, required=("resource_type",))
    if not path.exists():
        raise SourceNotFound(source, f"no such file or directory; expected {_KINDS}")
    raise InvalidOption(source, f"cannot tell the kind of source from its name; expected {_KINDS}")


def _sql(source: str, options: dict[str, Any]) -> Connector:
    try:
        shown = shown_url(source)
    except (sa.exc.ArgumentError, ValueError):  # ValueError: a port that is no number, a bracket unclosed
        raise InvalidOption("<database URL>", "not a valid SQLAlchemy database URL") from None
    return _build(SqlConnector, source, options, required=("table",), shown=shown)


def _build(
    kind: Callable[..., Connector],
    source: str,
    options: dict[str, Any],
    *,
    required: tuple[str, ...] = (),
    shown: str | None = None,
) -> Connector:
    """Construct `kind`, naming a missing or unknown option instead of raising a bare TypeError."""
    accepted = list(inspect.signature(kind).parameters)[1:]
    label = getattr(kind, "__name__", "the connector")
    for name in options:
        if name not in accepted:
            raise InvalidOption(shown or source, f"{label} takes no option {name!r}; it takes {accepted}")
    for name in required:
        if name not in options:
            raise InvalidOption(shown or source, f"{label} needs the option {name!r}")
    return kind(source, **options)
