"""The JSON bodies the steward, auditor, federation, GLM and witness routes answer with, for the OpenAPI page.

The routes build their bodies as plain dicts: a response model would validate and serialize every answer
again. These models only describe them, attached as `documented(ok=(description, Model))`, and
tests/integration/test_openapi.py checks real answers against the schemas the gateway serves. A body whose
keys are fixed forbids any other, so a field renamed on one side and not the other fails that test. (The
query bodies are described beside their routes, in gateway/routes/queries.py, as `GlmPending` is in
gateway/routes/glm.py.) `FederatedQuery` describes a body the gateway takes, as the coordinator validates it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.decision.policy_data import (
    Agreement,
    DuoData,
    ExportControl,
    Organisation,
    SiteData,
    TransferData,
)
from gateway.federation.coordinator import (
    DEFAULT_TIMEOUT_S,
    MAX_TIMEOUT_S,
    MIN_TIMEOUT_S,
    SiteStatus,
)
from gateway.federation.glm_fit import Family, SiteState
from gateway.query import (
    CountQuery,
    CrosstabQuery,
    HistogramQuery,
    KaplanMeierQuery,
    QuantilesQuery,
    SummaryQuery,
)


class _Body(BaseModel):
    """A body with a fixed set of keys: the schema says `additionalProperties: false`."""

    model_config = ConfigDict(extra="forbid")


def _moratorium(description: str) -> Any:
    """An answer's optional `publication_moratorium_until`, absent when no moratorium applies."""
    return Field(default=None, description=f"{description}: not to be published before this day (YYYY-MM-DD)")


# -- /v1/steward -------------------------------------------------------------------------------------------


class DatasetColumn(_Body):
    name: str
    type: str = Field(description="the stored column's Arrow type, e.g. `int64`, `string`")


class DatasetConsentTerms(_Body):
    """The parameters of the dataset's DUO codes, as its pseudonymization spec gave them (none recorded for
    versions published before the catalog kept them)."""

    diseases: list[str] = Field(description="disease terms of disease-specific consent (DUO:0000007)")
    geographic_area: list[str] | None = Field(
        description="countries of a geographic restriction (DUO:0000022); null: the site's own country"
    )
    moratorium_until: str | None = Field(description="end of a publication moratorium (DUO:0000024)")
    use_until: str | None = Field(description="last day of a time limit on use (DUO:0000025)")


class KAnonymityReport(_Body):
    """Re-identification risk measured at ingest over the spec's quasi-identifiers."""

    quasi_identifiers: list[str]
    k_threshold: int
    records: int
    classes: int = Field(description="equivalence classes over the quasi-identifiers")
    smallest_class: int
    records_below_k: int
    share_below_k: float
    passes: bool = Field(description="every record sits in a class of at least `k_threshold` records")
    verdict: str | None = Field(
        default=None,
        description="`passes`, `below threshold` or `not measured` (the spec marks no quasi-identifiers); "
        "absent for versions published before the catalog recorded it",
    )


class PublishedDataset(_Body):
    """One published version of a dataset, as the store's catalog records it."""

    dataset: str
    version: int
    table_name: str
    published_at: str = Field(description="RFC 3339, UTC, to the second")
    row_count: int
    columns: list[DatasetColumn]
    content_digest: str
    spec_digest: str = Field(description="digest of the pseudonymization spec the version was ingested with")
    key_id: str = Field(description="fingerprint of the key the pseudonyms were derived from, never the key")
    key_context: str
    duo: list[str] = Field(description="the dataset's DUO consent codes")
    consent_terms: DatasetConsentTerms
    jurisdiction: str
    risk_report: KAnonymityReport
    source: str
    k_override: bool = Field(description="published although `risk_report.passes` is false")
    patient_column: str | None = Field(
        description="the stored column of patient pseudonyms (consent withdrawals need one); null if none"
    )


class WithdrawalRecorded(_Body):
    """Counts only: the patients' identifiers are not echoed back."""

    dataset: str
    patients: int = Field(description="identifiers in the request")
    new: int = Field(description="patients not withdrawn before (0 when the same withdrawal is sent again)")
    matched: int | None = Field(
        description="distinct named patients with rows in the dataset's newest version; the others are "
        "recorded all the same (a later version may hold them). Fewer than `patients` when an identifier "
        "matched no row (mistyped, or not ingested yet) or was named twice. Null when the store could not "
        "be read then"
    )


class PolicyDataListing(_Body):
    documents: list[str] = Field(description="the names `GET /v1/steward/policy-data/{name}` takes")
    bundle_digest: str = Field(description="sha256 (hex) of the running policy bundle")


PolicyDocument = (
    dict[str, Agreement] | DuoData | ExportControl | dict[str, Organisation] | SiteData | TransferData
)
"""One policy data document as stored, which `{name}` chooses: agreements and organisations are objects
keyed by id; duo, export_control, site and transfer are documents of their own shape."""


class PolicyDataReplaced(_Body):
    name: str
    bundle_digest: str = Field(description="sha256 (hex) of the bundle now running")
    previous_digest: str = Field(description="sha256 (hex) of the bundle it replaced")


class Requester(_Body):
    """Who asked, as their token said when the query was queued."""

    sub: str
    org: str
    country: str


class QueuedQuery(_Body):
    """A query waiting for a steward's approval."""

    request_id: str
    requester: Requester
    agreement: str
    dataset: str
    kind: str
    spec: dict[str, Any] = Field(
        description="the query spec as `POST /v1/queries` took it; its keys vary by kind"
    )
    reasons: list[str] = Field(description="why policy sent it to a steward")
    created_at: str = Field(description="RFC 3339, UTC")


class ApprovalOutcome(_Body):
    """What a steward's decision led to; an approved answer goes to the researcher, never to the steward."""

    request_id: str
    status: Literal["released", "rejected", "refused"] = Field(
        description="`refused` when the approved run was refused (policy or disclosure control) or failed"
    )
    reasons: list[str] = Field(
        description="empty when released; the steward's reason when rejected; why, when refused"
    )


class ActivityGroup(_Body):
    """Requests of one agreement, dataset, kind and outcome."""

    agreement: str
    dataset: str
    kind: str
    outcome: str = Field(
        description="`released` (the answer left the site), `refused`, `pending_approval` (waiting for a "
        "steward) or `approved` (a steward approved it; its answer waits at the site for the researcher)"
    )
    requests: int
    suppressed_cells: int


class RefusedResearcher(_Body):
    subject: str = Field(description="the researcher's `sub` as the audit log names it")
    org: str
    refused: int


class Activity(_Body):
    """What was released and refused since `since`."""

    since: str = Field(description="the window's start, RFC 3339 UTC")
    by_agreement: list[ActivityGroup]
    most_refused: list[RefusedResearcher] = Field(
        description="the 20 researchers refused most, most first: a burst of refusals can be an attempt to "
        "isolate individuals"
    )


# -- /v1/audit ---------------------------------------------------------------------------------------------


class AuditEntry(_Body):
    index: int
    entry: str = Field(description="base64 of the entry's stored bytes (canonical JSON)")
    leaf_hash: str = Field(description="RFC 9162 leaf hash of those bytes, hex")


class AuditEntries(_Body):
    size: int = Field(description="the log's size now")
    entries: list[AuditEntry] = Field(description="the range asked for, in order")


class InclusionProof(_Body):
    index: int
    size: int
    root: str = Field(description="base64 of the tree root at `size`")
    proof: list[str] = Field(description="base64 hashes, leaf to root")


class ConsistencyProof(_Body):
    old: int
    new: int
    proof: list[str] = Field(description="base64 hashes")


# -- /v1/federated-queries ---------------------------------------------------------------------------------


class FederatedOptions(_Body):
    """What a federated query adds to a query spec of `POST /v1/queries`."""

    sites: Annotated[list[str], Field(min_length=1, json_schema_extra={"uniqueItems": True})] | None = Field(
        default=None,
        description="the site ids to ask, each once; default (absent or null): every peer, and this site "
        "when it holds the dataset",
    )
    timeout_s: float = Field(
        default=DEFAULT_TIMEOUT_S,
        ge=MIN_TIMEOUT_S,
        le=MAX_TIMEOUT_S,
        description="how long to wait for each site's answer, in seconds",
    )


class FederatedCountQuery(FederatedOptions, CountQuery):
    """A `count` spec (`CountQuery`) asked of several sites."""


class FederatedCrosstabQuery(FederatedOptions, CrosstabQuery):
    """A `crosstab` spec (`CrosstabQuery`) asked of several sites."""


class FederatedSummaryQuery(FederatedOptions, SummaryQuery):
    """A `summary` spec (`SummaryQuery`) asked of several sites."""


class FederatedHistogramQuery(FederatedOptions, HistogramQuery):
    """A `histogram` spec (`HistogramQuery`) asked of several sites."""


class FederatedQuantilesQuery(FederatedOptions, QuantilesQuery):
    """A `quantiles` spec (`QuantilesQuery`) asked of several sites."""


class FederatedKaplanMeierQuery(FederatedOptions, KaplanMeierQuery):
    """A `kaplan_meier` spec (`KaplanMeierQuery`) asked of several sites."""


FederatedQuery = Annotated[
    FederatedCountQuery
    | FederatedCrosstabQuery
    | FederatedSummaryQuery
    | FederatedHistogramQuery
    | FederatedQuantilesQuery
    | FederatedKaplanMeierQuery,
    Field(discriminator="kind"),
]
"""The body of `POST /v1/federated-queries`: a spec of one of the kinds the coordinator pools
(`coordinator.POOLED_KINDS`) with `sites` and `timeout_s` beside its fields. It documents the body only:
`coordinator.parse_federated` validates it, and its refusals name the field at fault."""


class SiteAnswerStatus(_Body):
    """How one target site ended; every target has one."""

    site: str
    status: SiteStatus
    reasons: list[str]
    request_id: str | None = Field(description="the request's id in that site's audit log, when it had one")
    duration_ms: float
    publication_moratorium_until: str | None = _moratorium(
        "present when the site answered under a publication moratorium (DUO:0000024): its answer is"
    )


class PooledDisclosure(_Body):
    """What pooling hid: the strictest site's minimum cell count applies to the pooled cells."""

    min_cell_count: int
    suppressed: int
    reasons: list[str]


class NothingPooled(_Body):
    """No table was pooled (no site answered, or the answers could not be pooled); `reasons` says which."""

    reasons: list[str]


class FederatedAnswer(_Body):
    """The pooled answer. Its `columns` and the keys of each row depend on the query's kind and `group_by`
    (as a single site's answer does): a row maps each column to a value or null; a hidden value is null and
    the row's `suppressed` column says so."""

    request_id: str
    status: Literal["released", "no_site_answered"]
    kind: str
    dataset: str
    covered: list[str] = Field(description="the sites whose answers are pooled")
    columns: list[str] = Field(description="the columns of each row, in order; empty when nothing was pooled")
    rows: list[dict[str, Any]] = Field(
        description="one object per row, keyed by `columns`; values vary by kind"
    )
    disclosure: PooledDisclosure | NothingPooled
    publication_moratorium_until: str | None = _moratorium(
        "present when any site whose answer is pooled answered under a publication moratorium (DUO:0000024), "
        "the latest day of those sites: the pooled answer is"
    )
    sites: list[SiteAnswerStatus]
    result_hash: str = Field(
        description="sha256 of the released part, as the audit log's `federation.released`"
    )


# -- /v1/glm and /v1/federated-glm -------------------------------------------------------------------------


class GlmSession(_Body):
    """An open session at this site."""

    status: Literal["open"]
    session: str = Field(description="the session's id, for its iterations and its end")
    parameters: list[str] = Field(description="the model's parameters, in the order β takes them")
    max_iterations: int
    publication_moratorium_until: str | None = _moratorium(
        "present when the dataset's consent puts the session's rows under a publication moratorium "
        "(DUO:0000024): what they give is"
    )


class GlmIteration(_Body):
    """The sums at β: residuals and linear predictors stay at the site."""

    session: str
    iteration: int
    xtwx: list[list[float]] = Field(description="XᵀWX, one row per parameter")
    xtwz: list[float] = Field(description="XᵀWz")
    deviance: float
    pearson_chi2: float
    n: int


class GlmSessionClosed(_Body):
    session: str
    status: Literal["closed"]


class GlmCoefficient(_Body):
    parameter: str
    coef: float
    std_err: float
    z: float
    p: float = Field(description="two-sided, normal")
    ci_lower: float = Field(description="95% normal interval")
    ci_upper: float


class GlmFitSite(_Body):
    site: str
    status: Literal["answered"]
    reasons: list[str]
    iteration: int = Field(description="the last iteration the site answered")
    rows: int = Field(description="the rows the site's sums covered")
    publication_moratorium_until: str | None = _moratorium(
        "present when the site's rows are under a publication moratorium (DUO:0000024): their part of the "
        "fit is"
    )


class FederatedGlmFit(_Body):
    """A fitted GLM, as statsmodels would summarize it."""

    status: Literal["converged", "not_converged"]
    family: Family
    parameters: list[str]
    coefficients: list[float]
    covariance: list[list[float]]
    summary: list[GlmCoefficient]
    scale: float
    deviance: float
    pearson_chi2: float
    nobs: int
    df_resid: int
    iterations: int
    converged: bool
    sites: list[GlmFitSite]
    publication_moratorium_until: str | None = _moratorium(
        "present when any site's rows are under a publication moratorium (DUO:0000024), the latest day of "
        "those sites: the fit is"
    )


class GlmStoppedSite(_Body):
    site: str
    status: SiteState
    reasons: list[str]
    iteration: int = Field(description="the iteration at which the site stopped, or last answered")
    publication_moratorium_until: str | None = _moratorium(
        "present when the site opened its session under a publication moratorium (DUO:0000024): its rows are"
    )


class FederatedGlmStopped(_Body):
    """A site refused; nothing was fitted."""

    status: Literal["stopped"]
    iteration: int
    reasons: list[str] = Field(description="each stopped site, its status and its reasons")
    sites: list[GlmStoppedSite]


# -- /v1/witness -------------------------------------------------------------------------------------------


class CheckpointOffer(_Body):
    """The checkpoint offered to one peer witness."""

    peer: str
    size: int = Field(description="the checkpoint's tree size")
    cosigned: bool
    error: str | None = Field(description="why the peer did not cosign; null when it did")


class WitnessProgress(_Body):
    """What one peer witness last cosigned of this site's log."""

    peer: str
    cosigned_size: int | None = Field(description="null until the peer cosigns or says its size")
    failures: int = Field(description="offers failed in a row")
    last_error: str | None


class WitnessSubmissions(_Body):
    outcomes: list[CheckpointOffer] = Field(description="one per peer witness; empty with none")
    peers: list[WitnessProgress]
