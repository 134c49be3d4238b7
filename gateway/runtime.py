"""Everything a running site gateway holds open: settings, policy, store, audit log, state, identity."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

import duckdb
import sqlalchemy as sa

from audit import Actor
from audit.errors import EntryError, PayloadError, StorageError
from audit.log import AppendReceipt, AuditLog, Queued
from gateway.auth import Principal, TokenValidator
from gateway.catalog import CatalogView
from gateway.decision import PolicyDecisionPoint
from gateway.federation.witnessing import Witnessing
from gateway.keyring import load_master_key
from gateway.policy_admin import reconcile
from gateway.query import (
    ONE_ROW_GROUP,
    ConsentValueCache,
    PopulationCache,
    single_thread_engine,
    store_engine,
)
from gateway.refusal import UNRECORDED_REASONS, unavailable
from gateway.releases import ReleaseLanes
from gateway.settings import SiteSettings
from gateway.site_log import open_site_log
from gateway.state import GatewayState, PolicyRecord
from pseudonymize.errors import KeyMaterialError
from pseudonymize.store import CatalogEntry

T = TypeVar("T")
log = logging.getLogger(__name__)


class StartupError(Exception):
    """The gateway refuses to start; the message says which setting or file is wrong."""


STATE_FAILURES: Final = (sa.exc.SQLAlchemyError, sqlite3.Error, OSError)
"""What the state database raises when it cannot do its work: locked past its busy timeout, a full disk,
a server down or unreachable."""
STORE_FAILURES: Final = (sa.exc.SQLAlchemyError, duckdb.Error, OSError)
"""What the store raises when it cannot be read: its file missing or unreadable, a server down."""


@contextlib.contextmanager
def unavailable_if_failing(
    component: Literal["state database", "store"],
    consequence: str,
    *,
    stage: str = "validate",
    request_id: str | None = None,
) -> Iterator[None]:
    """Turn a failure of `component` in the block (`STATE_FAILURES`, `STORE_FAILURES`) into an
    `unavailable` refusal, which the app audits and answers as a 503 naming the component."""
    failures = STATE_FAILURES if component == "state database" else STORE_FAILURES
    try:
        yield
    except failures as exc:
        raise unavailable(component, exc, consequence, stage=stage, request_id=request_id) from None


@dataclass
class SiteRuntime:
    """The long-lived parts of one site's gateway, built once at start-up."""

    settings: SiteSettings
    policy: PolicyDecisionPoint
    audit: AuditLog
    state: GatewayState
    store: sa.Engine
    catalog: CatalogView
    tokens: TokenValidator
    populations: PopulationCache
    witnessing: Witnessing
    consent_values: ConsentValueCache = field(default_factory=ConsentValueCache)
    executor: ThreadPoolExecutor | None = None
    """The threads that run store reads and state writes (`[server] threads`); the app makes it its event
    loop's default executor. Created on first use for a runtime without an app."""
    small_tables: sa.Engine | None = None
    """For a DuckDB store: the engine that queries tables of one row group on one thread
    (`single_thread_engine`); None where `store` queries every table."""
    releases: ReleaseLanes[Any] = field(default_factory=ReleaseLanes)
    """Released queries waiting for a pool thread, in two lanes (gateway.releases)."""

    @classmethod
    def start(cls, settings: SiteSettings, *, tokens: TokenValidator | None = None) -> SiteRuntime:
        """Open every component; refuse to start on bad policies, a missing key or no identity provider."""
        if settings.oidc is None and not settings.dev_mode:
            raise StartupError(
                f"{settings.site_id}: no [oidc] identity provider is configured (and dev_mode is off)"
            )
        try:
            # Checked now, not at the first withdrawal: a site must not run with an unusable master key.
            load_master_key(settings)
        except KeyMaterialError as exc:
            raise StartupError(f"{settings.site_id}: {exc}") from None
        if tokens is None:
            tokens = TokenValidator.for_site(settings)
        policy = PolicyDecisionPoint(settings)  # PolicyLoadError: the gateway never runs on a bad bundle
        audit = open_site_log(settings, checkpoint_interval_s=1.0)
        state = GatewayState(settings.state_url)
        try:
            _record_bundle_in_force(policy, settings, audit, state)
        except BaseException:
            state.close()
            audit.close()
            raise
        budget = settings.server.store_timeout_s
        store = store_engine(settings.store_url, timeout_s=budget)
        witnessing = Witnessing(settings, audit)  # WitnessKeyError: a configured witness key must load
        witnessing.start()
        return cls(
            settings, policy, audit, state, store, CatalogView(store), tokens, PopulationCache(), witnessing,
            small_tables=single_thread_engine(settings.store_url, timeout_s=budget),
        )  # fmt: skip

    @staticmethod
    def is_small(entry: CatalogEntry) -> bool:
        """A dataset version of one DuckDB row group: queried on one thread where the store allows it,
        released in the short lane (gateway.releases.ReleaseLanes)."""
        return entry.row_count <= ONE_ROW_GROUP

    def engine_for(self, entry: CatalogEntry) -> sa.Engine:
        """The engine that runs queries on a dataset version: `small_tables` for a small one."""
        if self.small_tables is not None and self.is_small(entry):
            return self.small_tables
        return self.store

    def threads(self) -> ThreadPoolExecutor:
        """`executor`, created on first use."""
        if self.executor is None:
            self.executor = ThreadPoolExecutor(
                max_workers=self.settings.server.threads, thread_name_prefix="fedgate"
            )
        return self.executor

    async def aclose(self) -> None:
        """Close what start() opened."""
        await self.witnessing.aclose()
        await self.tokens.aclose()
        self.audit.close()
        self.state.close()
        self.store.dispose()
        if self.small_tables is not None:
            self.small_tables.dispose()
        if self.executor is not None:
            self.executor.shutdown(wait=False)

    def note(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        principal: Principal | None = None,
        request_id: str | None = None,
        after: Sequence[Queued] = (),
        cover_reasons: bool = False,
    ) -> Queued:
        """Queue an audit entry without waiting for its commit (no thread hop, no disk).

        It is not acknowledged until a later `record(..., after=[it])` returns; a refused payload raises,
        unless `cover_reasons` lets its reasons be replaced (see `_written`)."""
        return self._written(
            self.audit.enqueue, event_type, payload, principal, request_id, after, cover_reasons
        )

    async def record(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        principal: Principal | None = None,
        request_id: str | None = None,
        after: Sequence[Queued] = (),
        cover_reasons: bool = False,
    ) -> AppendReceipt:
        """Append one audit entry and wait for its commit without holding a thread: the log's committer
        writes it with whatever else is queued. With `after`, only if those queued entries were written
        too (StorageError otherwise); a refused payload raises before anything is queued, unless
        `cover_reasons` lets its reasons be replaced (see `_written`)."""
        return await asyncio.wrap_future(
            self.append_soon(
                event_type, payload, principal=principal, request_id=request_id, after=after,
                cover_reasons=cover_reasons,
            )
        )  # fmt: skip

    def append_soon(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        principal: Principal | None = None,
        request_id: str | None = None,
        after: Sequence[Queued] = (),
        cover_reasons: bool = False,
    ) -> Future[AppendReceipt]:
        """Queue one audit entry for the committer, from any thread; the future resolves on its commit."""
        return self._written(
            self.audit.append_soon, event_type, payload, principal, request_id, after, cover_reasons
        )

    def _written(
        self,
        queue: Callable[..., T],
        event_type: str,
        payload: Mapping[str, Any],
        principal: Principal | None,
        request_id: str | None,
        after: Sequence[Queued],
        cover_reasons: bool,
    ) -> T:
        """Queue the entry with `queue` (the log's `enqueue` or `append_soon`). With `cover_reasons`, a
        payload whose reasons the audit log will not store (a refusal's or a decision's reasons quoting a
        name the caller sent that reads as an identifier) is written with UNRECORDED_REASONS in their place:
        the event is still recorded, and the caller still reads the reasons in the answer. Without it, such
        a payload raises PayloadError (a steward's own reason is refused instead, so they can word it
        again)."""

        def write(written: Mapping[str, Any]) -> T:
            return queue(
                event_type, actor=_actor(principal), request_id=request_id,
                payload=self.annotate(event_type, written), after=after,
            )  # fmt: skip

        try:
            return write(payload)
        except PayloadError:
            if not cover_reasons or "reasons" not in payload:
                raise
            return write({**payload, "reasons": [UNRECORDED_REASONS]})

    def record_policy_change(
        self, payload: Mapping[str, Any], *, principal: Principal | None, wait_s: float
    ) -> AppendReceipt:
        """Append a `policy.changed` entry and wait up to `wait_s` for its commit (StorageError after
        that), from a thread under the policy folder's lock; the state notes where it landed, so that the
        next start finds it without reading the log back to it (`_record_bundle_in_force`)."""
        with unavailable_if_failing("state database", "the policy data was not replaced"):
            self.state.policy_change_pending(self.audit.size)  # nothing is appended should this fail
        written = self.append_soon("policy.changed", payload, principal=principal)
        try:
            receipt = written.result(timeout=wait_s)
        except TimeoutError:
            raise StorageError("the audit log did not commit the change in time") from None
        _note_change(self.state, receipt.index, str(payload["bundle_digest"]))
        return receipt

    def annotate(self, event_type: str, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        """The payload as this runtime records it (a coordinated request's runtime adds its coordinator)."""
        return payload


_SCAN_PAGE: Final = 2048


def _record_bundle_in_force(
    policy: PolicyDecisionPoint, settings: SiteSettings, audit: AuditLog, state: GatewayState
) -> None:
    """Record the bundle the policy folder holds when it is not the one the audit log last recorded: a
    gateway that died between writing a steward's replacement and recording it (`policy_admin`), or files
    changed by hand. The entry is a `policy.changed` of change `found_at_startup`, from the last recorded
    bundle to the one in force; in a log with no policy change yet, of the bundle in force alone, so that
    every log says which bundle its site started under.

    The last one recorded is found where the state noted it (`GatewayState.policy_record`), checked
    against that one entry of the log; the log is read back from its end only when the note is missing or
    does not match (a new state database, another log), once: a log of millions of entries since its last
    policy change is not read at every start."""

    def record(logged: str | None, in_force: str) -> None:
        payload = {
            "bundle_digest": f"sha256:{in_force}",
            **({"previous_digest": f"sha256:{logged}"} if logged is not None else {}),
            "change": "found_at_startup",
        }
        state.policy_change_pending(audit.size)
        receipt = audit.append("policy.changed", payload=payload)
        state.policy_change_noted(receipt.index, in_force, settled=True)  # the log was read to its end

    reconcile(policy, settings.policy_dir, lambda: recorded_bundle(audit, state), record)


def recorded_bundle(audit: AuditLog, state: GatewayState) -> str | None:
    """The bundle digest (hex) of the log's newest `policy.changed` entry, None if it has none; noted in the
    state when the log had to be read back for it (`_newest_policy_change`)."""
    newest, scanned = _newest_policy_change(audit, state.policy_record())
    if scanned and newest is not None:
        state.policy_change_noted(*newest, settled=True)
    return newest[1] if newest is not None else None


def _newest_policy_change(audit: AuditLog, noted: PolicyRecord | None) -> tuple[tuple[int, str] | None, bool]:
    """The index and bundle digest (hex) of the log's newest `policy.changed` entry, None if it has none;
    and whether the log was read beyond the one entry `noted` names. A note the log's entry at its index
    does not bear out is not trusted: the log is then read back from its end."""
    known = None
    if noted is not None and noted.log_index is not None and noted.bundle_digest is not None:
        known = (noted.log_index, noted.bundle_digest)
    if known is not None and _policy_change_in(audit, known[0], known[0] + 1) == known:
        assert noted is not None
        if noted.pending_from is None:
            return known, False
        # An append not yet noted may have landed after the one noted: only those entries are read.
        later = _policy_change_in(audit, max(noted.pending_from, known[0] + 1), audit.size)
        return later or known, True
    return _policy_change_in(audit, 0, audit.size), True


def _policy_change_in(audit: AuditLog, start: int, end: int) -> tuple[int, str] | None:
    """The newest `policy.changed` entry with start ≤ index < end, read back from `end` page by page."""
    while end > start:
        first = max(start, end - _SCAN_PAGE)
        for stored in reversed(audit.entries(first, end)):
            if b"policy.changed" not in stored.data:
                continue
            entry = json.loads(stored.data)
            if entry.get("type") == "policy.changed":
                return stored.index, str(entry["payload"]["bundle_digest"]).removeprefix("sha256:")
        end = first
    return None


def _note_change(state: GatewayState, index: int, bundle_digest: str) -> None:
    """Note in the state where a `policy.changed` landed. It is on record already: should the state not
    take the note, the change stands, and the next start reads the log from where it was announced."""
    try:
        state.policy_change_noted(index, bundle_digest.removeprefix("sha256:"))
    except Exception as exc:  # noqa: BLE001 - the entry is in the log; the note only saves a start reading
        log.error("state: noting the policy change at audit entry %d failed (%s)", index, type(exc).__name__)


def _actor(principal: Principal | None) -> Actor | None:
    """Who an audit entry names: subject and organisation, nothing else of the token. An identity a dev
    token asserts (`fedgate dev-token`, which anyone running it may mint) has its organisation recorded
    after `DEV_ACTOR_PREFIX`, so that it never reads as the identity provider's user of the same names."""
    if principal is None:
        return None
    return _actor_of(principal.sub, DEV_ACTOR_PREFIX + principal.org if principal.dev else principal.org)


DEV_ACTOR_PREFIX: Final = "dev-token:"


# A request notes four entries or more under one principal, and Actor checks both names with patterns on
# construction: the checked Actor is remembered per (sub, org).
@functools.lru_cache(maxsize=4096)
def _actor_of(sub: str, org: str) -> Actor:
    return Actor(sub=recordable_name(sub), org=recordable_name(org))


@functools.lru_cache(maxsize=4096)  # a caller's names recur on every request, and their check is patterns
def recordable_name(name: str) -> str:
    """A token's subject or organisation as the audit log records it: as it is when the log takes it,
    otherwise `sha256:` and the first 32 hex digits of its SHA-256.

    An issuer may name a subject with what the log refuses so that no credential or personal identifier
    ever lands in it: what the payload filter refuses (an e-mail address, a national id, a long digit run
    such as a card number, an opaque run of 32 characters or more, a UUID), a line break, a lone surrogate,
    more than 256 characters (`audit.entry.Actor`). Such a caller is still served and still named in every
    entry, consistently; an auditor who knows the name finds it by its digest."""
    try:
        name.encode("utf-8")  # a lone surrogate from a JSON escape is no text the log can hold
        Actor(sub=name, org="-")
    except (UnicodeEncodeError, EntryError):
        return "sha256:" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return name
