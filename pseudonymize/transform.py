"""Compile a spec against a source schema into one DuckDB SELECT that pseudonymizes a stream of rows.

Checking happens here, before any row is read: every source column must have a rule, every rule a source
column, and each action a column of a type it can work on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import pyarrow as pa

from pseudonymize import generalize as g
from pseudonymize.column_hmac import is_hashable
from pseudonymize.errors import SpecError
from pseudonymize.pseudonym import SqlHmac
from pseudonymize.spec import AgeRule, DateRule, NumericRule, PostcodeRule, PseudonymizationSpec

_RESERVED = "__fedgate"
"""The prefix of the columns the transform adds to the source's; no source column may start with it."""
_HASH = "__fedgate_h"
_PK_TOKEN = "__fedgate_pt"  # noqa: S105 - a column name, not a secret
_PK_OFFSET = "__fedgate_po"
#: the staging column of the patients' tokens when the spec drops the patient key: the risk report counts
#: patients by it, the digest leaves it out, and the ingest drops it before publishing. A spec's column
#: names are letters, digits and '_': none can be this one.
RISK_PATIENT_COLUMN = "__fedgate:patient"
#: prefix of the errors the SELECT raises itself; their text never holds a source value
VALUE_ERROR_MARK = "fedgate-value-error:"
#: the first and last day a date column of every store (and Python) holds
_FIRST_DAY, _LAST_DAY = date.min, date.max


@dataclass(frozen=True)
class HashedInput:
    """A source column the stream pseudonymizes before DuckDB sees the batch (see `column_hmac`).

    The stream adds `token` (the pseudonym) and/or `offset` (the day shift) as columns of each batch.
    """

    source: str
    token: str | None
    offset: str | None
    max_days: int | None


@dataclass(frozen=True)
class CompiledTransform:
    """The SELECT over relation `source`, its bound key parameters, and the follow-up steps."""

    select_sql: str
    parameters: dict[str, bytes] = field(repr=False)
    #: (output column, min_count) pairs for the postcode rule, applied once the table is written
    rare_prefix_rules: list[tuple[str, int]]
    output_columns: list[str]
    #: columns whose HMACs the stream adds to each batch; the SELECT reads them by name
    hashed_inputs: list[HashedInput] = field(default_factory=list)
    #: the source columns the SELECT and the stream read (every column but those dropped and unused)
    input_columns: frozenset[str] = frozenset()
    #: RISK_PATIENT_COLUMN when the SELECT adds it (the spec drops its patient key), else None; it is
    #: not one of `output_columns`
    risk_patient_column: str | None = None


def _is_date(t: pa.DataType) -> bool:
    return bool(pa.types.is_date(t) or pa.types.is_timestamp(t))


def _date_expr(name: str, t: pa.DataType) -> str:
    col = g.quote_ident(name)
    if pa.types.is_date(t):
        return col
    if pa.types.is_timestamp(t):
        return f"CAST({col} AS DATE)"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        # A value that is not a date stops the ingest with the column's name, never the value.
        refused = _value_error(f"column {name!r} holds a value that is not a date (YYYY-MM-DD)", "DATE")
        # A timestamp written with a zone counts by its UTC day, as a typed one does (the ingest runs
        # DuckDB in UTC): a CSV column mixing dates and zoned timestamps is read as text, and its written
        # day would put one instant on two days. Text a timestamp does not parse keeps its day as a date;
        # so does a plain date (ten characters at most), sparing it the zone-aware parse.
        zoned = f"COALESCE(CAST(TRY_CAST({col} AS TIMESTAMPTZ) AS DATE), TRY_CAST({col} AS DATE))"
        day = f"CASE WHEN strlen({col}) <= 10 THEN TRY_CAST({col} AS DATE) ELSE {zoned} END"
        return f"COALESCE({day}, CASE WHEN {col} IS NOT NULL THEN {refused} END)"
    raise ValueError(f"is of type {t}, not a date")


def _value_error(message: str, sql_type: str) -> str:
    """SQL that stops the ingest with `message`, which must name no source value, typed as `sql_type`."""
    quoted = f"{VALUE_ERROR_MARK} {message}".replace("'", "''")
    return f"CAST(error('{quoted}') AS {sql_type})"


def _shifted_date(name: str, day: str, offset: str, max_days: int) -> str:
    """SQL for a date moved by the patient's offset, refusing a date too near either end of the calendar.

    A shifted 9999-12-31 (a placeholder for "open") would leave the years a date can hold, or land just
    inside them: either way the published value gives away the patient's offset. The limit depends on
    `max_days` alone, never on the offset, so a refusal tells nothing about a patient's shift either.
    """
    low, high = _FIRST_DAY + timedelta(days=max_days), _LAST_DAY - timedelta(days=max_days)
    refused = _value_error(
        f"column {name!r} holds a date before {low.isoformat()} or after {high.isoformat()}, within "
        f"max_days ({max_days}) of the first or last day a date can hold: a placeholder such as "
        f"9999-12-31 shifted would give the patient's offset away; store such dates as missing",
        "DATE",
    )
    return (
        f"CASE WHEN {day} IS NULL THEN NULL "
        f"WHEN {day} BETWEEN DATE '{low.isoformat()}' AND DATE '{high.isoformat()}' "
        f"THEN CAST({day} + {offset} AS DATE) ELSE {refused} END"
    )


def _text_column(name: str, t: pa.DataType, prepared: list[str]) -> str:
    """The column to hash for identifier `name`: itself, or for a float or decimal one a new column of
    its integer text, whose SQL is added to `prepared`."""
    text = _identifier_text(name, t)
    if text is None:
        return g.quote_ident(name)
    column = f"__fedgate_i{len(prepared)}"
    prepared.append(f"{text} AS {column}")
    return column


def _identifier_text(name: str, t: pa.DataType) -> str | None:
    """SQL for the text of a float or decimal identifier, the text its integer has; None for other types.

    A Parquet file pandas wrote from a column of ids with one missing holds them as floats, a database
    may hold them as NUMERIC: 1001.0 and 1001.00 are the patient 1001 of a CSV or an integer column, and
    get that patient's token and date shift (and match a withdrawal of "1001"). NaN is a missing value,
    as in pandas. A fraction or an infinity is no id, nor is a float beyond the integers it holds
    exactly: they stop the ingest.
    """
    kind = t.value_type if pa.types.is_dictionary(t) else t
    if not (pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
        return None
    col = g.quote_ident(name)
    fraction = _value_error(
        f"column {name!r} holds a value that is not a whole number: no identifier", "VARCHAR"
    )
    whole = f"CAST(CAST({col} AS HUGEINT) AS VARCHAR)"
    if pa.types.is_decimal(kind):
        return f"CASE WHEN {col} <> trunc({col}) THEN {fraction} ELSE {whole} END"
    exact = 2 ** {16: 11, 32: 24}.get(kind.bit_width, 53)
    inexact = _value_error(
        f"column {name!r} holds a whole number above {exact:,}, which a {kind} cannot hold exactly: "
        f"neighbouring identifiers would get one token; read the column as integers or text",
        "VARCHAR",
    )
    return (
        f"CASE WHEN {col} IS NULL OR isnan({col}) THEN NULL WHEN isinf({col}) OR {col} <> trunc({col}) "
        f"THEN {fraction} WHEN abs({col}) > {exact} THEN {inexact} ELSE {whole} END"
    )


def _decimal_value(col: str, t: pa.DataType) -> str:
    """A number as the double nearest its decimal text, for binning against decimal edges.

    A 32-bit float 0.7 widened to DOUBLE is 0.699999988…, below an edge at 0.7 its writer meant; its
    shortest text '0.7' read as DOUBLE is not. Decimals go the same way, so no scale rounds twice.
    """
    if pa.types.is_float16(t) or pa.types.is_float32(t) or pa.types.is_decimal(t):
        return f"CAST(CAST({col} AS VARCHAR) AS DOUBLE)"
    return col


def compile_transform(
    spec: PseudonymizationSpec, schema: pa.Schema, pseudonym_key: bytes, spec_path: str
) -> CompiledTransform:
    """Check the spec against the source's columns and build the SELECT."""
    source_cols = {f.name: f.type for f in schema}
    for position, name in enumerate(source_cols, start=1):
        if name.startswith(_RESERVED):
            raise SpecError(
                spec_path,
                "columns",
                f"source column {position} of {len(source_cols)} has a name starting with {_RESERVED!r}, "
                f"which the ingest keeps for its own columns; rename it in the source",
            )
        if name not in spec.columns:
            # Named by its place, not its header: in a file without a header line, the "header" is the
            # first patient's values, which no message may repeat.
            raise SpecError(
                spec_path,
                "columns",
                f"source column {position} of {len(source_cols)} has no rule; declare an action for every "
                f"column of the source's header (a file without a header line reads its first row as one)",
            )
    for name in spec.columns:
        if name not in source_cols:
            raise SpecError(spec_path, f"columns.{name}", "the source has no such column")

    hm = SqlHmac(pseudonym_key)
    rare: list[tuple[str, int]] = []
    select: list[str] = []
    outputs: list[str] = []
    extra_norm: list[str] = []
    # Columns computed over the source before anything reads them, each once per row: the integer text
    # of float and decimal identifiers, and the days that date shifts move when read from text.
    prepared: list[str] = []
    hashed: list[HashedInput] = []
    # The patient key's HMAC, once per row, from the stream when its type allows, else in SQL.
    pk = spec.patient_key
    pk_in_stream = pk is not None and is_hashable(source_cols[pk])
    if pk is not None and pk_in_stream:
        shifts = any(r.action == "date_shift" for r in spec.columns.values())
        # A dropped key still gets its token: the risk report counts the patients by it.
        offset = _PK_OFFSET if shifts else None
        hashed.append(HashedInput(pk, _PK_TOKEN, offset, spec.date_shift.max_days if offset else None))
    for name, rule in spec.columns.items():
        if rule.action == "drop":
            continue
        out = rule.output or name
        col = g.quote_ident(name)
        t = source_cols[name]
        try:
            if rule.action == "keep":
                if pa.types.is_nested(t):
                    raise ValueError(
                        f"is of nested type {t}, which the store does not hold; drop or flatten it"
                    )
                expr = col
            elif rule.action == "pseudonym":
                if name == pk:
                    expr = _PK_TOKEN if pk_in_stream else hm.token(_HASH)
                elif is_hashable(t):
                    expr = f"__fedgate_t{len(hashed)}"
                    hashed.append(HashedInput(name, expr, None, None))
                else:
                    normalized = f"__fedgate_n{len(extra_norm)}"
                    extra_norm.append(f"{hm.normalized(_text_column(name, t, prepared))} AS {normalized}")
                    expr = hm.token(hm.hex_digest(normalized, normalize_value=False))
            elif rule.action == "date_shift":
                offset = _PK_OFFSET if pk_in_stream else hm.offset(_HASH, spec.date_shift.max_days)
                day = _date_expr(name, t)
                if pa.types.is_string(t) or pa.types.is_large_string(t):
                    # Parsed once in the first query, not at each of the shift's three reads of the day.
                    prepared.append(f"{day} AS __fedgate_d{len(prepared)}")
                    day = f"__fedgate_d{len(prepared) - 1}"
                expr = _shifted_date(name, day, offset, spec.date_shift.max_days)
            elif isinstance(rule, AgeRule):
                birth = _date_expr(name, t)
                if rule.at in source_cols:
                    at = _date_expr(rule.at, source_cols[rule.at])
                else:
                    at = f"DATE '{date.fromisoformat(rule.at).isoformat()}'"
                expr = g.age(rule, birth, at)
            elif isinstance(rule, PostcodeRule):
                expr = g.postcode(rule, col)
                rare.append((out, rule.min_count))
            elif isinstance(rule, DateRule):
                expr = g.coarse_date(rule, _date_expr(name, t))
            elif isinstance(rule, NumericRule):
                if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
                    raise ValueError(f"is of type {t}, not a number")
                expr = g.numeric_bin(rule, _decimal_value(col, t))
            else:  # pragma: no cover - the spec model admits no other rule
                raise ValueError(f"unsupported rule {rule!r}")
        except ValueError as exc:
            raise SpecError(spec_path, f"columns.{name}", f"{rule.action}: the source column {exc}") from None
        select.append(f"{expr} AS {g.quote_ident(out)}")
        outputs.append(out)
    risk_column = None
    if pk is not None and spec.columns[pk].action == "drop":
        # Without it the report would count a class's rows: five admissions of one patient would pass
        # k=5. The token is the pseudonym's, so the report equals the one of the key kept as pseudonym.
        risk_column = RISK_PATIENT_COLUMN
        token_expr = _PK_TOKEN if pk_in_stream else hm.token(_HASH)
        select.append(f"{token_expr} AS {g.quote_ident(risk_column)}")

    # Normalize in an inner query: DuckDB evaluates a normalization nested inside the hash expression
    # several times over, which halves throughput.
    if pk is not None and not pk_in_stream:
        extra_norm.append(f"{hm.normalized(_text_column(pk, source_cols[pk], prepared))} AS __fedgate_pk")
    first = f"(SELECT *{''.join(', ' + e for e in prepared)} FROM source)" if prepared else "source"
    inner = f"SELECT *{''.join(', ' + e for e in extra_norm)} FROM {first}"
    in_sql = pk is not None and not pk_in_stream
    pk_hash = f", {hm.hex_digest('__fedgate_pk', normalize_value=False)} AS {_HASH}" if in_sql else ""
    sql = f"SELECT {', '.join(select)} FROM (SELECT *{pk_hash} FROM ({inner}))"
    # Bind the padded keys only when the SQL uses them: DuckDB refuses parameters a statement lacks.
    parameters = hm.parameters() if in_sql or extra_norm else {}
    used = {n for n, r in spec.columns.items() if r.action != "drop"}
    used |= {r.at for r in spec.columns.values() if isinstance(r, AgeRule) and r.at in source_cols}
    if pk is not None:
        used.add(pk)
    return CompiledTransform(sql, parameters, rare, outputs, hashed, frozenset(used), risk_column)
