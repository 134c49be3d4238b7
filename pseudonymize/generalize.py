"""Generalization as DuckDB SQL: age bands with top-coding, postcode prefixes, coarse dates, numeric bins.

Each function takes the SQL of its input column and returns the SQL of the generalized value; NULL stays
NULL. The postcode minimum-count rule needs the whole dataset and runs after the table is written
(`suppress_rare_prefixes`).
"""

from __future__ import annotations

import itertools
import math

from pseudonymize.spec import AgeRule, DateRule, NumericRule, PostcodeRule

SUPPRESSED = "*"


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


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
    lo = f"greatest({years} // {rule.band} * {rule.band}, {rule.bottom})"
    hi = f"least(({years} // {rule.band} + 1) * {rule.band} - 1, {rule.top - 1})"
    below = f"WHEN {years} < {rule.bottom} THEN '<{rule.bottom}' " if rule.bottom > 0 else ""
    return (
        f"CASE WHEN {years} IS NULL OR {years} < 0 THEN NULL {below}"
        f"WHEN {years} >= {rule.top} THEN '{rule.top}+' "
        f"ELSE CAST({lo} AS VARCHAR) || '-' || CAST({hi} AS VARCHAR) END"
    )


def postcode(rule: PostcodeRule, column: str) -> str:
    """The first rule.keep characters of the postcode, upper-cased, spaces trimmed."""
    if rule.keep == 0:
        return f"CASE WHEN {column} IS NULL THEN NULL ELSE '{SUPPRESSED}' END"
    # Spaces inside a postcode vary by writer ('SW1A 1AA', 'SW1A1AA'); none of them count toward the prefix.
    return f"upper(left(regexp_replace(CAST({column} AS VARCHAR), '\\s', '', 'g'), {rule.keep}))"


def suppress_rare_prefixes_sql(table: str, column: str, min_count: int) -> str:
    """SQL that replaces every prefix held by fewer than min_count rows with '*'."""
    t, c = quote_ident(table), quote_ident(column)
    return (
        f"UPDATE {t} SET {c} = '{SUPPRESSED}' WHERE {c} IN "
        f"(SELECT {c} FROM {t} WHERE {c} IS NOT NULL GROUP BY {c} HAVING count(*) < {int(min_count)})"
    )


def coarse_date(rule: DateRule, column: str) -> str:
    """The first day of the month, or the year as an integer."""
    if rule.to == "month":
        return f"CAST(date_trunc('month', {column}) AS DATE)"
    return f"CAST(year({column}) AS INTEGER)"


def numeric_bin(rule: NumericRule, column: str) -> str:
    """The label of the value's bin: '[lo, hi)' for inner bins, '< e0' and '>= en' outside explicit edges."""
    x = f"CAST({column} AS DOUBLE)"
    if rule.edges is not None:
        edges = rule.edges
        parts = [
            f"WHEN {x} IS NULL OR isnan({x}) THEN NULL",
            f"WHEN {x} < {edges[0]!r} THEN '< {_number(edges[0])}'",
        ]
        for lo, hi in itertools.pairwise(edges):
            parts.append(f"WHEN {x} < {hi!r} THEN '[{_number(lo)}, {_number(hi)})'")
        parts.append(f"ELSE '>= {_number(edges[-1])}'")
        return "CASE " + " ".join(parts) + " END"
    assert rule.width is not None
    width, start = rule.width, rule.start
    if not (math.isfinite(width) and math.isfinite(start)):
        raise ValueError("numeric bins need finite width and start")
    low = f"({start!r} + floor(({x} - {start!r}) / {width!r}) * {width!r})"
    label = "regexp_replace(CAST({v} AS VARCHAR), '\\.0$', '')"
    return (
        f"CASE WHEN {x} IS NULL OR isnan({x}) OR isinf({x}) THEN NULL ELSE "
        f"'[' || {label.format(v=low)} || ', ' || {label.format(v=f'({low} + {width!r})')} || ')' END"
    )
