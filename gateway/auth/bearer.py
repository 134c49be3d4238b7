"""The bearer credentials of an Authorization header (RFC 6750), and a digest that stands in for them."""

from __future__ import annotations

import hashlib
import re

from gateway.auth.errors import MalformedToken, MissingToken

# RFC 6750 §2.1 b64token; a compact JWS uses only its base64url subset and dots.
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
MAX_TOKEN_BYTES = 64 * 1024


def bearer_token(authorization_header: str | None) -> str:
    """The token of `Authorization: Bearer <token>`; MissingToken or MalformedToken otherwise."""
    if authorization_header is None or not authorization_header.strip():
        raise MissingToken("the request has no Authorization header; send 'Authorization: Bearer <token>'")
    scheme, credentials = _split(authorization_header)
    if scheme.lower() != "bearer":
        raise MissingToken("the Authorization header does not use the Bearer scheme")
    if not credentials:
        raise MissingToken("the Authorization header has no bearer token")
    if len(credentials) > MAX_TOKEN_BYTES:
        raise MalformedToken(f"the bearer token is longer than {MAX_TOKEN_BYTES} bytes")
    if not _B64TOKEN.match(credentials):
        raise MalformedToken("the bearer token has characters a bearer token cannot hold")
    return credentials


def token_digest(token: str) -> str:
    """`sha256:<hex>` of a token for the `auth.failed` entry: links retries, reveals nothing."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def header_digest(authorization_header: str) -> str:
    """`token_digest` of what an Authorization header sends: its bearer credentials whatever the scheme's
    case (`bearer` and `Bearer` send the same token), else the whole header."""
    scheme, credentials = _split(authorization_header)
    return token_digest(credentials if scheme.lower() == "bearer" else authorization_header.strip())


def _split(authorization_header: str) -> tuple[str, str]:
    scheme, _, credentials = authorization_header.strip().partition(" ")
    return scheme, credentials.strip()
