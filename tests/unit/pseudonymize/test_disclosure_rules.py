"""DisclosureRules: thresholds validated, defaults from the design in one place, mapped from obligations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from gateway.decision.models import Obligations
from pseudonymize.disclosure import (
    DEFAULT_KEEP_ZERO_CELLS,
    DEFAULT_MIN_CELL_COUNT,
    DEFAULT_ROUND_TO,
    DisclosureError,
    DisclosureRules,
    InvalidRules,
)
from pseudonymize.errors import PseudonymizeError

OBLIGATIONS: dict[str, Any] = {
    "min_cell_count": 20,
    "round_to": 5,
    "keep_zero_cells": True,
    "allowed_columns": ["age_band", "sex"],
    "consent_filter": {
        "withdrawn_column": "consent_withdrawn",
        "consent_column": "consent_duo",
        "separator": " ",
        "require_any_of": [["DUO:0000042"]],
        "allowed_codes": ["DUO:0000042"],
    },
    "dp": None,
    "max_identical_queries": 10,
    "glm_min_rows": 10,
    "glm_max_parameter_ratio": 0.1,
    "publication_moratorium_until": None,
}


def test_site_defaults_are_the_designs() -> None:
    rules = DisclosureRules.site_defaults()
    assert (rules.min_cell_count, rules.round_to, rules.keep_zero_cells) == (10, 1, False)
    assert (DEFAULT_MIN_CELL_COUNT, DEFAULT_ROUND_TO, DEFAULT_KEEP_ZERO_CELLS) == (10, 1, False)


def test_rules_come_from_a_real_decisions_obligations() -> None:
    rules = DisclosureRules.from_obligations(Obligations.model_validate(OBLIGATIONS))
    assert rules == DisclosureRules(min_cell_count=20, round_to=5, keep_zero_cells=True)


def test_rules_come_from_any_object_with_the_three_thresholds() -> None:
    @dataclass
    class Stub:
        min_cell_count: int = 15
        round_to: int = 1
        keep_zero_cells: bool = False

    assert DisclosureRules.from_obligations(Stub()) == DisclosureRules(15)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_cell_count": 0}, "min_cell_count"),
        ({"min_cell_count": -3}, "min_cell_count"),
        ({"min_cell_count": True}, "min_cell_count"),
        ({"min_cell_count": 10.0}, "min_cell_count"),
        ({"min_cell_count": 10, "round_to": 0}, "round_to"),
        ({"min_cell_count": 10, "keep_zero_cells": 1}, "keep_zero_cells"),
    ],
)
def test_unusable_thresholds_are_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRules, match=field) as info:
        DisclosureRules(**kwargs)
    assert isinstance(info.value, DisclosureError)
    assert isinstance(info.value, PseudonymizeError)
    assert field in info.value.audit_reason


@pytest.mark.parametrize(
    ("count", "small"),
    [(0, True), (1, True), (9, True), (10, False), (11, False)],
)
def test_the_cell_rule_hides_counts_below_the_minimum_zero_included(count: int, small: bool) -> None:
    assert DisclosureRules(10).is_small(count) is small


def test_a_zero_may_show_only_where_the_agreement_says_so() -> None:
    assert DisclosureRules(10, keep_zero_cells=True).is_small(0) is False
    assert DisclosureRules(10, keep_zero_cells=True).is_small(1) is True


@pytest.mark.parametrize(
    ("round_to", "count", "rounded"),
    [(1, 13, 13), (5, 12, 10), (5, 13, 15), (4, 14, 16), (10, 15, 20), (10, 14, 10), (3, 11, 12)],
)
def test_rounding_goes_half_up_to_the_nearest_multiple(round_to: int, count: int, rounded: int) -> None:
    assert DisclosureRules(10, round_to=round_to).round(count) == rounded
