"""Passport visas are bound to the token's holder: a visa reaches policy only when its (`sub`, `iss`) is the
token's own or linked to it by verified LinkedIdentities visas of trusted issuers; any other visa is dropped
with a note that names no subject, issuer or JWT, and the token stays valid."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from auth_helpers import oidc_for, run
from oidc_issuer import LoopbackTestIssuer

from gateway.auth import Principal, TokenValidator
from gateway.auth.visas import MAX_LINKED, NOT_BOUND
from gateway.decision.models import Visa

GRANT = "https://dac.example.org/datasets/cohort-7"
OWN = "https://doi.org/10.1038/s41431-018-0219-y"
HOLDER = "alice"
AT_DAC = "dac-7781"  # how the DAC knows the holder


@pytest.fixture(scope="module")
def dac() -> Iterator[LoopbackTestIssuer]:
    """A data access committee: a trusted visa issuer that knows the holder under its own subject."""
    with LoopbackTestIssuer() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def stranger() -> Iterator[LoopbackTestIssuer]:
    """An issuer the site does not trust (and whose key a forger may sign with)."""
    with LoopbackTestIssuer() as issuer:
        yield issuer


@dataclass(frozen=True)
class Parties:
    idp: LoopbackTestIssuer
    dac: LoopbackTestIssuer
    stranger: LoopbackTestIssuer


@pytest.fixture
def parties(idp: LoopbackTestIssuer, dac: LoopbackTestIssuer, stranger: LoopbackTestIssuer) -> Parties:
    return Parties(idp, dac, stranger)


def passport(p: Parties, visas: list[str], sub: str = HOLDER) -> Principal:
    """Validate a token of the identity provider for `sub` carrying `visas`; idp and DAC are trusted."""

    async def go() -> Principal:
        oidc = oidc_for(p.idp, trusted_visa_issuers=(p.idp.issuer_url, p.dac.issuer_url))
        async with TokenValidator(oidc) as validator:
            return await validator.validate(p.idp.token(sub=sub, visas=visas))

    return run(go())


def grant_at_dac(p: Parties) -> str:
    return p.dac.visa("ControlledAccessGrants", GRANT, sub=AT_DAC)


GRANTED = Visa(type="ControlledAccessGrants", value=GRANT, source="https://dac.example.org", by="dac")


def test_visa_of_the_tokens_own_identity_is_passed_on(parties: Parties) -> None:
    own = parties.idp.visa("ResearcherStatus", OWN, sub=HOLDER, by="peer")
    principal = passport(parties, [own])
    assert principal.dropped_visas == 0 and principal.visa_notes == ()
    assert [v.value for v in principal.to_requester().visas] == [OWN]


def test_visa_whose_issuer_has_a_trailing_slash_is_still_the_tokens_own(parties: Parties) -> None:
    own = parties.idp.visa("ResearcherStatus", OWN, sub=HOLDER, iss=parties.idp.issuer_url + "/")
    assert [v.value for v in passport(parties, [own]).visas] == [OWN]


def test_visa_issued_to_another_subject_is_dropped_and_policy_never_sees_it(parties: Parties) -> None:
    theirs = parties.idp.visa("ControlledAccessGrants", GRANT, sub="bob")
    own = parties.idp.visa("ResearcherStatus", OWN, sub=HOLDER)
    principal = passport(parties, [theirs, own])
    assert principal.dropped_visas == 1
    assert principal.visa_notes == (f"visa 0 dropped: {NOT_BOUND}",)
    assert [v.value for v in principal.to_requester().visas] == [OWN]


def test_visa_of_the_same_subject_at_another_issuer_is_dropped_unless_linked(parties: Parties) -> None:
    same_sub_at_dac = parties.dac.visa("ControlledAccessGrants", GRANT, sub=HOLDER)
    unlinked = passport(parties, [same_sub_at_dac])
    assert unlinked.visas == () and unlinked.visa_notes == (f"visa 0 dropped: {NOT_BOUND}",)

    link = parties.dac.linked_identities((HOLDER, parties.idp.issuer_url), sub=HOLDER)
    linked = passport(parties, [same_sub_at_dac, link])
    assert linked.visas == (GRANTED,) and linked.dropped_visas == 0


@pytest.mark.parametrize(
    "link",
    [
        # The DAC says its subject is the identity provider's holder ...
        lambda p: p.dac.linked_identities((HOLDER, p.idp.issuer_url), sub=AT_DAC),
        # ... or the identity provider says its holder is the DAC's subject ...
        lambda p: p.idp.linked_identities((AT_DAC, p.dac.issuer_url), sub=HOLDER, source=p.idp.issuer_url),
        # ... or a third identity lists both (the specification's "superset" example).
        lambda p: p.idp.linked_identities(
            (HOLDER, p.idp.issuer_url), (AT_DAC, p.dac.issuer_url), sub="reg-1"
        ),
    ],
    ids=["asserted-by-the-visa-issuer", "asserted-by-the-token-issuer", "listing-both"],
)
def test_identity_linked_by_a_verified_linked_identities_visa_is_accepted(
    parties: Parties, link: Callable[[Parties], str]
) -> None:
    principal = passport(parties, [grant_at_dac(parties), link(parties)])
    # The LinkedIdentities visa binds; it is neither passed to policy nor counted as dropped.
    assert principal.visas == (GRANTED,)
    assert principal.dropped_visas == 0 and principal.visa_notes == ()


def test_links_chain_whatever_their_order(parties: Parties) -> None:
    idp, dac = parties.idp, parties.dac
    first = idp.linked_identities(("dac-0001", dac.issuer_url), sub=HOLDER)
    second = dac.linked_identities((AT_DAC, dac.issuer_url), sub="dac-0001")
    principal = passport(parties, [grant_at_dac(parties), second, first])
    assert principal.visas == (GRANTED,) and principal.dropped_visas == 0


def _unsigned(claims: dict[str, object]) -> str:
    def segment(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(claims)}."


def _link_claims(p: Parties) -> dict[str, object]:
    now = int(time.time())
    value = f"{HOLDER},{quote(p.idp.issuer_url, safe='')}"
    body = {"type": "LinkedIdentities", "value": value, "source": "https://dac.example.org", "asserted": now}
    return {"iss": p.dac.issuer_url, "sub": AT_DAC, "iat": now, "exp": now + 600, "ga4gh_visa_v1": body}


@pytest.mark.parametrize(
    ("link", "why"),
    [
        (lambda p: _unsigned(_link_claims(p)), "algorithm none is not accepted"),
        (lambda p: p.stranger.sign(_link_claims(p), kid=p.dac.kid("RS256")), "signature does not verify"),
        (
            lambda p: p.stranger.linked_identities(
                (HOLDER, p.idp.issuer_url), (AT_DAC, p.dac.issuer_url), sub="s-1"
            ),
            "not in trusted_visa_issuers",
        ),
        (
            lambda p: p.dac.linked_identities(
                (HOLDER, p.idp.issuer_url),
                sub=AT_DAC,
                iat=int(time.time()) - 7200,
                exp=int(time.time()) - 3600,
            ),
            "expired",
        ),
        (
            lambda p: p.dac.linked_identities(
                (HOLDER, p.idp.issuer_url), sub=AT_DAC, conditions=[[{"type": "AffiliationAndRole"}]]
            ),
            "conditions",
        ),
    ],
    ids=["unsigned", "forged", "untrusted-issuer", "expired", "with-conditions"],
)
def test_linked_identities_visa_that_fails_its_checks_links_nothing(
    parties: Parties, link: Callable[[Parties], str], why: str
) -> None:
    principal = passport(parties, [grant_at_dac(parties), link(parties)])
    assert principal.visas == () and principal.dropped_visas == 2
    grant_note, link_note = principal.visa_notes
    assert grant_note == f"visa 0 dropped: {NOT_BOUND}"
    assert link_note.startswith("visa 1 dropped: ") and why in link_note and NOT_BOUND not in link_note


@pytest.mark.parametrize(
    "link",
    [
        lambda p: p.dac.linked_identities(("bob", p.idp.issuer_url), sub=AT_DAC),
        lambda p: p.dac.linked_identities((HOLDER.upper(), p.idp.issuer_url), sub=AT_DAC),
        lambda p: p.dac.linked_identities((HOLDER, p.stranger.issuer_url), sub=AT_DAC),
        lambda p: p.idp.linked_identities((AT_DAC, p.dac.issuer_url), sub="bob"),
    ],
    ids=["another-subject", "subject-in-another-case", "holder-sub-at-another-issuer", "issued-to-another"],
)
def test_linked_identities_visa_not_listing_the_tokens_identity_links_nothing(
    parties: Parties, link: Callable[[Parties], str]
) -> None:
    principal = passport(parties, [grant_at_dac(parties), link(parties)])
    assert principal.visas == ()
    assert principal.visa_notes == (f"visa 0 dropped: {NOT_BOUND}", f"visa 1 dropped: {NOT_BOUND}")


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (lambda iss: HOLDER, "sub,iss pairs"),
        (lambda iss: f"{HOLDER},{iss},x", "sub,iss pairs"),
        (lambda iss: f"{HOLDER},", "sub,iss pairs"),
        (lambda iss: f",{iss}", "sub,iss pairs"),
        (lambda iss: f"{HOLDER}%FF,{iss}", "sub,iss pairs"),  # not UTF-8 once decoded
        (lambda iss: f"{HOLDER},{iss};", "sub,iss pairs"),  # one good pair does not excuse a bad one
        (lambda iss: ";".join([f"{HOLDER},{iss}"] * (MAX_LINKED + 1)), f"more than {MAX_LINKED}"),
    ],
    ids=["no-comma", "three-parts", "empty-iss", "empty-sub", "bad-encoding", "empty-entry", "too-many"],
)
def test_malformed_linked_identities_value_links_nothing(
    parties: Parties, value: Callable[[str], str], why: str
) -> None:
    link = parties.dac.visa("LinkedIdentities", value(quote(parties.idp.issuer_url, safe="")), sub=AT_DAC)
    principal = passport(parties, [grant_at_dac(parties), link])
    assert principal.visas == ()
    grant_note, link_note = principal.visa_notes
    assert grant_note == f"visa 0 dropped: {NOT_BOUND}"
    assert link_note.startswith("visa 1 dropped: its value ") and why in link_note
    assert HOLDER not in link_note


def test_linked_identities_parts_are_uri_decoded(parties: Parties) -> None:
    # A `,` and `;` inside a subject arrive encoded, and the issuer compares without its trailing slash.
    odd_sub = "dac;77,81"
    value = f"dac%3B77%2C81,{quote(parties.dac.issuer_url + '/', safe='')}"
    link = parties.idp.visa("LinkedIdentities", value, sub=HOLDER)
    grant = parties.dac.visa("ControlledAccessGrants", GRANT, sub=odd_sub)
    principal = passport(parties, [grant, link])
    assert principal.visas == (GRANTED,) and principal.dropped_visas == 0


def test_notes_and_log_name_no_subject_issuer_or_jwt(
    parties: Parties, caplog: pytest.LogCaptureFixture
) -> None:
    idp, dac = parties.idp, parties.dac
    visas = [
        idp.visa("ControlledAccessGrants", GRANT, sub="bob-subject"),
        dac.visa("ControlledAccessGrants", GRANT, sub=HOLDER),
        dac.linked_identities(("carol-subject", idp.issuer_url), sub=AT_DAC),
    ]
    with caplog.at_level(logging.INFO, logger="gateway.auth"):
        principal = passport(parties, visas)
    assert principal.visa_notes == tuple(f"visa {i} dropped: {NOT_BOUND}" for i in range(3))
    (logged,) = [r.getMessage() for r in caplog.records if "passport visa" in r.getMessage()]
    assert logged.startswith("dropped 3 passport visa(s): ")
    for text in [*principal.visa_notes, logged]:
        for secret in ("bob-subject", HOLDER, "carol-subject", AT_DAC, "127.0.0.1", "eyJ", GRANT):
            assert secret not in text
