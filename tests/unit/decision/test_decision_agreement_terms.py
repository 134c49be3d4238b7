"""Terms a researcher's own word must not satisfy, decided on the shipped policies by both embedded engines:
ethics approvals the agreement lists, the country an organisation is registered in, who asserted a visa,
and the diseases an agreement lists."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from policy_helpers import edit_data
from test_decision_decide import REQUEST

from gateway.decision import Decision, DecisionInput, decide, load_bundle
from gateway.decision.embedded import EmbeddedEngine, TreeWalkingEngine

DSA = "DSA-2026-014"
ENGINES = [EmbeddedEngine, TreeWalkingEngine]
Engine = type[EmbeddedEngine] | type[TreeWalkingEngine]


def _decide(folder: Path, engine: Engine, **changes: dict[str, Any]) -> Decision:
    doc = copy.deepcopy(REQUEST)
    for key, value in changes.items():
        doc[key] = {**doc[key], **value}
    return decide(engine(load_bundle(folder, "DE")), DecisionInput.model_validate(doc))


def _edit_dsa(folder: Path, change: Callable[[dict[str, Any]], object]) -> None:
    edit_data(folder, "agreements", lambda d: change(d[DSA]))


ETHICS_DATASET = {"duo": ["DUO:0000042", "DUO:0000021"]}


@pytest.mark.parametrize("engine", ENGINES)
def test_an_ethics_approval_the_agreement_does_not_list_waits_for_a_steward(
    policy_copy: Path, engine: Engine
) -> None:
    decided = _decide(
        policy_copy, engine, dataset=ETHICS_DATASET, purpose={"ethics_approval_id": "EC-2026-999"}
    )
    assert decided.decision == "needs_approval"
    assert decided.reasons == (
        "dataset ds-diabetes-de requires ethics approval (DUO:0000021) and DSA-2026-014 does not list the "
        "purpose's approval id: a steward must verify it",
    )
    assert decided.obligations is not None
    assert "DUO:0000021" in decided.obligations.consent_filter.allowed_codes
    listed = _decide(
        policy_copy, engine, dataset=ETHICS_DATASET, purpose={"ethics_approval_id": "EC-2026-077"}
    )
    assert listed.decision == "allow", listed.reasons


@pytest.mark.parametrize("engine", ENGINES)
def test_an_unlisted_ethics_approval_admits_no_patient_who_needs_one(
    policy_copy: Path, engine: Engine
) -> None:
    decided = _decide(policy_copy, engine, purpose={"ethics_approval_id": "EC-2026-999"})
    assert decided.decision == "allow"
    assert decided.obligations is not None
    assert "DUO:0000021" not in decided.obligations.consent_filter.allowed_codes


@pytest.mark.parametrize("engine", ENGINES)
def test_the_country_an_organisation_is_registered_in_is_a_recipient(
    policy_copy: Path, engine: Engine
) -> None:
    # org-ucsf is registered in the US; the agreement's clauses for the US are gone, and the token says FR.
    _edit_dsa(policy_copy, lambda d: d.update(standard_contractual_clauses=[]))
    decided = _decide(policy_copy, engine, requester={"org": "org-ucsf", "country": "FR"})
    assert decided.decision == "deny"
    assert decided.reasons == (
        "no legal basis to transfer data from DE to US (the requester's organisation's country): no adequacy "
        "decision, and DSA-2026-014 names no standard contractual clauses for US",
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_a_geographic_restriction_holds_the_organisations_country(policy_copy: Path, engine: Engine) -> None:
    dataset = {"duo": ["DUO:0000042", "DUO:0000022"], "geographic_area": ["DE", "FR"]}
    assert _decide(policy_copy, engine, dataset=dataset).decision == "allow"
    decided = _decide(policy_copy, engine, dataset=dataset, requester={"org": "org-ucsf", "country": "FR"})
    assert decided.decision == "deny"
    assert "dataset ds-diabetes-de may be used only in DE, FR (DUO:0000022)" in decided.reasons


@pytest.mark.parametrize("engine", ENGINES)
def test_an_organisation_the_site_does_not_know_is_denied(policy_copy: Path, engine: Engine) -> None:
    decided = _decide(policy_copy, engine, requester={"org": "org-nowhere"})
    assert decided.decision == "deny"
    assert (
        "organisation org-nowhere is not registered with this site, so the country the answer would reach "
        "cannot be checked" in decided.reasons
    )


GRANT = {"type": "ControlledAccessGrants", "value": "https://ega.example/DSA-2026-014"}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("visa", "decision"),
    [
        ({**GRANT, "source": "https://dac.example.org/", "by": "dac"}, "allow"),
        ({**GRANT, "source": "https://self.example/", "by": "self"}, "deny"),
        ({**GRANT, "source": "https://dac.example.org"}, "deny"),
        ({**GRANT, "source": "https://other-dac.example", "by": "dac"}, "deny"),
    ],
)
def test_a_required_visa_counts_only_from_the_asserter_and_source_the_agreement_names(
    policy_copy: Path, engine: Engine, visa: dict[str, str], decision: str
) -> None:
    _edit_dsa(policy_copy, lambda d: d.update(visa={**GRANT, "source": "https://dac.example.org"}))
    decided = _decide(policy_copy, engine, requester={"visas": [visa]})
    assert decided.decision == decision, decided.reasons


@pytest.mark.parametrize("engine", ENGINES)
def test_an_agreements_diseases_limit_every_purpose(policy_copy: Path, engine: Engine) -> None:
    # A health-research agreement (DUO:0000006) that lists diabetes: disease-specific research is covered by
    # its purposes, but only for diabetes.
    _edit_dsa(policy_copy, lambda d: d.update(diseases=["MONDO:0005015"]))
    limited = (
        "DSA-2026-014 limits research to the diseases it lists (MONDO:0005015), and the purpose names none "
        "of them nor a disease below one"
    )
    other = _decide(policy_copy, engine, purpose={"duo": ["DUO:0000007"], "disease": "MONDO:0008903"})
    assert other.reasons == (limited,)
    assert _decide(policy_copy, engine, purpose={"duo": ["DUO:0000006"]}).reasons == (limited,)
    allowed = _decide(policy_copy, engine, purpose={"duo": ["DUO:0000007"], "disease": "MONDO:0005148"})
    assert allowed.decision == "allow", allowed.reasons
