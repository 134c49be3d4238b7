"""What a direct identifier looks like: the patterns and thresholds of the ingest's scan of kept columns.

A spec publishes a `keep` column verbatim. A steward who forgets to mark a column of e-mail addresses or
record numbers `identifier = "direct"` would publish them raw, so the ingest samples every text and integer
column the spec keeps unmarked and refuses one whose values look like direct identifiers: most of its text
values that are not placeholders ("n/a", "unknown") match the patterns below, or nearly every row holds a
different value (a name, a record number, one row per patient). Quasi-identifiers are held to the patterns
alone (how rare their values are is the k-anonymity report's to judge), binary columns are read as the
UTF-8 text they hold, and any kept column that repeats the patient key value for value is refused. The scan
reads a fixed-seed sample of the staging table in one query for all such columns together, and reports
counts only: no sampled value ever leaves DuckDB.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

import duckdb

from pseudonymize.generalize import quote_ident
from pseudonymize.pseudonym import SqlHmac

#: rows sampled from the staging table (reservoir sampling: every row when the table has fewer)
SAMPLE_ROWS = 20_000
#: the sample's seed: the same table gives the same verdict at every ingest
SAMPLE_SEED = 20_260_114
#: share of a column's sampled values, blanks and placeholders left out, that must match an identifier
#: pattern (any of them: a contact column of e-mail addresses and phone numbers is one of identifiers) for
#: the column to be refused
PATTERN_SHARE = 0.5
#: What a column holds where it has no value, compared case-blind with the stripped value: no identifier,
#: and no evidence against one either. A column of e-mail addresses with "n/a" in most rows is still a
#: column of e-mail addresses.
PLACEHOLDERS = (
    "-", "--", "---", ".", "?", "na", "n/a", "n.a.", "n. a.", "nan", "none", "null", "nil", "unknown",
    "unk", "missing", "not available", "not applicable", "not known", "not recorded", "not given",
    "k.a.", "k. a.", "keine", "keine angabe", "unbekannt",
)  # fmt: skip
#: rows compared with the patient key: a copy of the key shows in every one of them
KEY_SAMPLE_ROWS = 1_000
#: share of the compared values that must be the row's own patient key for a column to be its copy; a
#: few equal by chance (a visit number 3 in the row of patient 3) are no copy
KEY_COPY_SHARE = 0.5
#: the signal a copy of the patient key fires, as the refusal names it
PATIENT_KEY_COPY = "values repeat the patient key"
#: a column whose distinct values are at least this share of its sampled non-empty values is refused ...
UNIQUE_SHARE = 0.9
#: ... when at least this many were sampled: ten distinct values in ten rows say nothing yet
UNIQUE_MIN_VALUES = 100
#: An integer measurement over a few thousand possible values repeats rarely in a few hundred rows (survival
#: in days: 93 % distinct in a third of the GBSG2 trial, 229 rows; 94-97 % in 300 rows of the synthetic
#: cohort) and often in thousands (75 % in 2,000 rows, 19 % in 20,000). So an integer column is held to the
#: unique share only from this many sampled values on; below, every sampled value must differ, as a record
#: number with one row per patient does.
INTEGER_SHARE_MIN_VALUES = 2_000
#: the signal a nearly unique column fires, as the refusal names it
NEARLY_UNIQUE = "nearly every row holds a different value"

#: DuckDB's integer types (floating point and fractional DECIMAL columns hold measurements: not scanned)
_INTEGER_TYPES = frozenset({
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
    "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT",
})  # fmt: skip
#: a DECIMAL without decimal places is an integer too: SQL sources declare record numbers NUMERIC(10)
_WHOLE_DECIMAL = re.compile(r"DECIMAL\(\d+,0\)")
#: DuckDB's types of dates and instants (a kept one can give a patient's date shift away)
_DATE_TYPES = re.compile(r"DATE|TIMESTAMP(?:_S|_MS|_NS| WITH TIME ZONE)?")
#: Stripped from both ends of a text value before it is matched or judged blank: ASCII whitespace (tab,
#: line feed, carriage return, vertical tab, form feed), Unicode spaces (the no-break space among them),
#: NEL, the zero-width space and the byte-order mark. DuckDB's trim() strips spaces but leaves a tab, a line
#: break or a byte-order mark in place, and a phone number followed by a tab escapes a whole-value pattern.
_EDGE = r"[\s\pZ\x{0B}\x{85}\x{200B}\x{FEFF}]+"
_EDGES = rf"^{_EDGE}|{_EDGE}$"

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
    """A kind of direct identifier, recognized by an RE2 expression that must match the whole (stripped)
    value, or, when `contained`, occur anywhere in it; a value that matches `unless` as a whole is not one."""

    what: str
    regex: str
    unless: str | None = None
    contained: bool = False

    def sql(self, expr: str) -> str:
        """A DuckDB condition: true when the text expression `expr` is a value of this kind."""
        test = "regexp_matches" if self.contained else "regexp_full_match"
        match = f"{test}({expr}, {_literal(self.regex)})"
        if self.unless is None:
            return match
        return f"({match} AND NOT regexp_full_match({expr}, {_literal(self.unless)}))"


PATTERNS = (
    # Anywhere in the value: "Name <a@b.org>", "mailto:a@b.org" and "write to a@b.org" hold an address as
    # much as "a@b.org" does, and an @ between a word and a dotted domain is rare in anything else.
    IdentifierPattern(
        "e-mail addresses",
        r"[^@\s]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63}",
        contained=True,
    ),
    # At least 8 digits: international (+ or 00, then a country code), national (a trunk 0), or the
    # North American 3-3-4 form; parentheses, spaces, dots, slashes and hyphens between the digits. A date
    # written 01-02-2024 has 8 digits after a 0 as well: dates are not phone numbers. The whole value must
    # be the number: searched inside text, these forms would take the dates, long codes and decimals of
    # notes ("seen 01-02-2024", "0.01234567") for phone numbers, and the date exception could not tell.
    IdentifierPattern(
        "phone numbers",
        r"(?:\+|00) ?[1-9](?:[ ()./-]{0,2}[0-9]){7,14}"
        r"|\(?0[1-9](?:[ ()/-]{0,2}[0-9]){6,13}"
        r"|(?:1[ .-]?)?(?:\([2-9][0-9]{2}\)|[2-9][0-9]{2})[ .-]?[0-9]{3}[ .-][0-9]{4}",
        unless=r"[0-9]{4}[./-][0-9]{1,2}[./-][0-9]{1,2}|[0-9]{1,2}[./-][0-9]{1,2}[./-](?:[0-9]{2}|[0-9]{4})",
    ),
    # Country code, two check digits, 11 to 30 letters and digits, printed whole or in groups of four, in
    # either case. Every country's account number is mostly digits: a value with fewer than ten digits in
    # all is words ("pt42 will need more care"), not an IBAN.
    IdentifierPattern(
        "IBANs (bank account numbers)",
        r"(?i)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}",
        unless=r"[^0-9]*(?:[0-9][^0-9]*){0,9}",
    ),
    IdentifierPattern("IP addresses", rf"{_IPV4}|{_IPV6}"),
)


def is_integer_type(stored: str) -> bool:
    """Whether a stored column of this DuckDB type is scanned as an integer column (a record number may be
    one): the integer types and DECIMALs without decimal places, not floating point or fractions."""
    return stored in _INTEGER_TYPES or _WHOLE_DECIMAL.fullmatch(stored) is not None


def is_text_type(stored: str) -> bool:
    """Whether a stored column of this DuckDB type holds text the patterns read: VARCHAR, an ENUM of
    text, or a BLOB (read as the UTF-8 text it holds; a Parquet writer may store strings so)."""
    return stored in ("VARCHAR", "BLOB") or stored.startswith("ENUM(")


def is_date_type(stored: str) -> bool:
    """Whether a stored column of this DuckDB type holds dates or instants."""
    return _DATE_TYPES.fullmatch(stored) is not None


@dataclass(frozen=True)
class ColumnSample:
    """What the sample shows of one column: counts only, never a value."""

    column: str
    #: non-null, non-blank values sampled
    values: int
    distinct: int
    #: (pattern, sampled values matching it and no pattern before it), in the order of PATTERNS; none for
    #: an integer column
    matches: tuple[tuple[IdentifierPattern, int], ...]
    #: an integer column: judged by its distinct values alone, held to INTEGER_SHARE_MIN_VALUES
    integer: bool = False
    #: sampled values that are PLACEHOLDERS: the pattern share is taken over the others
    placeholders: int = 0
    #: a quasi-identifier: judged by the patterns alone (the k-anonymity report judges how rare its values
    #: are)
    patterns_only: bool = False

    @property
    def signal(self) -> str | None:
        """Why the column looks like a direct identifier ("values look like …", NEARLY_UNIQUE), or None.

        A pattern is the more precise reason, so it is named first when both fire. The values matching
        any pattern count together, and the kinds they match are named most frequent first."""
        if self.values == 0:
            return None
        matched = sum(n for _, n in self.matches)
        if matched and matched >= PATTERN_SHARE * (self.values - self.placeholders):
            kinds = [p.what for p, n in sorted(self.matches, key=lambda m: -m[1]) if n]
            return f"values look like {' and '.join(kinds)}"
        if self.patterns_only:
            return None
        if self.values < UNIQUE_MIN_VALUES or self.distinct < UNIQUE_SHARE * self.values:
            return None
        if self.integer and self.values < INTEGER_SHARE_MIN_VALUES and self.distinct < self.values:
            return None
        return NEARLY_UNIQUE


def sample_kept_columns(
    con: duckdb.DuckDBPyConnection,
    table: str,
    text: list[str],
    integers: list[str] | None = None,
    *,
    binary: Collection[str] = (),
    patterns_only: Collection[str] = (),
    rows: int = SAMPLE_ROWS,
    seed: int = SAMPLE_SEED,
) -> list[ColumnSample]:
    """Count, over one fixed-seed sample of `table`, each column's non-empty values and its distinct
    values, and for the `text` columns the placeholders and the values matching each identifier pattern:
    one query for all the columns. The `binary` ones among `text` are read as UTF-8 text (a value that is
    none counts as missing); the `patterns_only` ones are judged by the patterns alone. The samples come
    in the order of `text`, then `integers`."""
    columns = [(c, False) for c in text] + [(c, True) for c in integers or []]
    if not columns:
        return []
    selected: list[str] = []
    counts: list[str] = []
    placeholders = ", ".join(_literal(p) for p in PLACEHOLDERS)
    for i, (column, integer) in enumerate(columns):
        if integer:
            selected.append(f"{quote_ident(column)} AS c{i}")
            counts += [f"count(c{i})", f"count(DISTINCT c{i})"]
            continue
        value = f"try(decode({quote_ident(column)}))" if column in binary else quote_ident(column)
        stripped = f"regexp_replace(CAST({value} AS VARCHAR), {_literal(_EDGES)}, '', 'g')"
        selected.append(f"NULLIF({stripped}, '') AS c{i}")
        # Each value is matched until a pattern takes it: counted once, by the first pattern it matches.
        first = " ".join(f"WHEN {p.sql(f'c{i}')} THEN {n}" for n, p in enumerate(PATTERNS))
        selected.append(f"CASE {first} END AS m{i}")
        counts += [
            f"count(c{i})",
            f"count(DISTINCT c{i})",
            f"count(*) FILTER (WHERE lower(c{i}) IN ({placeholders}))",
        ]
        counts += [f"count(*) FILTER (WHERE m{i} = {n})" for n in range(len(PATTERNS))]
    row = iter(
        con.execute(
            f"SELECT {', '.join(counts)} FROM (SELECT {', '.join(selected)} FROM {quote_ident(table)} "
            f"USING SAMPLE reservoir({int(rows)} ROWS) REPEATABLE ({int(seed)}))"
        ).fetchall()[0]
    )
    samples = []
    for column, integer in columns:
        values, distinct = int(next(row)), int(next(row))
        if integer:
            samples.append(ColumnSample(column, values, distinct, (), integer=True))
            continue
        placeholder = int(next(row))
        matched = tuple((p, int(next(row))) for p in PATTERNS)
        samples.append(
            ColumnSample(column, values, distinct, matched, False, placeholder, column in patterns_only)
        )
    return samples


def patient_key_copies(
    con: duckdb.DuckDBPyConnection,
    table: str,
    columns: list[str],
    patient_column: str,
    key: bytes,
    *,
    binary: Collection[str] = (),
    rows: int = KEY_SAMPLE_ROWS,
    seed: int = SAMPLE_SEED,
) -> list[str]:
    """The `columns` of `table` that repeat the patient key: in a fixed-seed sample, at least
    KEY_COPY_SHARE of their values are the row's own patient key, found by their keyed pseudonym equalling
    the row's token in `patient_column` (the key itself is not in the table).

    A record number kept beside the pseudonymized patient key (an admissions table's MRN column) repeats
    as often as the patient comes back: neither pattern nor uniqueness catches it, its tokens do. The
    `binary` ones are compared as the UTF-8 text they hold."""
    if not columns:
        return []
    hmac = SqlHmac(key)
    selected: list[str] = []
    counts: list[str] = []
    for i, column in enumerate(columns):
        value = f"try(decode({quote_ident(column)}))" if column in binary else quote_ident(column)
        selected.append(f"{value} AS c{i}")
        token = hmac.token(hmac.hex_digest(f"c{i}"))
        counts += [f"count(c{i})", f"count(*) FILTER (WHERE {token} = p)"]
    row = con.execute(
        f"SELECT {', '.join(counts)} FROM (SELECT {', '.join(selected)}, {quote_ident(patient_column)} AS p "
        f"FROM {quote_ident(table)} USING SAMPLE reservoir({int(rows)} ROWS) REPEATABLE ({int(seed)})) "
        f"WHERE p IS NOT NULL",
        hmac.parameters(),
    ).fetchall()[0]
    found = []
    for i, column in enumerate(columns):
        values, equal = int(row[2 * i]), int(row[2 * i + 1])
        if values and equal >= KEY_COPY_SHARE * values:
            found.append(column)
    return found


def _literal(text: str) -> str:
    """A DuckDB string literal (backslashes are not escapes in it)."""
    return "'" + text.replace("'", "''") + "'"
