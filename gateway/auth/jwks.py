"""Signing keys per issuer: OIDC discovery and a cached JWKS, refetched on an unknown kid at most once per
interval; or a fixed key set for an issuer that needs no discovery (the unsafe dev issuer).

Every fetch happens under one asyncio.Lock per issuer, so a burst of requests that all find the cache empty
or a kid unknown causes one discovery and one JWKS fetch, not one per request. Only asymmetric signature
keys are kept: a JWKS entry of type `oct`, for encryption, or holding private parameters is skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey, import_key

from gateway.auth.errors import IdentityProviderUnavailable, UnknownSigningKey
from gateway.auth.signature import key_fits

log = logging.getLogger("gateway.auth")

DISCOVERY_PATH = "/.well-known/openid-configuration"
# Keys are re-read at least this often so a key the provider withdrew stops being trusted.
JWKS_TTL_S = 3600.0
# After a failed fetch, requests fail fast for this long instead of each waiting for the timeout again.
RETRY_AFTER_FAILURE_S = 5.0
_MAX_DOCUMENT_BYTES = 1024 * 1024


def normalize_issuer(issuer: str) -> str:
    """Issuer names compare without a trailing slash (settings strip it; some providers keep it)."""
    return issuer.rstrip("/")


def is_fetchable(url: str) -> bool:
    """https anywhere, plain http only on a loopback address: keys must not travel unprotected."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


class KeySource(Protocol):
    """Where the keys of one issuer come from."""

    @property
    def issuer(self) -> str:
        """The issuer name the keys belong to."""
        ...

    async def key(self, kid: str | None, alg: str) -> Key:
        """The key a token names (by kid, or the single key fitting alg when it names none)."""
        ...


def _usable(entry: Mapping[str, Any]) -> Key | None:
    if entry.get("kty") not in ("RSA", "EC", "OKP") or entry.get("use") not in (None, "sig"):
        return None
    if "d" in entry:
        return None
    try:
        key = import_key(dict(entry))
    except (JoseError, ValueError, TypeError, KeyError):
        return None
    return key if isinstance(key, RSAKey | ECKey | OKPKey) else None


def keys_from_jwks(document: Mapping[str, Any]) -> list[Key]:
    """The asymmetric public signature keys of a JWKS document; unusable entries are skipped."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("not a JWKS: no 'keys' list")
    keys = [key for entry in entries if isinstance(entry, dict) and (key := _usable(entry)) is not None]
    return keys


def _find(keys: Iterable[Key], kid: str | None, alg: str) -> Key | None:
    if kid is not None:
        named = [k for k in keys if k.kid == kid]
        # Some providers reuse a kid across key types; the one that fits alg wins, else the mismatch shows.
        return next((k for k in named if key_fits(alg, k)), named[0] if named else None)
    # Without a kid the choice must be unambiguous; trying every key would let one kid-less token probe all.
    fitting = [k for k in keys if key_fits(alg, k)]
    return fitting[0] if len(fitting) == 1 else None


def _unknown(issuer: str, kid: str | None, alg: str, why: str) -> UnknownSigningKey:
    if kid is None:
        return UnknownSigningKey(f"the token names no kid and {issuer} has no single {alg} key{why}")
    return UnknownSigningKey(f"the token's kid is not among the signing keys of {issuer}{why}")


@dataclass(frozen=True)
class StaticKeys:
    """A fixed key set for an issuer that is not discovered; `dev` marks the unsafe dev issuer."""

    issuer: str
    audience: str
    keys: tuple[Key, ...]
    dev: bool = False

    async def key(self, kid: str | None, alg: str) -> Key:
        found = _find(self.keys, kid, alg)
        if found is None:
            raise _unknown(self.issuer, kid, alg, "")
        return found


class DiscoveredKeys:
    """The signing keys of an OIDC issuer, found through discovery and cached."""

    def __init__(
        self,
        issuer: str,
        *,
        http: httpx.AsyncClient,
        clock: Callable[[], float],
        min_refresh_s: float,
        timeout_s: float,
    ) -> None:
        self.issuer = normalize_issuer(issuer)
        self._http = http
        self._clock = clock
        self._min_refresh_s = min_refresh_s
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._jwks_uri: str | None = None
        self._keys: list[Key] = []
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._failure: str | None = None

    def _fresh(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < JWKS_TTL_S

    def _may_fetch(self, now: float) -> bool:
        if self._attempted_at is None:
            return True
        retry = min(RETRY_AFTER_FAILURE_S, self._min_refresh_s)
        wait = retry if self._failure or not self._fresh(now) else self._min_refresh_s
        return now - self._attempted_at >= wait

    async def key(self, kid: str | None, alg: str) -> Key:
        found = _find(self._keys, kid, alg)
        if found is not None and self._fresh(self._clock()):
            return found
        async with self._lock:
            # Another request may have refreshed while this one waited for the lock.
            now = self._clock()
            found = _find(self._keys, kid, alg)
            if found is not None and self._fresh(now):
                return found
            if not self._may_fetch(now):
                if found is not None:
                    return found
                if self._failure is not None:
                    raise IdentityProviderUnavailable(self._failure)
                raise _unknown(
                    self.issuer, kid, alg, f" (keys refreshed less than {self._min_refresh_s:g} s ago)"
                )
            try:
                await self._refresh(now)
            except IdentityProviderUnavailable as exc:
                if found is not None:
                    log.warning("keeping cached keys of %s: refresh failed: %s", self.issuer, exc.reason)
                    return found
                raise
            found = _find(self._keys, kid, alg)
            if found is None:
                raise _unknown(self.issuer, kid, alg, "")
            return found

    async def _refresh(self, now: float) -> None:
        self._attempted_at = now
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            try:
                keys = keys_from_jwks(await self._get_json(self._jwks_uri, "JWKS"))
            except ValueError:
                raise self._unavailable("its JWKS is not a key set") from None
            except IdentityProviderUnavailable:
                # The provider may have moved its keys; discover again next time.
                self._jwks_uri = None
                raise
        except IdentityProviderUnavailable as exc:
            self._failure = exc.reason
            log.warning("identity provider keys unavailable: %s", exc.reason)
            raise
        self._keys = keys
        self._fetched_at = now
        self._failure = None
        log.info("fetched %d signing keys of %s", len(keys), self.issuer)

    async def _discover(self) -> str:
        document = await self._get_json(self.issuer + DISCOVERY_PATH, "discovery document")
        named = document.get("issuer")
        if not isinstance(named, str) or normalize_issuer(named) != self.issuer:
            raise self._unavailable("its discovery document names a different issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not is_fetchable(jwks_uri):
            raise self._unavailable("its discovery document has no https jwks_uri")
        return jwks_uri

    def _unavailable(self, why: str) -> IdentityProviderUnavailable:
        return IdentityProviderUnavailable(f"identity provider {self.issuer} cannot be used: {why}")

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = await self._http.get(
                url, timeout=self._timeout_s, headers={"Accept": "application/json"}, follow_redirects=False
            )
        except httpx.TimeoutException:
            raise self._unavailable(f"fetching its {what} timed out") from None
        except httpx.HTTPError as exc:
            raise self._unavailable(f"fetching its {what} failed ({type(exc).__name__})") from None
        if not response.is_success:
            raise self._unavailable(f"its {what} answered HTTP {response.status_code}")
        if len(response.content) > _MAX_DOCUMENT_BYTES:
            raise self._unavailable(f"its {what} is larger than {_MAX_DOCUMENT_BYTES} bytes")
        try:
            document = response.json()
        except ValueError:
            raise self._unavailable(f"its {what} is not JSON") from None
        if not isinstance(document, dict):
            raise self._unavailable(f"its {what} is not a JSON object")
        return document
