"""GA4GH Passport v1 visas: each visa JWT verified against its own issuer's keys, or dropped with a note.

A passport carries visas signed by other parties (a data access committee, a home institution). Only
visas from issuers the site lists in `trusted_visa_issuers` are checked, so a token cannot make the
gateway fetch from an address of its choosing. A visa that is untrusted, unverifiable, expired, of a type
policy does not read, or that carries `conditions` (which this gateway does not evaluate, and the GA4GH
AAI specification forbids ignoring) is dropped — the token stays valid, the visa is not passed on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from connectors.utf8 import is_text
from gateway.auth.claims import MAX_NAME, MAX_TIME, check_issuer, check_times
from gateway.auth.errors import AuthError
from gateway.auth.jwks import KeySource, normalize_issuer
from gateway.auth.signature import check_algorithm, parse_token, verify_signature
from gateway.decision.models import Visa

ACCEPTED_VISA_TYPES = frozenset({"ControlledAccessGrants", "AffiliationAndRole", "ResearcherStatus"})
ASSERTED_BY = frozenset({"self", "peer", "system", "so", "dac"})
"""The values of a visa's `by` in the GA4GH Passport specification: who asserted it."""
VISA_CLAIM = "ga4gh_visa_v1"
MAX_VISAS = 64


@dataclass(frozen=True)
class VisaOutcome:
    """The visas passed to policy, and how many were dropped with a log-safe note for each."""

    visas: tuple[Visa, ...] = ()
    dropped: int = 0
    notes: tuple[str, ...] = ()


class _Dropped(Exception):
    def __init__(self, why: str) -> None:
        self.why = why


def _short_text(body: Mapping[str, Any], field: str, required: bool) -> str | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_NAME or not is_text(value):
        raise _Dropped(f"its {field} is not a string of 1 to {MAX_NAME} characters")
    return value


def _visa_body(claims: Mapping[str, Any], now: float, leeway_s: float) -> Visa:
    body = claims.get(VISA_CLAIM)
    if not isinstance(body, dict):
        raise _Dropped(f"it has no {VISA_CLAIM} object")
    visa_type = _short_text(body, "type", required=True)
    if visa_type not in ACCEPTED_VISA_TYPES:
        raise _Dropped("its type is not one policy reads")
    if body.get("conditions") is not None:
        raise _Dropped("it carries conditions, which this gateway does not evaluate")
    asserted = body.get("asserted")
    if (
        isinstance(asserted, bool)
        or not isinstance(asserted, int | float)
        or abs(asserted) > MAX_TIME
        or not math.isfinite(asserted)
    ):
        raise _Dropped("its asserted time is missing or not a number of seconds since the epoch")
    if asserted > now + leeway_s:
        raise _Dropped("its asserted time is in the future")
    source = _short_text(body, "source", required=True)
    if source is None or not _is_url(source):
        raise _Dropped("its source is not a URL")
    by = _short_text(body, "by", required=False)
    if by is not None and by not in ASSERTED_BY:
        raise _Dropped(f"its by is not one of {', '.join(sorted(ASSERTED_BY))}")
    try:
        return Visa(type=visa_type, value=_short_text(body, "value", required=True), source=source, by=by)
    except ValidationError:
        raise _Dropped("its fields do not form a visa") from None


async def verify_visas(
    raw: Any,
    *,
    sources: Callable[[str], KeySource | None],
    algorithms: Collection[str],
    now: float,
    leeway_s: float,
) -> VisaOutcome:
    """Verify every visa JWT of a passport claim; `sources` gives a trusted issuer's keys, or None."""
    visas: list[Visa] = []
    notes: list[str] = []
    for i, item in enumerate(raw):
        try:
            if i >= MAX_VISAS:
                raise _Dropped(f"the passport holds more than {MAX_VISAS} visas")
            visas.append(await _verify_one(item, sources, algorithms, now, leeway_s))
        except _Dropped as dropped:
            notes.append(f"visa {i} dropped: {dropped.why}")
        except Exception as exc:  # noqa: BLE001 - a visa that cannot be checked is dropped, never passed on
            notes.append(f"visa {i} dropped: it could not be checked ({type(exc).__name__})")
    return VisaOutcome(visas=tuple(visas), dropped=len(notes), notes=tuple(notes))


async def _verify_one(
    item: Any,
    sources: Callable[[str], KeySource | None],
    algorithms: Collection[str],
    now: float,
    leeway_s: float,
) -> Visa:
    if not isinstance(item, str):
        raise _Dropped("it is not a JWT string")
    source: KeySource | None = None
    try:
        unverified = parse_token(item)
        iss = unverified.claims.get("iss")
        source = sources(normalize_issuer(iss)) if isinstance(iss, str) else None
        if source is None:
            raise _Dropped("its issuer is not in trusted_visa_issuers")
        check_algorithm(unverified.alg, algorithms)
        key = await source.key(unverified.kid, unverified.alg)
        verify_signature(item, unverified, key)
        check_issuer(unverified.claims, source.issuer)
        # Visas live as long as their issuer says (exp); their age is not capped like a login's.
        check_times(unverified.claims, now, leeway_s, max_age_s=float("inf"))
        sub = unverified.claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _Dropped("it has no subject")
    except AuthError as exc:
        raise _Dropped(f"{exc.reason} (issuer {source.issuer if source else 'unknown'})") from None
    return _visa_body(unverified.claims, now, leeway_s)


def _is_url(value: str) -> bool:
    """Whether a visa's `source` is an absolute URL, as the specification has it (the organisation that
    asserted the visa)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return bool(parts.scheme) and bool(parts.netloc) and not any(c.isspace() for c in value)
