"""The policy bundle: the Rego sources and validated data a decision is made with, and their digest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rfc8785

from gateway.decision.errors import PolicySourceError
from gateway.decision.policy_data import ancestor_sets, read_data_files, validate_policy_data

DATA_ROOT = "fedgate_data"
DECISION_PACKAGE = "fedgate.decision"
DECISION_RULE = "result"


@dataclass(frozen=True)
class PolicyBundle:
    """Policies (relative path → source) and the data document placed at `data.fedgate_data`."""

    root: Path
    site_jurisdiction: str
    policies: tuple[tuple[str, str], ...]
    data: Mapping[str, Any] = field(repr=False)
    digest: str

    @property
    def short_digest(self) -> str:
        """The first 12 hex digits, for messages."""
        return self.digest[:12]

    def data_document(self) -> dict[str, Any]:
        """The data both engines load at `data.fedgate_data`, carrying the bundle digest as `meta`."""
        return {**self.data, "meta": {"bundle_digest": self.digest}}


def is_test_file(path: Path | str) -> bool:
    """Rego test twins end in `_test.rego`; the gateway never loads them for decisions."""
    return str(path).endswith("_test.rego")


def derive(data: Mapping[str, Any]) -> dict[str, Any]:
    """Lookup tables computed once from the data, so the policies need not rebuild them per decision."""
    duo = data["duo"]
    return {
        # Each term's ancestors, itself included: what graph.reachable answers, as a sorted list.
        "duo_ancestors": _ancestors({code: term.get("parents", []) for code, term in duo["terms"].items()}),
        "disease_ancestors": _ancestors(
            {code: term.get("parents", []) for code, term in duo.get("diseases", {}).items()}
        ),
        # As the keys of an object: object.keys gives the policies the set in one step.
        "permission_codes": {c: True for c, term in duo["terms"].items() if term["kind"] == "permission"},
    }


def _ancestors(parents: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Every node with the nodes reachable from it over `parents` (itself included), each sorted.

    The data is validated first, so the hierarchy has no cycle and stays within the limits that bound this
    table (policy_data.MAX_DEPTH, MAX_ANCESTRY).
    """
    table = ancestor_sets(parents)
    return {node: sorted(table[node]) for node in parents}


def bundle_digest(policies: tuple[tuple[str, str], ...], data: Mapping[str, Any]) -> str:
    """SHA-256 over RFC 8785 JSON of {policies: {path: sha256(source)}, data}; sorted by JCS itself."""
    document = {
        "policies": {path: hashlib.sha256(source.encode("utf-8")).hexdigest() for path, source in policies},
        "data": data,
    }
    return hashlib.sha256(rfc8785.dumps(document)).hexdigest()


def read_policies(policy_dir: Path, *, include_tests: bool) -> tuple[tuple[str, str], ...]:
    """Every .rego file under `policy_dir` (sorted by relative path), optionally with the test twins."""
    if not policy_dir.is_dir():
        raise PolicySourceError(policy_dir, "policy folder not found")
    out = []
    for path in sorted(policy_dir.rglob("*.rego")):
        if is_test_file(path) and not include_tests:
            continue
        rel = path.relative_to(policy_dir).as_posix()
        try:
            out.append((rel, path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicySourceError(path, f"cannot read: {exc}") from None
    if not any(not is_test_file(rel) for rel, _ in out):
        raise PolicySourceError(policy_dir, "no .rego policy files found")
    return tuple(out)


def load_bundle(
    policy_dir: Path | str, site_jurisdiction: str, *, include_tests: bool = False
) -> PolicyBundle:
    """Read and validate the policies and data under `policy_dir` for a site in `site_jurisdiction`.

    Raises PolicyDataError (naming file and field) or PolicySourceError; then checks that the policies
    parse and produce a decision on the embedded engine, so a broken bundle never reaches a request.
    """
    policy_dir = Path(policy_dir)
    policies = read_policies(policy_dir, include_tests=include_tests)
    data_dir = policy_dir / "data"
    raw = read_data_files(data_dir)
    validate_policy_data(data_dir, raw, site_jurisdiction)
    # The site's jurisdiction comes from settings, not from a file, so one policy folder serves many sites.
    data = json.loads(json.dumps(raw))
    data["site"]["jurisdiction"] = site_jurisdiction
    decision_policies = tuple(p for p in policies if not is_test_file(p[0]))
    data["derived"] = derive(data)
    data["derived"].update(_policy_tables(policy_dir, decision_policies, data))
    digest = bundle_digest(decision_policies, data)
    bundle = PolicyBundle(policy_dir, site_jurisdiction, policies, data, digest)
    _self_check(bundle)
    return bundle


# Tables the policies define over the data alone (no input), evaluated once here and stored under
# data.fedgate_data.derived, where the rules that need them look first: each is a rule a decision would
# otherwise evaluate per request. The policies compute the same value themselves when the table is absent.
POLICY_TABLES = {
    "agreement_limits": "data.fedgate.agreement.agreement_limits",
    "agreement_purposes": "data.fedgate.agreement.agreement_purposes",
    "covering_permissions": "data.fedgate.lib.covering_permissions",
    "transfer_site_bases": "data.fedgate.transfer.transfer_site_bases",
    "transfer_agreement_sccs": "data.fedgate.transfer.transfer_agreement_sccs",
}


def _policy_tables(
    root: Path, policies: tuple[tuple[str, str], ...], data: Mapping[str, Any]
) -> dict[str, Any]:
    """Evaluate POLICY_TABLES on the embedded engine with the data as it will be loaded."""
    # Imported here: the embedded engine module imports this one.
    from gateway.decision.embedded import build_engine, evaluate_rule

    probe = PolicyBundle(root, data["site"]["jurisdiction"], policies, data, "")
    engine = build_engine(probe)
    tables = {}
    for name, rule in POLICY_TABLES.items():
        try:
            engine.set_input({})
            tables[name] = evaluate_rule(engine, rule)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 — regorus panics are BaseException; all mean "unusable"
            raise PolicySourceError(root, f"{rule} does not evaluate: {first_line(exc)}") from None
    return tables


def _self_check(bundle: PolicyBundle) -> None:
    """The engines that will decide must evaluate the policies and deny an empty request.

    The gateway decides on the compiled RVM when every module is one it was verified on (`rvm_verified`),
    and the RVM refuses some Rego the tree-walking engine accepts, such as `walk` or `with`; other bundles
    are decided by the tree-walking engine alone.
    """
    # Imported here: the embedded engine module imports this one.
    from gateway.decision.embedded import build_engine, build_vm, evaluate_rule, evaluate_vm
    from gateway.decision.rvm_verified import rvm_verified

    def tree_walking() -> object:
        engine = build_engine(bundle)
        engine.set_input({})
        return evaluate_rule(engine)

    def rvm() -> object:
        return json.loads(evaluate_vm(build_vm(bundle), "{}"))

    engines = [("tree-walking", tree_walking)]
    if rvm_verified(bundle.policies):
        engines.append(("RVM", rvm))
    for engine_name, evaluate in engines:
        try:
            result = evaluate()
        except (KeyboardInterrupt, SystemExit, PolicySourceError):
            raise
        except BaseException as exc:  # noqa: BLE001 — regorus panics are BaseException; all mean "unusable"
            raise PolicySourceError(bundle.root, f"policies do not evaluate: {first_line(exc)}") from None
        if not isinstance(result, dict) or result.get("decision") != "deny":
            raise PolicySourceError(
                bundle.root,
                f"data.{DECISION_PACKAGE}.{DECISION_RULE} must deny an empty request on the {engine_name}"
                f" engine, got {result!r}",
            )


def first_line(exc: BaseException) -> str:
    """An engine error without the Rust backtrace the embedded engine appends."""
    text = str(exc).split("Stack backtrace:")[0].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines)[:300] or type(exc).__name__
