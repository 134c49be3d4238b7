"""The request mixes the decision-equality check runs, and how a decision is written down for comparing.

`python tests/unit/decision/decision_golden.py` rewrites decision_golden.json from the current policies:
run it only when a decision is meant to change, and review the diff.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import random
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from gateway.decision import Decision, DecisionInput, PolicyBundle, decide, load_bundle
from gateway.decision.embedded import EmbeddedEngine

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).with_name("decision_golden.json")


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _corpus_module() -> ModuleType:
    return _load("decision_corpus", ROOT / "tests" / "integration" / "decision_corpus.py")


def _bench_module() -> ModuleType:
    return _load("bench_policy", ROOT / "bench" / "policy.py")


def corpus_requests() -> list[DecisionInput]:
    """The 250-request corpus both engines are compared on, over the shipped example data."""
    requests: list[DecisionInput] = _corpus_module().corpus(250)
    return requests


BENCH_ETHICS_APPROVAL = "EC-2026-077"
"""The ethics approval id of every benchmark request, whose datasets require one (DUO:0000021)."""


def bench_bundle_and_requests() -> tuple[PolicyBundle, list[dict[str, Any]]]:
    """The benchmark's 200 agreements and 1,000 requests, plus 600 variations that reach the deny paths.

    Every agreement lists the requests' ethics approval, as a steward would record it: only an approval the
    agreement lists satisfies DUO:0000021, and the requests are meant to reach the allow path."""
    bench = _bench_module()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "policies"
        requests: list[dict[str, Any]] = bench._write_data(folder, random.Random(7))
        agreements_file = folder / "data" / "agreements.json"
        agreements = json.loads(agreements_file.read_text())
        for terms in agreements.values():
            terms.setdefault("ethics_approvals", [BENCH_ETHICS_APPROVAL])
        agreements_file.write_text(json.dumps(agreements))
        bundle = load_bundle(folder, "DE")
    return bundle, requests + _variations(requests, bundle, random.Random(11), 600)


def _variations(
    requests: list[dict[str, Any]], bundle: PolicyBundle, rng: random.Random, n: int
) -> list[dict[str, Any]]:
    """Benchmark requests with one to three facts changed, so every clause fires on the large data too."""
    dsas = sorted(bundle.data["agreements"])
    datasets = [ds for a in dsas for ds in bundle.data["agreements"][a]["datasets"]]
    orgs = sorted(bundle.data["organisations"])
    countries = ["DE", "FR", "US", "JP", "GB", "BR", "RU", "CN", "NL", "CH"]
    purposes: list[dict[str, Any]] = [
        {"duo": ["DUO:0000006"]},
        {"duo": ["DUO:0000042"], "ethics_approval_id": "EC-1"},
        {"duo": ["DUO:0000011"], "ethics_approval_id": "EC-1"},
        {"duo": ["DUO:0000007"], "disease": "MONDO:0005148", "ethics_approval_id": "EC-1"},
        {"duo": ["DUO:0000006", "DUO:0000042"], "ethics_approval_id": "EC-1"},
        {"duo": ["DUO:0000043"], "ethics_approval_id": "EC-1"},
    ]
    dataset_duo = [
        ["DUO:0000042"],
        ["DUO:0000006", "DUO:0000046"],
        ["DUO:0000042", "DUO:0000022"],
        ["DUO:0000042", "DUO:0000024"],
        ["DUO:0000042", "DUO:0000025"],
        ["DUO:0000042", "DUO:0000019"],
        ["DUO:0000007", "DUO:0000020", "DUO:0000029"],
        ["DUO:0000099"],
    ]
    nows = [
        "2025-12-31T23:00:00Z",
        "2026-05-01T10:00:00Z",
        "2028-01-01T00:00:00+01:00",
        "2026-07-01T00:00:00Z",
    ]
    out = []
    for _ in range(n):
        doc = copy.deepcopy(rng.choice(requests))
        for _ in range(rng.randint(1, 3)):
            which = rng.randrange(11)
            if which == 0:
                doc["dsa"] = rng.choice([*dsas[:20], "DSA-9999-000"])
            elif which == 1:
                doc["dataset"]["id"] = rng.choice(datasets)
            elif which == 2:
                doc["requester"]["org"] = rng.choice(orgs)
            elif which == 3:
                doc["requester"]["country"] = rng.choice(countries)
            elif which == 4:
                doc["destination"]["country"] = rng.choice(countries)
            elif which == 5:
                doc["purpose"] = copy.deepcopy(rng.choice(purposes))
            elif which == 6:
                doc["dataset"]["duo"] = rng.choice(dataset_duo)
                doc["dataset"]["moratorium_until"] = "2026-09-30"
                doc["dataset"]["use_until"] = "2026-03-31"
                doc["dataset"]["diseases"] = ["MONDO:0005015"]
            elif which == 7:
                doc["query"]["kind"] = rng.choice(["glm", "sql", "kaplan_meier", "quantiles", "count"])
            elif which == 8:
                doc["query"]["group_by"] = ["zip_code", "outcome"]
            elif which == 9:
                doc["now"] = rng.choice(nows)
            else:
                doc["requester"]["roles"] = ["steward"]
                doc["requester"]["visas"] = [{"type": "ControlledAccessGrants", "value": "ds"}]
        out.append(doc)
    return out


def record(decision: Decision) -> list[Any]:
    """A decision as compared: everything but the bundle digest, which changes with every policy edit."""
    dumped = decision.model_dump(mode="json")
    return [dumped["decision"], dumped["reasons"], dumped["obligations"]]


def current_records() -> dict[str, list[list[Any]]]:
    """Today's decisions for every request of both mixes, in order."""
    corpus_engine = EmbeddedEngine(load_bundle(ROOT / "policies", "DE"))
    bundle, bench = bench_bundle_and_requests()
    bench_engine = EmbeddedEngine(bundle)
    return {
        "corpus": [record(decide(corpus_engine, r)) for r in corpus_requests()],
        "bench": [record(decide(bench_engine, DecisionInput.model_validate(r))) for r in bench],
    }


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(current_records(), indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {GOLDEN}")
