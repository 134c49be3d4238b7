"""Typed decision input and result: what the gateway asks the policy and what it gets back."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, model_validator

from gateway.countries import is_country

DUO_PATTERN = r"^DUO:[0-9]{7}$"


def _country(value: str) -> str:
    if not is_country(value):
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code (e.g. 'DE')")
    return value


CountryCode = Annotated[
    str,
    AfterValidator(_country),
    # For the schema only: `_country` checks the code against ISO 3166-1 and says so in its message.
    Field(
        json_schema_extra={"pattern": "^[A-Z]{2}$"}, description="ISO 3166-1 alpha-2, upper case (e.g. DE)"
    ),
]
DuoCode = Annotated[str, Field(pattern=DUO_PATTERN)]
Name = Annotated[str, Field(min_length=1, max_length=256)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Visa(_Frozen):
    """A GA4GH passport visa the token validator has already verified."""

    type: Name
    value: Name
    source: str | None = None
    by: str | None = None


class Requester(_Frozen):
    """Who asks: verified token claims, never the requester's own word."""

    sub: Name
    org: Name
    country: CountryCode
    roles: tuple[Name, ...]
    visas: tuple[Visa, ...] = ()


MAX_DUO_CODES: Final = 64
"""The most DUO codes a purpose may list: as many as the audit log records."""


class Purpose(_Frozen):
    """Why: DUO research-purpose codes, a disease term for disease-specific research, the ethics approval."""

    duo: tuple[DuoCode, ...] = Field(min_length=1, max_length=MAX_DUO_CODES)
    disease: Name | None = None
    ethics_approval_id: Name | None = None


class DatasetFacts(_Frozen):
    """What the catalog knows about the dataset asked for, including its dataset-level consent."""

    id: Name
    jurisdiction: CountryCode
    duo: tuple[DuoCode, ...]
    columns: tuple[Name, ...]
    diseases: tuple[Name, ...] = ()
    moratorium_until: dt.date | None = None
    use_until: dt.date | None = None
    geographic_area: tuple[CountryCode, ...] | None = None


class QueryFacts(_Frozen):
    """The parts of the query spec the policy reads: its kind and every column it touches."""

    kind: Name
    columns: tuple[Name, ...] = ()
    filters: JsonValue = None
    group_by: tuple[Name, ...] = ()


class Destination(_Frozen):
    """Where the answer goes."""

    country: CountryCode


class DecisionInput(_Frozen):
    """The one question the gateway asks per request (DESIGN.md, "Policy")."""

    requester: Requester
    purpose: Purpose
    dsa: Name
    dataset: DatasetFacts
    query: QueryFacts
    destination: Destination
    now: AwareDatetime

    def to_policy_input(self) -> dict[str, Any]:
        """The JSON document both engines receive as `input`."""
        return self.model_dump(mode="json", exclude_none=True)

    def policy_input_json(self) -> str:
        """`to_policy_input` as JSON text."""
        return self.model_dump_json(exclude_none=True)


class ConsentFilter(_Frozen):
    """Patient-level consent as a declarative row predicate (docs/policy.md, "consent_filter").

    A row stays when `withdrawn_column` is false (not null), every group of `require_any_of` shares a code
    with the row's codes, and every one of the row's codes is in `allowed_codes`. The codes are the
    `consent_column` value split on `separator`.
    """

    withdrawn_column: Name
    consent_column: Name
    separator: Literal[" "]
    require_any_of: tuple[tuple[DuoCode, ...], ...]
    allowed_codes: tuple[DuoCode, ...]

    def admits(self, consent_codes: str | None, withdrawn: bool | None) -> bool:
        """The reference semantics of the predicate for one row; the query compiler must agree with it."""
        if withdrawn is not False or consent_codes is None:
            return False
        # An empty value or an empty piece (a doubled or stray separator) is malformed: it excludes.
        codes = set(consent_codes.split(self.separator))
        if not codes.issubset(self.allowed_codes):
            return False
        return all(codes.intersection(group) for group in self.require_any_of)


class DpObligation(_Frozen):
    """Differential privacy the answer must apply: epsilon per query, and the researcher's total budget."""

    epsilon: float = Field(gt=0)
    budget: float = Field(gt=0)


class Obligations(_Frozen):
    """What an allowed answer must honour; thresholds are already the tighter of site and agreement."""

    min_cell_count: int = Field(ge=1)
    round_to: int = Field(ge=1)
    keep_zero_cells: bool
    allowed_columns: tuple[str, ...]
    consent_filter: ConsentFilter
    dp: DpObligation | None
    max_identical_queries: int = Field(ge=1)
    glm_min_rows: int = Field(ge=1)
    glm_max_parameter_ratio: float = Field(gt=0, le=1)
    publication_moratorium_until: dt.date | None


DecisionKind = Literal["allow", "deny", "needs_approval"]


class Decision(_Frozen):
    """The policy's answer; `bundle_digest` names the policies and data that produced it."""

    decision: DecisionKind
    reasons: tuple[str, ...]
    obligations: Obligations | None
    bundle_digest: str

    @model_validator(mode="after")
    def _consistent(self) -> Decision:
        if self.decision == "deny":
            if not self.reasons:
                raise ValueError("a deny must carry the clause that caused it")
            if self.obligations is not None:
                raise ValueError("a deny carries no obligations")
        else:
            if self.obligations is None:
                raise ValueError(f"{self.decision} must carry obligations")
            if self.decision == "needs_approval" and not self.reasons:
                raise ValueError("needs_approval must carry the clause that caused it")
        return self

    @property
    def allowed(self) -> bool:
        """True only for a plain allow; needs_approval waits for a steward."""
        return self.decision == "allow"

    @classmethod
    def failed(cls, why: str, bundle_digest: str) -> Decision:
        """The fail-closed answer: deny, naming what went wrong."""
        return cls(
            decision="deny",
            reasons=(f"policy evaluation failed: {why}",),
            obligations=None,
            bundle_digest=bundle_digest,
        )
