"""Where synthetic patients live: country-shaped postcodes, hospital catchment areas, neighbour countries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from gateway.synth.strings import DIGITS, LETTERS, concat, from_template, pick


@dataclass(frozen=True)
class PostcodeFormat:
    """A postcode is a region prefix followed by a random tail shaped like `tail` ("D" digit, "L" letter).

    `catchment` prefixes are the hospital's own area, where most of a site's patients live; `national`
    prefixes are the rest of the country (and where foreign residents live). Concentrating patients in a
    catchment is what makes truncated postcodes a realistic quasi-identifier.
    """

    national: tuple[str, ...]
    tail: str
    catchment: tuple[str, ...] = ()
    letters: str = LETTERS


def _numbered(first: int, last: int, width: int) -> tuple[str, ...]:
    return tuple(f"{i:0{width}d}" for i in range(first, last + 1))


# Letters some postal systems never use in the positions drawn here (GB inward code, NL, CA).
_GB_INWARD = "ABDEFGHJLNPQRSTUWXYZ"
_NL_LETTERS = "ABCDEGHJKLMNPRSTVWXZ"
_CA_LETTERS = "ABCEGHJKLMNPRSTVWXYZ"

POSTCODES: dict[str, PostcodeFormat] = {
    "DE": PostcodeFormat(national=_numbered(1, 99, 2), tail="DDD", catchment=("10", "12", "13", "14")),
    "FR": PostcodeFormat(
        national=_numbered(1, 95, 2), tail="DDD", catchment=("75", "77", "78", "91", "92", "93", "94", "95")
    ),
    "US": PostcodeFormat(
        national=_numbered(10, 999, 3), tail="DD", catchment=("018", "019", "021", "022", "024")
    ),
    "JP": PostcodeFormat(national=_numbered(1, 999, 3), tail="-DDDD", catchment=_numbered(100, 208, 3)),
    "IT": PostcodeFormat(national=_numbered(0, 98, 2), tail="DDD", catchment=_numbered(20, 27, 2)),
    "ES": PostcodeFormat(national=_numbered(1, 52, 2), tail="DDD", catchment=("28",)),
    "NL": PostcodeFormat(
        national=_numbered(10, 99, 2), tail="DD LL", catchment=_numbered(10, 15, 2), letters=_NL_LETTERS
    ),
    "GB": PostcodeFormat(
        national=("M1", "M14", "B15", "LS2", "G12", "CF10", "EH1", "BS8", "NE1", "L1", "S10", "OX3", "CB2"),
        tail=" DLL",
        catchment=("SW1A", "SW3", "SW11", "SE1", "SE5", "N1", "N7", "E1", "E8", "W2", "NW1", "EC1A", "WC1N"),
        letters=_GB_INWARD,
    ),
    "CA": PostcodeFormat(
        national=("K1A", "K2P", "H2X", "H3A", "V6B", "V5K", "T2P", "T5J", "R3C", "B3H", "S4P", "E1C"),
        tail=" DLD",
        catchment=("M5V", "M4W", "M6G", "M2N", "M1B", "M9W", "L4C", "L5B"),
        letters=_CA_LETTERS,
    ),
    "AU": PostcodeFormat(
        national=("08", "26", "29", "30", "31", "32", "40", "41", "50", "60", "70"),
        tail="DD",
        catchment=("20", "21", "22"),
    ),
    "AT": PostcodeFormat(national=_numbered(1, 9, 1), tail="DDD"),
    "CH": PostcodeFormat(national=_numbered(1, 9, 1), tail="DDD"),
    "BE": PostcodeFormat(national=_numbered(1, 9, 1), tail="DDD"),
    "MX": PostcodeFormat(national=_numbered(1, 99, 2), tail="DDD"),
    "NZ": PostcodeFormat(national=_numbered(1, 99, 2), tail="DD"),
}

# Countries whose residents a site in the key's country treats now and then (cross-border patients).
NEIGHBOURS: dict[str, tuple[str, ...]] = {
    "DE": ("AT", "CH", "NL", "FR", "BE"),
    "FR": ("BE", "CH", "DE", "ES", "IT"),
    "US": ("CA", "MX", "GB"),
    "JP": ("US", "AU", "GB"),
    "IT": ("CH", "FR", "DE", "AT", "ES"),
    "ES": ("FR", "GB", "DE", "IT"),
    "NL": ("BE", "DE", "GB", "FR"),
    "GB": ("FR", "ES", "DE", "US", "AU"),
    "CA": ("US", "GB", "FR"),
    "AU": ("NZ", "GB", "US"),
}


def postcodes(rng: np.random.Generator, country: str, n: int, catchment_share: float) -> pa.StringArray:
    """n postcodes of `country`; `catchment_share` of them inside the hospital's catchment area."""
    fmt = POSTCODES[country]
    prefixes = fmt.catchment + fmt.national
    if fmt.catchment:
        local = rng.random(n) < catchment_share
        index = np.where(
            local,
            rng.integers(0, len(fmt.catchment), size=n),
            len(fmt.catchment) + rng.integers(0, len(fmt.national), size=n),
        )
    else:
        index = rng.integers(0, len(fmt.national), size=n)
    tail = from_template(rng, fmt.tail, {"D": DIGITS, "L": fmt.letters}, n)
    return concat(pick(prefixes, index), tail)
