"""What a direct identifier looks like: the value patterns and thresholds of the ingest's scan of kept text.

A spec publishes a `keep` column verbatim. A steward who forgets to mark a column of e-mail addresses or
record numbers `identifier = "direct"` would publish them raw, so the ingest samples every text column the
spec keeps unmarked and refuses one whose values look like direct identifiers: most of them match a
pattern below, or nearly every row holds a different value (a name, a record number). The scan reads a
fixed-seed sample of the staging table in one query for all such columns together, and reports counts
only: no sampled value ever leaves DuckDB.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from pseudonymize.generalize import quote_ident

#: rows sampled from the staging table (reservoir sampling: every row when the table has fewer)
SAMPLE_ROWS = 20_000
#: the sample's seed: the same table gives the same verdict at every ingest
SAMPLE_SEED = 20_260_114
#: share of a column's sampled non-empty values that must match one pattern for the column to be refused
PATTERN_SHARE = 0.5
#: a column whose distinct values are at least this share of its sampled non-empty values is refused ...
UNIQUE_SHARE = 0.9
#: ... when at least this many were sampled: ten distinct values in ten rows say nothing yet
UNIQUE_MIN_VALUES = 100
#: the signal a nearly unique column fires, as the refusal names it
NEARLY_UNIQUE = "nearly every row holds a different value"

_IPV4_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_IPV4_OCTET}(?:\.{_IPV4_OCTET}){{3}}"
_HEX4 = r"[0-9A-Fa-f]{1,4}"
_IPV6 = (
    rf"(?:{_HEX4}:){{7}}{_HEX4}"  # all eight groups
    rf"|(?:{_HEX4}(?::{_HEX4}){{0,6}})?::(?:{_HEX4}(?::{_HEX4}){{0,6}})?"  # groups of zeros left out
    rf"|(?:{_HEX4}(?::{_HEX4}){{0,5}})?::(?:{_HEX4}:){{0,5}}{_IPV4}"  # an IPv4 address in its last 32 bits
)


@dataclass(frozen=True)
class IdentifierPattern:
    """A kind of direct identifier, recognized by an RE2 expression that must match the whole (trimmed)
    value; a value that also matches `unless` is not one."""

    what: str
    regex: str
    unless: str | None = None

    def sql(self, expr: str) -> str:
        """A DuckDB condition: true when the text expression `expr` is a value of this kind."""
        match = f"regexp_full_match({expr}, {_literal(self.regex)})"
        if self.unless is None:
            return match
        return f"({match} AND NOT regexp_full_match({expr}, {_literal(self.unless)}))"


PATTERNS = (
    IdentifierPattern(
        "e-mail addresses", r"[^@\s]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
    ),
    # At least 8 digits: international (+ or 00, then a country code), national (a trunk 0), or the
    # North American 3-3-4 form; parentheses, spaces, dots, slashes and hyphens between the digits. A date
    # written 01-02-2024 has 8 digits after a 0 as well: dates are not phone numbers.
    IdentifierPattern(
        "phone numbers",
        r"(?:\+|00) ?[1-9](?:[ ()./-]{0,2}[0-9]){7,14}"
        r"|\(?0[1-9](?:[ ()/-]{0,2}[0-9]){6,13}"
        r"|(?:1[ .-]?)?(?:\([2-9][0-9]{2}\)|[2-9][0-9]{2})[ .-]?[0-9]{3}[ .-][0-9]{4}",
        unless=r"[0-9]{4}[./-][0-9]{1,2}[./-][0-9]{1,2}|[0-9]{1,2}[./-][0-9]{1,2}[./-](?:[0-9]{2}|[0-9]{4})",
    ),
    # Country code, two check digits, 11 to 30 letters and digits, printed whole or in groups of four.
    IdentifierPattern("IBANs (bank account numbers)", r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}"),
    IdentifierPattern("IP addresses", rf"{_IPV4}|{_IPV6}"),
)


@dataclass(frozen=True)
class ColumnSample:
    """What the sample shows of one column: counts only, never a value."""

    column: str
    #: non-null, non-blank values sampled
    values: int
    distinct: int
    #: (pattern, sampled values matching it), in the order of PATTERNS
    matches: tuple[tuple[IdentifierPattern, int], ...]

    @property
    def signal(self) -> str | None:
        """Why the column looks like a direct identifier ("values look like …", NEARLY_UNIQUE), or None.

        A pattern is the more precise reason, so it is named first when both fire."""
        if self.values == 0:
            return None
        pattern, matched = max(self.matches, key=lambda m: m[1], default=(None, 0))
        if pattern is not None and matched >= PATTERN_SHARE * self.values:
            return f"values look like {pattern.what}"
        if self.values >= UNIQUE_MIN_VALUES and self.distinct >= UNIQUE_SHARE * self.values:
            return NEARLY_UNIQUE
        return None


def sample_text_columns(
    con: duckdb.DuckDBPyConnection,
    table: str,
    columns: list[str],
    *,
    rows: int = SAMPLE_ROWS,
    seed: int = SAMPLE_SEED,
) -> list[ColumnSample]:
    """Count, over one fixed-seed sample of `table`, each column's non-empty values, its distinct values
    and the values matching each identifier pattern: one query for all the columns."""
    if not columns:
        return []
    trimmed = ", ".join(
        f"NULLIF(trim(CAST({quote_ident(c)} AS VARCHAR)), '') AS c{i}" for i, c in enumerate(columns)
    )
    counts: list[str] = []
    for i in range(len(columns)):
        counts += [f"count(c{i})", f"count(DISTINCT c{i})"]
        counts += [f"count(*) FILTER (WHERE {p.sql(f'c{i}')})" for p in PATTERNS]
    row = con.execute(
        f"SELECT {', '.join(counts)} FROM (SELECT {trimmed} FROM {quote_ident(table)} "
        f"USING SAMPLE reservoir({int(rows)} ROWS) REPEATABLE ({int(seed)}))"
    ).fetchall()[0]
    width = 2 + len(PATTERNS)
    samples = []
    for i, column in enumerate(columns):
        values, distinct, *matched = (int(n) for n in row[i * width : (i + 1) * width])
        samples.append(ColumnSample(column, values, distinct, tuple(zip(PATTERNS, matched, strict=True))))
    return samples


def _literal(text: str) -> str:
    """A DuckDB string literal (backslashes are not escapes in it)."""
    return "'" + text.replace("'", "''") + "'"
