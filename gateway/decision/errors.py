"""Errors of the decision component.

PolicyError
├── PolicyLoadError              the policy bundle cannot be used; a gateway refuses to start on it,
│   │                            and a reload that raises it keeps the last good bundle
│   ├── PolicySourceError        a .rego file does not parse or the policies do not evaluate
│   └── PolicyDataError          a policy data file is invalid (names the file and the field)
└── PolicyEvaluationError        one evaluation failed; `decide` turns it into a deny
    ├── PolicyEngineUnavailable  the OPA server is unreachable, too slow, or answered an HTTP error
    └── MalformedDecision        the engine answered something that is not a decision
"""

from __future__ import annotations

from pathlib import Path


class PolicyError(Exception):
    """Base of every error the decision component raises."""


class PolicyLoadError(PolicyError):
    """The policy bundle at a folder cannot be loaded."""


class PolicySourceError(PolicyLoadError):
    """A policy file does not parse, or the policies as a whole fail to evaluate."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        self.message = message
        super().__init__(f"{path}: {message}")


class PolicyDataError(PolicyLoadError):
    """A policy data file is invalid; `field` is a dotted path inside the file (None for the whole file)."""

    def __init__(self, path: Path | str, field: str | None, message: str) -> None:
        self.path = Path(path)
        self.field = field
        self.message = message
        where = f"{path}: {field}" if field else f"{path}"
        super().__init__(f"{where}: {message}")


class PolicyEvaluationError(PolicyError):
    """One policy evaluation did not produce a usable decision."""


class PolicyEngineUnavailable(PolicyEvaluationError):
    """The policy engine could not be reached or did not answer in time."""


class MalformedDecision(PolicyEvaluationError):
    """The engine answered, but not with a decision of the agreed shape."""
