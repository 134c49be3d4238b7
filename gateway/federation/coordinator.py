"""The coordinator: fan a researcher's query out to peers and itself, and pool what each released.

Each peer gets the researcher's own bearer token unchanged plus this site's signed peer assertion, and runs
the whole single-site flow under its own policy. The coordinator never drops a site silently: every target
ends with one status (answered, denied, suppressed, approval_pending, unreachable, timed_out,
invalid_answer), and the pooled answer names the sites it covers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

import httpx
import rfc8785

from audit.entry import REQUEST_ID_RULE, is_request_id
from audit.events import COUNT, DIGEST, LABEL, REASONS, REGISTRY, EventType, FieldKind, register
from gateway.auth import Principal
from gateway.federation.combine import (
    CombineError,
    InvalidSiteAnswer,
    PooledTable,
    SiteTable,
    combine,
)
from gateway.federation.km import KaplanMeierPoolError, check_site_answer, pool_released_answers
from gateway.federation.peer_answers import TOO_LARGE, peer_reasons, read_capped
from gateway.federation.peers import CoordinatedRuntime, PeerLink
from gateway.federation.quantiles import SiteQuantiles, plan_edges, pool_quantiles
from gateway.pipeline import QueryPipeline, hashed, new_request_id, sha256_label
from gateway.problems import ACCEPTED, OK, STATUS
from gateway.query import (
    HistogramQuery,
    KaplanMeierQuery,
    QuantilesQuery,
    QuerySpec,
    QuerySpecError,
    parse_query_spec,
    quantile_name,
)
from gateway.query.columns import iso_date
from gateway.refusal import Refusal
from gateway.runtime import SiteRuntime

SiteStatus = Literal[
    "answered", "denied", "suppressed", "approval_pending", "unreachable", "timed_out", "invalid_answer"
]
STATUSES: tuple[SiteStatus, ...] = (
    "answered",
    "denied",
    "suppressed",
    "approval_pending",
    "unreachable",
    "timed_out",
    "invalid_answer",
)
DEFAULT_TIMEOUT_S = 10.0
MIN_TIMEOUT_S = 0.1
MAX_TIMEOUT_S = 60
POOLED_KINDS = ("count", "crosstab", "summary", "histogram", "quantiles", "kaplan_meier")
log = logging.getLogger("fedgate.federation")
QUERIES_PATH = "/v1/queries"
# A peer's problem responses carry no stage; its disclosure refusals have this title (gateway.pipeline).
DISCLOSURE_TITLE = "Refused by disclosure control"
_REFUSAL_KIND = {int(status): kind for kind, status in STATUS.items()}


def recordable_request_id(value: str | None) -> str | None:
    """A site's request id as the coordinator's audit entry names it: as it is, or None when the log would
    not take it as an entry's request id (no id, or a peer's text that reads as a token)."""
    return value if is_request_id(value) else None


class Legs(FieldKind):
    """Every request the coordinator made of a site: `{"site", "round", "status", "request_id"}` each, the
    request id being the site's own (null when the site named none the log takes)."""

    name = "legs"
    _KEYS: Final = frozenset({"site", "round", "status", "request_id"})

    def check(self, value: Any) -> str | None:
        if not isinstance(value, list):
            return "must be a list of legs"
        for i, leg in enumerate(value):
            if not isinstance(leg, dict) or set(leg) != self._KEYS:
                return f"item {i} must be an object with exactly {sorted(self._KEYS)}"
            problem = LABEL.check(leg["site"]) or COUNT.check(leg["round"])
            if problem is None and leg["status"] not in STATUSES:
                problem = f"status must be one of {list(STATUSES)}"
            rid = leg["request_id"]
            if problem is None and rid is not None and not is_request_id(rid):
                problem = f"{REQUEST_ID_RULE}, or null"
            if problem:
                return f"item {i}: {problem}"
        return None


LEGS = Legs()

for _event in (
    EventType(
        "federation.received",
        "a federated query arrived at this coordinator",
        required={"query_hash": DIGEST, "kind": LABEL, "dataset": LABEL, "dsa": LABEL, "sites": COUNT},
    ),
    EventType(
        "federation.released",
        "the coordinator pooled and released a federated answer; per-site statuses as counts, and every "
        "request it made of a site (`legs`)",
        required={"query_hash": DIGEST, "result_hash": DIGEST, "covered": COUNT},
        optional={**dict.fromkeys(STATUSES, COUNT), "legs": LEGS},
    ),
    EventType(
        "federation.refused",
        "the coordinator could not pool the sites' answers and released nothing; the requests it made of "
        "sites (`legs`)",
        required={"query_hash": DIGEST, "reasons": REASONS},
        optional={"legs": LEGS},
    ),
):
    if _event.name not in REGISTRY:
        register(_event)

_OWN_LEGS: Final[set[asyncio.Task[Any]]] = set()
"""This site's own parts still running after the coordinator stopped waiting for them: held here until they
end, so that none is garbage-collected half-way."""


@dataclass
class SiteOutcome:
    """How one target site ended."""

    site: str
    status: SiteStatus
    reasons: list[str] = field(default_factory=list)
    request_id: str | None = None
    duration_ms: float = 0.0
    body: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        until = self.moratorium()
        return {
            "site": self.site,
            "status": self.status,
            "reasons": self.reasons,
            "request_id": self.request_id,
            "duration_ms": round(self.duration_ms, 3),
            **({"publication_moratorium_until": until} if until is not None else {}),
        }

    def moratorium(self) -> str | None:
        """The publication moratorium (DUO:0000024) the site's answer is under, as its policy block says."""
        policy = (self.body or {}).get("policy") if self.status == "answered" else None
        until = policy.get("publication_moratorium_until") if isinstance(policy, dict) else None
        return until if isinstance(until, str) and iso_date(until) is not None else None


def parse_federated(body: Any) -> tuple[QuerySpec, list[str] | None, float]:
    """Split a federated request body into the single-site spec, the target sites and the timeout."""
    if not isinstance(body, dict):
        raise Refusal(
            "bad_request", "Invalid federated query", ["the body must be a JSON object"], field="body"
        )
    rest = dict(body)
    sites = rest.pop("sites", None)
    timeout = rest.pop("timeout_s", DEFAULT_TIMEOUT_S)
    distinct_ids = (
        isinstance(sites, list) and all(isinstance(s, str) for s in sites) and len(set(sites)) == len(sites)
    )
    if sites is not None and (not sites or not distinct_ids):
        reason = "sites must be a non-empty list of distinct site ids"
        raise Refusal("bad_request", "Invalid federated query", [reason], field="sites")
    in_range = isinstance(timeout, int | float) and MIN_TIMEOUT_S <= timeout <= MAX_TIMEOUT_S
    if isinstance(timeout, bool) or not in_range:
        reason = f"timeout_s must be a number of seconds between {MIN_TIMEOUT_S} and {MAX_TIMEOUT_S}"
        raise Refusal("bad_request", "Invalid federated query", [reason], field="timeout_s")
    try:
        spec = parse_query_spec(rest)
    except QuerySpecError as exc:
        raise Refusal("bad_request", "Invalid federated query", [str(exc)], field=exc.field) from None
    if spec.kind not in POOLED_KINDS:
        reason = f"{spec.kind} has its own federated endpoint"
        raise Refusal("bad_request", "Not a federated kind", [reason], field="kind")
    return spec, sites, float(timeout)


class Coordinator:
    """Runs one federated query for a researcher."""

    def __init__(self, runtime: SiteRuntime, link: PeerLink) -> None:
        self.rt = runtime
        self.link = link
        self.legs: list[tuple[int, SiteOutcome]] = []
        """Every request made of a site, with its round (quantiles ask twice), as it ended."""

    def targets(self, spec: QuerySpec, sites: list[str] | None) -> list[str]:
        """The sites to ask: as named, or every peer plus this site when it holds the dataset."""
        own = self.rt.settings.site_id
        if sites is None:
            mine = [own] if self.rt.catalog.latest(spec.dataset) is not None else []
            return mine + sorted(self.link.peers)
        unknown = [s for s in sites if s != own and s not in self.link.peers]
        if unknown:
            raise Refusal(
                "bad_request",
                "Unknown site",
                [f"{', '.join(unknown)}: not a peer of this site"],
                field="sites",
            )
        return sites

    async def run(
        self, principal: Principal, token: str, spec: QuerySpec, sites: list[str] | None, timeout_s: float
    ) -> dict[str, Any]:
        """Fan out, pool, audit; the body the researcher receives."""
        request_id = new_request_id()
        targets = self.targets(spec, sites)
        if any(t != self.rt.settings.site_id for t in targets) and self.link.signer is None:
            raise Refusal(
                "unavailable",
                "No peer signing key",
                ["this site has no peer_key_file to sign requests to its peers with"],
                stage="federate",
            )
        query_hash = hashed(spec)
        await self.rt.record(
            "federation.received",
            {
                "query_hash": sha256_label(query_hash),
                "kind": spec.kind,
                "dataset": spec.dataset,
                "dsa": spec.agreement,
                "sites": len(targets),
            },
            principal=principal,
            request_id=request_id,
        )
        try:
            outcomes, pooled = await self._gather(principal, token, spec, targets, timeout_s)
            covered = [o.site for o in outcomes if o.status == "answered"]
            none_answered = {"reasons": ["no site answered"]}
            result: dict[str, Any] = {"columns": [], "rows": [], "disclosure": none_answered}
            if pooled is not None:
                result = {"columns": pooled.columns, "rows": pooled.rows, "disclosure": pooled.disclosure()}
            result_hash = hashlib.sha256(rfc8785.dumps({**result, "covered": covered})).hexdigest()
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, nothing leaves unpooled or unaudited
            log.error("federation: pooling failed (%s); nothing released", type(exc).__name__)
            reasons = ["the sites' answers could not be pooled; nothing was released"]
            await self.rt.record(
                "federation.refused",
                {"query_hash": sha256_label(query_hash), "reasons": reasons, "legs": self._legs()},
                principal=principal, request_id=request_id,
            )  # fmt: skip
            raise Refusal(
                "unavailable", "Federated answer not pooled", reasons, stage="federate",
                request_id=request_id, audited=True,
            ) from None  # fmt: skip
        counts = {s: sum(1 for o in outcomes if o.status == s) for s in STATUSES}
        await self.rt.record(
            "federation.released",
            {
                "query_hash": sha256_label(query_hash),
                "result_hash": sha256_label(result_hash),
                "covered": len(covered),
                **{k: v for k, v in counts.items() if v},
                "legs": self._legs(),
            },
            principal=principal,
            request_id=request_id,
        )
        # The pooled answer is under the latest moratorium of any site it counts (ISO dates sort as days).
        moratoria = [until for o in outcomes if o.site in covered and (until := o.moratorium()) is not None]
        return {
            "request_id": request_id,
            "status": "released" if covered else "no_site_answered",
            "kind": spec.kind,
            "dataset": spec.dataset,
            "covered": covered,
            **result,
            **({"publication_moratorium_until": max(moratoria)} if moratoria else {}),
            "sites": [o.to_json() for o in outcomes],
            "result_hash": sha256_label(result_hash),
        }

    def _legs(self) -> list[dict[str, Any]]:
        """The legs as the coordinator's audit entry lists them: an auditor finds each one, by its request id,
        in that site's log (a leg `timed_out` here may still have ended released there: it was not pooled)."""
        return [
            {
                "site": o.site,
                "round": n,
                "status": o.status,
                "request_id": recordable_request_id(o.request_id),
            }
            for n, o in self.legs
        ]

    async def _gather(
        self, principal: Principal, token: str, spec: QuerySpec, targets: list[str], timeout_s: float
    ) -> tuple[list[SiteOutcome], PooledTable | None]:
        if isinstance(spec, QuantilesQuery):
            return await self._quantiles(principal, token, spec, targets, timeout_s)
        outcomes = await self._ask_all(principal, token, spec, targets, timeout_s)
        if isinstance(spec, KaplanMeierQuery):
            return outcomes, _pooled_survival(outcomes)
        tables = self._tables(outcomes, spec)
        kind = spec.kind
        if not tables or kind not in ("count", "crosstab", "summary", "histogram"):
            return outcomes, None
        try:
            return outcomes, combine(kind, spec.group_by, tables)
        except (CombineError, ArithmeticError, ValueError) as exc:
            # Each site's answer passed its checks; only their pool is beyond what a double can compute or
            # hold. Every site keeps its status, and the answer says why it has no rows. Any other failure
            # leaves run() refusing on record.
            why = str(exc)
            if not isinstance(exc, CombineError):
                log.error("federation: pooling a %s failed (%s)", kind, type(exc).__name__)
                why = "a pooled number is beyond what a number can hold"
            reasons = [f"the sites' answers could not be pooled: {why}"]
            return outcomes, PooledTable([], [], max(t.min_cell_count for t in tables), 0, reasons)

    def _tables(self, outcomes: list[SiteOutcome], spec: QuerySpec) -> list[SiteTable]:
        tables = []
        for o in outcomes:
            if o.status != "answered":
                continue
            try:
                tables.append(SiteTable.from_body(o.site, o.body, spec.kind, spec.group_by))
            except InvalidSiteAnswer as exc:
                o.status, o.reasons = "invalid_answer", [str(exc)]
        return tables

    async def _quantiles(
        self, principal: Principal, token: str, spec: QuantilesQuery, targets: list[str], timeout_s: float
    ) -> tuple[list[SiteOutcome], PooledTable | None]:
        probs = list(spec.params.probs)
        names = [quantile_name(p) for p in probs]
        first = await self._ask_all(principal, token, spec, targets, timeout_s)
        round1: list[SiteQuantiles] = []
        for o in first:
            if o.status == "answered":
                try:
                    round1.append(SiteQuantiles.from_body(o.site, o.body, spec.group_by, names))
                except InvalidSiteAnswer as exc:
                    o.status, o.reasons = "invalid_answer", [str(exc)]
        edges = plan_edges(round1, quantile_name(min(probs)), quantile_name(max(probs)))
        if not edges:
            return first, None
        dumped = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        dumped.update(kind="histogram", params={"column": spec.params.column, "edges": edges})
        try:
            histogram = parse_query_spec(dumped)
        except QuerySpecError:  # the sites' quantiles give no edges a histogram can take: nothing to pool
            for o in first:
                if o.status == "answered":
                    o.status, o.reasons = "invalid_answer", ["the sites' quantiles give no histogram edges"]
            return first, None
        assert isinstance(histogram, HistogramQuery)
        second = await self._ask_all(
            principal, token, histogram, [s.site for s in round1], timeout_s, round_=2
        )
        by_site = {o.site: o for o in second}
        # One row per site for the researcher: its first request, ending as its second when that did not
        # answer. The legs keep each request as it ended (the audit entry lists both rounds).
        sites = [replace(o) for o in first]
        for o in sites:
            if o.site in by_site:
                later = by_site[o.site]
                if later.status != "answered":
                    o.status, o.reasons = later.status, later.reasons
                o.duration_ms += later.duration_ms
        tables = {t.site: t for t in self._tables([by_site[s.site] for s in round1], histogram)}
        for o in sites:
            if o.site in by_site and by_site[o.site].status == "invalid_answer":
                o.status, o.reasons = "invalid_answer", by_site[o.site].reasons
        if not tables:
            return sites, None
        return sites, pool_quantiles(round1, tables, spec.group_by, probs, names, edges)

    async def _ask_all(
        self,
        principal: Principal,
        token: str,
        spec: QuerySpec,
        targets: list[str],
        timeout_s: float,
        round_: int = 1,
    ) -> list[SiteOutcome]:
        body = json.dumps(spec.model_dump(mode="json", by_alias=True, exclude_none=True)).encode()
        own = self.rt.settings.site_id
        jobs = [
            self._ask_self(principal, spec, timeout_s)
            if site == own
            else self._ask_peer(site, token, body, timeout_s)
            for site in targets
        ]
        outcomes = list(await asyncio.gather(*jobs))
        self.legs.extend((round_, o) for o in outcomes)
        return outcomes

    async def _ask_self(self, principal: Principal, spec: QuerySpec, timeout_s: float) -> SiteOutcome:
        site = self.rt.settings.site_id
        started = time.perf_counter()
        pipeline = QueryPipeline(CoordinatedRuntime.of(self.rt, site))
        request_id = new_request_id()
        # The site's own request runs to its end, released or refused on record, whenever the coordinator
        # stops waiting for it (after timeout_s, or cancelled itself): it is never cancelled half-way.
        own = asyncio.ensure_future(pipeline.submit(principal, spec, request_id))
        _OWN_LEGS.add(own)
        own.add_done_callback(_own_leg_ended)
        try:
            answer = await asyncio.wait_for(asyncio.shield(own), timeout_s)
        except TimeoutError:
            return SiteOutcome(
                site, "timed_out", [f"no answer within {timeout_s} s"], request_id, _ms(started)
            )
        except Refusal as refusal:
            status: SiteStatus = "suppressed" if refusal.stage == "disclosure" else "denied"
            return SiteOutcome(site, status, refusal.reasons or [refusal.title], request_id, _ms(started))
        if answer.status == "pending_approval":
            return SiteOutcome(
                site, "approval_pending", list(answer.body.get("reasons", [])), request_id, _ms(started)
            )
        return _answered(site, answer.body, _ms(started))

    async def _ask_peer(self, site: str, token: str, body: bytes, timeout_s: float) -> SiteOutcome:
        peer = self.link.peers[site]
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            **self.link.sign(site, "POST", QUERIES_PATH, body),
        }
        started = time.perf_counter()
        try:
            # The timeout bounds the whole exchange: httpx's own applies to each read, which a peer sending
            # a byte at a time would never exceed.
            http_status, content = await asyncio.wait_for(
                read_capped(
                    self.link.http,
                    "POST",
                    f"{peer.url}{QUERIES_PATH}",
                    content=body,
                    headers=headers,
                    timeout=timeout_s,
                ),
                timeout_s,
            )
        except (httpx.TimeoutException, TimeoutError):
            return SiteOutcome(
                site, "timed_out", [f"no answer within {timeout_s} s"], duration_ms=_ms(started)
            )
        except httpx.HTTPError as exc:  # the connection, the protocol or the body's encoding failed
            return SiteOutcome(
                site,
                "unreachable",
                [f"cannot reach {peer.url}: {type(exc).__name__}"],
                duration_ms=_ms(started),
            )
        elapsed = _ms(started)
        if content is None:
            return SiteOutcome(site, "invalid_answer", [TOO_LARGE], duration_ms=elapsed)
        try:
            data = json.loads(content)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            return SiteOutcome(
                site,
                "invalid_answer",
                [f"HTTP {http_status} without a JSON body"],
                duration_ms=elapsed,
            )
        if not isinstance(data, dict):
            return SiteOutcome(
                site, "invalid_answer", ["the answer is not a JSON object"], duration_ms=elapsed
            )
        request_id = data.get("request_id") if isinstance(data.get("request_id"), str) else None
        reasons = peer_reasons(data, "refused")
        if http_status == OK:
            return _answered(site, data, elapsed)
        if http_status == ACCEPTED:
            return SiteOutcome(site, "approval_pending", reasons, request_id, elapsed)
        if http_status in _REFUSAL_KIND:
            # Every refusal a site renders (policy, role, token, limits, a component down) is its "no".
            status: SiteStatus = "suppressed" if data.get("title") == DISCLOSURE_TITLE else "denied"
            return SiteOutcome(site, status, reasons, request_id, elapsed)
        return SiteOutcome(site, "invalid_answer", [f"unexpected HTTP {http_status}"], request_id, elapsed)


def _answered(site: str, body: dict[str, Any], elapsed: float) -> SiteOutcome:
    rows = body.get("rows")
    request_id = body.get("request_id") if isinstance(body.get("request_id"), str) else None
    if (
        isinstance(rows, list)
        and rows
        and all(isinstance(r, dict) and r.get("suppressed") is True for r in rows)
    ):
        hidden = ["every entry of this site's answer was suppressed"]
        return SiteOutcome(site, "suppressed", hidden, request_id, elapsed, body)
    return SiteOutcome(site, "answered", [], request_id, elapsed, body)


def _own_leg_ended(task: asyncio.Task[Any]) -> None:
    _OWN_LEGS.discard(task)
    if not task.cancelled():
        task.exception()  # a refusal is on the site's record already; nobody may be waiting to hear it


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _pooled_survival(outcomes: list[SiteOutcome]) -> PooledTable | None:
    """The sites' released survival bins pooled on their common coarsening, with the cell rule re-checked.
    A site whose table does not hold together is set aside as `invalid_answer`; the others are pooled."""
    bodies: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        if o.status != "answered" or not o.body:
            continue
        try:
            check_site_answer(o.site, o.body)
        except KaplanMeierPoolError as exc:
            o.status, o.reasons = "invalid_answer", [str(exc)]
            continue
        bodies[o.site] = o.body
    if not bodies:
        return None
    try:
        km = pool_released_answers(bodies)
    except KaplanMeierPoolError as exc:
        return PooledTable([], [], 1, 0, [f"the sites' curves could not be pooled: {exc}"])
    return PooledTable(km.columns, km.rows, km.min_cell_count, 0, km.reasons)
