"""GA4GH passport visas: verified against their own issuer's keys, kept when trusted and valid, dropped
(never fatal) otherwise, with a count and a note that holds no visa value.

The DAC's visas name the holder at the DAC's issuer, not the token's, so they reach policy only through
the DAC's LinkedIdentities visa (`_link`); tests/unit/auth/test_visa_binding.py tests that binding."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from auth_helpers import oidc_for, run
from oidc_issuer import LoopbackTestIssuer

from gateway.auth import BadClaim, Principal, TokenValidator
from gateway.decision.models import Visa

GRANT = "https://dac.example.org/datasets/cohort-secret-marker"


@pytest.fixture(scope="module")
def dac() -> Iterator[LoopbackTestIssuer]:
    """A second party that signs visas: a data access committee with its own discovery and keys."""
    with LoopbackTestIssuer() as issuer:
        yield issuer


def _link(idp: LoopbackTestIssuer, dac: LoopbackTestIssuer) -> str:
    """The DAC's word that its researcher-1 is the identity provider's researcher-1."""
    return dac.linked_identities(("researcher-1", idp.issuer_url))


def validate(idp: LoopbackTestIssuer, token: str, trusted: tuple[str, ...]) -> Principal:
    async def go() -> Principal:
        async with TokenValidator(oidc_for(idp, trusted_visa_issuers=trusted)) as validator:
            return await validator.validate(token)

    return run(go())


def test_trusted_visas_of_each_accepted_type_are_passed_on(
    idp: LoopbackTestIssuer, dac: LoopbackTestIssuer
) -> None:
    visas = [
        dac.visa("ControlledAccessGrants", GRANT, by="dac"),
        dac.visa(
            "AffiliationAndRole", "faculty@uni.example", source="https://uni.example", by="so", alg="ES256"
        ),
        idp.visa("ResearcherStatus", "https://doi.org/10.1038/s41431-018-0219-y", by="peer", alg="EdDSA"),
        _link(idp, dac),
    ]
    principal = validate(idp, idp.token(visas=visas), trusted=(dac.issuer_url, idp.issuer_url))
    assert principal.dropped_visas == 0 and principal.visa_notes == ()
    assert principal.visas == (
        Visa(type="ControlledAccessGrants", value=GRANT, source="https://dac.example.org", by="dac"),
        Visa(type="AffiliationAndRole", value="faculty@uni.example", source="https://uni.example", by="so"),
        Visa(type="ResearcherStatus", value="https://doi.org/10.1038/s41431-018-0219-y",
             source="https://dac.example.org", by="peer"),
    )  # fmt: skip
    assert principal.to_requester().visas == principal.visas


def _dropped(idp: LoopbackTestIssuer, dac: LoopbackTestIssuer, visa: object, trusted: tuple[str, ...]) -> str:
    good = dac.visa("ControlledAccessGrants", "https://dac.example.org/datasets/kept")
    principal = validate(idp, idp.sign(_passport(idp, [good, visa, _link(idp, dac)])), trusted)
    assert [v.value for v in principal.visas] == ["https://dac.example.org/datasets/kept"]
    assert principal.dropped_visas == 1
    (note,) = principal.visa_notes
    assert note.startswith("visa 1 dropped: ")
    assert GRANT not in note and "eyJ" not in note and "researcher-1" not in note
    return note


def _passport(idp: LoopbackTestIssuer, visas: list[object]) -> dict[str, object]:
    now = int(time.time())
    return {"iss": idp.issuer_url, "aud": idp.audience, "sub": "researcher-1", "org": "o", "country": "DE",
            "iat": now, "exp": now + 300, "roles": ["researcher"], "ga4gh_passport_v1": visas}  # fmt: skip


def test_visa_from_an_untrusted_issuer_is_dropped(idp: LoopbackTestIssuer, dac: LoopbackTestIssuer) -> None:
    before = dac.discovery_fetches
    with LoopbackTestIssuer() as stranger:
        note = _dropped(idp, dac, stranger.visa("ControlledAccessGrants", GRANT), (dac.issuer_url,))
        assert stranger.discovery_fetches == 0  # an untrusted issuer is never contacted
    assert "not in trusted_visa_issuers" in note
    assert dac.discovery_fetches - before <= 1


def test_visa_signed_by_another_key_is_dropped(idp: LoopbackTestIssuer, dac: LoopbackTestIssuer) -> None:
    with LoopbackTestIssuer() as forger:
        now = int(time.time())
        body = {"type": "ControlledAccessGrants", "value": GRANT, "source": "x", "asserted": 1}
        claims = {
            "iss": dac.issuer_url,
            "sub": "researcher-1",
            "iat": now,
            "exp": now + 60,
            "ga4gh_visa_v1": body,
        }
        forged = forger.sign(claims, kid=dac.kid("RS256"))
    assert "signature does not verify" in _dropped(idp, dac, forged, (dac.issuer_url,))


def test_expired_visa_is_dropped(idp: LoopbackTestIssuer, dac: LoopbackTestIssuer) -> None:
    now = int(time.time())
    expired = dac.visa("ControlledAccessGrants", GRANT, iat=now - 7200, exp=now - 3600)
    assert "expired" in _dropped(idp, dac, expired, (dac.issuer_url,))


def test_visa_with_conditions_is_dropped(idp: LoopbackTestIssuer, dac: LoopbackTestIssuer) -> None:
    conditional = dac.visa("ControlledAccessGrants", GRANT, conditions=[[{"type": "AffiliationAndRole"}]])
    assert "conditions" in _dropped(idp, dac, conditional, (dac.issuer_url,))


def test_visa_of_another_type_is_dropped(idp: LoopbackTestIssuer, dac: LoopbackTestIssuer) -> None:
    terms = dac.visa("AcceptedTermsAndPolicies", "https://doi.org/10.1038/s41431-018-0219-y", by="self")
    assert "type is not one policy reads" in _dropped(idp, dac, terms, (dac.issuer_url,))


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda d: d.visa("ControlledAccessGrants", GRANT, asserted=int(time.time()) + 3600), "asserted"),
        (lambda d: d.visa("ControlledAccessGrants", GRANT, omit=["ga4gh_visa_v1"]), "ga4gh_visa_v1"),
        (lambda d: d.visa("ControlledAccessGrants", "v" * 300), "value"),
        (lambda d: d.visa("ControlledAccessGrants", GRANT, omit=["sub"]), "subject"),
        (lambda d: d.visa("ControlledAccessGrants", GRANT, omit=["exp"]), "exp"),
        (lambda d: d.visa("ControlledAccessGrants", GRANT, asserted=float("nan")), "asserted"),
        (lambda d: d.visa("ControlledAccessGrants", GRANT, asserted=10**400), "asserted"),
        (lambda d: d.visa("ControlledAccessGrants", GRANT, exp=10**400), "exp"),
        (lambda d: d.visa("ControlledAccessGrants", GRANT, source="the DAC"), "source is not a URL"),
        (lambda d: d.visa("ControlledAccessGrants", GRANT, by="anyone"), "by is not one of"),
        (lambda d: d.visa("ControlledAccessGrants", GRANT + "\ud800"), "value"),
        (lambda d: "not-a-jwt", "compact JWS"),
        (lambda d: 42, "not a JWT string"),
    ],
)
def test_malformed_visas_are_dropped(
    idp: LoopbackTestIssuer, dac: LoopbackTestIssuer, make: object, why: str
) -> None:
    assert callable(make)
    assert why in _dropped(idp, dac, make(dac), (dac.issuer_url,))


def test_visa_issuer_down_drops_its_visas_but_not_the_token(idp: LoopbackTestIssuer) -> None:
    gone = LoopbackTestIssuer()
    visa = gone.visa("ControlledAccessGrants", GRANT)
    gone.stop()
    principal = validate(idp, idp.token(visas=[visa]), trusted=(gone.issuer_url,))
    assert principal.visas == () and principal.dropped_visas == 1
    assert "unreachable" in principal.visa_notes[0] or "failed" in principal.visa_notes[0]


def test_visas_claim_that_is_not_a_list_rejects_the_token(idp: LoopbackTestIssuer) -> None:
    with pytest.raises(BadClaim, match="ga4gh_passport_v1"):
        validate(idp, idp.token(ga4gh_passport_v1={"visa": "x"}), trusted=(idp.issuer_url,))


def test_visas_claim_name_is_configurable(idp: LoopbackTestIssuer) -> None:
    visa = idp.visa("ResearcherStatus", "https://doi.org/10.1/x")

    async def go() -> Principal:
        oidc = oidc_for(idp, visas_claim="passport.visas", trusted_visa_issuers=(idp.issuer_url,))
        async with TokenValidator(oidc) as validator:
            return await validator.validate(idp.token(passport={"visas": [visa]}))

    assert [v.type for v in run(go()).visas] == ["ResearcherStatus"]


def test_trusted_visa_issuer_over_plain_http_off_loopback_is_ignored(
    idp: LoopbackTestIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    visa = idp.sign({"iss": "http://visas.example.org", "sub": "s", "iat": 1, "exp": 2})
    principal = validate(idp, idp.token(visas=[visa]), trusted=("http://visas.example.org",))
    assert principal.dropped_visas == 1
    assert "without https" in caplog.text


def test_provider_signing_its_own_visas_is_fetched_once(fresh_idp: LoopbackTestIssuer) -> None:
    visa = fresh_idp.visa("ResearcherStatus", "https://doi.org/10.1/x")
    principal = validate(fresh_idp, fresh_idp.token(visas=[visa]), trusted=(fresh_idp.issuer_url,))
    assert len(principal.visas) == 1
    assert (fresh_idp.discovery_fetches, fresh_idp.jwks_fetches) == (1, 1)
