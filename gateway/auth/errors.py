"""Why a request is not authenticated or not authorized: one small tree whose texts are safe to log.

Every error carries `.code`, a short label for the `auth.failed` audit entry's `reason` field, and
`.reason`, one sentence for the audit log and the HTTP problem body. Neither ever holds the token, a
signature, or a claim value other than the configured issuer or audience names. `.bearer_error` is the
RFC 6750 `error` attribute of the `WWW-Authenticate` challenge, or None when the challenge has none.

    AuthError                              .code .reason .bearer_error
    ├── NotAuthenticated                   the request did not prove who sends it (401)
    │   ├── MissingToken                   no Authorization header, or no bearer credentials in it
    │   ├── MalformedToken                 not a compact JWS, bad base64/JSON, bad header, too large
    │   ├── UnsupportedAlgorithm           alg outside the allow-list, or not matching the key's type
    │   ├── UnknownSigningKey              no key of the issuer's JWKS has the token's kid
    │   ├── BadSignature                   the signature does not verify
    │   ├── WrongIssuer                    iss is not the configured identity provider
    │   ├── WrongAudience                  aud does not name this gateway
    │   ├── TokenExpired                   exp is past (beyond the leeway)
    │   ├── TokenNotYetValid               nbf is ahead (beyond the leeway)
    │   ├── IssuedInFuture                 iat is ahead (beyond the leeway)
    │   ├── TokenTooOld                    iat is older than max_token_age_s
    │   ├── MissingClaim                   a required claim is absent (.claim names it)
    │   └── BadClaim                       a claim has the wrong type or shape (.claim names it)
    ├── IdentityProviderUnavailable        discovery or JWKS could not be fetched or used (503)
    └── Forbidden                          authenticated, but without the role the endpoint needs (403)

    DevIssuerError                         the unsafe dev-token issuer cannot be used (a setup problem)
    ├── UnsafeDevIssuerRefused             dev_mode is off, or the server listens beyond loopback
    └── DevIssuerKeyError                  the dev issuer's key file cannot be created or read
"""

from __future__ import annotations


class AuthError(Exception):
    """A request is refused by authentication or authorization; the texts are safe to log."""

    code = "auth.failed"
    bearer_error: str | None = "invalid_token"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class NotAuthenticated(AuthError):
    """The request did not prove who sends it."""


class MissingToken(NotAuthenticated):
    code = "auth.missing_token"
    # RFC 6750 §3.1: a request without credentials gets a challenge without an error code.
    bearer_error = None


class MalformedToken(NotAuthenticated):
    code = "auth.malformed_token"


class UnsupportedAlgorithm(NotAuthenticated):
    code = "auth.unsupported_algorithm"


class UnknownSigningKey(NotAuthenticated):
    code = "auth.unknown_signing_key"


class BadSignature(NotAuthenticated):
    code = "auth.bad_signature"


class WrongIssuer(NotAuthenticated):
    code = "auth.wrong_issuer"


class WrongAudience(NotAuthenticated):
    code = "auth.wrong_audience"


class TokenExpired(NotAuthenticated):
    code = "auth.token_expired"


class TokenNotYetValid(NotAuthenticated):
    code = "auth.token_not_yet_valid"


class IssuedInFuture(NotAuthenticated):
    code = "auth.issued_in_future"


class TokenTooOld(NotAuthenticated):
    code = "auth.token_too_old"


class MissingClaim(NotAuthenticated):
    """A required claim is absent; `.claim` names it (the name, never a value)."""

    code = "auth.missing_claim"

    def __init__(self, claim: str, reason: str | None = None) -> None:
        self.claim = claim
        super().__init__(reason or f"token has no {claim!r} claim")


class BadClaim(NotAuthenticated):
    """A claim is present but unusable; `.claim` names it and `.reason` says what shape was expected."""

    code = "auth.bad_claim"

    def __init__(self, claim: str, expected: str) -> None:
        self.claim = claim
        super().__init__(f"token claim {claim!r} must be {expected}")


class IdentityProviderUnavailable(AuthError):
    """Discovery or the JWKS could not be fetched or made sense of; the request cannot be decided."""

    code = "auth.idp_unavailable"
    bearer_error = None


class Forbidden(AuthError):
    """Authenticated, but the endpoint needs a role the principal does not hold; `.role` names it."""

    code = "auth.forbidden"
    bearer_error = "insufficient_scope"

    def __init__(self, role: str) -> None:
        self.role = role
        super().__init__(f"this endpoint requires the {role} role")


class DevIssuerError(Exception):
    """The unsafe dev-token issuer cannot be used; the message says why and what to change."""


class UnsafeDevIssuerRefused(DevIssuerError):
    """dev_mode is off, or the gateway listens on a non-loopback address."""


class DevIssuerKeyError(DevIssuerError):
    """The dev issuer's key file cannot be created or read."""
