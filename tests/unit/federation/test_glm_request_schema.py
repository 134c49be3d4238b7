"""A GLM request is held to what its schema says: β holds numbers only (not numeric text, not booleans), a
categorical covariate's levels are distinct, and a destination is an upper-case ISO 3166-1 alpha-2 code,
each stated in the JSON schema the gateway serves, so that a body the schema takes is one the gateway
takes and the other way round."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from gateway.federation.glm_site import CategoricalCovariate, GlmSessionRequest, IterationRequest


def schema_takes(model: Any, body: dict[str, Any]) -> bool:
    return Draft202012Validator(model.model_json_schema()).is_valid(body)


@pytest.mark.parametrize("beta", [["1.5"], [True], [0.0, "2"], [None]])
def test_beta_of_anything_but_numbers_is_refused_as_the_schema_refuses_it(beta: list[Any]) -> None:
    body = {"agreement": "DSA-1", "beta": beta}
    with pytest.raises(ValidationError) as refused:
        IterationRequest.model_validate(body)
    assert refused.value.errors()[0]["loc"][0] == "beta"
    assert not schema_takes(IterationRequest, body)


def test_beta_of_integers_and_floats_is_taken_as_floats() -> None:
    body = {"agreement": "DSA-1", "beta": [0, 1.5, -2]}
    assert IterationRequest.model_validate(body).beta == [0.0, 1.5, -2.0]
    assert schema_takes(IterationRequest, body)


def test_repeated_levels_are_refused_by_the_gateway_and_by_the_schema() -> None:
    body = {"column": "sex", "levels": ["F", "M", "F"]}
    with pytest.raises(ValidationError, match="levels must be distinct"):
        CategoricalCovariate.model_validate(body)
    assert not schema_takes(CategoricalCovariate, body)
    assert schema_takes(CategoricalCovariate, {"column": "sex", "levels": ["F", "M"]})


@pytest.mark.parametrize("destination", ["de", "DEU", "D1", ""])
def test_a_destination_not_shaped_as_a_country_code_is_refused_by_both(destination: str) -> None:
    body = {
        "dataset": "cohort", "agreement": "DSA-1", "purpose": {"duo": ["DUO:0000006"]},
        "destination": destination, "model": {"outcome": "bmi", "family": "gaussian"},
    }  # fmt: skip
    with pytest.raises(ValidationError, match="ISO 3166-1 alpha-2"):
        GlmSessionRequest.model_validate(body)
    assert not schema_takes(GlmSessionRequest, body)
    assert schema_takes(GlmSessionRequest, {**body, "destination": "DE"})
