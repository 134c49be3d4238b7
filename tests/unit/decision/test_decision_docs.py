"""The examples in docs/policy.md are real: the input validates and decides, the new agreement loads."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from gateway.decision import DecisionInput, decide, load_bundle
from gateway.decision.embedded import EmbeddedEngine

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs" / "policy.md").read_text()


def _json_block_after(heading: str) -> str:
    section = DOC.split(heading, 1)[1]
    match = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert match, f"no json example after {heading}"
    return match.group(1)


def test_input_example_validates_and_is_allowed() -> None:
    request = DecisionInput.model_validate_json(_json_block_after("## Input"))
    decision = decide(EmbeddedEngine(load_bundle(ROOT / "policies", "DE")), request)
    assert decision.decision == "allow", decision.reasons
    assert decision.obligations is not None
    documented = json.loads(_json_block_after("## Result"))
    assert decision.decision == documented["decision"]
    assert list(decision.reasons) == documented["reasons"]
    assert decision.obligations.model_dump(mode="json") == documented["obligations"]


def test_new_agreement_example_loads(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    entry = json.loads("{" + _json_block_after("## Writing a new agreement") + "}")
    agreements = policies / "data" / "agreements.json"
    doc = json.loads(agreements.read_text())
    doc.update(entry)
    agreements.write_text(json.dumps(doc))
    bundle = load_bundle(policies, "DE")
    assert "DSA-2026-031" in bundle.data["agreements"]
