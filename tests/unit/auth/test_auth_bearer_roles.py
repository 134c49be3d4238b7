"""The Authorization header parser, the role check and the error texts every refusal carries."""

from __future__ import annotations

import pytest

from gateway.auth import (
    AuthError,
    Forbidden,
    IdentityProviderUnavailable,
    MalformedToken,
    MissingToken,
    NotAuthenticated,
    Principal,
    bearer_token,
    require_role,
    token_digest,
)
from gateway.auth import errors as auth_errors

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"  BEARER   {TOKEN}  "])
def test_bearer_token_is_taken_from_the_header(header: str) -> None:
    assert bearer_token(header) == TOKEN


@pytest.mark.parametrize("header", [None, "", "   ", "Bearer", "Bearer   ", f"Basic {TOKEN}", TOKEN])
def test_missing_bearer_credentials(header: str | None) -> None:
    with pytest.raises(MissingToken) as caught:
        bearer_token(header)
    assert caught.value.bearer_error is None
    assert TOKEN not in caught.value.reason


@pytest.mark.parametrize("credentials", [f"{TOKEN} extra", f"{TOKEN}\x00", "tok€n", "x" * (64 * 1024 + 1)])
def test_malformed_bearer_credentials(credentials: str) -> None:
    with pytest.raises(MalformedToken) as caught:
        bearer_token(f"Bearer {credentials}")
    assert credentials not in caught.value.reason and TOKEN not in caught.value.reason


def _principal(*roles: str) -> Principal:
    return Principal(sub="s", org="o", country="DE", roles=frozenset(roles), visas=(), issuer="https://idp")


def test_require_role_passes_or_names_the_missing_role() -> None:
    require_role(_principal("researcher", "steward"), "steward")
    with pytest.raises(Forbidden) as caught:
        require_role(_principal("researcher"), "auditor")
    assert caught.value.role == "auditor"
    assert caught.value.reason == "this endpoint requires the auditor role"
    assert caught.value.code == "auth.forbidden" and caught.value.bearer_error == "insufficient_scope"
    with pytest.raises(Forbidden):
        require_role(_principal(), "researcher")


def test_error_tree_separates_401_503_and_403() -> None:
    assert issubclass(MissingToken, NotAuthenticated)
    assert not issubclass(IdentityProviderUnavailable, NotAuthenticated)
    assert not issubclass(Forbidden, NotAuthenticated)
    assert all(issubclass(e, AuthError) for e in (NotAuthenticated, IdentityProviderUnavailable, Forbidden))


def test_every_error_code_fits_the_audit_reason_label() -> None:
    from audit.events import validate_payload

    errors = [
        cls for cls in vars(auth_errors).values() if isinstance(cls, type) and issubclass(cls, AuthError)
    ]
    assert len(errors) >= 17
    for cls in errors:
        validate_payload("auth.failed", {"reason": cls.code, "token_digest": token_digest(TOKEN)})
    assert len({cls.code for cls in errors if cls not in (AuthError, NotAuthenticated)}) == len(errors) - 2


def test_token_digest_is_stable_and_reveals_nothing() -> None:
    digest = token_digest(TOKEN)
    assert digest == token_digest(TOKEN) and digest != token_digest(TOKEN + "x")
    assert digest.startswith("sha256:") and TOKEN not in digest and len(digest) == 71
