"""TokenValidator: a bearer token in, a Principal out, or a typed AuthError saying why not."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

from gateway.auth.claims import (
    check_audience,
    check_issuer,
    check_times,
    claim_at,
    country_claim,
    name_claim,
    roles_claim,
)
from gateway.auth.errors import BadClaim, WrongIssuer
from gateway.auth.jwks import DiscoveredKeys, KeySource, StaticKeys, is_fetchable, normalize_issuer
from gateway.auth.principal import Principal
from gateway.auth.signature import SUPPORTED_ALGORITHMS, check_algorithm, parse_token, verify_signature
from gateway.auth.visas import VisaIdentity, VisaOutcome, verify_visas
from gateway.settings import OidcSettings

if TYPE_CHECKING:
    from gateway.settings import SiteSettings

log = logging.getLogger("gateway.auth")


class TokenValidator:
    """Validates bearer tokens of the configured identity provider (and of `extra_keys` issuers).

    Keys come from OIDC discovery and are cached per issuer (see gateway.auth.jwks); one validator is
    shared by all requests of an app and closed with `aclose()` when it owns its HTTP client.
    """

    def __init__(
        self,
        oidc: OidcSettings | None,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        extra_keys: StaticKeys | Iterable[StaticKeys] | None = None,
    ) -> None:
        # Without an [oidc] table (a dev-mode site) claims are read where the settings' defaults say.
        rules = oidc if oidc is not None else OidcSettings.model_construct(issuer="", audience="")
        self._rules = rules
        self._clock = clock
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=rules.http_timeout_s, follow_redirects=False)
        self._algorithms = frozenset(rules.algorithms)

        self._sources: dict[str, tuple[KeySource, str, bool]] = {}
        self._idp: DiscoveredKeys | None = None
        if oidc is not None:
            self._idp = self._discovered(oidc.issuer)
            self._sources[self._idp.issuer] = (self._idp, oidc.audience, False)
        if isinstance(extra_keys, StaticKeys):
            extra_keys = (extra_keys,)
        for static in extra_keys or ():
            self._sources[normalize_issuer(static.issuer)] = (static, static.audience, static.dev)

        self._visa_sources: dict[str, KeySource] = {}
        for issuer in rules.trusted_visa_issuers:
            if not is_fetchable(issuer):
                log.warning("ignoring trusted visa issuer %s: its keys would travel without https", issuer)
                continue
            name = normalize_issuer(issuer)
            # The provider may sign visas too; one key cache per issuer, so one fetch serves both.
            shared = self._idp is not None and self._idp.issuer == name
            self._visa_sources[name] = self._idp if shared and self._idp else self._discovered(name)

    @classmethod
    def for_site(
        cls,
        settings: SiteSettings,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> TokenValidator:
        """The site's validator: its [oidc] provider, plus the unsafe dev issuer's key when dev_mode is on.

        Raises UnsafeDevIssuerRefused when dev_mode is on but the server listens beyond loopback.
        """
        extra: list[StaticKeys] = []
        if settings.dev_mode:
            from gateway.auth.dev import UnsafeDevTokenIssuer

            extra.append(UnsafeDevTokenIssuer(settings).verification_keys())
        return cls(settings.oidc, http=http, clock=clock, extra_keys=extra)

    def _discovered(self, issuer: str) -> DiscoveredKeys:
        return DiscoveredKeys(
            issuer,
            http=self._http,
            clock=self._clock,
            min_refresh_s=self._rules.jwks_min_refresh_s,
            timeout_s=self._rules.http_timeout_s,
        )

    @property
    def issuers(self) -> tuple[str, ...]:
        """The issuers whose tokens this validator accepts."""
        return tuple(self._sources)

    async def validate(self, token: str) -> Principal:
        """Verify signature and claims; the Principal, or an AuthError whose reason never holds the token."""
        unverified = parse_token(token)
        iss = unverified.claims.get("iss")
        entry = self._sources.get(normalize_issuer(iss)) if isinstance(iss, str) else None
        if entry is None:
            accepted = ", ".join(self._sources) or "none: [oidc] is not configured"
            raise WrongIssuer(f"the token's issuer is not one this gateway accepts ({accepted})")
        source, audience, dev = entry
        check_algorithm(unverified.alg, SUPPORTED_ALGORITHMS if dev else self._algorithms)
        key = await source.key(unverified.kid, unverified.alg)
        verify_signature(token, unverified, key)

        claims = unverified.claims  # verified from here on
        check_issuer(claims, source.issuer)
        check_audience(claims, audience)
        now = self._clock()
        check_times(claims, now, self._rules.leeway_s, self._rules.max_token_age_s)
        sub = name_claim(claims, "sub")
        org = name_claim(claims, self._rules.org_claim)
        country = country_claim(claims, self._rules.country_claim)
        roles = roles_claim(claims, self._rules.roles_claim)
        holder = VisaIdentity(sub=sub, iss=source.issuer)
        outcome = await self._visas(claim_at(claims, self._rules.visas_claim), holder, now)
        if outcome.dropped:
            log.info("dropped %d passport visa(s): %s", outcome.dropped, "; ".join(outcome.notes))
        return Principal(
            sub=sub,
            org=org,
            country=country,
            roles=roles,
            visas=outcome.visas,
            issuer=source.issuer,
            dev=dev,
            dropped_visas=outcome.dropped,
            visa_notes=outcome.notes,
        )

    async def _visas(self, raw: object, holder: VisaIdentity, now: float) -> VisaOutcome:
        if raw is None:
            return VisaOutcome()
        if not isinstance(raw, list):
            raise BadClaim(self._rules.visas_claim, "a list of visa JWTs")
        return await verify_visas(
            raw,
            holder=holder,
            sources=self._visa_sources.get,
            algorithms=self._algorithms,
            now=now,
            leeway_s=self._rules.leeway_s,
        )

    async def aclose(self) -> None:
        """Close the HTTP client if this validator created it."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> TokenValidator:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
