"""Generalization as DuckDB SQL: age bands with top-coding, postcode prefixes, coarse dates, numeric bins.

Each function takes the SQL of its input column and returns the SQL of the generalized value; NULL stays
NULL. The postcode minimum-count rule needs the whole dataset and runs after the table is written
(`suppress_rare_prefixes`).
"""

from __future__ import annotations

import decimal
import itertools
import math

from pseudonymize.spec import AgeRule, DateRule, NumericRule, PostcodeRule

SUPPRESSED = "*"


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _double(x: float) -> str:
    """A DOUBLE literal (a bare 0.3 in DuckDB SQL is a DECIMAL)."""
    return f"CAST('{float(x)!r}' AS DOUBLE)"


def age(rule: AgeRule, birth: str, at: str) -> str:
    """Whole years from `birth` to `at`, top- and bottom-coded; in bands unless rule.band == 1.

    Whole years are integers clamped to [bottom, top]; bands are labels 'lo-hi', '<bottom' and 'top+'.
    """
    years = f"date_sub('year', {birth}, {at})"
    if rule.band == 1:
        return (
            f"CASE WHEN {years} IS NULL OR {years} < 0 THEN NULL "
            f"ELSE greatest(least({years}, {rule.top}), {rule.bottom}) END"
        )
    # One WHEN per band with its label spelled out: a third cheaper than building the label per row.
    # Bands start at multiples of `band`, the first at `bottom` and the last ending below `top`.
    edges = sorted({rule.bottom, rule.top, *range(0, rule.top, rule.band)} - set(range(rule.bottom)))
    bands = " ".join(f"WHEN {years} < {hi} THEN '{lo}-{hi - 1}'" for lo, hi in itertools.pairwise(edges))
    below = f"WHEN {years} < {rule.bottom} THEN '<{rule.bottom}' " if rule.bottom > 0 else ""
    return f"CASE WHEN {years} IS NULL OR {years} < 0 THEN NULL {below}{bands} ELSE '{rule.top}+' END"


def postcode(rule: PostcodeRule, column: str) -> str:
    """The first rule.keep characters of the postcode, upper-cased, spaces trimmed.

    A postcode column must hold text: as a number, 01067 (Dresden) is 1067, whose prefix '10' is Berlin's.
    A column of another type stops the ingest, naming it; DuckDB knows a column's type when it plans the
    statement, so the test costs nothing per row."""
    # Lazily: transform imports this module, and the mark is its.
    from pseudonymize.transform import VALUE_ERROR_MARK

    message = (
        f"{VALUE_ERROR_MARK} column {_unquoted(column)!r} holds postcodes that are not text: as numbers "
        f"they have lost their leading zeros (01067 would be read as 1067, in another area); convert the "
        f"column to text at the source, with its zeros"
    )
    not_text = f"typeof({column}) <> 'VARCHAR' AND NOT starts_with(typeof({column}), 'ENUM(')"
    refused = f"WHEN {not_text} THEN CAST(error({_text_literal(message)}) AS VARCHAR)"
    if rule.keep == 0:
        return f"CASE {refused} WHEN {column} IS NULL THEN NULL ELSE '{SUPPRESSED}' END"
    # Spaces inside a postcode vary by writer ('SW1A 1AA', 'SW1A1AA'); none of them count toward the prefix.
    # When the first `keep` characters hold no space they are the prefix: only then skip the rewrite.
    text = f"CAST({column} AS VARCHAR)"
    head = f"left({text}, {rule.keep})"
    squeezed = f"upper(left(regexp_replace({text}, '\\s', '', 'g'), {rule.keep}))"
    return f"CASE {refused} WHEN regexp_matches({head}, '\\s') THEN {squeezed} ELSE upper({head}) END"


def _unquoted(column: str) -> str:
    """A column's name from its SQL: a double-quoted identifier unquoted, anything else as it is."""
    if len(column) >= 2 and column[0] == column[-1] == '"':
        return column[1:-1].replace('""', '"')
    return column


def _text_literal(text: str) -> str:
    """A DuckDB string literal."""
    return "'" + text.replace("'", "''") + "'"


def suppress_rare_prefixes_sql(
    table: str, column: str, min_count: int, *, patient_column: str | None = None
) -> str:
    """SQL that replaces every prefix held by fewer than min_count rows with '*'; with `patient_column`
    (patient tokens), by fewer than min_count distinct patients: a patient's 300 lab results in a prefix
    of their own would otherwise keep it, as their own."""
    t, c = quote_ident(table), quote_ident(column)
    size = "count(*)" if patient_column is None else f"count(DISTINCT {quote_ident(patient_column)})"
    return (
        f"UPDATE {t} SET {c} = '{SUPPRESSED}' WHERE {c} IN "
        f"(SELECT {c} FROM {t} WHERE {c} IS NOT NULL GROUP BY {c} HAVING {size} < {int(min_count)})"
    )


def coarse_date(rule: DateRule, column: str) -> str:
    """The first day of the month, or the year as an integer."""
    if rule.to == "month":
        return f"CAST(date_trunc('month', {column}) AS DATE)"
    return f"CAST(year({column}) AS INTEGER)"


def _decimal_places(x: float) -> int:
    exponent = decimal.Decimal(repr(x)).as_tuple().exponent
    assert isinstance(exponent, int), "finite numbers only"
    return max(0, -exponent)


def numeric_bin(rule: NumericRule, column: str) -> str:
    """The label of the value's bin: '[lo, hi)' for inner bins, '< e0' and '>= en' outside explicit edges.

    Edges are exact decimals, as the spec writes them: a value on an edge (0.3 with width 0.1, 25 with an
    edge at 25) opens the bin above it. Fixed-width edges are `start + k * width` computed on integers
    scaled by 10^places and divided once, so each edge is the double nearest its decimal value, the same
    double a source value written as that decimal holds; the bin index floating-point division suggests is
    then corrected against those edges. Exact while edges times 10^places stay below 2^53.
    """
    x = f"CAST({column} AS DOUBLE)"
    if rule.edges is not None:
        edges = rule.edges
        parts = [
            f"WHEN {x} IS NULL OR isnan({x}) THEN NULL",
            f"WHEN {x} < {_double(edges[0])} THEN '< {_number(edges[0])}'",
        ]
        for lo, hi in itertools.pairwise(edges):
            parts.append(f"WHEN {x} < {_double(hi)} THEN '[{_number(lo)}, {_number(hi)})'")
        parts.append(f"ELSE '>= {_number(edges[-1])}'")
        return "CASE " + " ".join(parts) + " END"
    assert rule.width is not None
    width, start = rule.width, rule.start
    if not (math.isfinite(width) and math.isfinite(start)):
        raise ValueError("numeric bins need finite width and start")
    places = max(_decimal_places(width), _decimal_places(start))
    scale = 10**places
    w = int(decimal.Decimal(repr(width)) * scale)
    a = int(decimal.Decimal(repr(start)) * scale)

    def edge(k: str) -> str:
        return f"(({a} + ({k}) * {w})::DOUBLE / {scale})"

    guess = f"floor(({x} - {_double(start)}) / {_double(width)})"
    k = f"({guess} - CAST({x} < {edge(guess)} AS INTEGER) + CAST({x} >= {edge(guess + ' + 1')} AS INTEGER))"
    label = "regexp_replace(CAST({v} AS VARCHAR), '\\.0$', '')"
    return (
        f"CASE WHEN {x} IS NULL OR isnan({x}) OR isinf({x}) THEN NULL ELSE "
        f"'[' || {label.format(v=edge(k))} || ', ' || {label.format(v=edge(k + ' + 1'))} || ')' END"
    )
