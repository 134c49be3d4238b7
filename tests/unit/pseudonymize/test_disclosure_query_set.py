"""Query-set size control: small filtered sets and small complements are refused (tracker defence)."""

from __future__ import annotations

import pytest

from pseudonymize.disclosure import (
    ComplementTooSmall,
    DisclosureError,
    DisclosureRules,
    InvalidAggregate,
    QuerySetTooSmall,
    check_query_set,
)

RULES = DisclosureRules(min_cell_count=10)


@pytest.mark.parametrize(
    ("selected", "population"),
    [(100, 100), (10, 10), (10, 20), (90, 100), (50, 100), (10, 1_000_000)],
)
def test_large_sets_with_empty_or_large_complements_pass(selected: int, population: int) -> None:
    check_query_set(selected, population, RULES)  # returns nothing, raises nothing


@pytest.mark.parametrize(("selected", "population"), [(0, 100), (1, 100), (9, 100), (9, 9), (0, 0)])
def test_a_set_below_the_minimum_is_refused(selected: int, population: int) -> None:
    with pytest.raises(QuerySetTooSmall) as info:
        check_query_set(selected, population, RULES)
    assert info.value.min_cell_count == 10
    assert "fewer than 10 rows" in info.value.reason


@pytest.mark.parametrize("left_out", [1, 5, 9])
def test_a_filter_leaving_out_a_few_rows_is_refused(left_out: int) -> None:
    with pytest.raises(ComplementTooSmall) as info:
        check_query_set(100 - left_out, 100, RULES)
    assert "leaves out fewer than 10 rows" in info.value.reason


def test_an_unfiltered_query_has_an_empty_complement_and_passes() -> None:
    check_query_set(57, 57, RULES)


def test_the_threshold_follows_the_rules_not_a_literal() -> None:
    check_query_set(90, 100, DisclosureRules(10))
    with pytest.raises(ComplementTooSmall):
        check_query_set(90, 100, DisclosureRules(11))
    with pytest.raises(QuerySetTooSmall):
        check_query_set(14, 100, DisclosureRules(15))


@pytest.mark.parametrize(("selected", "population"), [(-1, 10), (11, 10), (True, 10), (5.0, 10)])
def test_impossible_sizes_are_an_input_error(selected: object, population: int) -> None:
    with pytest.raises(InvalidAggregate):
        check_query_set(selected, population, RULES)  # type: ignore[arg-type]


# --- attacks -----------------------------------------------------------------------------------------


def test_attack_differencing_pair_count_all_minus_count_all_but_one() -> None:
    """count(all) - count(all except one patient) would describe that patient: the second is refused."""
    population = 250
    check_query_set(population, population, RULES)  # count(all): allowed
    with pytest.raises(ComplementTooSmall) as info:
        check_query_set(population - 1, population, RULES)  # count(pseudonym != X): refused
    assert "249" not in info.value.reason and "1 row" not in info.value.reason


def test_attack_tracker_with_a_filter_whose_complement_is_tiny() -> None:
    """A filter 'not (age > 95 and sex = F)' leaving out three patients cannot be answered."""
    with pytest.raises(ComplementTooSmall):
        check_query_set(1_997, 2_000, RULES)


def test_attack_isolating_filter_directly() -> None:
    """A filter that selects one patient (e.g. a rare diagnosis in one postcode) is refused outright."""
    with pytest.raises(QuerySetTooSmall):
        check_query_set(1, 2_000, RULES)


def test_refusals_never_carry_the_sizes() -> None:
    for selected, population in [(3, 2_000), (1_993, 2_000)]:
        with pytest.raises(DisclosureError) as info:
            check_query_set(selected, population, RULES)
        text = str(info.value) + info.value.audit_reason
        for hidden in (str(selected), str(population), str(population - selected)):
            assert hidden not in text
