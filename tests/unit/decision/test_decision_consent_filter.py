"""The consent_filter obligation: the documented DuckDB predicate agrees with ConsentFilter.admits."""

from __future__ import annotations

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decision import ConsentFilter

CODES = [
    "DUO:0000004",
    "DUO:0000006",
    "DUO:0000007",
    "DUO:0000042",
    "DUO:0000045",
    "DUO:0000029",
    "DUO:0009999",
]

FILTER = ConsentFilter(
    withdrawn_column="consent_withdrawn",
    consent_column="consent_duo",
    separator=" ",
    require_any_of=(("DUO:0000004", "DUO:0000006", "DUO:0000042"),),
    allowed_codes=("DUO:0000004", "DUO:0000006", "DUO:0000007", "DUO:0000042", "DUO:0000045"),
)


def _duckdb_predicate(f: ConsentFilter) -> str:
    """The predicate docs/policy.md gives for DuckDB, built from the obligation."""

    def lst(codes: tuple[str, ...]) -> str:
        return "[" + ", ".join(f"'{c}'" for c in codes) + "]"

    codes = f"string_split({f.consent_column}, '{f.separator}')"
    parts = [f"{f.withdrawn_column} = FALSE", f"list_has_all({lst(f.allowed_codes)}, {codes})"]
    parts += [f"list_has_any({codes}, {lst(group)})" for group in f.require_any_of]
    return " AND ".join(f"({p})" for p in parts)


consent_values = st.one_of(
    st.none(),
    st.lists(st.sampled_from(CODES), max_size=4).map(" ".join),
    st.lists(st.sampled_from([*CODES, ""]), max_size=4).map(" ".join),
)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.tuples(consent_values, st.sampled_from([True, False, None])), min_size=1, max_size=12)
)
def test_documented_sql_agrees_with_reference(rows: list[tuple[str | None, bool | None]]) -> None:
    con = duckdb.connect()
    try:
        con.execute("create table t (id integer, consent_duo varchar, consent_withdrawn boolean)")
        con.executemany("insert into t values (?, ?, ?)", [(i, c, w) for i, (c, w) in enumerate(rows)])
        kept = {r[0] for r in con.execute(f"select id from t where {_duckdb_predicate(FILTER)}").fetchall()}
    finally:
        con.close()
    expected = {i for i, (codes, withdrawn) in enumerate(rows) if FILTER.admits(codes, withdrawn)}
    assert kept == expected


def test_examples_from_the_docs() -> None:
    assert FILTER.admits("DUO:0000042 DUO:0000045", False)
    assert not FILTER.admits("DUO:0000042 DUO:0000045", True)
    assert not FILTER.admits("DUO:0000042  DUO:0000045", False)  # doubled separator is malformed
    assert not FILTER.admits("DUO:0000042 DUO:0000029", False)  # unmet restriction
    assert not FILTER.admits("DUO:0000007", False)  # disease-specific only
