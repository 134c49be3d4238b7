"""`/v1/steward`: the site data steward's catalog, policy data, approval queue and activity summary."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Body, Header, Query, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gateway.consent import WithdrawalUnsupported, matched, pseudonyms, withdraw
from gateway.decision.errors import PolicyEngineUnavailable
from gateway.deps import PipelineDep, RuntimeDep, StewardDep
from gateway.expiry import DEFAULT_WITHIN_DAYS, MAX_WITHIN_DAYS, expiring, listing, utc_today
from gateway.policy_admin import (
    BrokenOnDisk,
    NoSuchDocument,
    NotWritten,
    PolicyDataRejected,
    StaleVersion,
    data_names,
    read_versioned,
    replace_data,
)
from gateway.problems import AUTHENTICATED, documented
from gateway.query.errors import UnsupportedStore
from gateway.refusal import Refusal, unavailable
from gateway.routes.bodies import (
    Activity,
    ApprovalOutcome,
    PolicyDataListing,
    PolicyDataReplaced,
    PolicyDocument,
    PublishedDataset,
    QueuedQuery,
    WithdrawalRecorded,
)
from gateway.runtime import STATE_FAILURES, STORE_FAILURES, unavailable_if_failing
from pseudonymize.errors import KeyMaterialError, StoreError

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/steward", tags=["steward"], responses=AUTHENTICATED)


@router.get(
    "/datasets",
    summary="Published datasets: versions, digests, consent codes, risk reports",
    responses=documented(
        ok=("every published version, by dataset then version", list[PublishedDataset]),
        unavailable="the store cannot be read (its file missing, its server down)",
    ),
)
async def datasets(_: StewardDep, runtime: RuntimeDep) -> list[dict[str, Any]]:
    with unavailable_if_failing("store", "its catalog cannot be read now; try again later"):
        entries = await asyncio.to_thread(runtime.catalog.refresh)
    return [
        {
            **e.row(),
            "columns": e.columns,
            "duo": e.duo,
            "risk_report": e.risk_report,
            "key_id": e.key_id,
            "consent_terms": e.consent_terms.to_dict(),
        }
        for e in entries
    ]


AUDIT_WAIT_S = 60.0
"""How long a policy change waits for its audit entry's commit before it is given up (and not made)."""


def _text(value: str) -> str:
    # JSON's \ud800 escape decodes to a lone surrogate: no identifier of a source file, and no UTF-8 to key.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not UTF-8 text (a lone surrogate)") from None
    return value


class Withdrawal(BaseModel):
    """Patients, by their source identifier (e.g. MRN), who withdrew consent for research use."""

    model_config = ConfigDict(extra="forbid")
    patients: list[Annotated[str, AfterValidator(_text)]] = Field(min_length=1, max_length=10_000)


_NOT_WITHDRAWN: Final = "no withdrawal was recorded; send it again later"


@router.post(
    "/datasets/{dataset}/withdrawals",
    summary="Record consent withdrawals; the next query of the dataset excludes these patients",
    description=(
        "The body names 1 to 10,000 patients by their source identifier (e.g. MRN), as ingest read it: "
        "`patients`, a list of strings. The site turns each into the dataset's pseudonym and records only "
        "that. Every named patient is recorded, whether or not the newest version holds their rows (a "
        "later version may); `matched` says how many it holds, so an identifier that matches nothing (a "
        "typo) shows. Sending the same withdrawal again records nothing new (`new` 0). The answer holds "
        "counts only, never an identifier."
    ),
    responses=documented(
        ok=(
            "the withdrawal is recorded: how many patients it named, how many are new, how many have rows",
            WithdrawalRecorded,
        ),
        not_found="no such dataset at this site",
        conflict="the dataset's pseudonyms cannot be recomputed here (no patient column, another key)",
        unavailable="the site master key is not usable, or the store or the state database failed",
    ),
)
async def withdraw_consent(
    dataset: str, body: Withdrawal, steward: StewardDep, runtime: RuntimeDep
) -> dict[str, Any]:
    # Read now: the withdrawal is recorded under the pseudonym key of the newest version, which a catalog
    # read from a moment ago might not show yet.
    with unavailable_if_failing("store", _NOT_WITHDRAWN):
        entry = await asyncio.to_thread(runtime.catalog.latest, dataset, fresh=True)
    if entry is None:
        raise Refusal(
            "not_found", "Unknown dataset", [f"this site has no dataset {dataset!r}"], field="dataset"
        )
    try:
        tokens = await asyncio.to_thread(pseudonyms, runtime.settings, entry, body.patients)
    except WithdrawalUnsupported as exc:
        raise Refusal("conflict", "Cannot record the withdrawal here", [str(exc)]) from None
    except KeyMaterialError as exc:
        # The detail names the key's file or variable: for the site's operators, in its log only.
        log.error("consent withdrawal: the site master key is not usable: %s", exc)
        reason = "the site master key is not usable; the gateway's log says why; nothing was recorded"
        raise Refusal("unavailable", "The site master key is not usable", [reason]) from None
    with unavailable_if_failing("state database", _NOT_WITHDRAWN):  # one transaction: all or none
        new = await asyncio.to_thread(withdraw, runtime.state, entry, tokens)
    # Counted once recorded: a store that cannot be read now delays no withdrawal, it leaves `matched` out.
    found: int | None
    try:
        found = await asyncio.to_thread(matched, runtime.engine_for(entry), entry, tokens)
    except (*STORE_FAILURES, UnsupportedStore) as exc:
        log.warning("consent withdrawal recorded; its patients' rows not counted (%s)", type(exc).__name__)
        found = None
    counts = {"patients": len(body.patients), "new": new}
    # Should the log fail here, the withdrawal stays in force (it only ever excludes patients) and the
    # steward gets a 503; sent again, it is recorded, with no patient new.
    await runtime.record(
        "consent.withdrawn",
        {"dataset": dataset, **counts, **({"matched": found} if found is not None else {})},
        principal=steward,
    )
    # Identifiers are not echoed back: the response holds counts only.
    return {"dataset": dataset, **counts, "matched": found}


@router.get(
    "/policy-data",
    summary="The policy data documents and the running bundle's digest",
    responses=documented(ok=("the documents' names and the running bundle's digest", PolicyDataListing)),
)
async def policy_documents(_: StewardDep, runtime: RuntimeDep) -> dict[str, Any]:
    # The folder's bundle, should another worker of the site have replaced a document since this one
    # loaded it (as a decision would be made with).
    await runtime.policy.current_soon()
    return {
        "documents": data_names(runtime.settings.policy_dir),
        "bundle_digest": runtime.policy.bundle.digest,
    }


@router.get(
    "/policy-data/{name}",
    summary="One policy data document (agreements, organisations, …), its version in the ETag header",
    description=(
        "The document as the policy folder holds it now. The `ETag` header carries the digest of the "
        "folder's bundle read with it: send it back as `If-Match` with the replacement so that a change "
        "another steward made meanwhile is not overwritten."
    ),
    responses=documented(
        ok=(
            "the document as stored; its shape is the named one's: agreements and organisations are "
            "objects keyed by id, duo, export_control, site and transfer have shapes of their own",
            PolicyDocument,
        ),
        not_found="no policy data document of that name",
        unavailable="the document's file in the site's policy folder is not valid JSON",
    ),
)
async def policy_document(name: str, _: StewardDep, runtime: RuntimeDep, response: Response) -> Any:
    try:
        document, digest = await asyncio.to_thread(
            read_versioned, runtime.policy, runtime.settings.policy_dir, name
        )
    except NoSuchDocument:
        raise Refusal(
            "not_found", "No such policy data", [f"there is no policy data document {name!r}"]
        ) from None
    except BrokenOnDisk as exc:
        raise _broken(exc) from None
    if digest is not None:  # None: another file keeps the folder from loading, so it has no version
        response.headers["ETag"] = f'"{digest}"'
    return document


def _broken(exc: BrokenOnDisk) -> Refusal:
    return Refusal(
        "unavailable",
        "Policy data broken on disk",
        [
            f"the file {exc.name}.json in the site's policy folder is broken: {exc.message}; the running "
            "policy stays in force, and no other policy data can be replaced until that file is repaired "
            "(a valid replacement of that document repairs it)"
        ],
    )


def _tags(if_match: str | None) -> frozenset[str] | None:
    """The bundle digests an `If-Match` header accepts (None: any, when absent or `*`). A weak tag never
    matches (RFC 9110 §13.1.1 compares strongly)."""
    if if_match is None or if_match.strip() == "*":
        return None
    tags = (t.strip() for t in if_match.split(","))
    return frozenset(t.strip('"') for t in tags if t and not t.startswith("W/"))


@router.put(
    "/policy-data/{name}",
    summary="Replace one policy data document (validated, atomic, audited)",
    description=(
        "With `If-Match` (the `ETag` of the GET the document was read with), the replacement is made only "
        "if the folder still holds that version; otherwise it is refused with 412 and nothing changes. "
        "Without `If-Match`, the document replaces whatever the folder holds (last writer wins). The "
        "answer's `ETag` is the new version. A document whose file on disk is broken is repaired so "
        "(without `If-Match`: a broken folder has no version), provided the folder then loads."
    ),
    responses=documented(
        ok=("the document is in force: the new bundle's digest and the one it replaced", PolicyDataReplaced),
        bad_request="the document is invalid (the running policy is unchanged); `field` names where",
        not_found="no policy data document of that name",
        precondition_failed="`If-Match` names a version the folder no longer holds: read the document again",
        unavailable=(
            "another file of the site's policy folder is broken, the new file was not written, or the state "
            "database failed"
        ),
    ),
)
async def replace_policy_document(
    name: str,
    steward: StewardDep,
    runtime: RuntimeDep,
    document: Annotated[Any, Body()],
    response: Response,
    if_match: Annotated[
        str | None, Header(alias="If-Match", description="the `ETag` the document was read with")
    ] = None,
) -> dict[str, Any]:
    if isinstance(document, bytes | bytearray):  # FastAPI hands over the raw body unless it was sent as JSON
        raise Refusal(
            "bad_request", "Invalid policy data",
            ["send the document as JSON (Content-Type: application/json)"], field="body", stage="validate",
        )  # fmt: skip

    def audit(previous: str, new: str) -> None:
        # In the replacing thread, under the replacement lock, once the new file is written under a name no
        # process loads and before it is renamed into place.
        runtime.record_policy_change(
            {
                "bundle_digest": f"sha256:{new}",
                "previous_digest": f"sha256:{previous}",
                "change": "dsa" if name == "agreements" else "data",
                "name": name,
            },
            principal=steward,
            wait_s=AUDIT_WAIT_S,
        )

    try:
        previous, bundle = await asyncio.to_thread(
            replace_data, runtime.policy, runtime.settings.policy_dir, name, document,
            audit=audit, expected=_tags(if_match),
        )  # fmt: skip
    except NoSuchDocument:
        raise Refusal(
            "not_found", "No such policy data", [f"there is no policy data document {name!r}"]
        ) from None
    except PolicyDataRejected as exc:
        # Without a place inside the document, the document itself (the body) is what is wrong.
        raise Refusal(
            "bad_request", "Invalid policy data", [str(exc)], field=exc.field or "body", stage="validate"
        ) from None
    except StaleVersion as exc:
        now = f"the bundle is now {exc.current}" if exc.current else f"{name}.json on disk no longer loads"
        raise Refusal(
            "precondition_failed",
            "Policy data changed since it was read",
            [
                f"the policy data changed since it was read ({now}); read the document again and make "
                "the change to it"
            ],
            field="If-Match",
        ) from None
    except BrokenOnDisk as exc:
        raise _broken(exc) from None
    except NotWritten as exc:
        raise Refusal(
            "unavailable",
            "Policy data not written",
            [f"{exc.name}.json could not be written (a full disk?); the previous document stays in force"],
        ) from None
    except PolicyEngineUnavailable:
        # The change was recorded, then undone and the way back recorded (policy_admin.replace_data).
        raise Refusal(
            "unavailable",
            "Policy engine unavailable",
            ["the policy engine did not take the new bundle; the previous policy stays in force"],
            audited=False,
        ) from None
    response.headers["ETag"] = f'"{bundle.digest}"'
    return {"name": name, "bundle_digest": bundle.digest, "previous_digest": previous}


@router.get(
    "/approvals",
    summary="Queries that policy sent to a human, oldest first: `limit` of them (at most 500) from `offset`",
    responses=documented(
        ok=("the queries waiting for a steward, oldest first", list[QueuedQuery]),
        unavailable="the state database cannot be read",
    ),
)
async def approvals(
    _: StewardDep,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 500,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> list[dict[str, Any]]:
    def page() -> list[Any]:
        # An approval the gateway stopped during is back in the queue (it was never released). A state
        # database that takes no write now (locked, a full disk) still lists the queue; a later listing
        # puts those requests back.
        try:
            released = runtime.state.release_stale_claims()
        except STATE_FAILURES as exc:
            released = 0
            log.warning("stale approval claims stay for now (%s)", type(exc).__name__)
        if released:
            log.warning("%d request(s) left deciding by a stopped approval are back in the queue", released)
        return runtime.state.list_requests("pending_approval", limit, offset)

    with unavailable_if_failing("state database", "the queue cannot be listed now; try again later"):
        pending = await asyncio.to_thread(page)
    return [
        {
            "request_id": r.request_id,
            "requester": {k: r.principal[k] for k in ("sub", "org", "country")},
            "agreement": r.agreement,
            "dataset": r.dataset,
            "kind": r.kind,
            "spec": r.spec,
            "reasons": r.reasons,
            "created_at": r.created_at,
        }
        for r in pending
    ]


class ApprovalDecision(BaseModel):
    """A steward's answer to a queued query."""

    model_config = ConfigDict(extra="forbid")
    approve: bool
    reason: str = Field(
        min_length=1, max_length=500, pattern=r"\S", description="why (required); recorded in the audit log"
    )


@router.post(
    "/approvals/{request_id}",
    summary="Approve (the query runs and is released) or reject",
    responses=documented(
        ok=(
            "the outcome: released (the researcher collects the answer; the steward does not see it), "
            "rejected, or refused when the run failed",
            ApprovalOutcome,
        ),
        bad_request="no reason, or a reason the audit log does not record; `field` names it",
        forbidden="a steward cannot decide their own query",
        not_found="no such request",
        conflict="the request was already decided, or another steward is deciding it",
        unavailable="the state database failed; the problem says what became of the decision",
    ),
)
async def decide(
    request_id: str, decision: ApprovalDecision, steward: StewardDep, pipeline: PipelineDep
) -> dict[str, Any]:
    return await pipeline.decide_approval(
        steward, request_id, approve=decision.approve, reason=decision.reason
    )


@router.get(
    "/activity",
    summary="What was released and refused lately, and who was refused most",
    responses=documented(
        ok=("requests by agreement, dataset, kind and outcome, and the researchers refused most", Activity),
        bad_request="`hours` is outside 1 to 8784",
        unavailable="the state database cannot be read",
    ),
)
async def activity(
    _: StewardDep, runtime: RuntimeDep, hours: Annotated[int, Query(ge=1, le=24 * 366)] = 24
) -> dict[str, Any]:
    """Requests by agreement, dataset, kind and outcome over the last `hours`. Each worker stores how its
    requests ended within about 50 ms, so a request answered by another worker in that moment may not be
    counted yet; the audit log holds every one."""
    if not 1 <= hours <= 24 * 366:
        raise Refusal("bad_request", "Invalid window", ["hours must be between 1 and 8784"], field="hours")
    since = (datetime.now(UTC) - timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with unavailable_if_failing("state database", "the activity cannot be summarised now; try again later"):
        return await asyncio.to_thread(runtime.state.activity, since)


class ExpiringTerm(BaseModel):
    """An agreement, export licence or dataset time limit on use that has ended or ends soon."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["agreement", "dataset_use", "export_licence"] = Field(
        description="`agreement` (its `not_after`), `export_licence` (export_control.json's `not_after`) or "
        "`dataset_use` (the newest version's `consent_terms.use_until`, DUO:0000025)"
    )
    id: str = Field(description="the agreement's, licence's or dataset's id")
    ends: str | None = Field(
        description="the last day in force, YYYY-MM-DD (a whole UTC day); null when `status` is `invalid`"
    )
    days_left: int | None = Field(
        description="days from `today` to `ends`: 0 on the last day, negative once ended; null when invalid"
    )
    status: Literal["ended", "ending", "invalid"] = Field(
        description="`ended` (the policy denies on it now), `ending` (within the window), or `invalid` (the "
        "end cannot be read: `reason` says where)"
    )
    affects: list[str] = Field(
        description="for a licence the agreements naming it, for an agreement its datasets, for a dataset "
        "the agreements naming it"
    )
    reason: str | None = Field(description="for an `invalid` entry: the document, the field, what is wrong")


class Expiring(BaseModel):
    """What ends soon, as the running policy data and the catalog's newest versions say."""

    model_config = ConfigDict(extra="forbid")
    today: str = Field(description="the UTC day the window starts from, YYYY-MM-DD")
    within_days: int
    items: list[ExpiringTerm] = Field(
        description="every term ended or ending within `within_days` days, and every invalid one; sorted by "
        "`ends` (invalid ones first), then `kind`, then `id`"
    )


_NOT_LISTED: Final = "what ends soon cannot be listed now; try again later"


@router.get(
    "/expiring",
    summary="Agreements, export licences and datasets' time limits on use that ended or end soon",
    description=(
        "Every agreement (`not_after`), export licence (`not_after`) and dataset whose consent limits use "
        "in time (the newest version's `consent_terms.use_until`, DUO:0000025) that has ended, or ends "
        "within `within_days` days of today (UTC). A term is in force through its last day, as the policy "
        "reads it. An end that cannot be read is listed as `invalid`."
    ),
    responses=documented(
        ok=("the terms ended or ending, and any whose end cannot be read", Expiring),
        bad_request=f"`within_days` is not a whole number from 0 to {MAX_WITHIN_DAYS}",
        unavailable="the store's catalog cannot be read",
    ),
)
async def expiring_terms(
    _: StewardDep,
    runtime: RuntimeDep,
    within_days: Annotated[
        int, Query(ge=0, le=MAX_WITHIN_DAYS, description="how many days ahead to look (0: ending today)")
    ] = DEFAULT_WITHIN_DAYS,
) -> dict[str, Any]:
    # The policy data decisions are made with: the folder's, should another worker have replaced it.
    await runtime.policy.current_soon()
    data = runtime.policy.bundle.data
    try:
        with unavailable_if_failing("store", _NOT_LISTED):
            entries = await asyncio.to_thread(runtime.catalog.refresh)
    except StoreError as exc:  # a row the catalog holds cannot be read (malformed consent terms)
        raise unavailable("store", exc, _NOT_LISTED) from None
    today = utc_today()
    items = expiring(data, entries, today=today, within_days=within_days)
    return listing(items, today, within_days)
