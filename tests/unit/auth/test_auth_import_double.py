"""The test issuer is importable as other suites import it: `from oidc_issuer import LoopbackTestIssuer`."""

from __future__ import annotations

import json
import urllib.request

from oidc_issuer import LoopbackTestIssuer


def test_issuer_double_serves_discovery_and_jwks_on_loopback() -> None:
    with LoopbackTestIssuer(path="/realms/test") as idp:
        assert idp.issuer_url.startswith("http://127.0.0.1:") and idp.issuer_url.endswith("/realms/test")
        with urllib.request.urlopen(idp.issuer_url + "/.well-known/openid-configuration") as r:  # noqa: S310
            discovery = json.load(r)
        assert discovery["issuer"] == idp.issuer_url
        with urllib.request.urlopen(discovery["jwks_uri"]) as r:  # noqa: S310
            jwks = json.load(r)
        assert sorted(k["kty"] for k in jwks["keys"]) == ["EC", "OKP", "RSA"]
        assert all("d" not in k for k in jwks["keys"])
        assert (idp.discovery_fetches, idp.jwks_fetches) == (1, 1)
        old = idp.kid("RS256")
        new = idp.rotate("RS256")
        assert new != old and new in {k["kid"] for k in idp.jwks()["keys"]}
        assert old not in {k["kid"] for k in idp.jwks()["keys"]}
