"""The one-way query flow: received → decided → (approval) → compiled → executed → disclosure → released.

Every step appends to the audit log before the next begins; every failure on the way ends as an audited
refusal (`Refusal`), never as an answer. Nothing here knows HTTP.

A decided query waits for a pool thread with the others (gateway.releases); a thread takes those waiting in
one pass (`_release_together`), where counts and cross-tabulations of one shape share one DuckDB statement
and each request still ends with its own answer or its own refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Coroutine, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, NoReturn, Protocol

import rfc8785
import sqlalchemy as sa

from audit.errors import PayloadError
from audit.log import AppendReceipt, Queued
from gateway.auth import Principal
from gateway.decision import DatasetFacts, Decision, DecisionInput, Destination
from gateway.decision.models import ConsentFilter, Obligations, Purpose, QueryFacts
from gateway.query import (
    ColumnNotAllowed,
    CompiledQuery,
    ExecutionError,
    QueryError,
    QueryOutcome,
    QuerySpec,
    ValueMismatch,
    compile_query,
    parse_query_spec,
)
from gateway.query.compile import together_hint
from gateway.query.execute import execute_together, together_key
from gateway.refusal import Refusal
from gateway.release import protect
from gateway.runtime import SiteRuntime, recordable_name, unavailable_if_failing
from gateway.state import Outcome, StoredRequest, new_request, utc_now_text
from pseudonymize.disclosure import DisclosureError
from pseudonymize.store import CatalogEntry


def owner(principal: Principal) -> str:
    """Whose request it is: the subject as its issuer names it (two issuers may reuse a `sub`), spelled
    as the audit log names it (`recordable_name`): what the state stores is text, and never a credential.
    Longer than the state's 256 characters (a long issuer URL and subject), it is their digest."""
    return _owner(principal.issuer, principal.sub)


@functools.lru_cache(maxsize=4096)
def _owner(issuer: str, sub: str) -> str:
    text = f"{issuer}\n{recordable_name(sub)}"
    if len(text) <= OWNER_CHARS:
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


OWNER_CHARS: Final = 256
"""The state's owner columns (gateway.state: subject, decided_by) are this long."""


@functools.lru_cache(maxsize=1024)
def _consent_bytes(consent: ConsentFilter) -> bytes:
    """RFC 8785 bytes of a consent filter, its code lists in order: one rule, one spelling. Few filters
    recur, request after request, so each is canonicalized once."""
    rule = consent.model_dump(mode="json")
    rule["allowed_codes"] = sorted(set(rule["allowed_codes"]))
    groups = {tuple(sorted(set(group))) for group in rule["require_any_of"]}
    rule["require_any_of"] = [list(group) for group in sorted(groups)]
    return bytes(rfc8785.dumps(rule))


def sha256_label(hex_digest: str) -> str:
    """The audit log's digest form."""
    return f"sha256:{hex_digest}"


COMPUTED_UNDER: Final = "obligations_digest"
"""The member of a stored approved answer naming the obligations it was computed under
(`obligations_digest`); kept at the site, never part of the answer that leaves."""

WITHDRAWALS_APPLIED: Final = "withdrawals_applied"
"""The member of a stored approved answer saying how many withdrawals of its dataset were recorded when its
run read them to leave those patients out (`GatewayState.withdrawn_count` then); kept at the site, never part
of the answer that leaves."""


def obligations_digest(obligations: Obligations) -> str:
    """The digest of the RFC 8785 JSON of a decision's obligations: the consent filter (which depends on who
    asks: their organisation, their country), the allowed columns, the thresholds and the DP terms that an
    answer is computed under. Two decisions with other terms have other digests. A publication moratorium
    is left out: it says what the researcher may do with the answer, not what the answer holds, and it
    lapses on its day, which must not make an answer kept before then out of date."""
    terms = obligations.model_dump(mode="json", exclude={"publication_moratorium_until"})
    return sha256_label(hashlib.sha256(rfc8785.dumps(terms)).hexdigest())


class _RandomIds:
    """Version-4 UUIDs from the operating system's CSPRNG, read 4 KiB at a time.

    `os.urandom` gives up the GIL for its system call, and on a busy worker the event loop then waits for
    it to come back from the pool threads: measured at 500 requests/s, `uuid.uuid4()` held the loop for
    0.34 ms per request to do 2 µs of work. One read serves 256 ids."""

    BATCH: Final = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0
        # A forked child must not hand out the ids its parent hands out next.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._buffer, self._offset = b"", 0

    def next(self) -> str:
        with self._lock:
            if self._offset >= len(self._buffer):
                self._buffer, self._offset = os.urandom(16 * self.BATCH), 0
            raw = self._buffer[self._offset : self._offset + 16]
            self._offset += 16
        return uuid.UUID(bytes=raw, version=4).hex


_IDS: Final = _RandomIds()


def new_request_id() -> str:
    """A random request id (no information about the requester)."""
    return _IDS.next()


class Decidable(Protocol):
    """What the policy needs to know about a request: a query spec, or e.g. a GLM session request."""

    @property
    def agreement(self) -> str: ...

    @property
    def purpose(self) -> Purpose: ...

    @property
    def destination(self) -> str | None: ...

    def query_facts(self) -> QueryFacts: ...


@dataclass(frozen=True)
class Answer:
    """What the pipeline produced: a released result, or a request waiting for a steward."""

    status: Literal["released", "pending_approval"]
    body: dict[str, Any]


class HasQueryHash(Protocol):
    def query_hash(self) -> str: ...


def hashed(request: HasQueryHash) -> str:
    """A request's query hash, which every entry of its trail carries; should a valid request still have no
    canonical JSON form, a Refusal (which the app audits) rather than a failure before anything is audited."""
    try:
        return request.query_hash()
    except Exception as exc:  # noqa: BLE001 - RFC 8785's errors, or any other: the request is refused
        raise Refusal(
            "bad_request",
            "The query has no canonical form",
            [f"a value of the query cannot be written as canonical JSON ({type(exc).__name__})"],
        ) from None


# The spec field each member of `query.received` records, to name it in a refusal.
_SPEC_FIELD: Final = {"kind": "kind", "dataset": "dataset", "dsa": "agreement", "purpose": "purpose.duo"}


class QueryPipeline:
    """Runs queries for one site under its policy."""

    def __init__(self, runtime: SiteRuntime) -> None:
        self.rt = runtime

    async def submit(self, principal: Principal, spec: QuerySpec, request_id: str) -> Answer:
        """The researcher's path: decide, then release or queue for approval.

        The request's last step (its release, its queueing for a steward, its refusal) runs to its end even
        when the caller stops waiting: cancelled (a coordinator's timeout, a server shutting down), the
        request still ends on record before the cancellation goes on. A release already with the pool
        cannot be recalled and ends as the pool ends it; a request cancelled before that is refused."""
        query_hash = hashed(spec)
        trail = [self._received(principal, spec, request_id, query_hash)]
        # The step in flight that ends the request on its own, once there is one.
        ending: asyncio.Future[Any] | None = None
        try:
            entry = self._dataset(spec)
            decision = await self._decide(principal, spec, entry, request_id, query_hash, trail=trail)
            if decision.decision == "needs_approval":
                ending = _kept(self._queue_for_approval(principal, spec, request_id, query_hash, decision))
                await asyncio.shield(ending)
                return Answer("pending_approval", _pending_body(request_id, decision))
            assert decision.obligations is not None
            ending = self._hand_off(principal, spec, entry, decision, request_id, query_hash, trail)
            body: dict[str, Any] = await asyncio.shield(ending)
            return Answer("released", body)
        except asyncio.CancelledError:
            await _to_the_end(self._end_cancelled(ending, principal, spec, request_id, query_hash))
            raise
        except Refusal as refusal:
            await _to_the_end(self._end_refused(refusal, principal, spec, request_id, query_hash))
            raise
        except Exception as exc:  # noqa: BLE001 - any failure must end as an audited refusal, never an answer
            # Fail closed and leave no gap in the trail: an unexpected failure is an audited refusal.
            failure = _internal_failure(exc)
            await _to_the_end(self._end_refused(failure, principal, spec, request_id, query_hash))
            raise failure from None

    async def _queue_for_approval(
        self, principal: Principal, spec: QuerySpec, request_id: str, query_hash: str, decision: Decision
    ) -> None:
        """Store the request for a steward (its `query.decided` entry is on record already)."""
        stored = new_request(
            request_id, owner(principal), _principal_json(principal), spec.model_dump(mode="json"),
            query_hash, list(decision.reasons),
        )  # fmt: skip
        await asyncio.to_thread(self.rt.state.save_request, stored)
        await self._outcome(principal, spec, request_id, "pending_approval")

    async def _end_refused(
        self, refusal: Refusal, principal: Principal, spec: QuerySpec, request_id: str, query_hash: str
    ) -> None:
        """Record a submitted request's refusal, then its summary row."""
        refusal.request_id = request_id
        await self._refused(refusal, principal, request_id, query_hash)
        with contextlib.suppress(Exception):  # the refusal is audited; the summary row is best effort
            await self._outcome(principal, spec, request_id, "refused", stage=refusal.stage)

    async def _end_cancelled(
        self,
        ending: asyncio.Future[Any] | None,
        principal: Principal,
        spec: QuerySpec,
        request_id: str,
        query_hash: str,
    ) -> None:
        """End the trail of a request whose caller stopped waiting. Without an `ending` in flight it was
        cancelled while being decided, and is refused. With one, the request ends as that step ends it:
        released (the answer reaches no one) or queued for a steward, both on record already, or refused."""
        if ending is None:
            refusal = Refusal("unavailable", "Request cancelled", [CANCELLED], stage="decide")
        else:
            try:
                await ending
                return
            except Refusal as refused:
                refusal = refused
            except Exception as exc:  # noqa: BLE001 - as in `submit`: a failure ends as an audited refusal
                refusal = _internal_failure(exc)
        await self._end_refused(refusal, principal, spec, request_id, query_hash)

    def _received(self, principal: Principal, spec: QuerySpec, request_id: str, query_hash: str) -> Queued:
        """Queue the `query.received` entry: it commits with the request's next entry, whichever ends it
        (a refusal, a request for approval, or the release, which waits for its whole trail)."""
        try:
            return self.rt.note(
                "query.received",
                {
                    "query_hash": sha256_label(query_hash),
                    "kind": spec.kind,
                    "dataset": spec.dataset,
                    "dsa": spec.agreement,
                    "purpose": list(spec.purpose.duo),
                },
                principal=principal,
                request_id=request_id,
            )
        except PayloadError as exc:
            # The spec validated but holds text the audit log will not record: refuse it rather than answer
            # a request that left no trace; the problem handler records the refusal by its title alone.
            reason = "the query holds text the audit log does not record"
            field = _SPEC_FIELD.get((exc.field or "").split(".")[0].split("[")[0])
            raise Refusal(
                "bad_request", "Invalid query", [reason], request_id=request_id, field=field
            ) from None

    async def decide_approval(
        self, steward: Principal, request_id: str, *, approve: bool, reason: str
    ) -> dict[str, Any]:
        """A steward's decision on a queued query; an approved query is decided again, run and released.
        A state database that fails under it (locked, a full disk) refuses the decision as unavailable,
        saying what became of it."""
        undecided = "nothing was decided; try again later"
        with unavailable_if_failing("state database", undecided, stage="approval"):
            stored = await asyncio.to_thread(self.rt.state.get_request, request_id)
        if stored is None:
            raise Refusal("not_found", "No such request", ["no request of that id"], stage="approval")
        if stored.status != "pending_approval":
            raise Refusal(
                "conflict", "Already decided", [f"the request is {stored.status}"], stage="approval"
            )
        if stored.subject == owner(steward):
            raise Refusal(
                "forbidden", "Not your own query", ["a steward cannot approve or reject their own query"],
                stage="approval", request_id=request_id,
            )  # fmt: skip
        # Claim the request before anything runs, so two stewards deciding at once cannot both release it.
        with unavailable_if_failing("state database", undecided, stage="approval", request_id=request_id):
            claimed = await asyncio.to_thread(
                self.rt.state.update_request, request_id, expect="pending_approval", status="deciding",
                reasons=stored.reasons, result=None, decided_by=owner(steward),
            )  # fmt: skip
        if not claimed:
            raise Refusal("conflict", "Already decided", ["another steward is deciding this request"],
                          stage="approval")  # fmt: skip
        query_hash = stored.query_hash
        reasons = [reason] if reason else []
        try:
            await self.rt.record(
                "approval.decided",
                {
                    "query_hash": sha256_label(query_hash),
                    "decision": "approved" if approve else "rejected",
                    "reasons": reasons,
                },
                principal=steward,
                request_id=request_id,
            )
        except Exception as exc:
            # Nothing was decided: the request waits for a steward again, whatever kept the entry out.
            with unavailable_if_failing("state database", f"nothing was decided; {_REQUEUED}",
                                        stage="approval", request_id=request_id):  # fmt: skip
                await asyncio.to_thread(
                    self.rt.state.update_request, request_id, expect="deciding", status="pending_approval",
                    reasons=stored.reasons, result=None, decided_by=None,
                )  # fmt: skip
            if not isinstance(exc, PayloadError):
                raise
            reason_text = (
                "the reason holds text the audit log does not record (an identifier, address or token)"
            )
            raise Refusal("bad_request", "Invalid reason", [reason_text], field="reason") from None
        researcher = _principal_from_json(stored.principal)
        if not approve:
            # The query ends here: its trail and the site's summary say so, as for any other refusal. The
            # steward's decision is on record already, so it stands whatever happens to those two.
            rejected = [f"a steward rejected the query: {reason}"]
            refusal = Refusal("forbidden", "Rejected by a steward", rejected, stage="approval",
                              request_id=request_id)  # fmt: skip
            try:
                await self._refused(refusal, researcher, request_id, query_hash)
                with contextlib.suppress(Exception):  # the refusal is audited; the summary row is best effort
                    asked = parse_query_spec(stored.spec)
                    await self._outcome(researcher, asked, request_id, "refused", stage="approval")
            finally:
                with unavailable_if_failing("state database", f"the rejection is on record; {_REQUEUED}",
                                            stage="approval", request_id=request_id):  # fmt: skip
                    await self._finish(stored.request_id, "rejected", rejected, None, steward)
            return {"request_id": request_id, "status": "rejected", "reasons": reasons}
        spec: QuerySpec | None = None
        try:
            spec = parse_query_spec(stored.spec)
            entry = self._dataset(spec)
            trail: list[Queued] = []
            decision = await self._decide(
                researcher, spec, entry, request_id, query_hash, approved=True, trail=trail
            )
            # The run keeps with the answer how many withdrawals it applied (WITHDRAWALS_APPLIED, read with
            # them): a later collect refuses an answer once more are recorded (`_still_current`), as it
            # refuses one whose obligations (the consent filter for who asks, thresholds, columns, DP) are
            # not its own.
            assert decision.obligations is not None
            computed_at = utc_now_text()
            computed_under = obligations_digest(decision.obligations)
            body = await self._hand_off(
                researcher, spec, entry, decision, request_id, query_hash, trail, leaves=False
            )
            body = {**body, "computed_at": computed_at, COMPUTED_UNDER: computed_under}
        except Exception as exc:  # noqa: BLE001 - any failure must end as an audited refusal, never an answer
            refusal = exc if isinstance(exc, Refusal) else _internal_failure(exc)
            refusal.request_id = request_id
            try:
                await self._refused(refusal, researcher, request_id, query_hash)
                with contextlib.suppress(Exception):  # the refusal is audited; the summary row is best effort
                    if spec is not None:  # a stored spec this version no longer reads has no summary row
                        await self._outcome(researcher, spec, request_id, "refused", stage=refusal.stage)
            finally:  # nothing was released: the request ends refused, never left `deciding`
                unreleased = f"nothing was released; {_REQUEUED}"
                with unavailable_if_failing("state database", unreleased, stage="approval",
                                            request_id=request_id):  # fmt: skip
                    await self._finish(request_id, "refused", refusal.reasons, None, steward)
            return {"request_id": request_id, "status": "refused", "reasons": refusal.reasons}
        try:
            await self._finish(request_id, "released", [], body, steward)
        except Exception as exc:  # noqa: BLE001 - the log must not keep a release nobody can collect
            await self._not_stored(exc, researcher, steward, stored.request_id, query_hash, stored.reasons)
        # The answer stays at the site for the researcher, who collects it under the policy then in force
        # (`collect`); the steward who approved learns only that it was released. The summary counts it as
        # released only when a collect lets it leave.
        with contextlib.suppress(Exception):  # the approval is audited; the summary row is best effort
            await self._outcome(researcher, spec, request_id, "approved", **_disclosed(body))
        return {"request_id": request_id, "status": "released", "reasons": []}

    async def collect(self, principal: Principal, request_id: str) -> dict[str, Any]:
        """A queued request's state, or its released answer for the researcher who asked.

        The answer leaves only if policy still allows it to the researcher as they are now (the steward's
        approval was decided on the identity recorded when the query was queued), the site's policy is the
        one it was produced under (thresholds or DP terms may have tightened since), and so are the
        obligations policy sets for the researcher now (`_still_current`). A refusal is audited and the
        answer stays here; an answer that leaves is audited as released again. The steward's summary counts
        the request as released when an answer leaves, refused when a collect is refused and none left
        before."""
        stored = await asyncio.to_thread(self.rt.state.get_request, request_id)
        if stored is None or stored.subject != owner(principal):
            raise Refusal("not_found", "No such request", ["no request of that id is yours"])
        if stored.status != "released" or stored.result is None:
            return {"request_id": request_id, "status": stored.status, "reasons": stored.reasons}
        result = {k: v for k, v in stored.result.items() if k not in (COMPUTED_UNDER, WITHDRAWALS_APPLIED)}
        trail: list[Queued] = []
        spec: QuerySpec | None = None
        try:
            spec = parse_query_spec(stored.spec)
            entry = self._dataset(spec)
            decision = await self._decide(
                principal, spec, entry, request_id, stored.query_hash, approved=True, trail=trail
            )
            await self._still_current(stored, entry, decision)
            await self.rt.record(
                "query.released",
                {"query_hash": sha256_label(stored.query_hash), "result_hash": result["result_hash"]},
                principal=principal, request_id=request_id, after=trail,
            )  # fmt: skip
        except Exception as exc:  # any failure must end as an audited refusal, never an answer
            refusal = exc if isinstance(exc, Refusal) else _internal_failure(exc)
            refusal.request_id = request_id
            await self._refused(refusal, principal, request_id, stored.query_hash)
            with contextlib.suppress(Exception):  # the refusal is audited; the summary row is best effort
                if spec is not None:  # a stored spec this version no longer reads has no summary row
                    await self._outcome(
                        principal, spec, request_id, "refused", stage=refusal.stage, replace_release=False
                    )
            if refusal is exc:
                raise
            raise refusal from None
        with contextlib.suppress(Exception):  # the release is audited; the summary row is best effort
            await self._outcome(principal, spec, request_id, "released", **_disclosed(result))
        return result

    async def _still_current(self, stored: StoredRequest, entry: CatalogEntry, decision: Decision) -> None:
        """Refuse an approved answer computed under a policy, a dataset version or a set of consents that
        has changed since (a stricter threshold, DP terms or a withdrawal must not be bypassed by waiting),
        or under obligations other than those the policy now sets for who collects it: the consent filter
        depends on the researcher's organisation and country, which may not be those they asked under. An
        answer stored without its obligations' digest (kept since an earlier version) is refused too."""
        assert stored.result is not None and decision.obligations is not None
        changed: list[str] = []
        if decision.bundle_digest != stored.result.get("policy", {}).get("bundle_digest"):
            changed.append("the site's policy changed after this answer was approved")
        if stored.result.get(COMPUTED_UNDER) != obligations_digest(decision.obligations):
            changed.append(TERMS_CHANGED)
        if entry.version != stored.result.get("dataset_version"):
            changed.append(f"dataset {entry.dataset} has a new version since this answer was computed")
        if entry.patient_column is not None and await asyncio.to_thread(self._withdrawn_since, stored, entry):
            changed.append("patients of the dataset withdrew consent since this answer was computed")
        if changed:
            raise Refusal(
                "forbidden", "Answer out of date", [*changed, "submit the query again"], stage="decide"
            )

    def _withdrawn_since(self, stored: StoredRequest, entry: CatalogEntry) -> bool:
        """Whether withdrawals were recorded that the approved run did not apply (blocking). The answer
        keeps how many it applied, read with them; withdrawals are never removed, so any other count now
        means one it misses. An answer kept without that count (an earlier version's) counts as missing
        one: it holds no obligations' digest either, and is refused for that too."""
        assert stored.result is not None
        applied = stored.result.get(WITHDRAWALS_APPLIED)
        return applied is None or self.rt.state.withdrawn_count(entry.dataset, entry.key_context) != applied

    async def decide_only(
        self, principal: Principal, subject: Decidable, entry: CatalogEntry, request_id: str, query_hash: str
    ) -> Decision:
        """The policy decision for a request that is not a query spec (a GLM session), audited as
        `query.decided`; a deny raises Refusal. `needs_approval` is returned for the caller to handle."""
        return await self._decide(principal, subject, entry, request_id, query_hash)

    # -- steps ---------------------------------------------------------------------------------------------

    def _dataset(self, spec: QuerySpec) -> CatalogEntry:
        entry = self.rt.catalog.latest(spec.dataset)
        if entry is None:
            raise Refusal("not_found", "Unknown dataset", [f"this site has no dataset {spec.dataset!r}"],
                          field="dataset")  # fmt: skip
        return entry

    async def _decide(
        self,
        principal: Principal,
        spec: Decidable,
        entry: CatalogEntry,
        request_id: str,
        query_hash: str,
        *,
        approved: bool = False,
        trail: list[Queued] | None = None,
    ) -> Decision:
        """Decide and audit the decision. With a `trail`, an allow is only queued there (the release that
        follows waits for it); a deny or a request for approval is recorded before anything else happens."""
        request = decision_input(principal, spec, entry)
        decision = await self.rt.policy.decide_soon(request)
        decided = {
            "query_hash": sha256_label(query_hash),
            "decision": decision.decision,
            "reasons": list(decision.reasons),
            "policy_bundle": sha256_label(decision.bundle_digest),
            "engine": self.rt.settings.policy_engine,
        }
        # A policy reason may quote a column name the researcher sent (cover_reasons, SiteRuntime._written).
        if trail is not None and decision.decision == "allow":
            trail.append(self.rt.note(
                "query.decided", decided, principal=principal, request_id=request_id, cover_reasons=True
            ))  # fmt: skip
        else:
            await self.rt.record(
                "query.decided", decided, principal=principal, request_id=request_id, cover_reasons=True
            )
        if decision.decision == "deny":
            raise Refusal("forbidden", "Denied by policy", list(decision.reasons), stage="decide")
        if decision.decision == "needs_approval" and approved:
            decision = decision.model_copy(update={"decision": "allow"})
        return decision

    def _hand_off(
        self,
        principal: Principal,
        spec: QuerySpec,
        entry: CatalogEntry,
        decision: Decision,
        request_id: str,
        query_hash: str,
        trail: list[Queued],
        *,
        leaves: bool = True,
    ) -> asyncio.Future[dict[str, Any]]:
        """Queue the release for a pool thread: the future of its answer (or of its failure). Without
        `leaves`, the answer is kept at the site for a collect (an approved run) and the summary does not
        count it as released here."""
        obligations = decision.obligations
        assert obligations is not None
        if obligations.dp is not None:
            raise Refusal(
                "forbidden",
                "Differential privacy required",
                [
                    f"{spec.agreement} requires differential privacy "
                    f"(epsilon {obligations.dp.epsilon} per query); "
                    "this gateway does not release noisy answers, so the query is refused"
                ],
                stage="decide",
            )
        # Counting, running and disclosure control: one hop off the event loop, where the release waits
        # with the others queued (gateway.releases). The hop queues the release's entry; the answer leaves
        # once the log's committer has written it, with no thread held meanwhile. One event-loop future
        # carries both: the pool thread settles it on failure, the committer's callback on commit.
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[dict[str, Any]] = loop.create_future()
        job = _Release(self, principal, spec, entry, decision, obligations, request_id, query_hash, trail,
                       loop, answer, together_hint(spec, entry.table_name), leaves)  # fmt: skip
        self.rt.releases.submit(job, _release_together, self.rt.threads(), self.rt.settings.server.threads,
                                short=self.rt.is_small(entry))  # fmt: skip
        return answer

    def _prepare(self, job: _Release) -> tuple[sa.Engine, CompiledQuery]:
        """Count this asking against the agreement's limit and compile the query with the obligations and
        the recorded withdrawals applied: the engine it runs on and the compiled query (blocking)."""
        principal, spec, entry, obligations = job.principal, job.spec, job.entry, job.obligations
        patients = (entry.dataset, entry.key_context) if entry.patient_column is not None else None
        repeat_key = spec.repeat_key(_consent_bytes(obligations.consent_filter))
        start = self.rt.state.start_query(owner(principal), spec.agreement, repeat_key, patients)
        asked, withdrawn = start.asked, start.withdrawn
        job.withdrawals_applied = len(withdrawn) if patients is not None else None
        if asked > obligations.max_identical_queries:
            raise Refusal(
                "limit",
                "Repeated query limit reached",
                [f"{spec.agreement} allows this exact query {obligations.max_identical_queries} times; "
                 f"this is time {asked}"],
                stage="limit",
            )  # fmt: skip
        # The consent classes with their sizes, read once per version table: the compiler leaves out those
        # below min_cell_count (without them, the per-row predicate finds them itself).
        rule = obligations.consent_filter
        consent_classes = None
        names = [c["name"] for c in entry.columns]
        if rule.consent_column in names and rule.withdrawn_column in names:
            consent_classes = self.rt.consent_values.get(
                self.rt.store, entry.table_name, rule.consent_column, rule.withdrawn_column
            )
        try:
            compiled = compile_query(
                spec,
                entry.table_name,
                [(c["name"], c["type"]) for c in entry.columns],
                obligations,
                self.rt.store.dialect.name,
                patient_column=entry.patient_column,
                withdrawn=withdrawn,
                consent_classes=consent_classes,
            )  # fmt: skip
        except ColumnNotAllowed as exc:
            raise Refusal(
                "forbidden", "Column not allowed", [str(exc)], stage="plan", field=exc.field
            ) from None
        except QueryError as exc:
            raise Refusal("bad_request", "Invalid query", [str(exc)], stage="plan",
                          field=getattr(exc, "field", None)) from None  # fmt: skip
        return self.rt.engine_for(entry), compiled

    def _protect_and_queue(
        self, job: _Release, outcome: QueryOutcome | Exception, duration_ms: float
    ) -> tuple[dict[str, Any], Future[AppendReceipt]]:
        """Audit the run, protect its answer and queue `query.released` (blocking): the body to send, once
        the returned future says that entry, and the trail before it, are on disk."""
        if isinstance(outcome, QueryError):
            raise _execution_refusal(outcome)
        if isinstance(outcome, Exception):
            raise outcome
        principal, spec, entry, request_id, trail = (job.principal, job.spec, job.entry, job.request_id,
                                                     job.trail)  # fmt: skip
        executed = {
            "query_hash": sha256_label(job.query_hash),
            "dataset_digest": sha256_label(entry.content_digest),
            "duration_ms": duration_ms,
        }
        trail.append(
            self.rt.note("query.executed", executed, principal=principal, request_id=request_id, after=trail)
        )
        try:
            released = protect(spec, outcome, job.obligations)
        except DisclosureError as exc:
            raise Refusal(
                "forbidden", "Refused by disclosure control", [str(exc)], stage="disclosure"
            ) from None
        body = {
            "request_id": request_id,
            "status": "released",
            "dataset": entry.dataset,
            "dataset_version": entry.version,
            "kind": spec.kind,
            **released.body,
            "policy": {
                "decision": "allow",
                "reasons": list(job.decision.reasons),
                "bundle_digest": job.decision.bundle_digest,
                **_moratorium(job.obligations),
            },
        }
        result_hash = hashlib.sha256(rfc8785.dumps(released.body)).hexdigest()
        body["result_hash"] = sha256_label(result_hash)
        if not job.leaves and job.withdrawals_applied is not None:
            body[WITHDRAWALS_APPLIED] = job.withdrawals_applied  # kept at the site (collect)
        released_entry = {
            "query_hash": sha256_label(job.query_hash),
            "result_hash": sha256_label(result_hash),
            "cells": released.cells,
            "suppressed": released.suppressed,
            "rounded_to": job.obligations.round_to,
        }
        # Nothing is released unless the decision and the execution are on disk too.
        committed = self.rt.append_soon(
            "query.released", released_entry, principal=principal, request_id=request_id, after=trail
        )
        # Should the commit fail, the refusal that follows records its outcome over this one (by request id).
        if job.leaves:
            self._record_outcome(
                principal, spec, request_id, "released", cells=released.cells, suppressed=released.suppressed
            )
        return body, committed

    async def _outcome(
        self, principal: Principal, spec: QuerySpec, request_id: str, outcome: Outcome, **details: Any
    ) -> None:
        """`_record_outcome` off the event loop."""
        await asyncio.to_thread(
            functools.partial(self._record_outcome, principal, spec, request_id, outcome, **details)
        )

    def _record_outcome(
        self,
        principal: Principal,
        spec: QuerySpec,
        request_id: str,
        outcome: Outcome,
        *,
        stage: str | None = None,
        cells: int | None = None,
        suppressed: int | None = None,
        replace_release: bool = True,
    ) -> None:
        self.rt.state.record_outcome(
            request_id,
            subject=recordable_name(principal.sub),
            org=recordable_name(principal.org),
            agreement=spec.agreement,
            dataset=spec.dataset,
            kind=spec.kind,
            outcome=outcome,
            stage=stage,
            cells=cells,
            suppressed=suppressed,
            replace_release=replace_release,
        )

    async def _refused(
        self, refusal: Refusal, principal: Principal, request_id: str, query_hash: str
    ) -> None:
        refusal.audited = True
        await self.rt.record(
            "query.refused",
            {"stage": refusal.stage, "reasons": refusal.reasons or [refusal.title],
             "query_hash": sha256_label(query_hash)},
            principal=principal,
            request_id=request_id,
            cover_reasons=True,
        )  # fmt: skip

    async def _not_stored(
        self,
        exc: Exception,
        researcher: Principal,
        steward: Principal,
        request_id: str,
        query_hash: str,
        queued_reasons: list[str],
    ) -> NoReturn:
        """An approved answer left disclosure control and its release is in the log, but the site did not
        store it: its state database failed (locked past its busy timeout, a full disk), or this steward's
        claim on the request lapsed meanwhile and another steward took it (a Refusal from `_finish`). Nobody
        can collect this answer, so the log says so with a refusal after the release. A request still
        claimed by this steward goes back to the stewards' queue (else a stale claim returns it later) and
        the steward is told to approve again; one another steward took is theirs to end."""
        if isinstance(exc, Refusal):
            why, then = "another steward took the request meanwhile", ""
        else:
            why = f"it could not be stored for collection ({type(exc).__name__})"
            then = "; a steward may approve the query again"
        reasons = [f"the approved answer was not kept: {why}, so it never reached the researcher{then}"]
        refusal = Refusal(
            "unavailable", "Answer not stored", reasons, stage="approval", request_id=request_id
        )
        try:
            await self._refused(refusal, researcher, request_id, query_hash)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(
                    self.rt.state.update_request, request_id, expect="deciding", status="pending_approval",
                    reasons=queued_reasons, result=None, decided_by=None, claimed_by=owner(steward),
                )  # fmt: skip
        if isinstance(exc, Refusal):
            raise exc
        raise refusal

    async def _finish(
        self,
        request_id: str,
        status: Literal["released", "refused", "rejected"],
        reasons: list[str],
        result: dict[str, Any] | None,
        steward: Principal,
    ) -> None:
        done = await asyncio.to_thread(
            self.rt.state.update_request,
            request_id,
            expect="deciding",
            status=status,
            reasons=reasons,
            result=result,
            decided_by=owner(steward),
            claimed_by=owner(steward),
        )
        if not done:
            raise Refusal("conflict", "Already decided", ["another steward decided this request first"],
                          stage="approval")  # fmt: skip


@dataclass(eq=False)
class _Release:
    """One request's release waiting for a pool thread (gateway.releases), and how to end it."""

    pipeline: QueryPipeline
    principal: Principal
    spec: QuerySpec
    entry: CatalogEntry
    decision: Decision
    obligations: Obligations
    request_id: str
    query_hash: str
    trail: list[Queued]
    loop: asyncio.AbstractEventLoop
    answer: asyncio.Future[dict[str, Any]]
    together: Hashable | None
    """Releases with one hint may share a statement (gateway.query.compile.together_hint)."""
    leaves: bool
    """The answer goes to the caller (a submit), not kept at the site for a collect (an approved run)."""
    withdrawals_applied: int | None = None
    """How many recorded withdrawals `_prepare` applied (read with them); None without a patient column."""

    def end(self, body: dict[str, Any] | None, exc: BaseException | None) -> None:
        """Hand the request its answer or its failure, on its event loop (from any thread)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: no one waits for the answer
            self.loop.call_soon_threadsafe(_settle, self.answer, body, exc)

    def fail(self, exc: BaseException) -> None:
        self.end(None, exc)


def _release_together(jobs: Sequence[_Release]) -> None:
    """Release queued requests in a pool thread: each one counted and compiled, those that share a
    `together_key` run as one statement, then each one audited, protected and queued for the audit log.
    Every request ends exactly once, with its own answer or its own failure."""
    groups: dict[Hashable, list[tuple[_Release, sa.Engine, CompiledQuery]]] = {}
    for n, job in enumerate(jobs):
        try:
            engine, compiled = job.pipeline._prepare(job)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request as it is
            job.fail(exc)
            continue
        key = together_key(engine, compiled)
        groups.setdefault(key if key is not None else ("alone", n), []).append((job, engine, compiled))
    for group in groups.values():
        job, engine, _ = group[0]
        started = time.perf_counter()
        try:
            outcomes = execute_together(
                engine, [compiled for _, _, compiled in group], populations=job.pipeline.rt.populations
            )
        except BaseException as exc:  # noqa: BLE001 - handed to every request of the group
            for member, _, _ in group:
                member.fail(exc)
            continue
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        for (member, _, _), outcome in zip(group, outcomes, strict=True):
            try:
                body, committed = member.pipeline._protect_and_queue(member, outcome, duration_ms)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request as it is
                member.fail(exc)
                continue
            committed.add_done_callback(functools.partial(_committed, member, body))


def _committed(job: _Release, body: dict[str, Any], done: Future[AppendReceipt]) -> None:
    """The audit log's committer ended `query.released`: the answer leaves, or its failure does."""
    job.end(body, done.exception())


def _execution_refusal(exc: QueryError) -> Refusal:
    """The refusal of a query the store could not run (its message names no value)."""
    if isinstance(exc, ValueMismatch):
        return Refusal("bad_request", "Invalid query", [str(exc)], stage="execute", field=exc.field)
    if isinstance(exc, ExecutionError):
        return Refusal("unavailable", "The store could not answer", [str(exc)], stage="execute")
    # a select built only when the run needed it (CompiledQuery.build)
    field = getattr(exc, "field", None)
    return Refusal("bad_request", "Invalid query", [str(exc)], stage="plan", field=field)


def _settle(answer: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    """Resolve an event-loop future from another thread's outcome, unless it has ended (its request was
    cancelled)."""
    if answer.done():  # cancelled with its request, or already ended
        return
    if exc is not None:
        answer.set_exception(exc)
    else:
        answer.set_result(value)


TERMS_CHANGED: Final = (
    "the policy's terms for you now (consent scope, columns, thresholds or privacy) are not those this "
    "answer was computed under"
)
"""Why a collect is refused whose answer was computed under other obligations (`_still_current`); it names
no value, since the terms hold who may be counted."""

_REQUEUED: Final = "the request returns to the approval queue once this claim on it lapses"
"""What becomes of a request whose decision the state database did not store (`decide_approval`): it stays
claimed, and a listing of the queue puts it back once the claim is stale (`release_stale_claims`)."""

CANCELLED: Final = "the request was cancelled before it ended"
"""The reason recorded for a request whose caller stopped waiting before it was decided."""

_ENDING: Final[set[asyncio.Future[Any]]] = set()
"""The requests' last steps under way; held here so that none is garbage-collected while nobody awaits it."""


def _kept(step: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run `step` as a task of its own that outlives whoever awaits it (until it ends)."""
    task = asyncio.ensure_future(step)
    _ENDING.add(task)
    task.add_done_callback(_let_go)
    return task


def _let_go(task: asyncio.Future[Any]) -> None:
    _ENDING.discard(task)
    if not task.cancelled():
        task.exception()  # whoever stopped waiting for it has had it handed on, or is not there to hear it


async def _to_the_end(step: Coroutine[Any, Any, None]) -> None:
    """Await a request's last step without letting a cancellation stop it half-way: a caller cancelled
    meanwhile stops waiting, and the step still ends (its entry on record, its summary row written)."""
    await asyncio.shield(_kept(step))


def _internal_failure(exc: BaseException) -> Refusal:
    """An unexpected failure as its refusal (the class name only: messages can quote data)."""
    return Refusal(
        "unavailable",
        "The gateway could not answer",
        [f"internal error ({type(exc).__name__})"],
        stage="execute",
    )


def decision_input(principal: Principal, spec: Decidable, entry: CatalogEntry) -> DecisionInput:
    """The question the policy is asked for `spec` on `entry` by `principal`, now."""
    return DecisionInput(
        requester=principal.to_requester(),
        purpose=spec.purpose,
        dsa=spec.agreement,
        dataset=DatasetFacts(
            id=entry.dataset,
            jurisdiction=entry.jurisdiction,
            duo=tuple(entry.duo),
            columns=tuple(c["name"] for c in entry.columns),
            diseases=entry.consent_terms.diseases,
            moratorium_until=entry.consent_terms.moratorium_until,
            use_until=entry.consent_terms.use_until,
            geographic_area=entry.consent_terms.geographic_area,
        ),
        query=spec.query_facts(),
        destination=Destination(country=spec.destination or principal.country),
        now=datetime.now(UTC),
    )


def _moratorium(obligations: Obligations) -> dict[str, str]:
    """The publication moratorium an answer is under (DUO:0000024), for the researcher to honour."""
    until = obligations.publication_moratorium_until
    return {"publication_moratorium_until": until.isoformat()} if until is not None else {}


def _disclosed(answer: dict[str, Any]) -> dict[str, int | None]:
    """What disclosure control reported for a kept answer, as its summary row records it."""
    report = answer.get("disclosure") or {}
    return {"cells": report.get("cells"), "suppressed": report.get("suppressed")}


def _pending_body(request_id: str, decision: Decision) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "status": "pending_approval",
        "reasons": list(decision.reasons),
        "poll": f"/v1/queries/{request_id}",
    }


def _principal_json(p: Principal) -> dict[str, Any]:
    return {
        "sub": p.sub,
        "org": p.org,
        "country": p.country,
        "roles": sorted(p.roles),
        "visas": [v.model_dump(mode="json") for v in p.visas],
        "issuer": p.issuer,
        "dev": p.dev,
    }


def _principal_from_json(data: dict[str, Any]) -> Principal:
    from gateway.decision import Visa

    return Principal(
        sub=data["sub"],
        org=data["org"],
        country=data["country"],
        roles=frozenset(data["roles"]),
        visas=tuple(Visa.model_validate(v) for v in data["visas"]),
        issuer=data["issuer"],
        dev=bool(data["dev"]),
    )
