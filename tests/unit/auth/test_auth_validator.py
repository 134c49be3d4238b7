"""TokenValidator accepts good tokens of every allowed algorithm and turns their claims into a Principal."""

from __future__ import annotations

import time

import pytest
from auth_helpers import oidc_for, run
from oidc_issuer import LoopbackTestIssuer

from gateway.auth import Principal, TokenValidator
from gateway.decision.models import Requester
from gateway.settings import OidcSettings


async def _validate(oidc: OidcSettings, token: str) -> Principal:
    async with TokenValidator(oidc) as validator:
        return await validator.validate(token)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_valid_token_of_each_algorithm(idp: LoopbackTestIssuer, alg: str) -> None:
    token = idp.token(sub="alice", org="Uni Example", country="FR", roles=["researcher", "steward"], alg=alg)
    principal = run(_validate(oidc_for(idp), token))
    assert principal.sub == "alice"
    assert principal.org == "Uni Example"
    assert principal.country == "FR"
    assert principal.roles == frozenset({"researcher", "steward"})
    assert principal.issuer == idp.issuer_url
    assert principal.dev is False
    assert principal.visas == () and principal.dropped_visas == 0


def test_principal_maps_onto_the_policy_requester(idp: LoopbackTestIssuer) -> None:
    token = idp.token(sub="alice", roles=["steward", "researcher"])
    requester = run(_validate(oidc_for(idp), token)).to_requester()
    assert requester == Requester(
        sub="alice", org="Example University", country="DE", roles=("researcher", "steward"), visas=()
    )


def test_principal_repr_hides_the_subject(idp: LoopbackTestIssuer) -> None:
    principal = run(_validate(oidc_for(idp), idp.token(sub="alice-secret-subject")))
    assert "alice-secret-subject" not in repr(principal)


def test_roles_come_from_a_nested_claim() -> None:
    with LoopbackTestIssuer(roles_claim="realm_access.roles") as idp:
        token = idp.token(roles=["auditor"])
        nested = run(_validate(oidc_for(idp, roles_claim="realm_access.roles"), token))
        assert nested.roles == frozenset({"auditor"})
        # Read at the default top-level `roles`, the same token holds no roles at all.
        top = run(_validate(oidc_for(idp), token))
        assert top.roles == frozenset()


def test_a_namespaced_claim_is_read_by_its_whole_name(idp: LoopbackTestIssuer) -> None:
    # Providers such as Auth0 require claims named by a URL, which holds dots.
    name = "https://fedgate.example/roles"
    token = idp.sign({**_claims(idp), name: ["steward"], "https://fedgate": {"example/roles": ["auditor"]}})
    assert run(_validate(oidc_for(idp, roles_claim=name), token)).roles == frozenset({"steward"})


def _claims(idp: LoopbackTestIssuer) -> dict[str, object]:
    now = int(time.time())
    return {"iss": idp.issuer_url, "aud": idp.audience, "sub": "alice", "org": "o", "country": "DE",
            "iat": now, "exp": now + 300}  # fmt: skip


def test_org_and_country_claims_are_configurable(idp: LoopbackTestIssuer) -> None:
    token = idp.token(omit=["org", "country"], organisation="Site Hospital", address={"country": "NL"})
    oidc = oidc_for(idp, org_claim="organisation", country_claim="address.country")
    principal = run(_validate(oidc, token))
    assert (principal.org, principal.country) == ("Site Hospital", "NL")


def test_audience_may_be_a_list(idp: LoopbackTestIssuer) -> None:
    token = idp.token(aud=["other-api", idp.audience])
    assert run(_validate(oidc_for(idp), token)).sub == "researcher-1"


def test_issuer_with_trailing_slash_is_the_same_issuer(idp: LoopbackTestIssuer) -> None:
    token = idp.token(iss=idp.issuer_url + "/")
    assert run(_validate(oidc_for(idp), token)).issuer == idp.issuer_url


def test_token_without_nbf_and_with_at_jwt_type_is_accepted(idp: LoopbackTestIssuer) -> None:
    token = idp.token(omit=["nbf"], header={"typ": "at+jwt"})
    assert run(_validate(oidc_for(idp), token)).roles == frozenset({"researcher"})


def test_clock_skew_within_leeway_is_tolerated(idp: LoopbackTestIssuer) -> None:
    import time

    now = int(time.time())
    token = idp.token(iat=now + 30, nbf=now + 30, exp=now - 30)
    assert run(_validate(oidc_for(idp, leeway_s=60), token)).sub == "researcher-1"
