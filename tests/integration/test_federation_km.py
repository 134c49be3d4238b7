"""Federated Kaplan–Meier over two gateways: each site coarsens its own bins, the coordinator pools."""

from __future__ import annotations

from pathlib import Path

from federation_sites import build_federation, running_federation
from gateway_site import AUDIENCE
from oidc_issuer import LoopbackTestIssuer

from gateway.client import Federation


def test_federated_kaplan_meier_pools_site_curves(tmp_path: Path) -> None:
    with LoopbackTestIssuer(audience=AUDIENCE) as idp:
        federation = build_federation(tmp_path, idp.issuer_url, ["site-de", "site-fr"], rows=3000)
        with running_federation(federation) as urls:
            token = idp.token(sub="km", org="org-aphp", country="FR", roles=["researcher"])
            with Federation(urls["site-fr"], token) as client:
                result = client.kaplan_meier(
                    "cohort", "DSA-TEST-OPEN", "DUO:0000006", time="survival_days", event="event",
                    edges=[90, 180, 365, 730, 1460],
                )  # fmt: skip
    assert sorted(result.covered) == ["site-de", "site-fr"]
    assert set(result.sites["status"]) == {"answered"}
    curve = result.frame
    assert len(curve) >= 2
    survival = list(curve["survival"])
    assert all(0 < s <= 1 for s in survival) and survival == sorted(survival, reverse=True)
    assert (curve["ci_lower"] <= curve["survival"]).all() and (curve["survival"] <= curve["ci_upper"]).all()
    assert (curve[["at_risk", "events"]] >= 10).all().all()
