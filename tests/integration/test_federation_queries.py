"""Federated queries over real HTTP between three gateways: pooling, statuses, audit, the client."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from federation_sites import Federation, audit_entries, build_federation, running_federation
from gateway_site import bearer, consent_rule
from oidc_issuer import LoopbackTestIssuer

from gateway.client import FederatedResult
from gateway.client import Federation as FederationClient
from gateway.decision.models import ConsentFilter
from gateway.settings import SiteSettings
from pseudonymize.store import CatalogEntry, Store

SITES = ["site-de", "site-fr", "site-nl"]
BASE: dict[str, Any] = {
    "dataset": "cohort",
    "agreement": "DSA-TEST-OPEN",
    "purpose": {"duo": ["DUO:0000006"]},
}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, idp: LoopbackTestIssuer) -> Federation:
    return build_federation(tmp_path_factory.mktemp("fed"), idp.issuer_url, SITES, rows=2000)


def _consent_rule(settings: SiteSettings, entry: CatalogEntry) -> ConsentFilter:
    """The consent filter the site's policy sets for this module's queries (as the pipeline asks it)."""
    summary = {**BASE, "kind": "summary", "params": {"column": "bmi"}}
    rule: ConsentFilter = consent_rule(settings, entry, summary)
    return rule


@pytest.fixture(scope="module")
def bmi_values(fed: Federation) -> dict[str, np.ndarray]:
    """Every site's stored bmi values its consent filter admits, read before the gateways open the stores."""
    out = {}
    for sid, site in fed.sites.items():
        with Store(site.settings.store_url) as store:
            entry = store.latest("cohort")
            assert entry is not None
            rows = [r for batch in store.read_table(entry) for r in batch.to_pylist()]
        rule = _consent_rule(site.settings, entry)
        admitted = [
            r["bmi"]
            for r in rows
            if rule.admits(r[rule.consent_column], r[rule.withdrawn_column]) and r["bmi"] is not None
        ]
        out[sid] = np.array(admitted, dtype=float)
    return out


@pytest.fixture(scope="module")
def urls(fed: Federation, bmi_values: dict[str, np.ndarray]) -> Iterator[dict[str, str]]:
    with running_federation(fed) as running:
        yield running


def ask(
    url: str, idp: LoopbackTestIssuer, body: dict[str, Any], sub: str = "researcher-fed"
) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/federated-queries", json=body, headers=bearer(idp, "researcher", sub=sub), timeout=60
    )


def direct(url: str, idp: LoopbackTestIssuer, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/v1/queries", json=body, headers=bearer(idp, "researcher", sub="direct"), timeout=60
    )
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def _key(row: dict[str, Any], cols: list[str]) -> tuple[Any, ...]:
    return tuple(row[c] for c in cols)


def test_crosstab_pools_every_site_and_says_so(urls: dict[str, str], idp: LoopbackTestIssuer) -> None:
    spec = {**BASE, "kind": "crosstab", "group_by": ["sex", "smoking"]}
    body = ask(urls["site-de"], idp, spec).json()
    assert body["covered"] == SITES
    assert [s["status"] for s in body["sites"]] == ["answered"] * 3
    keys = ["sex", "smoking", "margin"]
    expected: dict[tuple[Any, ...], int] = {}
    for sid in SITES:
        for row in direct(urls[sid], idp, spec)["rows"]:
            assert not row["suppressed"]
            expected[_key(row, keys)] = expected.get(_key(row, keys), 0) + row["count"]
    assert {_key(r, keys): r["count"] for r in body["rows"]} == expected


def test_summary_is_pooled_exactly(
    urls: dict[str, str], idp: LoopbackTestIssuer, bmi_values: dict[str, np.ndarray]
) -> None:
    body = ask(urls["site-fr"], idp, {**BASE, "kind": "summary", "params": {"column": "bmi"}}).json()
    (row,) = body["rows"]
    pooled = np.concatenate(list(bmi_values.values()))
    assert row["n"] == len(pooled)
    assert row["mean"] == pytest.approx(pooled.mean(), rel=1e-12)
    assert row["variance"] == pytest.approx(pooled.var(ddof=1), rel=1e-9)


def test_histogram_is_summed_per_bin(urls: dict[str, str], idp: LoopbackTestIssuer) -> None:
    spec = {
        **BASE,
        "kind": "histogram",
        "group_by": ["sex"],
        "params": {"column": "bmi", "edges": [20, 25, 30]},
    }
    body = ask(urls["site-nl"], idp, spec).json()
    keys = ["sex", "bin"]
    expected: dict[tuple[Any, ...], int] = {}
    for sid in SITES:
        for row in direct(urls[sid], idp, spec)["rows"]:
            expected[_key(row, keys)] = expected.get(_key(row, keys), 0) + row["count"]
    assert {_key(r, keys): r["count"] for r in body["rows"]} == expected
    assert {(r["bin"], r["lower"], r["upper"]) for r in body["rows"]} >= {(1, 20, 25), (3, 30, None)}


def test_quantiles_lie_in_their_bracket_of_one_or_two_bins(
    urls: dict[str, str], idp: LoopbackTestIssuer, bmi_values: dict[str, np.ndarray]
) -> None:
    probs = [0.1, 0.25, 0.5, 0.75, 0.9]
    body = ask(
        urls["site-de"], idp, {**BASE, "kind": "quantiles", "params": {"column": "bmi", "probs": probs}}
    )
    (row,) = body.json()["rows"]
    pooled = np.concatenate(list(bmi_values.values()))
    width = row["bin_width"]
    for p in probs:
        name = f"q{p:g}"
        truth = float(np.quantile(pooled, p))  # linear interpolation, as percentile_cont
        lower, upper = row[f"{name}_lower"], row[f"{name}_upper"]
        assert lower <= truth <= upper
        assert lower <= row[name] <= upper
        assert abs(row[name] - truth) <= upper - lower
        # bmi has 0.1 resolution, finer than the bins: empty bins are suppressed and widen the bracket.
        assert upper - lower <= 20 * width


def test_grouped_quantiles_pool_sites_whose_other_group_shows_no_quantile(
    urls: dict[str, str], idp: LoopbackTestIssuer
) -> None:
    """Each site merges its rare countries into "(other)" and never shows that group's quantiles, even where
    its size is shown; the coordinator plans its bins from the quantiles shown and pools every group."""
    params = {"column": "bmi", "probs": [0.25, 0.5, 0.75]}
    spec = {**BASE, "kind": "quantiles", "group_by": ["country"], "params": params}
    names = ["q0.25", "q0.5", "q0.75"]
    at_sites = {sid: {r["country"]: r for r in direct(urls[sid], idp, spec)["rows"]} for sid in SITES}
    others = [rows["(other)"] for rows in at_sites.values() if "(other)" in rows]
    assert others, "no site has a rare country: the test would prove nothing"
    assert all(row[name] is None for row in others for name in names)
    body = ask(urls["site-de"], idp, spec).json()
    assert [s["status"] for s in body["sites"]] == ["answered"] * 3
    pooled = {r["country"]: r for r in body["rows"]}
    # A country a site with "(other)" does not show may be inside it: pooled into "(other)" at every site.
    countries = {country for rows in at_sites.values() for country in rows} - {"(other)"}
    merged = {c for rows in at_sites.values() if "(other)" in rows for c in countries - rows.keys()}
    assert pooled.keys() == (countries - merged) | {"(other)"}
    for country, row in pooled.items():
        parts = countries & merged | {"(other)"} if country == "(other)" else {country}
        sizes = [rows[c]["n"] if c in rows else 0 for rows in at_sites.values() for c in parts]
        if None in sizes:
            assert row["suppressed"] and row["n"] is None and row["q0.5"] is None
        else:
            assert not row["suppressed"] and row["n"] == sum(sizes)
        for name in names:  # small groups' hidden bins may leave a bracket open; an estimate lies inside
            if row[name] is not None:
                assert row[f"{name}_lower"] <= row[name] <= row[f"{name}_upper"]


def test_coordinator_and_peers_audit_their_parts(urls: dict[str, str], idp: LoopbackTestIssuer) -> None:
    spec = {**BASE, "kind": "count", "group_by": ["sex"]}
    body = ask(urls["site-de"], idp, spec, sub="audited-researcher").json()
    coordinator = audit_entries(urls["site-de"], idp)
    released = [
        e for e in coordinator if e["type"] == "federation.released" and e["request_id"] == body["request_id"]
    ]
    assert len(released) == 1
    assert released[0]["payload"]["covered"] == 3 and released[0]["payload"]["answered"] == 3
    assert released[0]["payload"]["result_hash"] == body["result_hash"]
    for sid in ("site-fr", "site-nl"):
        received = [
            e
            for e in audit_entries(urls[sid], idp)
            if e["type"] == "query.received" and e["payload"].get("coordinator") == "site-de"
        ]
        assert received and received[-1]["payload"]["federated"] is True
        assert received[-1]["actor"]["sub"] == "audited-researcher"


def test_the_coordinators_entry_names_every_leg_of_both_quantile_rounds(
    urls: dict[str, str], idp: LoopbackTestIssuer
) -> None:
    """Federated quantiles ask each site twice; the coordinator's entry lists all six requests, and each
    request id leads an auditor to that request's whole trail in its site's log."""
    spec = {**BASE, "kind": "quantiles", "params": {"column": "bmi", "probs": [0.5]}}
    body = ask(urls["site-de"], idp, spec, sub="leg-auditor").json()
    assert body["covered"] == SITES
    (released,) = [
        e
        for e in audit_entries(urls["site-de"], idp)
        if e["type"] == "federation.released" and e["request_id"] == body["request_id"]
    ]
    legs = released["payload"]["legs"]
    assert [(leg["site"], leg["round"], leg["status"]) for leg in legs] == [
        *((sid, 1, "answered") for sid in SITES),
        *((sid, 2, "answered") for sid in SITES),
    ]
    assert [leg["request_id"] for leg in legs[:3]] == [s["request_id"] for s in body["sites"]]
    assert len({leg["request_id"] for leg in legs}) == 6
    for leg in legs:
        trail = [e for e in audit_entries(urls[leg["site"]], idp) if e.get("request_id") == leg["request_id"]]
        assert [e["type"] for e in trail] == [
            "query.received",
            "query.decided",
            "query.executed",
            "query.released",
        ]
        assert trail[0]["payload"]["kind"] == ("quantiles" if leg["round"] == 1 else "histogram")
        assert trail[0]["payload"]["coordinator"] == "site-de"
        assert {e["actor"]["sub"] for e in trail} == {"leg-auditor"}


def test_named_sites_and_unknown_sites(urls: dict[str, str], idp: LoopbackTestIssuer) -> None:
    spec = {**BASE, "kind": "count", "sites": ["site-fr", "site-nl"]}
    body = ask(urls["site-de"], idp, spec).json()
    assert body["covered"] == ["site-fr", "site-nl"]
    bad = ask(urls["site-de"], idp, {**BASE, "kind": "count", "sites": ["site-xx"]})
    assert bad.status_code == 422 and bad.json()["field"] == "sites"
    bad = ask(urls["site-de"], idp, {**BASE, "kind": "count", "timeout_s": 0})
    assert bad.status_code == 422 and bad.json()["field"] == "timeout_s"


def test_only_researchers_federate(urls: dict[str, str], idp: LoopbackTestIssuer) -> None:
    response = httpx.post(
        f"{urls['site-de']}/v1/federated-queries",
        json={**BASE, "kind": "count"},
        headers=bearer(idp, "steward"),
        timeout=30,
    )
    assert response.status_code == 403
    response = httpx.post(
        f"{urls['site-de']}/v1/federated-queries", json={**BASE, "kind": "count"}, timeout=30
    )
    assert response.status_code == 401


def test_small_cells_stay_hidden_in_the_pool(urls: dict[str, str], idp: LoopbackTestIssuer) -> None:
    spec = {**BASE, "kind": "crosstab", "group_by": ["age_band", "icd10"]}
    body = ask(urls["site-de"], idp, spec).json()
    keys = ["age_band", "icd10", "margin"]
    hidden_somewhere = set()
    for sid in SITES:
        hidden_somewhere |= {_key(r, keys) for r in direct(urls[sid], idp, spec)["rows"] if r["suppressed"]}
    assert hidden_somewhere, "the test needs a table with suppressed cells"
    for row in body["rows"]:
        if _key(row, keys) in hidden_somewhere:
            assert row["suppressed"] and row["count"] is None
        elif row["count"] is not None:
            assert row["count"] >= 10 or row["count"] == 0


def test_federation_client(urls: dict[str, str], idp: LoopbackTestIssuer) -> None:
    token = idp.token(sub="client-user", org="org-aphp", country="FR", roles=["researcher"])
    with FederationClient(urls["site-fr"], token) as fed:
        result = fed.crosstab("cohort", "DSA-TEST-OPEN", "DUO:0000006", group_by=["sex"])
        assert isinstance(result, FederatedResult)
        assert result.covered == ["site-fr", "site-de", "site-nl"]
        assert list(result.sites["status"]) == ["answered"] * 3
        assert set(result.frame.columns) >= {"sex", "count", "suppressed"}
        summary = fed.summary("cohort", "DSA-TEST-OPEN", "DUO:0000006", "bmi")
        assert summary.frame["n"].iloc[0] > 0
        quantiles = fed.quantiles("cohort", "DSA-TEST-OPEN", "DUO:0000006", "bmi", [0.5])
        assert math.isfinite(quantiles.frame["q0.5"].iloc[0])
        histogram = fed.histogram("cohort", "DSA-TEST-OPEN", "DUO:0000006", "bmi", [20.0, 30.0])
        assert len(histogram.frame) == 3
        count = fed.count("cohort", "DSA-TEST-OPEN", "DUO:0000006")
        assert count.frame["count"].iloc[0] == sum(histogram.frame["count"])


def test_keygen_cli_writes_a_private_key_and_prints_its_public_half(tmp_path: Path, fed: Federation) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app
    from gateway.federation.signing import load_peer_key, public_key_b64

    config = tmp_path / "site.toml"
    text = fed.sites["site-de"].config.read_text().replace('"keys/peer.key"', f'"{tmp_path / "new.key"}"')
    config.write_text(text.replace('"policies"', f'"{fed.sites["site-de"].root / "policies"}"'))
    result = CliRunner().invoke(app, ["peer", "keygen", "--config", str(config)])
    assert result.exit_code == 0, result.output
    key = load_peer_key(tmp_path / "new.key")
    assert (tmp_path / "new.key").stat().st_mode & 0o777 == 0o600
    assert result.output.strip().splitlines()[-1] == public_key_b64(key.public_key())
    again = CliRunner().invoke(app, ["peer", "keygen", "--config", str(config)])
    assert again.exit_code != 0 and "refusing to overwrite" in again.output
