"""Connector errors: each names the source, and where known the line or row and the column.

ConnectorError
├── SourceNotFound        the file, database or table does not exist or cannot be reached
├── EmptySource           the source holds no header or no rows
├── EncodingError         bytes that are not valid UTF-8
├── FormatError           the source is not in the format its connector reads (not Parquet, not a table)
├── InvalidOption         the connector was configured wrongly (unknown type name, unknown source kind)
├── MalformedRecord       a row that does not parse (wrong field count, broken quoting, bad JSON)
│   └── WrongResourceType a FHIR line holds another resource type than the file's
├── MissingColumn         a column the caller asked for is not in the source
└── TypeParseError        a value that does not parse as its column's declared type

Messages never quote a source value: a value may be an identifier. They name where (line, row, column)
and what was expected (the type).
"""

from __future__ import annotations

import re

# `user:password@` in text that may be a database URL, typed wrong or not: from the first colon after the
# scheme (if any) up to the last `@` of the text, since a password may itself hold `:`, `/`, `@` or spaces.
_LOGIN = re.compile(r"(?P<head>^\s*(?>(?:[A-Za-z][\w+.\-]*:/+)?)[^:]*:).*@", re.DOTALL)
_SECRET_QUERY = re.compile(
    r"(?i)(?P<key>[?&;][^=&;]*(?:pass|pwd|secret|token|key|credential|auth)[^=&;]*=)[^&;]*"
)
# `key=value` settings apart by spaces or semicolons, as in a libpq connection string
# (`host=db password=…`) or an ODBC one (`DRIVER=…;UID=u;PWD=…`), given as a source or inside a URL's query.
_SECRET_SETTING = re.compile(
    r"(?i)(?P<key>(?:^|[\s;])[^=;\s]*(?:pass|pwd|secret|token|key|credential|auth)[^=;\s]*\s*=\s*)"
    r"(?:'[^']*'|[^;\s]*)"
)


def mask_credentials(text: str) -> str:
    """`text` with a `user:password@` login, the values of secret-looking query parameters (`?password=`,
    `?sslkey=`) and of secret-looking `key=value` settings (`password=…` of a libpq connection string,
    `PWD=…` of an ODBC one) shown as `***`: a source given on the command line may be a mistyped database
    URL or a connection string, and nothing that repeats it may show its password. Every connector's
    `source` is made so."""
    if "@" in text:
        text = _LOGIN.sub(r"\g<head>***@", text, count=1)
    return _SECRET_SETTING.sub(r"\g<key>***", _SECRET_QUERY.sub(r"\g<key>***", text))


class ConnectorError(Exception):
    """A source could not be read. Carries `source`, and `line`/`row`/`column` where they are known."""

    def __init__(
        self,
        source: str,
        message: str,
        *,
        line: int | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.source = source
        self.line = line
        self.row = row
        self.column = column
        self.reason = message
        where = [source]
        if line is not None:
            where.append(f"line {line}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}")


class SourceNotFound(ConnectorError):
    """The file, database or table does not exist or cannot be reached."""


class EmptySource(ConnectorError):
    """The source holds no header or no rows."""


class EncodingError(ConnectorError):
    """The source holds bytes that are not valid UTF-8."""


class FormatError(ConnectorError):
    """The source is not in the format its connector reads (a text file given as Parquet, a corrupt file)."""


class InvalidOption(ConnectorError):
    """The connector was configured wrongly: an unknown type name, resource type or kind of source."""


class MalformedRecord(ConnectorError):
    """A record does not parse: wrong number of fields, broken quoting, invalid JSON."""


class WrongResourceType(MalformedRecord):
    """A FHIR NDJSON line holds a resource of another type than the one being read."""


class MissingColumn(ConnectorError):
    """A column the caller asked for is not in the source."""


class TypeParseError(ConnectorError):
    """A value does not parse as the type its column declares."""
