"""The population cache: keyed by statement and bound values, bounded, least recently used evicted."""

from __future__ import annotations

import sqlalchemy as sa

from gateway.decision.models import ConsentFilter
from gateway.query import PopulationCache
from gateway.query.consent import ConsentClasses, consent_predicate


def test_key_holds_bound_values_and_lru_eviction() -> None:
    engine = sa.create_engine("duckdb:///:memory:")
    table = sa.table("ds_x__v1", sa.column("c", sa.Text()))
    one = PopulationCache.key(engine, sa.select(sa.func.count()).select_from(table).where(table.c.c == "a"))
    two = PopulationCache.key(engine, sa.select(sa.func.count()).select_from(table).where(table.c.c == "b"))
    listed = sa.literal(["a", "b"], sa.ARRAY(sa.Text()))
    three = PopulationCache.key(
        engine, sa.select(sa.func.count()).select_from(table).where(sa.func.list_contains(listed, table.c.c))
    )
    assert one != two and one[1] == two[1], "same SQL text, different bound values"
    cache = PopulationCache(max_entries=2)
    cache.put(one, 1)
    cache.put(two, 2)
    assert cache.get(one) == 1  # one is now the most recently used
    cache.put(three, 3)
    assert (cache.get(one), cache.get(two), cache.get(three), len(cache)) == (1, None, 3, 2)
    engine.dispose()


def test_key_is_equal_for_equal_statements_and_differs_by_table_and_list_values() -> None:
    engine = sa.create_engine("duckdb:///:memory:")

    def population(table_name: str, codes: list[str]) -> sa.Select[tuple[int]]:
        table = sa.table(table_name, sa.column("consent", sa.Text()))
        allowed = sa.literal(codes, sa.ARRAY(sa.Text()))
        return (
            sa.select(sa.func.count())
            .select_from(table)
            .where(sa.func.list_has_all(allowed, table.c.consent))
        )

    built_twice = PopulationCache.key(engine, population("ds_x__v1", ["DUO:1", "DUO:2"]))
    assert built_twice == PopulationCache.key(engine, population("ds_x__v1", ["DUO:1", "DUO:2"]))
    assert built_twice != PopulationCache.key(engine, population("ds_x__v2", ["DUO:1", "DUO:2"]))
    assert built_twice != PopulationCache.key(engine, population("ds_x__v1", ["DUO:1"]))
    engine.dispose()


def test_key_differs_by_the_min_cell_count_that_decides_the_admitted_consent_classes() -> None:
    """A consent class below min_cell_count is left out: the population under one rule depends on the
    threshold too. Listed, the admitted values it leaves are bound; per row, the threshold itself is."""
    engine = sa.create_engine("duckdb:///:memory:")
    table = sa.table(
        "ds_x__v1", sa.column("consent_duo", sa.Text()), sa.column("consent_withdrawn", sa.Boolean())
    )
    rule = ConsentFilter(
        withdrawn_column="consent_withdrawn", consent_column="consent_duo", separator=" ",
        require_any_of=(("DUO:0000042",),), allowed_codes=("DUO:0000042", "DUO:0000046"),
    )  # fmt: skip
    classes = ConsentClasses((("DUO:0000042", 500), ("DUO:0000042 DUO:0000046", 15)))

    def key(min_cell_count: int, listed: ConsentClasses | None) -> tuple[object, ...]:
        where = consent_predicate(
            rule, table.c.consent_duo, table.c.consent_withdrawn, "duckdb",
            min_cell_count=min_cell_count, classes=listed,
        )  # fmt: skip
        return PopulationCache.key(engine, sa.select(sa.func.count()).select_from(table).where(where))

    assert key(10, None) != key(20, None) and key(10, None) == key(10, None)
    assert key(10, classes) != key(20, classes)  # 15 rows: admitted under 10, not under 20
    assert key(10, classes) == key(15, classes)  # the same classes admitted: the same population
    engine.dispose()
