"""GA4GH Passport v1 visas: each visa JWT verified against its own issuer's keys and bound to the token's
holder, or dropped with a note.

A passport carries visas signed by other parties (a data access committee, a home institution). Only
visas from issuers the site lists in `trusted_visa_issuers` are checked, so a token cannot make the
gateway fetch from an address of its choosing. A visa that is untrusted, unverifiable, expired, of a type
policy does not read, or that carries `conditions` (which this gateway does not evaluate, and the GA4GH
AAI specification forbids ignoring) is dropped — the token stays valid, the visa is not passed on.

Policy reads a visa as a statement about the token's holder, yet each visa speaks of its own Visa
Identity, its (`sub`, `iss`) pair. A token could carry a visa issued to someone else, so a visa is passed on
only when its identity is the token's own (`sub`, `iss`) or linked to it. The GA4GH Passport specification
lets a Passport Clearinghouse combine visas of several identities only when trusted issuers assert that they
are the same person, in LinkedIdentities visas: one says its own identity is the same as every `sub,iss`
pair its value lists, and such visas chain. A LinkedIdentities visa is checked like any other (trusted
issuer, signature, times, no conditions) before it links anything; it serves this binding only and is not
passed to policy, nor counted as dropped when it links to the token's identity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError

from connectors.utf8 import is_text
from gateway.auth.claims import MAX_NAME, MAX_TIME, check_issuer, check_times
from gateway.auth.errors import AuthError
from gateway.auth.jwks import KeySource, normalize_issuer
from gateway.auth.signature import check_algorithm, parse_token, verify_signature
from gateway.decision.models import Visa

ACCEPTED_VISA_TYPES = frozenset({"ControlledAccessGrants", "AffiliationAndRole", "ResearcherStatus"})
LINKED_IDENTITIES = "LinkedIdentities"
"""The visa type that links identities: read to bind visas to the token, whether or not policy reads it."""
ASSERTED_BY = frozenset({"self", "peer", "system", "so", "dac"})
"""The values of a visa's `by` in the GA4GH Passport specification: who asserted it."""
VISA_CLAIM = "ga4gh_visa_v1"
MAX_VISAS = 64
MAX_LINKED = 64
"""The most `sub,iss` pairs one LinkedIdentities visa may list."""
NOT_BOUND = "its subject is not the token's subject nor linked to it"
_MALFORMED_LINKS = "its value is not a ;-separated list of URI-encoded sub,iss pairs"


@dataclass(frozen=True)
class VisaIdentity:
    """A Passport Visa Identity: a subject (`sub`) within its issuer's (`iss`) system.

    Subjects compare as exact strings; issuers as `normalize_issuer` has them, like every issuer check of
    the gateway, so a trailing slash on one side does not tell two identities apart.
    """

    sub: str
    iss: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "iss", normalize_issuer(self.iss))


@dataclass(frozen=True)
class VisaOutcome:
    """The visas passed to policy, and how many were dropped with a log-safe note for each."""

    visas: tuple[Visa, ...] = ()
    dropped: int = 0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Checked:
    """A visa whose signature, times and object are in order, not yet bound to the token's holder.

    `visa` is what policy reads (None for a type policy does not read); `same_as` is, for a
    LinkedIdentities visa, its own identity with every identity its value lists, else empty.
    """

    identity: VisaIdentity
    visa: Visa | None
    same_as: frozenset[VisaIdentity] = frozenset()


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


def _visa_body(claims: Mapping[str, Any], identity: VisaIdentity, now: float, leeway_s: float) -> _Checked:
    body = claims.get(VISA_CLAIM)
    if not isinstance(body, dict):
        raise _Dropped(f"it has no {VISA_CLAIM} object")
    visa_type = _short_text(body, "type", required=True)
    if visa_type not in ACCEPTED_VISA_TYPES and visa_type != LINKED_IDENTITIES:
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
    same_as: frozenset[VisaIdentity] = frozenset()
    if visa_type == LINKED_IDENTITIES:
        # The visa's own identity is one of those it says are the same person (the specification's
        # examples link the identities of the value to the visa's `sub`, `iss`).
        same_as = _linked_identities(body.get("value")) | {identity}
    if visa_type not in ACCEPTED_VISA_TYPES:
        return _Checked(identity, None, same_as)
    try:
        visa = Visa(type=visa_type, value=_short_text(body, "value", required=True), source=source, by=by)
    except ValidationError:
        raise _Dropped("its fields do not form a visa") from None
    return _Checked(identity, visa, same_as)


def _linked_identities(value: Any) -> frozenset[VisaIdentity]:
    """The identities a LinkedIdentities value lists: `;`-separated `<sub>,<iss>` pairs, each part
    URI-encoded (RFC 3986) so that a `,` or `;` within a subject or issuer cannot split it."""
    if not isinstance(value, str) or not value:
        raise _Dropped(_MALFORMED_LINKS)
    entries = value.split(";")
    if len(entries) > MAX_LINKED:
        raise _Dropped(f"its value links more than {MAX_LINKED} identities")
    identities: set[VisaIdentity] = set()
    for entry in entries:
        parts = entry.split(",")
        if len(parts) != 2:
            raise _Dropped(_MALFORMED_LINKS)
        try:
            sub, iss = [unquote(part, errors="strict") for part in parts]
        except UnicodeDecodeError:
            raise _Dropped(_MALFORMED_LINKS) from None
        if not all(0 < len(part) <= MAX_NAME and is_text(part) for part in (sub, iss)):
            raise _Dropped(_MALFORMED_LINKS)
        identities.add(VisaIdentity(sub=sub, iss=iss))
    return frozenset(identities)


def _linked_to(holder: VisaIdentity, links: Iterable[frozenset[VisaIdentity]]) -> frozenset[VisaIdentity]:
    """The holder's identity and every identity the links chain to it, in whatever order they came."""
    bound = {holder}
    pending = [group for group in links if group]
    grew = True
    while grew:
        grew = False
        for group in list(pending):
            if not bound.isdisjoint(group):
                bound |= group
                pending.remove(group)
                grew = True
    return frozenset(bound)


async def verify_visas(
    raw: Any,
    *,
    holder: VisaIdentity,
    sources: Callable[[str], KeySource | None],
    algorithms: Collection[str],
    now: float,
    leeway_s: float,
) -> VisaOutcome:
    """Verify every visa JWT of a passport claim and keep those bound to `holder`, the identity of the token
    that carries them; `sources` gives a trusted issuer's keys, or None."""
    checked: dict[int, _Checked] = {}
    why: dict[int, str] = {}
    for i, item in enumerate(raw):
        try:
            if i >= MAX_VISAS:
                raise _Dropped(f"the passport holds more than {MAX_VISAS} visas")
            checked[i] = await _verify_one(item, sources, algorithms, now, leeway_s)
        except _Dropped as dropped:
            why[i] = dropped.why
        except Exception as exc:  # noqa: BLE001 - a visa that cannot be checked is dropped, never passed on
            why[i] = f"it could not be checked ({type(exc).__name__})"
    # Only verified LinkedIdentities visas link: a dropped one never reaches `checked`.
    bound = _linked_to(holder, (c.same_as for c in checked.values()))
    visas: list[Visa] = []
    for i, check in checked.items():
        if check.identity not in bound:
            why[i] = NOT_BOUND
        elif check.visa is not None:
            visas.append(check.visa)
    notes = tuple(f"visa {i} dropped: {why[i]}" for i in sorted(why))
    return VisaOutcome(visas=tuple(visas), dropped=len(notes), notes=notes)


async def _verify_one(
    item: Any,
    sources: Callable[[str], KeySource | None],
    algorithms: Collection[str],
    now: float,
    leeway_s: float,
) -> _Checked:
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
    return _visa_body(unverified.claims, VisaIdentity(sub=sub, iss=source.issuer), now, leeway_s)


def _is_url(value: str) -> bool:
    """Whether a visa's `source` is an absolute URL, as the specification has it (the organisation that
    asserted the visa)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return bool(parts.scheme) and bool(parts.netloc) and not any(c.isspace() for c in value)
