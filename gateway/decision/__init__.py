"""Policy decisions: one structured answer per request from Rego policies, failing closed.

Callers use `decide(engine, DecisionInput) -> Decision` (or `PolicyDecisionPoint.decide`), which never
raises; `load_bundle` validates a policy folder and `make_engine` picks the embedded or OPA-server engine.
"""

from gateway.decision.bundle import PolicyBundle, load_bundle
from gateway.decision.decide import decide, parse_decision
from gateway.decision.engine import PolicyEngine, make_engine
from gateway.decision.errors import (
    MalformedDecision,
    PolicyDataError,
    PolicyEngineUnavailable,
    PolicyError,
    PolicyEvaluationError,
    PolicyLoadError,
    PolicySourceError,
)
from gateway.decision.models import (
    ConsentFilter,
    DatasetFacts,
    Decision,
    DecisionInput,
    Destination,
    DpObligation,
    Obligations,
    Purpose,
    QueryFacts,
    Requester,
    Visa,
)
from gateway.decision.point import PolicyDecisionPoint

__all__ = [
    "ConsentFilter",
    "DatasetFacts",
    "Decision",
    "DecisionInput",
    "Destination",
    "DpObligation",
    "MalformedDecision",
    "Obligations",
    "PolicyBundle",
    "PolicyDataError",
    "PolicyDecisionPoint",
    "PolicyEngine",
    "PolicyEngineUnavailable",
    "PolicyError",
    "PolicyEvaluationError",
    "PolicyLoadError",
    "PolicySourceError",
    "Purpose",
    "QueryFacts",
    "Requester",
    "Visa",
    "decide",
    "load_bundle",
    "make_engine",
    "parse_decision",
]
