"""Discovery and JWKS over real HTTP: one fetch for a burst, one refetch per unknown kid, a rate limit,
key rotation, and a fail-closed answer when the identity provider is down or misconfigured."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from auth_helpers import oidc_for, run
from oidc_issuer import LoopbackTestIssuer

from gateway.auth import (
    IdentityProviderUnavailable,
    Principal,
    TokenValidator,
    UnknownSigningKey,
)
from gateway.auth.jwks import JWKS_TTL_S


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_a_burst_of_requests_fetches_discovery_and_jwks_once(fresh_idp: LoopbackTestIssuer) -> None:
    tokens = [fresh_idp.token(sub=f"user-{n}", alg=("RS256", "ES256", "EdDSA")[n % 3]) for n in range(60)]

    async def burst() -> list[Principal]:
        async with TokenValidator(oidc_for(fresh_idp)) as validator:
            return await asyncio.gather(*(validator.validate(t) for t in tokens))

    principals = run(burst())
    assert [p.sub for p in principals] == [f"user-{n}" for n in range(60)]
    assert (fresh_idp.discovery_fetches, fresh_idp.jwks_fetches) == (1, 1)


def test_a_burst_with_an_unknown_kid_refetches_once(fresh_idp: LoopbackTestIssuer) -> None:
    clock = Clock()

    async def scenario() -> list[BaseException | Principal]:
        async with TokenValidator(oidc_for(fresh_idp), clock=clock) as validator:
            await validator.validate(fresh_idp.token())
            clock.offset = 31  # past jwks_min_refresh_s (30 s by default)
            forged = [fresh_idp.token(kid="no-such-kid") for _ in range(30)]
            return await asyncio.gather(*(validator.validate(t) for t in forged), return_exceptions=True)

    results = run(scenario())
    assert all(isinstance(r, UnknownSigningKey) for r in results)
    assert fresh_idp.jwks_fetches == 2


def test_rotation_is_picked_up_by_one_refetch(fresh_idp: LoopbackTestIssuer) -> None:
    clock = Clock()

    async def scenario() -> None:
        async with TokenValidator(oidc_for(fresh_idp), clock=clock) as validator:
            await validator.validate(fresh_idp.token())
            assert fresh_idp.jwks_fetches == 1
            fresh_idp.rotate("RS256")
            clock.offset = 31
            await validator.validate(fresh_idp.token())
            assert fresh_idp.jwks_fetches == 2
            # The new key is cached now: no further fetch for further tokens.
            await validator.validate(fresh_idp.token(sub="other"))
            assert fresh_idp.jwks_fetches == 2
            assert fresh_idp.discovery_fetches == 1

    run(scenario())


def test_unknown_kid_refetch_is_rate_limited(fresh_idp: LoopbackTestIssuer) -> None:
    clock = Clock()

    async def scenario() -> None:
        oidc = oidc_for(fresh_idp, jwks_min_refresh_s=30)
        async with TokenValidator(oidc, clock=clock) as validator:
            await validator.validate(fresh_idp.token())
            assert fresh_idp.jwks_fetches == 1
            clock.offset = 31
            with pytest.raises(UnknownSigningKey):
                await validator.validate(fresh_idp.token(kid="unknown-1"))
            assert fresh_idp.jwks_fetches == 2
            for n in range(5):
                clock.offset = 32 + n
                with pytest.raises(UnknownSigningKey, match="refreshed less than 30 s ago"):
                    await validator.validate(fresh_idp.token(kid=f"unknown-{n + 2}"))
            assert fresh_idp.jwks_fetches == 2
            # A rotation inside the interval waits for it too; after it, one refetch finds the new key.
            fresh_idp.rotate("ES256")
            with pytest.raises(UnknownSigningKey):
                await validator.validate(fresh_idp.token(alg="ES256"))
            assert fresh_idp.jwks_fetches == 2
            clock.offset = 62
            assert (await validator.validate(fresh_idp.token(alg="ES256"))).sub == "researcher-1"
            assert fresh_idp.jwks_fetches == 3

    run(scenario())


def test_keys_are_reread_after_their_ttl_so_withdrawn_keys_stop_working(
    fresh_idp: LoopbackTestIssuer,
) -> None:
    clock = Clock()

    async def scenario() -> None:
        async with TokenValidator(oidc_for(fresh_idp), clock=clock) as validator:
            old_token = fresh_idp.token(ttl_s=int(JWKS_TTL_S) * 3)
            await validator.validate(old_token)
            fresh_idp.rotate("RS256")  # withdraws the key old_token was signed with
            await validator.validate(old_token)  # still cached
            clock.offset = JWKS_TTL_S + 1
            with pytest.raises(UnknownSigningKey):
                await validator.validate(old_token)
            assert fresh_idp.jwks_fetches == 2

    run(scenario())


def test_kidless_token_uses_the_single_key_of_its_type(fresh_idp: LoopbackTestIssuer) -> None:
    clock = Clock()

    async def scenario() -> None:
        async with TokenValidator(oidc_for(fresh_idp), clock=clock) as validator:
            kidless = fresh_idp.token(sub="kidless", alg="ES256", header={"kid": None})
            assert "kid" not in jwt_header(kidless)
            assert (await validator.validate(kidless)).sub == "kidless"
            fresh_idp.rotate("ES256", keep_old=True)
            clock.offset = 31
            await validator.validate(fresh_idp.token(alg="ES256"))  # its new kid makes the validator refetch
            ambiguous = fresh_idp.token(alg="ES256", header={"kid": None})
            with pytest.raises(UnknownSigningKey, match="names no kid"):
                await validator.validate(ambiguous)

    run(scenario())


def jwt_header(token: str) -> dict[str, object]:
    head = token.split(".")[0]
    header: dict[str, object] = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return header


def test_identity_provider_down_fails_closed() -> None:
    idp = LoopbackTestIssuer()
    token = idp.token()
    oidc = oidc_for(idp, http_timeout_s=1)
    idp.stop()

    async def scenario() -> None:
        async with TokenValidator(oidc) as validator:
            with pytest.raises(IdentityProviderUnavailable) as caught:
                await validator.validate(token)
            assert idp.issuer_url in caught.value.reason
            assert token not in str(caught.value)

    run(scenario())


@pytest.mark.parametrize("status", [500, 404, 302])
def test_identity_provider_error_answers_fail_closed(fresh_idp: LoopbackTestIssuer, status: int) -> None:
    fresh_idp.fail_status = status

    async def scenario() -> None:
        async with TokenValidator(oidc_for(fresh_idp)) as validator:
            with pytest.raises(IdentityProviderUnavailable, match=f"HTTP {status}"):
                await validator.validate(fresh_idp.token())

    run(scenario())


def test_failure_is_not_retried_by_every_request_but_recovers(fresh_idp: LoopbackTestIssuer) -> None:
    clock = Clock()
    fresh_idp.fail_status = 503

    async def scenario() -> None:
        async with TokenValidator(oidc_for(fresh_idp), clock=clock) as validator:
            for _ in range(5):
                with pytest.raises(IdentityProviderUnavailable):
                    await validator.validate(fresh_idp.token())
            fresh_idp.fail_status = None
            assert fresh_idp.discovery_fetches == 0  # failed answers are not counted
            clock.offset = 6
            assert (await validator.validate(fresh_idp.token())).sub == "researcher-1"

    run(scenario())


def test_cached_keys_survive_an_outage(fresh_idp: LoopbackTestIssuer) -> None:
    clock = Clock()

    async def scenario() -> None:
        async with TokenValidator(oidc_for(fresh_idp), clock=clock) as validator:
            token = fresh_idp.token(ttl_s=int(JWKS_TTL_S) * 3)
            await validator.validate(token)
            fresh_idp.fail_status = 503
            clock.offset = JWKS_TTL_S + 1  # stale: a refresh is tried, fails, the cached key still serves
            assert (await validator.validate(token)).sub == "researcher-1"
            assert fresh_idp.discovery_fetches == 1
            # An unknown kid cannot be resolved while the provider is down.
            clock.offset = JWKS_TTL_S + 100
            with pytest.raises((IdentityProviderUnavailable, UnknownSigningKey)):
                await validator.validate(fresh_idp.token(kid="unknown"))

    run(scenario())


def test_discovery_naming_another_issuer_is_refused(fresh_idp: LoopbackTestIssuer) -> None:
    fresh_idp.discovery_overrides = {"issuer": "https://impostor.example"}

    async def scenario() -> None:
        async with TokenValidator(oidc_for(fresh_idp)) as validator:
            with pytest.raises(IdentityProviderUnavailable, match="different issuer"):
                await validator.validate(fresh_idp.token())
        assert fresh_idp.jwks_fetches == 0

    run(scenario())


def test_jwks_uri_over_plain_http_off_loopback_is_refused(fresh_idp: LoopbackTestIssuer) -> None:
    fresh_idp.discovery_overrides = {"jwks_uri": "http://keys.example.org/jwks"}

    async def scenario() -> None:
        async with TokenValidator(oidc_for(fresh_idp)) as validator:
            with pytest.raises(IdentityProviderUnavailable, match="https jwks_uri"):
                await validator.validate(fresh_idp.token())

    run(scenario())


def test_symmetric_and_encryption_keys_in_the_jwks_are_ignored() -> None:
    from gateway.auth.jwks import keys_from_jwks

    with LoopbackTestIssuer() as idp:
        published = idp.jwks()["keys"]
    rsa = next(k for k in published if k["kty"] == "RSA")
    document = {
        "keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**rsa, "kid": "enc", "use": "enc"},
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
            "not a key",
            rsa,
        ]
    }
    assert [k.kid for k in keys_from_jwks(document)] == [rsa["kid"]]
