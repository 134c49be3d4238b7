"""FHIR bulk-export NDJSON (one resource per line), read line by line into flat Arrow batches."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from connectors.base import DEFAULT_BATCH_ROWS, Connector
from connectors.errors import (
    EmptySource,
    EncodingError,
    InvalidOption,
    MalformedRecord,
    SourceNotFound,
    TypeParseError,
    WrongResourceType,
    mask_credentials,
)
from connectors.fhir_resources import FHIR_R4_RESOURCE_TYPES, RESOURCES, FieldError, ResourceTable
from connectors.utf8 import is_text


class FhirNdjsonConnector(Connector):
    """One resource type from an NDJSON file, or from every `<Type>*.ndjson` file of a bulk-export folder.

    Errors name the file (not the folder) and its line.
    """

    def __init__(self, path_or_dir: str | os.PathLike[str], resource_type: str) -> None:
        self.path = Path(path_or_dir)
        self.source = mask_credentials(str(self.path))
        if resource_type not in RESOURCES:
            supported = ", ".join(sorted(RESOURCES))
            raise InvalidOption(self.source, f"unsupported FHIR resource type; supported: {supported}")
        self.resource_type = resource_type
        self._table: ResourceTable = RESOURCES[resource_type]

    def schema(self) -> pa.Schema:
        self.files()
        return self._table.schema

    def files(self) -> list[Path]:
        """The NDJSON files read, in name order."""
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            raise SourceNotFound(self.source, "no such file or directory")
        # Bulk-export servers name files after the type: Patient.ndjson, Patient.000.ndjson, Patient-2.ndjson.
        named = re.compile(rf"{self.resource_type}(?![A-Za-z]).*\.ndjson")
        found = sorted(p for p in self.path.iterdir() if p.is_file() and named.fullmatch(p.name))
        if not found:
            raise SourceNotFound(self.source, f"the directory holds no {self.resource_type}*.ndjson file")
        return found

    def batches(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        if batch_rows < 1:
            raise InvalidOption(self.source, "batch_rows must be at least 1")
        schema = self._table.schema
        rows: list[dict[str, Any]] = []
        for file in self.files():
            for row in self._rows(file):
                rows.append(row)
                if len(rows) == batch_rows:
                    yield pa.RecordBatch.from_pylist(rows, schema=schema)
                    rows = []
        if rows:
            yield pa.RecordBatch.from_pylist(rows, schema=schema)

    def _rows(self, file: Path) -> Iterator[dict[str, Any]]:
        source = mask_credentials(str(file))
        empty = True
        with file.open("rb") as lines:
            for number, raw in enumerate(lines, start=1):
                if not raw.strip():
                    continue
                empty = False
                yield self._row(source, number, raw)
        if empty:
            raise EmptySource(source, f"the file holds no {self.resource_type} resources")

    def _row(self, source: str, line: int, raw: bytes) -> dict[str, Any]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise EncodingError(source, "bytes are not valid UTF-8", line=line) from None
        text = text.rstrip("\r\n")
        try:
            resource = json.loads(text)
        except json.JSONDecodeError as exc:
            # The decoder's message names the expectation and the position, never the text.
            where = "at the end of the line" if exc.pos >= len(text) else f"at character {exc.pos + 1}"
            raise MalformedRecord(source, f"not valid JSON ({exc.msg} {where})", line=line) from None
        except RecursionError:
            raise MalformedRecord(source, "the JSON nests too deeply", line=line) from None
        except ValueError:
            # Python refuses integers of more than 4300 digits; its message names no value.
            raise MalformedRecord(
                source, "not valid JSON (a number with too many digits)", line=line
            ) from None
        if not isinstance(resource, dict):
            raise MalformedRecord(source, "the line is not a JSON object", line=line)
        found = resource.get("resourceType")
        if found != self.resource_type:
            # Only a FHIR resource type's name is repeated: anything else there could be a patient's data.
            if found is None:
                shown = "no resourceType"
            elif isinstance(found, str) and found in FHIR_R4_RESOURCE_TYPES:
                shown = repr(found)
            else:
                shown = "an unexpected resourceType"
            raise WrongResourceType(
                source, f"holds {shown}, expected {self.resource_type!r}", line=line, column="resourceType"
            )
        resource_id = resource.get("id")
        if not isinstance(resource_id, str) or not resource_id:
            raise MalformedRecord(source, "the resource has no id", line=line, column="id")
        if not is_text(resource_id):
            raise EncodingError(
                source, "the resource id is not text (a lone surrogate)", line=line, column="id"
            )
        try:
            row = {"id": resource_id, **self._table.flatten(resource)}
        except FieldError as exc:
            raise TypeParseError(source, f"expected {exc.expected}", line=line, column=exc.column) from None
        except (OverflowError, ValueError, RecursionError) as exc:  # a date past year 9999, odd nesting
            raise MalformedRecord(
                source, f"a value cannot be read ({type(exc).__name__})", line=line
            ) from None
        for column, value in row.items():
            if isinstance(value, str) and not is_text(value):
                raise EncodingError(
                    source, "a value is not text (a lone surrogate)", line=line, column=column
                )
            if isinstance(value, str) and "\x00" in value:
                raise EncodingError(source, "a text value holds a NUL character", line=line, column=column)
        return row
