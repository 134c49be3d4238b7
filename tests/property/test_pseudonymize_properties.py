"""Properties of pseudonymization that must hold for every input, not just the examples."""

from __future__ import annotations

import hashlib
import hmac
import math
from datetime import date, timedelta
from decimal import Decimal

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from pseudonymize import generalize as g
from pseudonymize.pseudonym import SqlHmac, date_offset, pseudonym
from pseudonymize.spec import AgeRule, DateRule, NumericRule, PostcodeRule

KEYS = st.binary(min_size=32, max_size=64)
IDS = st.text(min_size=1, max_size=40)
# Letters and digits from several scripts: NFC in DuckDB and in Python agree on assigned characters.
ID_TEXT = st.text(
    alphabet=st.characters(categories=("Lu", "Ll", "Nd"), max_codepoint=0x30FF) | st.sampled_from(" -_/."),
    min_size=1,
    max_size=30,
)
CON = duckdb.connect()


def sql_one(expr: str, params: dict[str, object]) -> object:
    return CON.execute(f"SELECT {expr}", params).fetchall()[0][0]


@settings(max_examples=300, deadline=None)
@given(key=KEYS, value=st.text(max_size=200))
def test_duckdb_hmac_equals_hmac_new_for_any_string(key: bytes, value: str) -> None:
    s = SqlHmac(key)
    got = sql_one(s.hex_digest("$v", normalize_value=False), {**s.parameters(), "v": value})
    assert got == hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


@settings(max_examples=200, deadline=None)
@given(key=KEYS, value=ID_TEXT)
def test_sql_and_python_pseudonyms_agree_after_normalization(key: bytes, value: str) -> None:
    s = SqlHmac(key)
    h = s.hex_digest("$v")
    assert str(sql_one(s.token(h), {**s.parameters(), "v": value})) == pseudonym(key, value)
    assert sql_one(s.offset(h, 180), {**s.parameters(), "v": value}) == date_offset(key, value, 180)


@given(key=KEYS, value=IDS)
def test_pseudonyms_are_deterministic_per_key(key: bytes, value: str) -> None:
    assert pseudonym(key, value) == pseudonym(bytes(key), str(value))


@given(a=KEYS, b=KEYS, ids=st.sets(st.from_regex(r"MRN-[0-9]{1,8}", fullmatch=True), min_size=1, max_size=50))
def test_two_agreements_give_disjoint_token_sets(a: bytes, b: bytes, ids: set[str]) -> None:
    if a.ljust(64, b"\0") == b.ljust(64, b"\0"):
        return
    assert not {pseudonym(a, i) for i in ids} & {pseudonym(b, i) for i in ids}


@settings(max_examples=100, deadline=None)
@given(
    key=KEYS,
    patient=IDS,
    dates=st.lists(st.dates(min_value=date(1900, 1, 1), max_value=date(2090, 1, 1)), min_size=2, max_size=6),
    max_days=st.integers(1, 3650),
)
def test_date_shift_preserves_every_interval_of_a_patient(
    key: bytes, patient: str, dates: list[date], max_days: int
) -> None:
    s = SqlHmac(key)
    offset = s.offset(s.hex_digest("$p"), max_days)
    shifted = [
        sql_one(f"CAST($d + {offset} AS DATE)", {**s.parameters(), "p": patient, "d": d}) for d in dates
    ]
    assert isinstance(shifted[0], date)
    assert all(isinstance(x, date) for x in shifted)
    for i in range(1, len(dates)):
        assert shifted[i] - shifted[0] == dates[i] - dates[0]  # type: ignore[operator]
    assert abs(shifted[0] - dates[0]) <= timedelta(days=max_days)  # type: ignore[operator]


@given(
    birth=st.dates(min_value=date(1890, 1, 1), max_value=date(2025, 1, 1)),
    band=st.integers(1, 20),
    top=st.integers(50, 110),
    bottom=st.integers(0, 40),
)
def test_age_never_reveals_an_age_beyond_the_codes(birth: date, band: int, top: int, bottom: int) -> None:
    rule = AgeRule(action="generalize", method="age", at="2025-06-01", band=band, top=top, bottom=bottom)
    out = sql_one(g.age(rule, "$b", "DATE '2025-06-01'"), {"b": birth})
    if band == 1:
        assert isinstance(out, int) and bottom <= out <= top
    else:
        assert isinstance(out, str)
        if out.endswith("+"):
            assert out == f"{top}+"
        elif out.startswith("<"):
            assert out == f"<{bottom}"
        else:
            lo, hi = (int(x) for x in out.split("-"))
            assert bottom <= lo <= hi < top and hi - lo < band


@given(
    years=st.integers(-3, 130),
    band=st.integers(2, 30),
    top=st.integers(30, 120),
    bottom=st.integers(0, 29),
)
def test_age_band_labels_are_the_band_of_decades_clipped_to_bottom_and_top(
    years: int, band: int, top: int, bottom: int
) -> None:
    rule = AgeRule(action="generalize", method="age", at="2025-06-01", band=band, top=top, bottom=bottom)
    at = date(2025, 6, 1)
    birth = at.replace(year=at.year - years)
    out = sql_one(g.age(rule, "$b", "DATE '2025-06-01'"), {"b": birth})
    if years < 0:
        expected = None
    elif years < bottom:
        expected = f"<{bottom}"
    elif years >= top:
        expected = f"{top}+"
    else:
        expected = f"{max(years // band * band, bottom)}-{min((years // band + 1) * band - 1, top - 1)}"
    assert out == expected


@given(code=st.text(min_size=1, max_size=12), keep=st.integers(0, 6))
def test_postcode_never_longer_than_its_prefix(code: str, keep: int) -> None:
    rule = PostcodeRule(action="generalize", method="postcode", keep=keep)
    out = sql_one(g.postcode(rule, "$c"), {"c": code})
    assert isinstance(out, str)
    assert out == "*" if keep == 0 else len(out) <= keep


@given(code=st.text(alphabet=st.sampled_from("ab1 \t\n\r\f\v\u00a0ßé"), max_size=10), keep=st.integers(1, 6))
def test_postcode_prefix_ignores_whitespace_wherever_it_is(code: str, keep: int) -> None:
    rule = PostcodeRule(action="generalize", method="postcode", keep=keep)
    reference = (
        f"upper(left(regexp_replace($c, '\\s', '', 'g'), {keep}))"  # the rule's meaning, spelled plainly
    )
    assert sql_one(g.postcode(rule, "$c"), {"c": code}) == sql_one(reference, {"c": code})


@given(d=st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 1, 1)))
def test_coarse_dates_drop_the_day(d: date) -> None:
    month = sql_one(g.coarse_date(DateRule(action="generalize", method="date", to="month"), "$d"), {"d": d})
    assert month == d.replace(day=1)
    assert (
        sql_one(g.coarse_date(DateRule(action="generalize", method="date", to="year"), "$d"), {"d": d})
        == d.year
    )


@given(
    x=st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False).filter(lambda v: v != int(v)),
    width=st.sampled_from([1.0, 2.5, 5.0, 10.0]),
)
def test_numeric_bins_never_show_the_value(x: float, width: float) -> None:
    out = sql_one(
        g.numeric_bin(NumericRule(action="generalize", method="numeric", width=width), "$x"), {"x": x}
    )
    assert isinstance(out, str) and out.startswith("[") and repr(x) not in out
    lo, hi = (float(p) for p in out.strip("[)").split(", "))
    assert lo <= x < hi and abs(hi - lo - width) < 1e-6


DECIMAL_WIDTHS = st.sampled_from(["0.1", "0.2", "0.25", "0.05", "0.3", "1", "2.5", "7", "10", "0.001"])
DECIMAL_STARTS = st.sampled_from(["0", "0.05", "-1.5", "0.1", "3", "-0.7"])


@settings(max_examples=300, deadline=None)
@given(width=DECIMAL_WIDTHS, start=DECIMAL_STARTS, k=st.integers(-100_000, 100_000))
def test_a_value_exactly_on_a_decimal_edge_opens_that_bin(width: str, start: str, k: int) -> None:
    edge = Decimal(start) + k * Decimal(width)
    upper = edge + Decimal(width)
    rule = NumericRule(action="generalize", method="numeric", width=float(width), start=float(start))
    on_edge = float(edge)  # the double a source value written as this decimal holds
    out = sql_one(g.numeric_bin(rule, "$x"), {"x": on_edge})
    assert isinstance(out, str)
    lo, hi = (Decimal(p) for p in out.strip("[)").split(", "))
    assert (lo, hi) == (edge, upper)
    below = sql_one(g.numeric_bin(rule, "$x"), {"x": math.nextafter(on_edge, -math.inf)})
    assert isinstance(below, str)
    assert Decimal(below.strip("[)").split(", ")[1]) == edge


@settings(max_examples=200, deadline=None)
@given(
    edges=st.lists(
        st.decimals(-1000, 1000, places=2, allow_nan=False, allow_infinity=False),
        min_size=2,
        max_size=6,
        unique=True,
    ).map(sorted),
    pick=st.integers(0, 5),
)
def test_a_value_exactly_on_an_explicit_edge_opens_the_bin_above_it(edges: list[Decimal], pick: int) -> None:
    floats = [float(e) for e in edges]
    if len(set(floats)) != len(floats):
        return
    rule = NumericRule(action="generalize", method="numeric", edges=floats)
    i = pick % len(edges)
    out = sql_one(g.numeric_bin(rule, "$x"), {"x": floats[i]})
    assert isinstance(out, str)
    if i == len(edges) - 1:
        assert out.startswith(">= ")
    else:
        assert out.startswith("[") and Decimal(out.strip("[)").split(", ")[0]) == edges[i]
