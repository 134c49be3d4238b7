"""Helpers for the query tests: the obligations a decision would carry, a PostgreSQL table writer, an
independent pandas reference of the filter and consent semantics, and a table of many groups with a count
of the rows each statement fetched."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa
from obligation_helpers import obligations as site_obligations

from gateway.decision.models import ConsentFilter, Obligations
from gateway.query import CompiledQuery, compile_query, duckdb_dialect, parse_query_spec
from pseudonymize.disclosure import MAX_GRID_CELLS

EXAMPLE_SPEC = Path(__file__).resolve().parents[3] / "examples" / "cohort.spec.yaml"
TABLE = "ds_mixed__v1"

CONSENT = ConsentFilter(
    withdrawn_column="consent_withdrawn",
    consent_column="consent_duo",
    separator=" ",
    require_any_of=(("DUO:0000004", "DUO:0000006", "DUO:0000042"),),
    allowed_codes=("DUO:0000004", "DUO:0000006", "DUO:0000042", "DUO:0000045", "DUO:0000046"),
)


def obligations(
    allowed: tuple[str, ...], consent: ConsentFilter = CONSENT, min_cell_count: int = 10
) -> Obligations:
    """The site defaults with `allowed` columns, under the query tests' consent rule unless told otherwise."""
    return site_obligations(allowed, consent, min_cell_count)


def compile_spec(
    columns: list[tuple[str, str]],
    kind: str,
    node: Any,
    extra: dict[str, Any],
    dialect: str = "duckdb",
    rule: ConsentFilter = CONSENT,
    **context: Any,
) -> CompiledQuery:
    """A spec of `kind` on the mixed table with filter tree `node` and further spec fields `extra`, compiled
    with every column allowed; `context` is compile_query's keyword arguments."""
    spec = parse_query_spec(
        {"dataset": "mixed", "agreement": "DSA-2026-014", "purpose": {"duo": ["DUO:0000042"]}, "kind": kind,
         "filters": node, **extra}
    )  # fmt: skip
    allowed = tuple(name for name, _ in columns)
    return compile_query(spec, TABLE, columns, obligations(allowed, rule), dialect, **context)


def write_postgres(url: str, table: pa.Table, name: str = TABLE) -> None:
    """Create `name` in the URL's schema with types matching the Arrow schema, and copy the rows in."""
    types = {
        "bool": sa.Boolean(),
        "int32": sa.Integer(),
        "int64": sa.BigInteger(),
        "double": sa.Double(),
        "date32[day]": sa.Date(),
    }
    engine = sa.create_engine(url)
    try:
        meta = sa.MetaData()
        target = sa.Table(
            name, meta, *(sa.Column(f.name, types.get(str(f.type), sa.Text())) for f in table.schema)
        )
        with engine.begin() as conn:
            target.create(conn)
            conn.execute(target.insert(), table.to_pylist())
    finally:
        engine.dispose()


# -- the independent reference: the same semantics, written with pandas ---------------------------------


def admitted(frame: pd.DataFrame, rule: ConsentFilter = CONSENT) -> pd.Series:
    codes = frame[rule.consent_column].astype(object).where(frame[rule.consent_column].notna(), None)
    withdrawn = frame[rule.withdrawn_column].astype(object).where(frame[rule.withdrawn_column].notna(), None)
    return pd.Series([rule.admits(c, w) for c, w in zip(codes, withdrawn, strict=True)], index=frame.index)


def _typed(series: pd.Series, value: Any) -> Any:
    if pd.api.types.is_datetime64_any_dtype(series) or (
        series.dtype == object and len(series.dropna()) and hasattr(series.dropna().iloc[0], "isoformat")
    ):
        return pd.Timestamp(value).date() if series.dtype == object else pd.Timestamp(value)
    return value


def reference_mask(frame: pd.DataFrame, node: dict[str, Any]) -> pd.Series:
    """Rows a filter tree selects: a condition on a missing value is false, also under `not`."""
    if "and" in node:
        out = pd.Series(True, index=frame.index)
        for child in node["and"]:
            out &= reference_mask(frame, child)
        return out
    if "or" in node:
        out = pd.Series(False, index=frame.index)
        for child in node["or"]:
            out |= reference_mask(frame, child)
        return out
    if "not" in node:
        return ~reference_mask(frame, node["not"])
    col, op, value = frame[node["column"]], node["op"], node.get("value")
    present = col.notna()
    if op == "is_null":
        return ~present if value in (None, True) else present
    values = col.where(present, None).astype(object)
    if op == "in":
        wanted = {_typed(col, v) for v in value}
        hit = values.map(lambda x: x in wanted)
    elif op == "between":
        lo, hi = (_typed(col, v) for v in value)
        hit = values.map(lambda x: x is not None and lo <= x <= hi)
    else:
        v = _typed(col, value)
        compare = {
            "=": lambda x: x == v,
            "!=": lambda x: x != v,
            "<": lambda x: x < v,
            "<=": lambda x: x <= v,
            ">": lambda x: x > v,
            ">=": lambda x: x >= v,
        }[op]
        hit = values.map(lambda x: x is not None and bool(compare(x)))
    return hit.astype(bool) & present


def duckdb_holding(path: Path, table: pa.Table) -> str:
    """The URL of a new DuckDB file at `path` whose `TABLE` holds `table`."""
    con = duckdb.connect(str(path))
    try:
        con.register("src", table)
        con.execute(f'CREATE TABLE "{TABLE}" AS SELECT * FROM src').fetchall()
    finally:
        con.close()
    return f"duckdb:///{path}"


@contextlib.contextmanager
def postgres_schema_holding(server_url: str, table: pa.Table, prefix: str = "q") -> Iterator[str]:
    """The URL of a schema of its own on the server whose `TABLE` holds `table`; dropped on exit."""
    with postgres_schema(server_url, prefix) as url:
        write_postgres(url, table)
        yield url


@contextlib.contextmanager
def postgres_schema(server_url: str, prefix: str = "q") -> Iterator[str]:
    """The URL of a new, empty schema of its own on the server; dropped on exit."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    sep = "&" if "?" in server_url else "?"
    try:
        yield f"{server_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'drop schema "{schema}" cascade'))
        admin.dispose()


# -- a table of many groups: 400 x 400 rows, each pair (a, b) once --------------------------------------

MANY_GROUPS_SIDE = 400
MANY_GROUPS_COLUMNS = [
    ("a", "int64"), ("b", "int64"), ("c", "int64"), ("v", "double"), ("consent_duo", "string"),
    ("consent_withdrawn", "bool"),
]  # fmt: skip


def many_groups_table(dialect: str) -> str:
    """The statement creating `TABLE` with 400 x 400 consented rows: row i has a = i // 400, b = i % 400,
    c = i % MAX_GRID_CELLS and v = i % 3. Grouping by a and b gives 400 groups per level of a, and each
    level of either column has 400 rows (none is rare); grouping by c gives exactly MAX_GRID_CELLS groups."""
    side = MANY_GROUPS_SIDE
    rows, a = (
        (f"range({side * side}) AS t(i)", f"i // {side}")
        if dialect == "duckdb"
        else (f"generate_series(0::bigint, {side * side - 1}) AS t(i)", f"i / {side}")
    )
    return (
        f'CREATE TABLE "{TABLE}" AS SELECT {a} AS a, i % {side} AS b, i % {MAX_GRID_CELLS} AS c, '
        "CAST(i % 3 AS DOUBLE PRECISION) AS v, CAST('DUO:0000042' AS TEXT) AS consent_duo, "
        f"FALSE AS consent_withdrawn FROM {rows}"
    )


@contextlib.contextmanager
def rows_fetched(engine: sa.Engine) -> Iterator[list[int]]:
    """The number of rows each statement run on `engine` gave the gateway, in order: DuckDB's statements
    run through duckdb_dialect.run, any other store's through a cursor."""
    fetched: list[int] = []
    if isinstance(engine.dialect, duckdb_dialect.QueryDuckDBDialect):
        original = duckdb_dialect.run

        def counting(conn: sa.Connection, statement: Any, **kwargs: Any) -> Any:
            rows = original(conn, statement, **kwargs)
            fetched.append(len(rows))
            return rows

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(duckdb_dialect, "run", counting)
            yield fetched
        return

    def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        fetched.append(cursor.rowcount)

    sa.event.listen(engine, "after_cursor_execute", after)
    try:
        yield fetched
    finally:
        sa.event.remove(engine, "after_cursor_execute", after)
