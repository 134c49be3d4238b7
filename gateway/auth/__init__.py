"""Authentication and roles: OIDC bearer tokens validated against the issuer's JWKS, into a Principal.

Public API (import from `gateway.auth`):

- `bearer_token(authorization_header) -> str` (MissingToken / MalformedToken)
- `TokenValidator(oidc, *, http=None, clock=time.time, extra_keys=None)`, `await .validate(token) ->
  Principal`, `TokenValidator.for_site(settings)` (adds the dev issuer's key when dev_mode is on),
  `await .aclose()`
- `Principal` (sub, org, country, roles, visas, issuer, dev, dropped_visas, visa_notes), `.to_requester()`
- `require_role(principal, "researcher" | "steward" | "auditor")` (Forbidden)
- `token_digest(token)` for the `auth.failed` audit entry; the errors of gateway.auth.errors
- `UnsafeDevTokenIssuer` (gateway.auth.dev): development only, dev_mode and loopback only
"""

from __future__ import annotations

from gateway.auth.bearer import bearer_token, header_digest, token_digest
from gateway.auth.errors import (
    AuthError,
    BadClaim,
    BadSignature,
    DevIssuerError,
    DevIssuerKeyError,
    Forbidden,
    IdentityProviderUnavailable,
    IssuedInFuture,
    MalformedToken,
    MissingClaim,
    MissingToken,
    NotAuthenticated,
    TokenExpired,
    TokenNotYetValid,
    TokenTooOld,
    UnknownSigningKey,
    UnsafeDevIssuerRefused,
    UnsupportedAlgorithm,
    WrongAudience,
    WrongIssuer,
)
from gateway.auth.jwks import StaticKeys
from gateway.auth.principal import ROLES, Principal, Role, require_role
from gateway.auth.validator import TokenValidator

__all__ = [
    "ROLES",
    "AuthError",
    "BadClaim",
    "BadSignature",
    "DevIssuerError",
    "DevIssuerKeyError",
    "Forbidden",
    "IdentityProviderUnavailable",
    "IssuedInFuture",
    "MalformedToken",
    "MissingClaim",
    "MissingToken",
    "NotAuthenticated",
    "Principal",
    "Role",
    "StaticKeys",
    "TokenExpired",
    "TokenNotYetValid",
    "TokenTooOld",
    "TokenValidator",
    "UnknownSigningKey",
    "UnsafeDevIssuerRefused",
    "UnsupportedAlgorithm",
    "WrongAudience",
    "WrongIssuer",
    "bearer_token",
    "header_digest",
    "require_role",
    "token_digest",
]
