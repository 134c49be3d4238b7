"""Choose the connector for a source string: a database URL, a file by its suffix, or an NDJSON folder."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connectors.base import Connector
from connectors.csv import CsvConnector
from connectors.errors import InvalidOption, SourceNotFound, mask_credentials
from connectors.fhir import FhirNdjsonConnector
from connectors.fhir_resources import RESOURCES
from connectors.parquet import ParquetConnector
from connectors.sql import SqlConnector, parse_url, shown_url

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_KINDS = "a .csv, .tsv, .parquet or .ndjson file, a folder of FHIR NDJSON, or a database URL"


def open_source(source: str, **options: Any) -> Connector:
    """The connector for `source`; `options` go to its constructor (e.g. `table=` for a database URL,
    `resource_type=` for NDJSON, `columns=` for CSV types or Parquet/SQL selection).

    A `.ndjson` file named after a resource type (`Patient.ndjson`) needs no `resource_type`. Messages show
    `source` without the password it may hold (a database URL typed wrong, which reads as a file name).
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
    shown = mask_credentials(source)
    if not path.exists():
        raise SourceNotFound(shown, f"no such file or directory; expected {_KINDS}")
    raise InvalidOption(shown, f"cannot tell the kind of source from its name; expected {_KINDS}")


def _sql(source: str, options: dict[str, Any]) -> Connector:
    shown = mask_credentials(shown_url(parse_url(source)))
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
    shown = shown or mask_credentials(source)
    accepted = list(inspect.signature(kind).parameters)[1:]
    label = getattr(kind, "__name__", "the connector")
    for name in options:
        if name not in accepted:
            raise InvalidOption(shown, f"{label} takes no option {name!r}; it takes {accepted}")
    for name in required:
        if name not in options:
            raise InvalidOption(shown, f"{label} needs the option {name!r}")
    return kind(source, **options)
