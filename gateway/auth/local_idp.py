"""UNSAFE: a stand-in OIDC identity provider for tests and `make demo`: discovery and JWKS on loopback only.

It is NOT a certified OpenID provider: it has no login, no authorization endpoint, no token endpoint. It
serves what a relying party reads — `/.well-known/openid-configuration` and the JWKS — and signs tokens and
GA4GH visas with its own keys, generated at start (nothing is committed):

    from gateway.auth.local_idp import UnsafeLocalIdentityProvider

    with UnsafeLocalIdentityProvider(audience="fedgate-test") as idp:
        oidc = OidcSettings(issuer=idp.issuer_url, audience="fedgate-test")
        token = idp.token(sub="alice", org="Uni Example", country="DE", roles=["researcher"])
        visa = idp.visa("ControlledAccessGrants", "https://dac.example.org/datasets/cohort")
        token_with_visa = idp.token(visas=[visa])
        link = idp.linked_identities(("alice-at-dac", "https://dac.example.org"), sub="alice")
        expired = idp.token(exp=int(time.time()) - 3600)      # any claim can be overridden ...
        no_org = idp.token(omit=["org"])                        # ... or left out
        idp.rotate("RS256")                                     # new RS256 key and kid, old one withdrawn
        idp.discovery_fetches, idp.jwks_fetches                 # how often a validator fetched
        idp.fail_status = 503                                   # every request now answers 503

Keys: one RSA-2048 (RS256), one EC P-256 (ES256) and one Ed25519 (EdDSA) key, each with its own kid
(`idp.kid(alg)`). `roles_claim` (a dotted path) says where `token()` puts the roles, as the gateway's
`[oidc] roles_claim` would read them. `sign(claims, alg=..., kid=..., header=...)` signs any claims
as-is; header={"kid": None} signs without a kid. Use it as a context manager, or call `stop()`;
`discovery_overrides` replaces fields of the discovery document (e.g. a different `issuer`) to test a
misconfigured provider.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

from joserfc import jws
from joserfc.jwk import ECKey, Key, KeyParameters, OKPKey, RSAKey

from gateway.auth.signature import registry_for
from gateway.problems import OK, STATUS

ALGORITHMS = ("RS256", "ES256", "EdDSA")
log = logging.getLogger("fedgate.auth")


def _new_key(alg: str) -> Key:
    kid = f"{alg.lower()}-{uuid.uuid4().hex[:12]}"
    params: KeyParameters = {"kid": kid, "use": "sig", "alg": alg}
    if alg == "RS256":
        return RSAKey.generate_key(2048, parameters=params)
    if alg == "ES256":
        return ECKey.generate_key("P-256", parameters=params)
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519", parameters=params)
    raise ValueError(f"the test issuer signs with {ALGORITHMS}, not {alg}")


def _set_at(claims: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = claims
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


class UnsafeLocalIdentityProvider:
    """An identity provider that signs any token asked of it, on a free 127.0.0.1 port only.

    It exists for tests and the demo; nothing in a deployed gateway may trust it. See the module docstring.
    """

    def __init__(self, audience: str = "fedgate-test", *, roles_claim: str = "roles", path: str = "") -> None:
        self.audience = audience
        self.roles_claim = roles_claim
        self.discovery_overrides: dict[str, Any] = {}
        self.fail_status: int | None = None
        self._path = path.rstrip("/")
        self._lock = threading.Lock()
        self._discovery_fetches = 0
        self._jwks_fetches = 0
        self._signing: dict[str, Key] = {alg: _new_key(alg) for alg in ALGORITHMS}
        self._published: list[Key] = list(self._signing.values())
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        self._stopped = False
        log.warning("UnsafeLocalIdentityProvider serving at %s: for tests and demos only", self.issuer_url)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self) -> UnsafeLocalIdentityProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving and free the port (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- what a relying party sees -----------------------------------------------------------------------

    @property
    def issuer_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{self._path}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer_url}/jwks"

    @property
    def discovery_fetches(self) -> int:
        with self._lock:
            return self._discovery_fetches

    @property
    def jwks_fetches(self) -> int:
        with self._lock:
            return self._jwks_fetches

    def discovery_document(self) -> dict[str, Any]:
        document = {
            "issuer": self.issuer_url,
            "jwks_uri": self.jwks_uri,
            "id_token_signing_alg_values_supported": list(ALGORITHMS),
            "subject_types_supported": ["public"],
            "response_types_supported": ["code"],
        }
        document.update(self.discovery_overrides)
        return document

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [key.as_dict(private=False) for key in self._published]}

    # -- keys --------------------------------------------------------------------------------------------

    def kid(self, alg: str = "RS256") -> str:
        """The kid of the key currently signing `alg` tokens."""
        return str(self._signing[alg].kid)

    def public_pem(self, alg: str = "RS256") -> bytes:
        """The PEM public key of `alg` (what an HMAC key-confusion attacker would use as the secret)."""
        key = self._signing[alg]
        assert isinstance(key, RSAKey | ECKey | OKPKey)
        return key.as_pem(private=False)

    def rotate(self, alg: str = "RS256", *, keep_old: bool = False) -> str:
        """Sign `alg` tokens with a new key (new kid), published at once; returns the new kid."""
        new = _new_key(alg)
        with self._lock:
            old = self._signing[alg]
            self._signing[alg] = new
            if not keep_old:
                self._published = [k for k in self._published if k.kid != old.kid]
            self._published.append(new)
        return str(new.kid)

    # -- tokens ------------------------------------------------------------------------------------------

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        alg: str = "RS256",
        kid: str | None = None,
        header: Mapping[str, Any] | None = None,
    ) -> str:
        """Sign `claims` as given with the current `alg` key; `kid` replaces the header's kid, `header`
        adds entries (an entry set to None is removed: header={"kid": None} signs without a kid)."""
        key = self._signing[alg]
        protected = {"alg": alg, "kid": kid or key.kid, **(header or {})}
        protected = {"typ": "JWT", **{name: value for name, value in protected.items() if value is not None}}
        # ASCII JSON (the escapes decode to the same claims): a test can sign what a provider's JSON may
        # hold and UTF-8 cannot, such as a lone surrogate's `\\ud800`.
        payload = json.dumps(dict(claims), separators=(",", ":")).encode()
        return jws.serialize_compact(protected, payload, key, registry=registry_for(alg))

    def token(
        self,
        sub: str = "researcher-1",
        org: str = "Example University",
        country: str = "DE",
        roles: Sequence[str] = ("researcher",),
        visas: Sequence[str] = (),
        alg: str = "RS256",
        kid: str | None = None,
        *,
        omit: Iterable[str] = (),
        header: Mapping[str, Any] | None = None,
        ttl_s: int = 300,
        **claim_overrides: Any,
    ) -> str:
        """A signed access token for this issuer and `audience`; overrides replace top-level claims."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer_url,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
            "org": org,
            "country": country,
        }
        _set_at(claims, self.roles_claim, list(roles))
        if visas:
            claims["ga4gh_passport_v1"] = list(visas)
        claims.update(claim_overrides)
        for name in omit:
            claims.pop(name, None)
        return self.sign(claims, alg=alg, kid=kid, header=header)

    def visa(
        self,
        type: str,
        value: str,
        *,
        source: str = "https://dac.example.org",
        by: str | None = "dac",
        asserted: int | None = None,
        conditions: Any = None,
        sub: str = "researcher-1",
        alg: str = "RS256",
        kid: str | None = None,
        ttl_s: int = 3600,
        omit: Iterable[str] = (),
        **claim_overrides: Any,
    ) -> str:
        """A signed GA4GH Passport v1 visa (`ga4gh_visa_v1` = {type, value, source, by, asserted})."""
        now = int(time.time())
        body: dict[str, Any] = {
            "type": type,
            "value": value,
            "source": source,
            "asserted": asserted or now - 60,
        }
        if by is not None:
            body["by"] = by
        if conditions is not None:
            body["conditions"] = conditions
        claims: dict[str, Any] = {
            "iss": self.issuer_url,
            "sub": sub,
            "iat": now,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
            "ga4gh_visa_v1": body,
        }
        claims.update(claim_overrides)
        for name in omit:
            claims.pop(name, None)
        return self.sign(claims, alg=alg, kid=kid)

    def linked_identities(self, *identities: tuple[str, str], sub: str = "researcher-1", **visa: Any) -> str:
        """A signed LinkedIdentities visa saying that `sub` at this issuer is the same person as each
        (sub, iss) of `identities`; its value is written as the GA4GH Passport specification has it,
        `;`-separated `sub,iss` pairs with each part URI-encoded. `visa` passes on to `visa()`."""
        value = ";".join(f"{quote(s, safe='')},{quote(i, safe='')}" for s, i in identities)
        return self.visa("LinkedIdentities", value, sub=sub, **visa)

    # -- HTTP --------------------------------------------------------------------------------------------

    def _answer(self, path: str) -> tuple[int, dict[str, Any]]:
        if self.fail_status is not None:
            return self.fail_status, {"error": "the test issuer was told to fail"}
        if path == f"{self._path}/.well-known/openid-configuration":
            with self._lock:
                self._discovery_fetches += 1
            return int(OK), self.discovery_document()
        if path == f"{self._path}/jwks":
            with self._lock:
                self._jwks_fetches += 1
            return int(OK), self.jwks()
        return int(STATUS["not_found"]), {"error": "not found"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = owner._answer(self.path.split("?")[0])
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                # Tests read their own output; the access log would only bury it.
                pass

        return Handler
