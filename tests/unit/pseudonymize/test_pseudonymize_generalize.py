"""Generalization SQL on DuckDB: bands, top and bottom coding, prefixes, coarse dates, numeric bins."""

from __future__ import annotations

import decimal
from datetime import date
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from pseudonymize import generalize as g
from pseudonymize.spec import AgeRule, DateRule, NumericRule, PostcodeRule, PseudonymizationSpec
from pseudonymize.transform import compile_transform


def run(expr: str, **params: Any) -> Any:
    return duckdb.connect().execute(f"SELECT {expr}", params).fetchall()[0][0]


def age_rule(**kw: Any) -> AgeRule:
    return AgeRule(action="generalize", method="age", at="2020-06-15", **kw)


@pytest.mark.parametrize(
    ("birth", "band", "bottom", "top", "expected"),
    [
        (date(1950, 6, 16), 5, 0, 90, "65-69"),  # 69 full years: the birthday is a day away
        (date(1950, 6, 15), 5, 0, 90, "70-74"),
        (date(1920, 1, 1), 5, 0, 90, "90+"),
        (date(1935, 1, 1), 10, 0, 90, "80-89"),
        (date(2010, 1, 1), 10, 40, 80, "<40"),
        (date(1978, 1, 1), 10, 40, 80, "40-49"),
        (date(1940, 1, 1), 10, 40, 80, "80+"),
        (date(1920, 1, 1), 1, 0, 90, 90),
        (date(2015, 1, 1), 1, 18, 90, 18),
        (date(2030, 1, 1), 5, 0, 90, None),  # born after the reference date: not an age
    ],
)
def test_age(birth: date, band: int, bottom: int, top: int, expected: object) -> None:
    rule = age_rule(band=band, bottom=bottom, top=top)
    assert run(g.age(rule, "$b", "DATE '2020-06-15'"), b=birth) == expected


def test_age_band_never_crosses_top() -> None:
    rule = age_rule(band=10, top=85)
    assert run(g.age(rule, "$b", "DATE '2020-06-15'"), b=date(1938, 1, 1)) == "80-84"


def test_postcode_prefix_and_rare_suppression() -> None:
    rule = PostcodeRule(action="generalize", method="postcode", keep=3, min_count=2)
    con = duckdb.connect()
    con.execute("CREATE TABLE t (pc VARCHAR)")
    con.execute("INSERT INTO t VALUES ('10115'), ('10117'), (' 10999 '), ('80331'), (NULL), ('sw1a 1aa')")
    con.execute(f"CREATE TABLE u AS SELECT {g.postcode(rule, 'pc')} AS pc FROM t")
    con.execute(g.suppress_rare_prefixes_sql("u", "pc", rule.min_count))
    assert [r[0] for r in con.execute("SELECT pc FROM u").fetchall()] == ["101", "101", "*", "*", None, "*"]
    con.execute("UPDATE u SET pc = NULL")
    zero = PostcodeRule(action="generalize", method="postcode", keep=0)
    assert run(g.postcode(zero, "'10115'")) == "*"


def test_coarse_dates() -> None:
    month = DateRule(action="generalize", method="date", to="month")
    year = DateRule(action="generalize", method="date", to="year")
    assert run(g.coarse_date(month, "DATE '2021-03-17'")) == date(2021, 3, 1)
    assert run(g.coarse_date(year, "DATE '2021-03-17'")) == 2021
    assert run(g.coarse_date(month, "CAST(NULL AS DATE)")) is None


def test_numeric_bins() -> None:
    width = NumericRule(action="generalize", method="numeric", width=2.5)
    assert run(g.numeric_bin(width, "23.7")) == "[22.5, 25)"
    assert run(g.numeric_bin(width, "-0.1")) == "[-2.5, 0)"
    assert run(g.numeric_bin(width, "CAST('nan' AS DOUBLE)")) is None
    edges = NumericRule(action="generalize", method="numeric", edges=[18.5, 25, 30])
    got = [run(g.numeric_bin(edges, str(v))) for v in (10, 18.5, 27, 30, 45)]
    assert got == ["< 18.5", "[18.5, 25)", "[25, 30)", ">= 30", ">= 30"]
    assert run(g.numeric_bin(edges, "NULL")) is None


def test_missing_birth_date_stays_missing() -> None:
    for band in (1, 10):
        rule = age_rule(band=band, bottom=18, top=80)
        assert run(g.age(rule, "CAST(NULL AS DATE)", "DATE '2020-06-15'")) is None


def test_postcode_spaces_do_not_count() -> None:
    rule = PostcodeRule(action="generalize", method="postcode", keep=4)
    assert run(g.postcode(rule, "'SW1A 1AA'")) == run(g.postcode(rule, "'sw1a1aa'")) == "SW1A"


@pytest.mark.parametrize(
    ("width", "start", "value", "expected"),
    [
        (0.1, 0.0, "0.3", "[0.3, 0.4)"),  # 0.3 / 0.1 is 2.9999999999999996 in floating point
        (0.1, 0.0, "CAST(0.7 AS DOUBLE)", "[0.7, 0.8)"),
        (0.1, 0.0, "CAST(1.1 AS DOUBLE)", "[1.1, 1.2)"),
        (0.1, 0.0, "CAST(0.29999 AS DOUBLE)", "[0.2, 0.3)"),
        (0.1, 0.05, "CAST(0.35 AS DOUBLE)", "[0.35, 0.45)"),
        (2.5, 0.0, "25", "[25, 27.5)"),
        (2.5, 0.0, "CAST(25.0 AS DOUBLE)", "[25, 27.5)"),
        (0.1, 0.0, "CAST(-0.1 AS DOUBLE)", "[-0.1, 0)"),
    ],
)
def test_a_value_on_a_fixed_width_edge_opens_the_bin_above(
    width: float, start: float, value: str, expected: str
) -> None:
    rule = NumericRule(action="generalize", method="numeric", width=width, start=start)
    assert run(g.numeric_bin(rule, value)) == expected


def test_a_value_on_an_explicit_edge_opens_the_bin_above() -> None:
    edges = NumericRule(action="generalize", method="numeric", edges=[0.1, 0.7, 25])
    assert run(g.numeric_bin(edges, "CAST(0.7 AS DOUBLE)")) == "[0.7, 25)"
    assert run(g.numeric_bin(edges, "CAST(0.7 AS DECIMAL(18, 3))")) == "[0.7, 25)"
    assert run(g.numeric_bin(edges, "CAST(25.0 AS DOUBLE)")) == ">= 25"


def test_float32_and_decimal_columns_bin_by_their_decimal_value() -> None:
    """A 32-bit 0.7 widened to DOUBLE is 0.699999988…; the transform bins the 0.7 its writer meant."""
    spec = PseudonymizationSpec.model_validate(
        {
            "dataset": "d",
            "project": "p",
            "columns": {
                "f": {"action": "generalize", "method": "numeric", "edges": [0.1, 0.7, 25]},
                "d": {"action": "generalize", "method": "numeric", "width": 0.1},
            },
        }
    )
    source = pa.table(
        {
            "f": pa.array([0.7, 25.0, 0.69], pa.float32()),
            "d": pa.array([decimal.Decimal("0.30"), decimal.Decimal("0.70"), None], pa.decimal128(10, 2)),
        }
    )
    compiled = compile_transform(spec, source.schema, bytes(32), "s.yaml")
    con = duckdb.connect()
    con.register("source", source)
    rows = con.execute(compiled.select_sql).fetchall()  # no pseudonym column: no key parameters
    assert rows == [("[0.7, 25)", "[0.3, 0.4)"), (">= 25", "[0.7, 0.8)"), ("[0.1, 0.7)", None)]
