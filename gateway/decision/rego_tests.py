"""Runs the `test_*` rules of every `*_test.rego` package on the embedded engine, as `opa test` does."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regorus

from gateway.decision.bundle import PolicyBundle, first_line, is_test_file, load_bundle
from gateway.decision.embedded import build_engine


@dataclass(frozen=True)
class RegoTest:
    """One test rule: its package, name, and where it is written."""

    package: str
    name: str
    file: str
    line: int

    @property
    def rule(self) -> str:
        return f"data.{self.package}.{self.name}"


@dataclass(frozen=True)
class RegoTestResult:
    """The outcome of one test rule: passed only when the rule is exactly true."""

    test: RegoTest
    passed: bool
    detail: str
    duration_s: float


@dataclass(frozen=True)
class RegoTestReport:
    """All outcomes, plus the engine's coverage report when asked for."""

    results: tuple[RegoTestResult, ...]
    coverage: str | None

    @property
    def failed(self) -> tuple[RegoTestResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    @property
    def ok(self) -> bool:
        return bool(self.results) and not self.failed


def _ref_name(ref: dict[str, Any]) -> str:
    """Flatten a package reference from regorus' AST ({RefDot: {refr, field}} / {Var: {value}})."""
    if "Var" in ref:
        return str(ref["Var"]["value"])
    if "RefDot" in ref:
        return f"{_ref_name(ref['RefDot']['refr'])}.{ref['RefDot']['field'][1]}"
    raise ValueError(f"unexpected package reference {sorted(ref)}")


def discover_tests(engine: regorus.Engine) -> list[RegoTest]:
    """Every rule named test_* in a package ending in _test, in file and line order."""
    tests: dict[tuple[str, str], RegoTest] = {}
    for policy in json.loads(engine.get_ast_as_json()):
        path = policy["source"]["file"]
        if not is_test_file(path):
            continue
        module = policy["ast"]
        package = _ref_name(module["package"]["refr"])
        if not package.endswith("_test"):
            continue
        for rule in module["rules"]:
            head = rule.get("Spec", {}).get("head", {})
            for shape in head.values():
                ref = shape.get("refr", {}) if isinstance(shape, dict) else {}
                name = ref.get("Var", {}).get("value")
                if isinstance(name, str) and name.startswith("test_"):
                    line = int(rule["Spec"]["span"]["line"])
                    # Several bodies of one rule name are one test, as in OPA.
                    tests.setdefault((package, name), RegoTest(package, name, path, line))
    return sorted(tests.values(), key=lambda t: (t.file, t.line))


def _run_one(engine: regorus.Engine, test: RegoTest) -> RegoTestResult:
    start = time.perf_counter()
    try:
        value = json.loads(engine.eval_rule_as_json(test.rule))
        passed = value is True
        detail = "" if passed else f"evaluated to {json.dumps(value)}"
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 — a panic in one test must not stop the others
        passed, detail = False, f"error: {first_line(exc)}"
    return RegoTestResult(test, passed, detail, time.perf_counter() - start)


def run_bundle_tests(bundle: PolicyBundle, *, coverage: bool = False) -> RegoTestReport:
    """Run every test rule of a bundle loaded with its test twins."""
    engine = build_engine(bundle)
    engine.set_input({})
    if coverage:
        engine.set_enable_coverage(True)
    results = tuple(_run_one(engine, test) for test in discover_tests(engine))
    report = engine.get_coverage_report_pretty() if coverage else None
    return RegoTestReport(results, report)


def run_policy_tests(
    policy_dir: Path | str, site_jurisdiction: str, *, coverage: bool = False
) -> RegoTestReport:
    """Load `policy_dir` with its tests (validating its data) and run them."""
    bundle = load_bundle(policy_dir, site_jurisdiction, include_tests=True)
    return run_bundle_tests(bundle, coverage=coverage)


def format_report(report: RegoTestReport, *, verbose: bool = True) -> Sequence[str]:
    """Lines in the manner of `opa test -v`: one per test, failures with their detail, then a summary."""
    lines: list[str] = []
    current = None
    for r in report.results:
        if r.test.file != current:
            current = r.test.file
            if verbose or any(x.test.file == current and not x.passed for x in report.results):
                lines.append(f"{current}:")
        if verbose or not r.passed:
            status = "PASS" if r.passed else "FAIL"
            line = f"{r.test.rule}: {status} ({r.duration_s * 1000:.2f}ms)"
            lines.append(line if r.passed else f"{line}\n  {r.detail} ({r.test.file}:{r.test.line})")
    lines.append("-" * 80)
    total = len(report.results)
    if not total:
        lines.append("no tests found (rules named test_* in packages ending _test)")
    elif report.failed:
        lines.append(f"PASS: {total - len(report.failed)}/{total}")
        lines.append(f"FAIL: {len(report.failed)}/{total}")
    else:
        lines.append(f"PASS: {total}/{total}")
    return lines
