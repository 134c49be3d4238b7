"""Federated GLM and Kaplan–Meier over three gateways on loopback, on real clinical data split in three.

The data: GBSG2 (German Breast Cancer Study Group 2, 686 patients), shipped with lifelines. Each third is
ingested as dataset `gbsg2` at one site; every row carries a consent code the purpose covers, so the
consent filter keeps them all. The federated fits equal statsmodels' pooled GLM on the same rows, and the
pooled survival curve equals lifelines' estimate with times moved to their bin's upper edge.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import statsmodels.api as sm
from federation_sites import Federation, build_federation, running_federation
from gateway_site import TEST_AGREEMENTS, bearer, free_port
from lifelines import KaplanMeierFitter
from lifelines.datasets import load_gbsg2
from oidc_issuer import LoopbackTestIssuer

from audit.entry import parse_entry
from connectors import ParquetConnector
from gateway.client import Gateway
from gateway.client_federation import Federation as FederationClient
from gateway.client_federation import GlmStopped
from gateway.federation.glm_fit import FitStopped, GlmFit, HttpGlmSite, SiteStatistics, fit_federated_glm
from gateway.federation.km import pool_kaplan_meier, site_frame
from gateway.federation.signing import HEADER, PeerSigner, generate_peer_key
from pseudonymize.ingest import ingest
from pseudonymize.keys import SecretKey
from pseudonymize.spec import load_spec
from pseudonymize.store import Store

SITES = ["site-a", "site-b", "site-c"]
AGREEMENT = "DSA-TEST-GBSG2"
APPROVAL = "DSA-TEST-GBSG2-APPROVAL"
PURPOSE = {"duo": ["DUO:0000006"]}
COLUMNS = [
    "horTh",
    "age",
    "menostat",
    "tsize",
    "tgrade",
    "pnodes",
    "progrec",
    "estrec",
    "time",
    "cens",
    "log_time",
]
SPEC = """dataset: gbsg2
agreement: DSA-TEST-GBSG2
patient_key: patient_id
duo: [DUO:0000042]
description: GBSG2 breast cancer trial (lifelines), one third per site
k_anonymity: {k: 2}
columns:
  patient_id: {action: pseudonym, identifier: direct}
""" + "".join(f"  {c}: keep\n" for c in [*COLUMNS, "consent_duo", "consent_withdrawn"])
# Not tgrade: grade I holds fewer than 10 events at every site, a cell of tgrade × cens that XᵀWz gives.
BINOMIAL = {
    "outcome": "cens",
    "family": "binomial",
    "numeric": ["age", "tsize", "pnodes", "progrec"],
    "categorical": [
        {"column": "horTh", "levels": ["no", "yes"]},
        {"column": "menostat", "levels": ["Pre", "Post"]},
    ],
}
GAUSSIAN = {
    "outcome": "log_time",
    "family": "gaussian",
    "numeric": ["age", "pnodes", "progrec"],
    "categorical": [{"column": "menostat", "levels": ["Pre", "Post"]}],
}
EDGES = [365.25 * i for i in range(1, 8)]


def gbsg2() -> pd.DataFrame:
    frame = load_gbsg2()
    frame.insert(0, "patient_id", [f"GBSG-{i:04d}" for i in range(len(frame))])
    frame["time"] = frame["time"].astype("int64")
    frame["cens"] = frame["cens"].astype("int64")
    frame["log_time"] = np.log(frame["time"].astype(float))
    frame["consent_duo"] = "DUO:0000042"
    frame["consent_withdrawn"] = False
    return frame


def thirds(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """A seeded shuffle split in three (the trial's file order is not how hospitals would hold it)."""
    shuffled = frame.sample(frac=1, random_state=0)
    return [shuffled.iloc[idx] for idx in np.array_split(np.arange(len(shuffled)), 3)]


def add_gbsg2(fed: Federation, tmp: Path, parts: list[pd.DataFrame]) -> None:
    """Ingest one third per site and grant it under a test agreement (before the gateways start)."""
    spec_path = tmp / "gbsg2.spec.yaml"
    spec_path.write_text(SPEC)
    for site_id, part in zip(SITES, parts, strict=True):
        site = fed.sites[site_id]
        agreements_file = site.root / "policies/data/agreements.json"
        agreements = json.loads(agreements_file.read_text())
        agreements[AGREEMENT] = {
            **TEST_AGREEMENTS["DSA-TEST-OPEN"],
            "datasets": {"gbsg2": {"columns": COLUMNS}},
            "query_kinds": ["count", "glm", "kaplan_meier"],
            "thresholds": {"min_cell_count": 10, "max_identical_queries": 20},
        }
        # Site B's steward wants to see every GLM under this second agreement.
        agreements[APPROVAL] = {
            **agreements[AGREEMENT],
            "approval_kinds": ["glm"] if site_id == "site-b" else [],
        }
        agreements_file.write_text(json.dumps(agreements, indent=2))
        source = site.root / "gbsg2.parquet"
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), source)
        with Store(site.settings.store_url) as store:
            ingest(
                ParquetConnector(source),
                load_spec(spec_path),
                str(spec_path),
                SecretKey.from_file(site.root / "keys/master.key"),
                store,
                jurisdiction=site.settings.jurisdiction,
                override_k=True,
            )


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, idp: LoopbackTestIssuer) -> Federation:
    tmp = tmp_path_factory.mktemp("glm")
    federation = build_federation(tmp, idp.issuer_url, SITES, rows=300)
    add_gbsg2(federation, tmp, thirds(gbsg2()))
    return federation


@pytest.fixture(scope="module")
def urls(fed: Federation) -> Iterator[dict[str, str]]:
    with running_federation(fed) as running:
        yield running


def researcher(idp: LoopbackTestIssuer, sub: str = "researcher-1") -> dict[str, str]:
    return bearer(idp, "researcher", sub=sub)


def glm_body(model: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"dataset": "gbsg2", "agreement": AGREEMENT, "purpose": PURPOSE, "model": model, **extra}


def pooled_reference(model: dict[str, Any], frame: pd.DataFrame | None = None) -> Any:
    frame = gbsg2() if frame is None else frame
    x = [np.ones(len(frame)), *(frame[c].to_numpy(dtype=float) for c in model["numeric"])]
    for cov in model["categorical"]:
        x += [(frame[cov["column"]] == level).to_numpy(dtype=float) for level in cov["levels"][1:]]
    family = {"binomial": sm.families.Binomial(), "gaussian": sm.families.Gaussian()}[model["family"]]
    return sm.GLM(frame[model["outcome"]].to_numpy(dtype=float), np.column_stack(x), family=family).fit(
        tol=1e-12
    )


@pytest.mark.parametrize("model", [BINOMIAL, GAUSSIAN], ids=["binomial", "gaussian"])
def test_federated_glm_equals_statsmodels_pooled_fit(
    urls: dict[str, str], idp: LoopbackTestIssuer, model: dict[str, Any]
) -> None:
    response = httpx.post(
        f"{urls['site-a']}/v1/federated-glm", json=glm_body(model), headers=researcher(idp), timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "converged"
    assert [s["status"] for s in body["sites"]] == ["answered"] * 3
    assert sum(s["rows"] for s in body["sites"]) == 686
    fit = GlmFit.from_dict(body)
    ref = pooled_reference(model)
    np.testing.assert_allclose(fit.params.to_numpy(), ref.params, rtol=1e-6)
    np.testing.assert_allclose(fit.bse.to_numpy(), ref.bse, rtol=1e-6)
    np.testing.assert_allclose(fit.conf_int().to_numpy(), ref.conf_int(), rtol=1e-6)
    assert fit.deviance == pytest.approx(ref.deviance, rel=1e-9)
    assert "residual" not in response.text and "eta" not in body
    opened = [e for e in audit_entries(urls["site-b"], idp) if e["type"] == "glm.session_opened"]
    assert opened[-1]["payload"]["coordinator"] == "site-a"


def test_a_model_whose_sums_hold_a_small_joint_cell_opens_no_session(
    urls: dict[str, str], idp: LoopbackTestIssuer
) -> None:
    """The attack: at site B fewer than 10 patients on hormonal therapy have a grade I tumour, the cell a
    crosstab of horTh × tgrade suppresses. Each dummy passes alone, but XᵀX's entry for the two (XᵀWX / ¼
    of a binomial model at β = 0) is that cell's count, and the scale times the inverse covariance of the
    fitted model gives it back. No session opens, at the site or through the coordinator."""
    model = {
        "outcome": "log_time",
        "family": "gaussian",
        "numeric": ["age"],
        "categorical": [
            {"column": "horTh", "levels": ["no", "yes"]},
            {"column": "tgrade", "levels": ["II", "I", "III"]},
        ],
    }
    part = thirds(gbsg2())[SITES.index("site-b")]
    hormonal, grade_one = part["horTh"] == "yes", part["tgrade"] == "I"
    assert hormonal.sum() >= 10 and grade_one.sum() >= 10 and 0 < (hormonal & grade_one).sum() < 10
    url = urls["site-b"]
    response = httpx.post(f"{url}/v1/glm/sessions", json=glm_body(model), headers=researcher(idp), timeout=30)
    assert response.status_code == 403, response.text
    problem = response.json()
    (reason,) = problem["reasons"]
    assert "model.categorical[0]=yes with model.categorical[1]=I" in reason and "min_cell_count" in reason
    assert str(int((hormonal & grade_one).sum())) not in reason.replace("[0]", "").replace("[1]", "")
    logged = [e for e in audit_entries(url, idp) if e["request_id"] == problem["request_id"]]
    assert [e["type"] for e in logged if e["type"].startswith("glm.")] == ["glm.refused"]
    assert logged[-1]["payload"]["stage"] == "disclosure"
    fit = httpx.post(
        f"{urls['site-a']}/v1/federated-glm",
        json=glm_body(model, sites=["site-a", "site-b"]),
        headers=researcher(idp),
        timeout=60,
    )
    assert fit.status_code == 200 and fit.json()["status"] == "stopped"
    table = {row["site"]: row for row in fit.json()["sites"]}
    assert table["site-b"]["status"] == "suppressed" and table["site-b"]["iteration"] == 0
    assert "xtwx" not in fit.text and "covariance" not in fit.json()


def test_kaplan_meier_equals_lifelines_at_released_bins(
    urls: dict[str, str], idp: LoopbackTestIssuer
) -> None:
    spec = {
        "dataset": "gbsg2",
        "agreement": AGREEMENT,
        "purpose": PURPOSE,
        "kind": "kaplan_meier",
        "params": {"time": "time", "event": "cens", "edges": EDGES},
    }
    released = {}
    for site in SITES:
        response = httpx.post(f"{urls[site]}/v1/queries", json=spec, headers=researcher(idp), timeout=60)
        assert response.status_code == 200, response.text
        released[site] = site_frame(response.json())
        counts = released[site][["at_risk", "events", "censored"]].to_numpy()
        assert (counts >= 10).all()
    curve = pool_kaplan_meier(released)
    assert len(curve) == 3 and set(curve["upper"]) <= set(EDGES)
    # The reference: pooled rows, each time moved to the upper edge of its common bin.
    frame = gbsg2()
    uppers = curve["upper"].to_numpy()
    position = np.searchsorted(uppers, frame["time"].to_numpy(), side="left")
    beyond = position >= len(uppers)
    mapped = np.where(beyond, uppers[-1] + 1.0, uppers[np.minimum(position, len(uppers) - 1)])
    km = KaplanMeierFitter().fit(mapped, event_observed=np.where(beyond, 0, frame["cens"]))
    expected = km.survival_function_at_times(uppers).to_numpy()
    np.testing.assert_allclose(curve["survival"].to_numpy(), expected, rtol=1e-12)
    ci = km.confidence_interval_.loc[uppers]
    np.testing.assert_allclose(curve["ci_lower"].to_numpy(), ci.iloc[:, 0].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(curve["ci_upper"].to_numpy(), ci.iloc[:, 1].to_numpy(), rtol=1e-9)


class _WithdrawBeforeIteration3(HttpGlmSite):
    """Site C, where a steward records withdrawals while the fit runs."""

    def __init__(self, *args: Any, withdraw: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.withdraw = withdraw

    async def iterate(self, beta: Any, iteration: int) -> SiteStatistics:
        if iteration == 3:
            await asyncio.to_thread(self.withdraw)
        return await super().iterate(beta, iteration)


def test_a_site_failing_disclosure_at_iteration_three_stops_the_fit(
    fed: Federation, urls: dict[str, str], idp: LoopbackTestIssuer
) -> None:
    part_c = thirds(gbsg2())[2]
    hormonal = part_c.loc[part_c["horTh"] == "yes", "patient_id"].tolist()
    assert len(hormonal) >= 10
    # Leave 9 patients on hormonal therapy at site C: the dummy's cell falls below min_cell_count.
    to_withdraw = hormonal[: len(hormonal) - 9]

    def withdraw() -> None:
        response = httpx.post(
            f"{urls['site-c']}/v1/steward/datasets/gbsg2/withdrawals",
            json={"patients": to_withdraw},
            headers=bearer(idp, "steward"),
            timeout=30,
        )
        assert response.status_code == 200, response.text

    body = glm_body(BINOMIAL)
    authorization = researcher(idp)["Authorization"]

    async def fit() -> None:
        async with httpx.AsyncClient() as client:
            sites = [HttpGlmSite(s, urls[s], authorization, body, client) for s in SITES[:2]]
            sites.append(
                _WithdrawBeforeIteration3(
                    "site-c", urls["site-c"], authorization, body, client, withdraw=withdraw
                )
            )
            await fit_federated_glm(sites, "binomial")

    with pytest.raises(FitStopped) as stopped:
        asyncio.run(fit())
    assert stopped.value.iteration == 3
    table = {row["site"]: row for row in stopped.value.sites}
    assert table["site-a"]["status"] == table["site-b"]["status"] == "answered"
    assert table["site-c"]["status"] == "suppressed" and table["site-c"]["iteration"] == 3
    assert "horTh=yes" in table["site-c"]["reasons"][0] and "min_cell_count" in table["site-c"]["reasons"][0]
    assert "glm.refused" in audit_events(urls["site-c"], idp)
    assert "glm.iteration" in audit_events(urls["site-c"], idp)


def audit_entries(url: str, idp: LoopbackTestIssuer) -> list[dict[str, Any]]:
    """A site's last 1000 audit entries, read through the auditor API."""
    headers = bearer(idp, "auditor")
    size = httpx.get(f"{url}/v1/audit/entries", params={"start": 0, "end": 0}, headers=headers).json()["size"]
    rows = httpx.get(
        f"{url}/v1/audit/entries",
        params={"start": max(0, size - 1000), "end": size},
        headers=headers,
        timeout=30,
    ).json()["entries"]
    return [parse_entry(base64.b64decode(row["entry"])) for row in rows]


def audit_events(url: str, idp: LoopbackTestIssuer) -> list[str]:
    """Event types of a site's last 1000 audit entries."""
    return [entry["type"] for entry in audit_entries(url, idp)]


def test_beta_outside_a_session_is_refused_and_audited(urls: dict[str, str], idp: LoopbackTestIssuer) -> None:
    url = urls["site-b"]
    crafted = {"agreement": AGREEMENT, "beta": [0.0] * 7}
    response = httpx.post(
        f"{url}/v1/glm/sessions/{'0' * 32}/iterations", json=crafted, headers=researcher(idp), timeout=30
    )
    assert response.status_code == 404
    assert "within a session you opened" in response.json()["reasons"][0]
    opened = httpx.post(
        f"{url}/v1/glm/sessions", json=glm_body(BINOMIAL), headers=researcher(idp), timeout=30
    )
    assert opened.status_code == 200, opened.text
    session = opened.json()["session"]
    path = f"{url}/v1/glm/sessions/{session}/iterations"
    # Another researcher, or the same one under another agreement, cannot use the session.
    other = httpx.post(path, json=crafted, headers=researcher(idp, sub="researcher-2"), timeout=30)
    assert other.status_code == 404
    wrong_agreement = httpx.post(
        path, json={**crafted, "agreement": "DSA-TEST-OPEN"}, headers=researcher(idp), timeout=30
    )
    assert wrong_agreement.status_code == 404
    wrong_size = httpx.post(path, json={**crafted, "beta": [0.0] * 3}, headers=researcher(idp), timeout=30)
    assert wrong_size.status_code == 422
    good = httpx.post(path, json=crafted, headers=researcher(idp), timeout=30)
    assert good.status_code == 200 and good.json()["iteration"] == 1
    assert set(good.json()) == {"session", "iteration", "xtwx", "xtwz", "deviance", "pearson_chi2", "n"}
    closed = httpx.delete(f"{url}/v1/glm/sessions/{session}", headers=researcher(idp), timeout=30)
    assert closed.status_code == 200
    after = httpx.post(path, json=crafted, headers=researcher(idp), timeout=30)
    assert after.status_code == 404
    events = audit_events(url, idp)
    assert events.count("glm.refused") >= 3 and "glm.session_closed" in events


def test_coefficients_that_single_out_one_patient_are_refused(
    urls: dict[str, str], idp: LoopbackTestIssuer
) -> None:
    """Attack: β = 10⁶·(tsize − t₀) puts one patient's linear predictor where a binomial weight peaks and
    everyone else's far away, so XᵀWX and XᵀWz would be that patient's covariates and outcome. No row may
    carry more than 1/min_cell_count of an iteration's weight: the iteration is refused, nothing released."""
    part = thirds(gbsg2())[SITES.index("site-b")]
    counts = part["tsize"].value_counts()
    t0 = float(counts[counts == 1].index[0])
    url = urls["site-b"]
    body = glm_body(BINOMIAL)
    opened = httpx.post(f"{url}/v1/glm/sessions", json=body, headers=researcher(idp), timeout=30)
    assert opened.status_code == 200, opened.text
    path = f"{url}/v1/glm/sessions/{opened.json()['session']}/iterations"
    singled_out = [-1e6 * t0, 0.0, 1e6, 0.0, 0.0, 0.0, 0.0]  # (Intercept), age, tsize, the rest
    refused = httpx.post(
        path, json={"agreement": AGREEMENT, "beta": singled_out}, headers=researcher(idp), timeout=30
    )
    assert refused.status_code == 403, refused.text
    assert "saturate" in refused.json()["detail"] and "xtwx" not in refused.json()
    # The session ends with the refusal: the next β gets nothing either.
    again = httpx.post(path, json={"agreement": AGREEMENT, "beta": [0.0] * 7}, headers=researcher(idp))
    assert again.status_code == 404


def test_a_model_over_a_column_the_agreement_does_not_grant_is_denied(
    urls: dict[str, str], idp: LoopbackTestIssuer
) -> None:
    model = {**GAUSSIAN, "numeric": ["age", "consent_duo"]}
    response = httpx.post(
        f"{urls['site-a']}/v1/federated-glm",
        json=glm_body(model, sites=["site-a", "site-b"]),
        headers=researcher(idp),
        timeout=60,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "stopped"
    assert {s["status"] for s in body["sites"]} == {"denied"}


def test_the_federation_client_fits_and_reports_a_stopped_fit(
    urls: dict[str, str], idp: LoopbackTestIssuer
) -> None:
    token = researcher(idp)["Authorization"].removeprefix("Bearer ")
    seen = len(audit_entries(urls["site-b"], idp))
    # Sites A and B only: the withdrawal test changes site C.
    with FederationClient(urls["site-b"], token, sites=["site-a", "site-b"]) as client:
        fit = client.glm(
            "gbsg2",
            AGREEMENT,
            "DUO:0000006",
            "log_time",
            "gaussian",
            numeric=["age", "pnodes", "progrec"],
            categorical={"menostat": ["Pre", "Post"]},
        )
        ref = pooled_reference(GAUSSIAN, pd.concat(thirds(gbsg2())[:2]))
        np.testing.assert_allclose(fit.params.to_numpy(), ref.params, rtol=1e-6)
        np.testing.assert_allclose(fit.bse.to_numpy(), ref.bse, rtol=1e-6)
        assert list(fit.params.index) == ["(Intercept)", "age", "pnodes", "progrec", "menostat[Post]"]
        assert fit.summary().shape == (5, 6)
        with pytest.raises(GlmStopped) as stopped:
            client.glm(
                "gbsg2",
                AGREEMENT,
                "DUO:0000006",
                "cens",
                "binomial",
                numeric=["age", "estrec"],
                categorical={"tgrade": ["I", "II", "III", "IV"]},
            )
        assert set(stopped.value.sites["status"]) == {"suppressed"}
        assert "tgrade=IV" in stopped.value.reasons[0]
    # The coordinator (site B) records each fit as a federated query: received, then released or refused.
    fits = [e for e in audit_entries(urls["site-b"], idp)[seen:] if e["type"].startswith("federation.")]
    assert [e["type"] for e in fits] == [
        "federation.received", "federation.released", "federation.received", "federation.refused",
    ]  # fmt: skip
    assert fits[0]["payload"]["kind"] == "glm" and fits[1]["payload"]["covered"] == 2
    assert fits[0]["request_id"] == fits[1]["request_id"] != fits[2]["request_id"]
    with Gateway(urls["site-b"], token) as site:
        bins = site.kaplan_meier("gbsg2", AGREEMENT, "DUO:0000006", "time", "cens", EDGES)
        assert list(bins.columns) == ["lower", "upper", "at_risk", "events", "censored"]
        assert int(bins["at_risk"].iloc[0]) == len(thirds(gbsg2())[1])


def test_glm_session_calls_from_an_unknown_peer_are_rejected(
    tmp_path: Path, urls: dict[str, str], idp: LoopbackTestIssuer
) -> None:
    """The sites' GLM endpoints sit behind the same peer check as every peer call."""
    stranger = PeerSigner("site-x", generate_peer_key(tmp_path / "stranger.key"))
    body = json.dumps(glm_body(BINOMIAL)).encode()
    headers = {
        **researcher(idp),
        "Content-Type": "application/json",
        HEADER: stranger.assertion("site-b", "POST", "/v1/glm/sessions", body),
    }
    response = httpx.post(f"{urls['site-b']}/v1/glm/sessions", content=body, headers=headers, timeout=30)
    assert response.status_code == 401
    assert "peer.rejected" in audit_events(urls["site-b"], idp)


def test_an_unreachable_site_stops_the_fit_and_is_named(
    urls: dict[str, str], idp: LoopbackTestIssuer
) -> None:
    body = glm_body(BINOMIAL)
    authorization = researcher(idp)["Authorization"]

    async def fit() -> None:
        async with httpx.AsyncClient() as client:
            sites = [
                HttpGlmSite("site-a", urls["site-a"], authorization, body, client),
                HttpGlmSite("site-down", f"http://127.0.0.1:{free_port()}", authorization, body, client),
            ]
            await fit_federated_glm(sites, "binomial")

    with pytest.raises(FitStopped) as stopped:
        asyncio.run(fit())
    table = {row["site"]: row for row in stopped.value.sites}
    assert table["site-down"]["status"] == "unreachable" and table["site-down"]["iteration"] == 0
    assert table["site-a"]["status"] == "answered"


def test_a_site_whose_policy_wants_approval_is_reported_pending(
    urls: dict[str, str], idp: LoopbackTestIssuer
) -> None:
    body = glm_body(GAUSSIAN, agreement=APPROVAL, sites=["site-a", "site-b"])
    response = httpx.post(
        f"{urls['site-a']}/v1/federated-glm", json=body, headers=researcher(idp), timeout=60
    )
    assert response.status_code == 200, response.text
    table = {row["site"]: row for row in response.json()["sites"]}
    assert response.json()["status"] == "stopped"
    assert table["site-b"]["status"] == "approval_pending"
    assert "approval" in table["site-b"]["reasons"][0]
    direct = httpx.post(f"{urls['site-b']}/v1/glm/sessions", json=glm_body(GAUSSIAN, agreement=APPROVAL),
                        headers=researcher(idp), timeout=30)  # fmt: skip
    assert direct.status_code == 202 and direct.json()["status"] == "pending_approval"


def test_a_session_stops_at_its_iteration_cap(urls: dict[str, str], idp: LoopbackTestIssuer) -> None:
    url = urls["site-a"]
    opened = httpx.post(
        f"{url}/v1/glm/sessions", json=glm_body(GAUSSIAN), headers=researcher(idp), timeout=30
    )
    assert opened.status_code == 200, opened.text
    cap = opened.json()["max_iterations"]
    path = f"{url}/v1/glm/sessions/{opened.json()['session']}/iterations"
    step = {"agreement": AGREEMENT, "beta": [0.0] * len(opened.json()["parameters"])}
    with httpx.Client(headers=researcher(idp), timeout=30) as client:
        for _ in range(cap):
            assert client.post(path, json=step).status_code == 200
        over = client.post(path, json=step)
        assert over.status_code == 429 and "iterations" in over.json()["reasons"][0]
        assert client.post(path, json=step).status_code == 404  # the session ended


def test_every_sites_log_shows_each_glm_session_and_iteration_allowed(
    urls: dict[str, str], idp: LoopbackTestIssuer
) -> None:
    """Run last in this module, over everything the fits above released: an auditor's release check finds
    each session opened under an allowing decision, and each iteration inside an opened session."""
    from audit.verify import check_releases

    for site, url in urls.items():
        export = httpx.get(f"{url}/v1/audit/export", headers=bearer(idp, "auditor"), timeout=60)
        assert export.status_code == 200, site
        checked = check_releases(io.BytesIO(export.content))
        assert checked.glm_sessions >= 1 and checked.glm_iterations >= checked.glm_sessions, (site, checked)
