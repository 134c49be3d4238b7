"""ISO 3166-1 alpha-2 country codes, the one vocabulary for jurisdictions in settings and policy data."""

from __future__ import annotations

import pycountry

# Read once: every decision input checks three codes, and a lookup in pycountry costs several µs.
_ALPHA_2 = frozenset(str(country.alpha_2) for country in pycountry.countries)


def is_country(code: str) -> bool:
    """True when `code` is an upper-case ISO 3166-1 alpha-2 code."""
    return code in _ALPHA_2


def country_name(code: str) -> str:
    """The English short name of a country code, or the code itself when unknown."""
    country = pycountry.countries.get(alpha_2=code)
    return str(country.name) if country is not None else code
