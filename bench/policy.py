"""Decision latency on the embedded engine with 1,000 datasets and 200 agreements loaded.

    python bench/policy.py [--iterations N]

Each timed call builds the DecisionInput from a request-shaped dict (as the gateway does) and runs the
fail-closed decide(), which runs the policies on regorus' compiled engine (the RVM). Last line:
{"p50_us": …, "p99_us": …}. Targets: p50 ≤ 250 µs, p99 ≤ 1 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# bench/audit.py would shadow the `audit` package, which the gateway's modules import, for a script run
# from this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from gateway.decision import DecisionInput, decide, load_bundle  # noqa: E402
from gateway.decision.embedded import EmbeddedEngine, TreeWalkingEngine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_AGREEMENTS = 200
DATASETS_PER_AGREEMENT = 5
N_ORGS = 60
WARMUP = 300
ITERATIONS = 5000
COLUMNS = ["age_band", "sex", "bmi", "hba1c", "ldl", "sbp", "diagnosis_year", "insulin", "outcome", "stage"]


def _write_data(folder: Path, rng: random.Random) -> list[dict[str, Any]]:
    """Copy the shipped policies and example vocabularies, then generate a large agreement set."""
    shutil.copytree(ROOT / "policies", folder, ignore=shutil.ignore_patterns("*_test.rego"))
    data = folder / "data"
    countries = ["DE", "FR", "NL", "AT", "JP", "US", "GB", "CH"]
    orgs = {
        f"org-{i:03d}": {
            "name": f"Hospital {i}",
            "country": countries[i % len(countries)],
            "non_profit": i % 7 != 0,
        }
        for i in range(N_ORGS)
    }
    (data / "organisations.json").write_text(json.dumps(orgs))
    agreements: dict[str, Any] = {}
    classified: dict[str, str] = {}
    requests: list[dict[str, Any]] = []
    for a in range(N_AGREEMENTS):
        dsa_id = f"DSA-2026-{a:04d}"
        parties = rng.sample(sorted(orgs), 4)
        datasets = {}
        for d in range(DATASETS_PER_AGREEMENT):
            ds_id = f"ds-{a:04d}-{d}"
            datasets[ds_id] = {"columns": rng.sample(COLUMNS, 7)}
            if rng.random() < 0.1:
                classified[ds_id] = "GEN-SEQ-1"
        agreements[dsa_id] = {
            "title": f"Agreement {a}",
            "parties": parties,
            "purposes": [rng.choice(["DUO:0000042", "DUO:0000006"])],
            "commercial_use": False,
            "collaboration": True,
            "return_of_results": True,
            "datasets": datasets,
            "query_kinds": ["count", "crosstab", "summary", "histogram", "glm", "kaplan_meier"],
            "approval_kinds": ["glm"],
            "ethics_approvals": ["EC-2026-077"],
            "not_before": "2026-01-01",
            "not_after": "2027-12-31",
            "thresholds": {
                "min_cell_count": rng.choice([10, 15, 20]),
                "round_to": 5,
                "max_identical_queries": 10,
            },
            "dp": {"epsilon": 0.5, "budget": 5.0} if rng.random() < 0.2 else None,
            "standard_contractual_clauses": [
                {"id": f"{dsa_id} schedule 3", "countries": ["US", "JP", "DE", "FR"]}
            ],
            "export_licences": ["EXL-2026-003"],
        }
        for ds_id, terms in datasets.items():
            org = parties[0]
            country = orgs[org]["country"]
            requests.append(
                {
                    "requester": {
                        "sub": f"researcher-{a}",
                        "org": org,
                        "country": country,
                        "roles": ["researcher"],
                        "visas": [],
                    },
                    "purpose": {"duo": ["DUO:0000006"], "ethics_approval_id": "EC-2026-077"},
                    "dsa": dsa_id,
                    "dataset": {
                        "id": ds_id,
                        "jurisdiction": "DE",
                        "duo": ["DUO:0000042", "DUO:0000021", "DUO:0000045"],
                        "columns": terms["columns"] + ["zip_code"],
                    },
                    "query": {
                        "kind": rng.choice(["count", "crosstab", "summary", "glm"]),
                        "columns": terms["columns"][:1],
                        "filters": {
                            "op": "and",
                            "args": [
                                {"column": terms["columns"][1], "op": ">=", "value": 40},
                                {"column": terms["columns"][2], "op": "=", "value": "F"},
                            ],
                        },
                        "group_by": terms["columns"][3:5],
                    },
                    "destination": {"country": country},
                    "now": "2026-05-01T10:00:00Z",
                }
            )
    (data / "agreements.json").write_text(json.dumps(agreements))
    export = json.loads((data / "export_control.json").read_text())
    export["classified_datasets"] = classified
    (data / "export_control.json").write_text(json.dumps(export))
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=ITERATIONS, help="timed decisions (at least 100)")
    iterations = max(100, parser.parse_args().iterations)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "policies"
        requests = _write_data(folder, rng)
        bundle = load_bundle(folder, "DE")
    engine = EmbeddedEngine(bundle)
    n_datasets = sum(len(a["datasets"]) for a in bundle.data["agreements"].values())
    print(
        f"loaded {len(bundle.data['agreements'])} agreements, {n_datasets} datasets;",
        f"bundle {bundle.short_digest}",
    )

    outcomes: dict[str, int] = {}
    for i in range(WARMUP):
        decision = decide(engine, DecisionInput.model_validate(requests[i % len(requests)]))
        outcomes[decision.decision] = outcomes.get(decision.decision, 0) + 1
    if any(r.startswith("policy evaluation failed") for r in decision.reasons):
        sys.exit(f"benchmark input does not evaluate: {decision.reasons}")

    wall, cpu = [], []
    for _ in range(iterations):
        raw = requests[rng.randrange(len(requests))]
        start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        decide(engine, DecisionInput.model_validate(raw))
        cpu.append((time.thread_time_ns() - start_cpu) / 1000)
        wall.append((time.perf_counter_ns() - start) / 1000)
    # The engine alone (input set, decision evaluated: JSON text in and out on the RVM, documents on the
    # tree-walking engine, which decided before the RVM), to show how the time splits with the Python side.
    models = [DecisionInput.model_validate(r) for r in requests]
    print(f"warm-up outcomes: {outcomes}")
    for name, evaluate, inputs in (
        ("RVM", engine.evaluate_json, [m.policy_input_json() for m in models]),
        ("tree-walking", TreeWalkingEngine(bundle).evaluate, [m.to_policy_input() for m in models]),
    ):
        eng_p50, eng_p99 = _engine_only(evaluate, inputs, rng, iterations // 5)
        print(f"{iterations // 5} {name} engine-only evaluations, thread CPU p50 {eng_p50:.0f} µs,", end=" ")
        print(f"p99 {eng_p99:.0f} µs")
    # CPU time of this thread shows the engine's own cost when other processes share the cores.
    cpu_p50, cpu_p99 = _percentiles(cpu)
    print(f"{iterations} decisions, thread CPU time: p50 {cpu_p50:.0f} µs, p99 {cpu_p99:.0f} µs")
    p50, p99 = _percentiles(wall)
    print(f"{iterations} decisions, wall clock: p50 {p50:.0f} µs, p99 {p99:.0f} µs, max {max(wall):.0f} µs")
    print(json.dumps({"p50_us": round(p50, 1), "p99_us": round(p99, 1)}))


def _engine_only(
    evaluate: Callable[[Any], object], inputs: list[Any], rng: random.Random, iterations: int
) -> tuple[float, float]:
    """Thread CPU percentiles of an engine's evaluation alone on already-built policy inputs."""
    for policy_input in inputs[:WARMUP]:
        evaluate(policy_input)
    cpu = []
    for _ in range(iterations):
        policy_input = inputs[rng.randrange(len(inputs))]
        start_cpu = time.thread_time_ns()
        evaluate(policy_input)
        cpu.append((time.thread_time_ns() - start_cpu) / 1000)
    return _percentiles(cpu)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


if __name__ == "__main__":
    main()
