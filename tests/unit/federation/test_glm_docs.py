"""The JSON examples of docs/federated-statistics.md are valid requests."""

from __future__ import annotations

import json
import re
from pathlib import Path

from gateway.federation.glm_site import GlmSessionRequest
from gateway.query import KaplanMeierQuery, parse_query_spec

DOC = Path(__file__).resolve().parents[3] / "docs/federated-statistics.md"


def blocks(label: str) -> list[str]:
    return re.findall(rf"```json {label}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_session_example_builds_the_documented_parameters() -> None:
    (text,) = blocks("glm-session")
    request = GlmSessionRequest.model_validate(json.loads(text))
    assert request.model.parameter_names() == [
        "(Intercept)", "age", "tsize", "pnodes", "tgrade[II]", "tgrade[III]",
    ]  # fmt: skip


def test_the_kaplan_meier_example_is_a_valid_query() -> None:
    (text,) = blocks("km-query")
    assert isinstance(parse_query_spec(json.loads(text)), KaplanMeierQuery)
