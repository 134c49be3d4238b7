"""Connectors: one module per data source, all streaming Arrow record batches behind one `Connector`."""

from connectors.base import DEFAULT_BATCH_ROWS, Connector
from connectors.csv import CsvConnector
from connectors.errors import (
    ConnectorError,
    EmptySource,
    EncodingError,
    FormatError,
    InvalidOption,
    MalformedRecord,
    MissingColumn,
    SourceNotFound,
    TypeParseError,
    WrongResourceType,
)
from connectors.factory import open_source
from connectors.fhir import FhirNdjsonConnector
from connectors.parquet import ParquetConnector
from connectors.sql import SqlConnector

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "Connector",
    "ConnectorError",
    "CsvConnector",
    "EmptySource",
    "EncodingError",
    "FhirNdjsonConnector",
    "FormatError",
    "InvalidOption",
    "MalformedRecord",
    "MissingColumn",
    "ParquetConnector",
    "SourceNotFound",
    "SqlConnector",
    "TypeParseError",
    "WrongResourceType",
    "open_source",
]
