"""Federated Fisher scoring over in-memory sites equals statsmodels' pooled GLM on real clinical data."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from lifelines.datasets import load_gbsg2

from gateway.federation.glm_fit import (
    FitStopped,
    GlmFit,
    GlmFitError,
    SiteStatistics,
    SiteStopped,
    fit_federated_glm,
)
from gateway.federation.glm_site import (
    CategoricalCovariate,
    GlmModel,
    InMemoryGlmSite,
    binary_cells,
    design,
    iteration_statistics,
)

FAMILIES = {
    "gaussian": sm.families.Gaussian(),
    "binomial": sm.families.Binomial(),
    "poisson": sm.families.Poisson(),
}


def gbsg2() -> pd.DataFrame:
    """German Breast Cancer Study Group 2 (686 patients), shipped with lifelines."""
    frame = load_gbsg2()
    frame["log_time"] = np.log(frame["time"].astype(float))
    frame["exposure"] = np.log(frame["time"].astype(float) / 365.25)
    frame["weight"] = 1.0 + (frame["age"] % 3)
    return frame


def fit_in_memory(frame: pd.DataFrame, model: GlmModel, parts: int = 3) -> GlmFit:
    names = model.parameter_names()
    chunks = np.array_split(np.arange(len(frame)), parts)
    sites = [
        InMemoryGlmSite(f"site-{i}", names, design(frame.iloc[idx], model), model.family)
        for i, idx in enumerate(chunks)
    ]
    return asyncio.run(fit_federated_glm(sites, model.family))


def reference(frame: pd.DataFrame, model: GlmModel) -> sm.regression.linear_model.RegressionResults:
    data = design(frame, model)
    return sm.GLM(
        data.y, data.x, family=FAMILIES[model.family], offset=data.offset, var_weights=data.weights
    ).fit(tol=1e-12)


MODELS = [
    GlmModel(
        outcome="cens",
        family="binomial",
        numeric=["age", "tsize", "pnodes"],
        categorical=[
            CategoricalCovariate(column="tgrade", levels=["I", "II", "III"]),
            CategoricalCovariate(column="horTh", levels=["no", "yes"]),
        ],
    ),
    GlmModel(
        outcome="log_time",
        family="gaussian",
        numeric=["age", "pnodes"],
        categorical=[CategoricalCovariate(column="menostat", levels=["Pre", "Post"])],
        weights="weight",
    ),
    GlmModel(
        outcome="pnodes",
        family="poisson",
        numeric=["age", "tsize"],
        offset="exposure",
        categorical=[CategoricalCovariate(column="tgrade", levels=["II", "I", "III"])],
    ),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.family)
def test_federated_fit_equals_statsmodels_pooled_fit(model: GlmModel) -> None:
    frame = gbsg2()
    fit = fit_in_memory(frame, model)
    ref = reference(frame, model)
    assert fit.converged
    np.testing.assert_allclose(fit.params.to_numpy(), ref.params, rtol=1e-6)
    np.testing.assert_allclose(fit.bse.to_numpy(), ref.bse, rtol=1e-6)
    np.testing.assert_allclose(fit.conf_int().to_numpy(), ref.conf_int(), rtol=1e-6)
    np.testing.assert_allclose(fit.pvalues.to_numpy(), ref.pvalues, rtol=1e-5, atol=1e-12)
    assert fit.deviance == pytest.approx(ref.deviance, rel=1e-9)
    assert fit.scale == pytest.approx(ref.scale, rel=1e-9)
    assert fit.nobs == len(frame)
    assert list(fit.summary().columns) == ["coef", "std_err", "z", "p", "ci_lower", "ci_upper"]


def test_fit_round_trips_through_json() -> None:
    fit = fit_in_memory(gbsg2(), MODELS[0])
    again = GlmFit.from_dict(fit.to_dict())
    pd.testing.assert_series_equal(again.params, fit.params)
    pd.testing.assert_series_equal(again.bse, fit.bse)


def test_statistics_are_the_working_response_sums() -> None:
    frame = gbsg2()
    data = design(frame, MODELS[0])
    beta = np.full(data.x.shape[1], 0.01)
    stats = iteration_statistics(data, beta, "binomial")
    eta = data.x @ beta
    mu = 1 / (1 + np.exp(-eta))
    w = mu * (1 - mu)
    z = eta + (data.y - mu) / w
    np.testing.assert_allclose(stats.xtwz, data.x.T @ (w * z))
    np.testing.assert_allclose(stats.xtwx, data.x.T @ (data.x * w[:, None]))
    assert stats.n == len(frame)


def test_design_is_identical_whatever_levels_a_site_holds() -> None:
    frame = gbsg2()
    only_grade_two = frame[frame["tgrade"] == "II"]
    data = design(only_grade_two, MODELS[0])
    names = MODELS[0].parameter_names()
    assert data.x.shape[1] == len(names)
    assert names.index("tgrade[II]") == 4
    assert data.x[:, names.index("tgrade[II]")].all() and not data.x[:, names.index("tgrade[III]")].any()
    cells = binary_cells(data, MODELS[0])
    assert cells["tgrade=III"] == 0 and cells["tgrade=I (reference)"] == 0


class _Refusing(InMemoryGlmSite):
    async def iterate(self, beta: object, iteration: int) -> SiteStatistics:
        if iteration == 3:
            raise SiteStopped(self.site, "suppressed", ["fewer than 10 rows in that category"], iteration)
        return await super().iterate(beta, iteration)  # type: ignore[arg-type]


def test_a_site_refusing_at_iteration_three_stops_the_fit_with_its_reason() -> None:
    frame = gbsg2()
    model = MODELS[0]
    names = model.parameter_names()
    sites = [
        InMemoryGlmSite("a", names, design(frame.iloc[:300], model), "binomial"),
        _Refusing("b", names, design(frame.iloc[300:], model), "binomial"),
    ]
    with pytest.raises(FitStopped) as stopped:
        asyncio.run(fit_federated_glm(sites, "binomial"))
    assert stopped.value.iteration == 3
    table = {row["site"]: row for row in stopped.value.sites}
    assert table["a"]["status"] == "answered"
    assert table["b"] == {
        "site": "b",
        "status": "suppressed",
        "iteration": 3,
        "reasons": ["fewer than 10 rows in that category"],
    }


def test_collinear_covariates_are_a_clear_error() -> None:
    frame = gbsg2()
    frame["age_again"] = frame["age"] * 2.0
    model = GlmModel(outcome="cens", family="binomial", numeric=["age", "age_again"])
    with pytest.raises(GlmFitError, match="singular"):
        fit_in_memory(frame, model)


def test_iteration_cap_reports_not_converged() -> None:
    frame = gbsg2()
    names = MODELS[0].parameter_names()
    site = InMemoryGlmSite("a", names, design(frame, MODELS[0]), "binomial")
    fit = asyncio.run(fit_federated_glm([site], "binomial", max_iterations=2))
    assert not fit.converged and fit.iterations == 2


def test_malformed_site_answers_are_refused() -> None:
    with pytest.raises(GlmFitError, match="wrong number"):
        SiteStatistics.from_dict(
            {"xtwx": [[1.0]], "xtwz": [1.0, 2.0], "deviance": 1, "pearson_chi2": 1, "n": 3}, 2
        )
    with pytest.raises(GlmFitError, match="malformed"):
        SiteStatistics.from_dict({"xtwx": [[1.0]]}, 1)


@pytest.mark.parametrize(
    "answer",
    [
        [1, 2],  # not an object
        {"xtwx": [[1.0]], "xtwz": [1.0], "deviance": 1.0, "pearson_chi2": 1.0, "n": 1e999},
        {"xtwx": [[1.0]], "xtwz": [1.0], "deviance": 1.0, "pearson_chi2": float("nan"), "n": 5},
        {"xtwx": [[1.0]], "xtwz": [1.0], "deviance": 1.0, "pearson_chi2": 1.0, "n": -1},
        {"xtwx": [[1.0]], "xtwz": [1.0], "deviance": 1.0, "pearson_chi2": 1.0},
    ],
)
def test_a_malformed_iteration_answer_is_refused_as_such(answer: object) -> None:
    with pytest.raises(GlmFitError):
        SiteStatistics.from_dict(answer, 1)  # type: ignore[arg-type]


def test_coefficients_that_single_out_rows_are_refused() -> None:
    from gateway.federation.glm_site import GlmArrays
    from pseudonymize.disclosure import DisclosureRules
    from pseudonymize.disclosure.glm_checks import GlmDisclosureError

    x = np.column_stack([np.ones(50), np.arange(50.0)])
    data = GlmArrays(x, np.arange(50) % 2.0, np.zeros(50), np.ones(50))
    rules = DisclosureRules(min_cell_count=10)
    iteration_statistics(data, np.zeros(2), "binomial", rules)  # at β = 0 every row weighs the same
    # Row 7 alone where the weight peaks, the others saturated: refused at the saturation bound.
    with pytest.raises(GlmDisclosureError, match="saturate"):
        iteration_statistics(data, np.array([-1e6 * 7, 1e6]), "binomial", rules)
    # Within the bound: one row at η = 0, where the weight peaks, the others at η = 20.
    apart = GlmArrays(np.column_stack([np.ones(50), [0.0] + [10.0] * 49]), data.y, data.offset, data.weights)
    with pytest.raises(GlmDisclosureError, match="fewer than 10 rows' worth"):
        iteration_statistics(apart, np.array([0.0, 2.0]), "binomial", rules)
    # Poisson: the last row's predictor at the bound, everyone else's far below.
    with pytest.raises(GlmDisclosureError, match="fewer than 10 rows' worth"):
        iteration_statistics(data, np.array([20.0 - 49 * 2.0, 2.0]), "poisson", rules)
    # A Gaussian step weighs every row alike, whatever β.
    iteration_statistics(data, np.array([1e6, -1e6]), "gaussian", rules)


def test_a_poisson_fit_of_a_few_dozen_rows_is_not_refused_on_its_way() -> None:
    # From β = 0 a plain step overshoots and piles the weight onto the largest rows; the fit starts its
    # second iterate from the intercept-only model instead, and every iterate passes the sites' rules.
    from gateway.federation.glm_site import GlmArrays
    from pseudonymize.disclosure import DisclosureRules

    rules = DisclosureRules(min_cell_count=10)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        covariate = rng.normal(size=60)
        x = np.column_stack([np.ones(60), covariate])
        data = GlmArrays(x, rng.poisson(np.exp(1 + 0.5 * covariate)).astype(float), np.zeros(60), np.ones(60))

        class Checked(InMemoryGlmSite):
            async def iterate(self, beta: Sequence[float], iteration: int) -> SiteStatistics:
                return iteration_statistics(self.data, np.asarray(beta, dtype=float), "poisson", rules)

        fit = asyncio.run(
            fit_federated_glm([Checked("site", ["(Intercept)", "x"], data, "poisson")], "poisson")
        )
        assert fit.converged


UNTIL = "2031-03-31"
NOT_DAYS = ["2031-02-30", "31.03.2031", "2031-3-31", "2031-03-31T00:00:00", 20310331, ["2031-03-31"], ""]


class _UnderMoratorium(InMemoryGlmSite):
    """A site whose session says its rows are under a publication moratorium until `until`."""

    def __init__(self, until: object, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.until = until

    async def open(self) -> list[str]:
        self.publication_moratorium_until = self.until  # type: ignore[assignment]
        return await super().open()


class _RefusingUnderMoratorium(_UnderMoratorium, _Refusing):
    pass


def _halves(refusing: str | None = None, **until: object) -> list[InMemoryGlmSite]:
    """Sites a and b over halves of GBSG2: `until` gives a site's moratorium, `refusing` names a site that
    stops the fit at iteration 3."""
    frame, model = gbsg2(), MODELS[0]
    names = model.parameter_names()
    sites: list[InMemoryGlmSite] = []
    for site, rows in (("a", slice(0, 300)), ("b", slice(300, None))):
        cls = _RefusingUnderMoratorium if site == refusing else _UnderMoratorium
        sites.append(cls(until.get(site), site, names, design(frame.iloc[rows], model), "binomial"))
    return sites


def test_a_fit_is_under_the_latest_moratorium_of_its_sites_and_round_trips_it() -> None:
    sites = _halves(a="2031-01-15", b=UNTIL)
    fit = asyncio.run(fit_federated_glm(sites, "binomial"))
    assert fit.publication_moratorium_until == UNTIL
    assert {row["site"]: row["publication_moratorium_until"] for row in fit.sites} == {
        "a": "2031-01-15", "b": UNTIL,
    }  # fmt: skip
    body = fit.to_dict()
    assert body["publication_moratorium_until"] == UNTIL
    again = GlmFit.from_dict(body)
    assert again.publication_moratorium_until == UNTIL and again.sites == fit.sites
    pd.testing.assert_series_equal(again.params, fit.params)


def test_a_fit_under_no_moratorium_says_none() -> None:
    fit = asyncio.run(fit_federated_glm(_halves(), "binomial"))
    assert fit.publication_moratorium_until is None
    assert "publication_moratorium_until" not in fit.to_dict()
    assert all("publication_moratorium_until" not in row for row in fit.sites)
    assert GlmFit.from_dict(fit.to_dict()).publication_moratorium_until is None


@pytest.mark.parametrize("day", NOT_DAYS, ids=repr)
def test_a_moratorium_that_is_not_a_day_is_ignored(day: object) -> None:
    fit = asyncio.run(fit_federated_glm(_halves(a=day, b=UNTIL), "binomial"))
    assert fit.publication_moratorium_until == UNTIL
    assert "publication_moratorium_until" not in fit.sites[0]
    only_invalid = asyncio.run(fit_federated_glm(_halves(a=day), "binomial"))
    assert only_invalid.publication_moratorium_until is None
    sent = {**fit.to_dict(), "publication_moratorium_until": day}
    assert GlmFit.from_dict(sent).publication_moratorium_until is None


def test_a_stopped_fit_keeps_each_sites_moratorium() -> None:
    sites = _halves(refusing="b", a=UNTIL)
    with pytest.raises(FitStopped) as stopped:
        asyncio.run(fit_federated_glm(sites, "binomial"))
    table = {row["site"]: row for row in stopped.value.sites}
    assert table["a"]["publication_moratorium_until"] == UNTIL
    assert "publication_moratorium_until" not in table["b"]


OPENED = {"status": "open", "session": "s1", "parameters": ["(Intercept)"], "max_iterations": 50}


def _peer(opened: dict[str, object]) -> object:
    """An HTTP site whose peer opens a session with `opened` as the rest of its answer."""
    from gateway.federation.glm_fit import HttpGlmSite

    answer = {**OPENED, **opened}
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    )
    return HttpGlmSite("peer", "http://peer.test", "Bearer t", {"agreement": "DSA"}, client)


class _Service:
    """What LocalGlmSite needs of GlmSiteService: the site's id and `open`."""

    def __init__(self, opened: dict[str, object]) -> None:
        self.rt = SimpleNamespace(settings=SimpleNamespace(site_id="local"))
        self.opened = opened

    async def open(self, *args: object) -> dict[str, object]:
        return {**OPENED, **self.opened}


def _local(opened: dict[str, object]) -> object:
    from gateway.federation.glm_site import LocalGlmSite

    return LocalGlmSite(_Service(opened), None, None, "r1")  # type: ignore[arg-type]


@pytest.mark.parametrize("site", [_peer, _local], ids=["http", "local"])
def test_a_sites_session_answer_gives_its_moratorium_when_it_is_a_day(site: Any) -> None:
    async def opened(answer: dict[str, object]) -> object:
        handle = site(answer)
        assert await handle.open() == ["(Intercept)"]
        return handle.publication_moratorium_until

    assert asyncio.run(opened({"publication_moratorium_until": UNTIL})) == UNTIL
    assert asyncio.run(opened({})) is None
    for day in NOT_DAYS:
        assert asyncio.run(opened({"publication_moratorium_until": day})) is None, day
