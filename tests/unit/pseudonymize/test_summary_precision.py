"""Summary variance of values whose mean is large beside their spread (epoch seconds, counts per litre).

Σx² − (Σx)²/n cancels catastrophically there: 30 values 1e9 + {0, 1, 2} have variance 0.6897, but a
double holds their sum of squares (3e19) only to the nearest 4096, and the formula gave 141.2 (0.0 at
1e8). The store's own var_samp, and Chan's combination where groups merge, keep every digit that matters.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa
from obligation_helpers import ONE_CODE_CONSENT, obligations

from gateway.query import compile_query, execute, parse_query_spec, store_engine
from gateway.release import protect
from pseudonymize.disclosure import DisclosureRules, protect_summary
from pseudonymize.disclosure.levels import OTHER, recode_rare_levels

RULES = DisclosureRules(min_cell_count=10)
BASES = [1e6, 1e8, 1e9, 1e12]
TABLE = "ds_precise__v1"


def offsets(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) % 3


def tolerance(base: float) -> float:
    """Relative error allowed: a one-pass centred algorithm (var_samp) loses digits in proportion to
    mean/spread, about 1e-16 * base here; the sums lose them in proportion to its square."""
    return max(1e-14 * base, 1e-9)


def exact_variance(n: int) -> float:
    """Sample variance of `base + offsets(n)`, whatever the base (computed on the offsets alone)."""
    return float(offsets(n).var(ddof=1))


def store_summary(values: pd.DataFrame) -> pd.DataFrame:
    """The executor's frame for a summary of `x` per `site`, computed by DuckDB as the compiled SQL does."""
    con = duckdb.connect()
    con.register("p", values)
    return con.execute(
        "SELECT site, count(x) AS n, sum(x) AS sum, sum(x * x) AS sum_sq, var_samp(x) AS variance "
        "FROM p GROUP BY site ORDER BY site"
    ).df()


def frame_for(base: float, sizes: dict[str, int]) -> pd.DataFrame:
    rows = [(site, base + k) for site, n in sizes.items() for k in offsets(n)]
    return pd.DataFrame(rows, columns=["site", "x"])


@pytest.mark.parametrize("base", BASES)
def test_the_released_variance_is_the_stores_not_the_sums(base: float) -> None:
    executed = store_summary(frame_for(base, {"north": 30, "south": 31}))
    rows = {r["site"]: r for r in protect_summary(executed, ["site"], RULES).to_records()}
    for site, n in (("north", 30), ("south", 31)):
        assert rows[site]["variance"] == pytest.approx(exact_variance(n), rel=tolerance(base))
        assert rows[site]["mean"] == pytest.approx(base + offsets(n).mean(), rel=1e-14)
        assert rows[site]["sum_sq"] == executed.set_index("site").loc[site, "sum_sq"]


def test_without_a_variance_the_sums_still_give_one() -> None:
    """A caller's own sufficient statistics (n, sum, sum_sq) keep working, with the sums' precision."""
    executed = store_summary(frame_for(10.0, {"north": 30})).drop(columns="variance")
    (row,) = protect_summary(executed, ["site"], RULES).to_records()
    assert row["variance"] == pytest.approx(exact_variance(30), rel=1e-9)


def test_a_group_without_the_stores_variance_falls_back_to_its_sums() -> None:
    executed = store_summary(frame_for(10.0, {"north": 30, "south": 30}))
    executed["variance"] = pd.array([np.nan, 123.0], dtype="Float64")
    rows = {r["site"]: r for r in protect_summary(executed, ["site"], RULES).to_records()}
    assert rows["north"]["variance"] == pytest.approx(exact_variance(30), rel=1e-9)
    assert rows["south"]["variance"] == 123.0


@pytest.mark.parametrize("base", BASES)
def test_merged_rare_levels_pool_their_variance_without_cancelling(base: float) -> None:
    """Levels below the minimum merge into (other): its variance combines theirs (Chan), not Σx², and the
    spread between the merged levels' means counts."""
    values = frame_for(base, {"north": 30, "a": 4, "b": 3, "c": 5})
    values.loc[values.site == "b", "x"] += 10.0  # level means apart: the between-levels part matters
    merged = recode_rare_levels(store_summary(values), ["site"], RULES, merge=True)
    rows = {r["site"]: r for r in protect_summary(merged, ["site"], RULES).to_records()}
    other = values.loc[values.site != "north", "x"] - base
    assert rows[OTHER]["n"] == 12
    assert rows[OTHER]["variance"] == pytest.approx(float(other.var(ddof=1)), rel=tolerance(base))
    assert rows["north"]["variance"] == pytest.approx(exact_variance(30), rel=tolerance(base))


# -- end to end: the compiled query on both stores, then disclosure control -------------------------------


def store_table(base: float) -> pa.Table:
    sites = ["north"] * 30 + ["south"] * 31
    xs = [base + k for k in (*offsets(30), *offsets(31))]
    return pa.table(
        {
            "consent_duo": ["DUO:0000006"] * len(xs),
            "consent_withdrawn": [False] * len(xs),
            "site": sites,
            "x": pa.array(xs, pa.float64()),
        }
    )


COLUMNS = [("consent_duo", "string"), ("consent_withdrawn", "bool"), ("site", "string"), ("x", "double")]


def released_variances(engine: sa.Engine) -> dict[str, float]:
    spec = parse_query_spec(
        {"dataset": "precise", "agreement": "DSA-1", "purpose": {"duo": ["DUO:0000006"]}, "kind": "summary",
         "group_by": ["site"], "params": {"column": "x"}}
    )  # fmt: skip
    duties = obligations(("site", "x"), ONE_CODE_CONSENT, 10)
    compiled = compile_query(spec, TABLE, COLUMNS, duties, engine.dialect.name)
    body = protect(spec, execute(engine, compiled), duties).body
    return {row["site"]: row["variance"] for row in body["rows"]}


def check(variances: dict[str, float], base: float) -> None:
    assert variances["north"] == pytest.approx(exact_variance(30), rel=tolerance(base))
    assert variances["south"] == pytest.approx(exact_variance(31), rel=tolerance(base))


@pytest.mark.parametrize("base", BASES)
def test_duckdb_store_releases_a_precise_variance(tmp_path: Path, base: float) -> None:
    path = tmp_path / "store.duckdb"
    with duckdb.connect(str(path)) as con:
        con.register("src", store_table(base))
        con.execute(f'CREATE TABLE "{TABLE}" AS SELECT * FROM src')
    engine = store_engine(f"duckdb:///{path}")
    try:
        check(released_variances(engine), base)
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("base", BASES)
def test_postgres_store_releases_a_precise_variance(pg_url: str, base: float) -> None:
    table = store_table(base)
    writer = sa.create_engine(pg_url)
    try:
        target = sa.Table(
            TABLE,
            sa.MetaData(),
            sa.Column("consent_duo", sa.Text()),
            sa.Column("consent_withdrawn", sa.Boolean()),
            sa.Column("site", sa.Text()),
            sa.Column("x", sa.Double()),
        )
        with writer.begin() as conn:
            target.create(conn)
            conn.execute(target.insert(), table.to_pylist())
    finally:
        writer.dispose()
    engine = store_engine(pg_url)
    try:
        check(released_variances(engine), base)
    finally:
        engine.dispose()
