"""Country codes: ISO 3166-1 alpha-2, upper case, nothing else."""

from __future__ import annotations

import pytest

from gateway.countries import country_name, is_country


@pytest.mark.parametrize("code", ["DE", "FR", "US", "JP", "GB", "CH"])
def test_alpha_2_codes_are_countries(code: str) -> None:
    assert is_country(code)


@pytest.mark.parametrize("code", ["de", "De", "DEU", "D", "", "XX", "EU", " DE", "276"])
def test_other_text_is_not_a_country(code: str) -> None:
    assert not is_country(code)


def test_names_come_from_the_code_or_fall_back_to_it() -> None:
    assert country_name("DE") == "Germany"
    assert country_name("XX") == "XX"
