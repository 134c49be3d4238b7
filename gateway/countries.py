"""ISO 3166-1 alpha-2 country codes, the one vocabulary for jurisdictions in settings and policy data."""

from __future__ import annotations

import pycountry


def is_country(code: str) -> bool:
    """True when `code` is an upper-case ISO 3166-1 alpha-2 code."""
    return len(code) == 2 and code.isupper() and pycountry.countries.get(alpha_2=code) is not None


def country_name(code: str) -> str:
    """The English short name of a country code, or the code itself when unknown."""
    country = pycountry.countries.get(alpha_2=code)
    return str(country.name) if country is not None else code
