"""UnsafeDevTokenIssuer: signs tokens for anyone who can run a command on this machine — development only.

It exists so a developer can try a gateway without an identity provider. It refuses to exist unless the
site's settings say `dev_mode = true` and the server listens on loopback only, warns every time it is
built, and its tokens carry an issuer name no identity provider uses, so they validate only in a gateway
that was itself started in dev mode (TokenValidator.for_site adds its key only then).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from joserfc import jwt
from joserfc.jwk import OKPKey

from gateway.auth.errors import DevIssuerKeyError, UnsafeDevIssuerRefused
from gateway.auth.jwks import StaticKeys
from gateway.auth.principal import ROLES
from gateway.auth.signature import registry_for
from gateway.countries import is_country
from gateway.settings import OidcSettings, SiteSettings

log = logging.getLogger("gateway.auth")

KEY_FILE_NAME = "dev-issuer.key"
MAX_TTL_S = 86_400
_ALG = "EdDSA"


def dev_issuer_name(site_id: str) -> str:
    """The `iss` of the site's dev tokens; no identity provider can be configured with this name."""
    return f"urn:fedgate:unsafe-dev-issuer:{site_id}"


def dev_audience(settings: SiteSettings) -> str:
    """The `aud` of dev tokens: the configured audience, or one naming the site when there is no [oidc]."""
    return settings.oidc.audience if settings.oidc else f"urn:fedgate:site:{settings.site_id}"


def dev_key_path(settings: SiteSettings) -> Path:
    """Beside the gateway's state database (or beside the log key when state is not a SQLite file)."""
    if settings.state_url.startswith("sqlite:///"):
        return Path(settings.state_url.removeprefix("sqlite:///").split("?")[0]).parent / KEY_FILE_NAME
    return settings.log_key_file.parent / KEY_FILE_NAME


def _set_at(claims: dict[str, Any], path: str, value: Any) -> None:
    # The validator reads roles/org/country at the configured dotted paths; dev tokens put them there.
    *parents, last = path.split(".")
    node = claims
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _load_or_create_key(path: Path) -> Ed25519PrivateKey:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _load_key(path)
    except OSError as exc:
        raise DevIssuerKeyError(f"{path}: cannot create the dev issuer key: {exc.strerror}") from None
    key = Ed25519PrivateKey.generate()
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        f.flush()
        os.fsync(f.fileno())
    log.warning("created the unsafe dev issuer key %s", path)
    return key


def _load_key(path: Path) -> Ed25519PrivateKey:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise DevIssuerKeyError(f"{path}: cannot read the dev issuer key: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DevIssuerKeyError(f"{path}: the dev issuer key is accessible by group or others; chmod 600 it")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # An empty file is what a concurrent first use leaves for a moment; it is not a key either way.
        raise DevIssuerKeyError(f"{path}: not an unencrypted PKCS#8 PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise DevIssuerKeyError(f"{path}: the dev issuer key is not an Ed25519 key")
    return key


class UnsafeDevTokenIssuer:
    """Issues tokens with any identity and roles, signed by a key file on this machine. Development only."""

    def __init__(self, settings: SiteSettings, *, clock: Any = time.time) -> None:
        if not settings.dev_mode:
            raise UnsafeDevIssuerRefused(
                "dev tokens need `dev_mode = true` in the site config; "
                "production sites use an identity provider"
            )
        if not settings.server.is_loopback:
            raise UnsafeDevIssuerRefused(
                f"dev tokens are refused because [server] host {settings.server.host!r} is not a loopback "
                "address; bind to 127.0.0.1 or use an identity provider"
            )
        log.warning(
            "UNSAFE: the dev token issuer is in use for site %s; anyone on this machine can mint any "
            "identity. Never run a gateway with dev_mode beyond development.",
            settings.site_id,
        )
        self.issuer = dev_issuer_name(settings.site_id)
        self.audience = dev_audience(settings)
        self.key_path = dev_key_path(settings)
        self._rules = settings.oidc or OidcSettings.model_construct(issuer="", audience="")
        self._clock = clock
        private = _load_or_create_key(self.key_path)
        pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        self._key = OKPKey.import_key(pem)
        self._kid = self._key.thumbprint()

    def verification_keys(self) -> StaticKeys:
        """The public key, for `TokenValidator(extra_keys=...)`; tokens it verifies are marked dev."""
        public = OKPKey.import_key(self._key.as_dict(private=False, kid=self._kid, use="sig", alg=_ALG))
        return StaticKeys(issuer=self.issuer, audience=self.audience, keys=(public,), dev=True)

    def issue(self, sub: str, org: str, country: str, roles: Iterable[str], ttl_s: int = 3600) -> str:
        """A signed token for the given identity; ValueError when an argument is unusable."""
        roles = sorted(set(roles))
        if not sub.strip() or len(sub) > 256 or not org.strip() or len(org) > 256:
            raise ValueError("sub and org must be non-empty and at most 256 characters")
        if not is_country(country):
            raise ValueError("country must be an ISO 3166-1 alpha-2 code such as 'DE'")
        if not roles or not set(roles) <= set(ROLES):
            raise ValueError(f"roles must be one or more of {', '.join(ROLES)}")
        if not 1 <= ttl_s <= MAX_TTL_S:
            raise ValueError(f"ttl must be between 1 and {MAX_TTL_S} seconds")
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": secrets.token_urlsafe(16),
        }
        _set_at(claims, self._rules.org_claim, org)
        _set_at(claims, self._rules.country_claim, country)
        _set_at(claims, self._rules.roles_claim, roles)
        header = {"alg": _ALG, "kid": self._kid}
        return jwt.encode(header, claims, self._key, registry=registry_for(_ALG))
