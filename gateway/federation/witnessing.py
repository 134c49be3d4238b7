"""Witnessing between peers: cosign the peers' checkpoints, and have them cosign this site's own.

Two halves share this module. The witness half wraps `audit.witness.Witness` with this site's witness key
and the log keys of its registered peers; `gateway/routes/witness.py` feeds it the C2SP tlog-witness
`add-checkpoint` bodies. The submitter half is a background task that sends each new checkpoint of the
site's own log to every peer that has a `witness_key`, with the consistency proof from the size that peer
last cosigned, and stores the cosignatures it gets back (verified) with `AuditLog.add_cosignature`.

Neither half writes to the site's own audit log on success: every entry makes a new checkpoint, which
would be submitted to the peers, whose cosigning would make entries of their own — a ping-pong that never
ends. A refusal is audited in one of two ways. A checkpoint the peer's log key signed for the size this
site cosigned, with another root, is evidence against the peer on its own (`witness.refused`, once per
checkpoint); the witness keeps both signed notes (`Witness.fork_evidence`, `fedgate witness evidence`).
Every other refusal proves nothing about the peer: anyone may replay a peer's genuine
checkpoint with a bogus proof, or send a malformed body. Those are `witness.request_refused`, at most one
entry per origin and reason a minute (`RefusalLimiter`), which counts the refusals it left out.

Exception tree::

    WitnessingError                 witnessing cannot run (e.g. a peer's key in the config is not a
    │                               verifier key of the right kind) or a submission failed
    ├── WitnessKeyError                 the witness key file is missing, unreadable or too open
    └── SubmissionError                 a peer did not cosign (unreachable, refused, bad cosignature)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import Checkpoint, parse_checkpoint_body
from audit.errors import (
    AuditError,
    BadConsistencyProof,
    BadLogSignature,
    LogKeyError,
    MalformedRequest,
    MissingLogSignature,
    NonEmptyProofFromZero,
    NoteError,
    OldSizeMismatch,
    OldSizeTooLarge,
    RootMismatchAtEqualSize,
    UnknownOrigin,
    WitnessError,
)
from audit.events import COUNT, DIGEST, LABEL, Enum, EventType, register
from audit.export_format import parse_tree_size
from audit.keys import generate_log_key, load_log_key
from audit.log import AuditLog
from audit.notes import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    Note,
    VerifierKey,
    parse_note,
    parse_verifier_key,
    verifier_key_text,
)
from audit.witness import (
    AddCheckpointRequest,
    ForkRefused,
    KeptFork,
    Witness,
    format_add_checkpoint_body,
    note_digest,
    parse_add_checkpoint_body,
    read_fork_evidence,
)
from gateway import problems
from gateway.federation.peer_answers import read_capped
from gateway.settings import PeerSettings, SiteSettings

log = logging.getLogger(__name__)

ADD_CHECKPOINT_PATH = "/v1/witness/add-checkpoint"
WITNESS_DB = "witness.db"
# A checkpoint note is a few hundred bytes; 63 proof lines add under 3 KiB. Anything far larger is abuse.
MAX_BODY_BYTES = 64 * 1024

# Why an add-checkpoint request that is no evidence was refused, by the rule that refused it (`audit.errors`);
# `_OTHER_REFUSAL` for any rule not named here.
_REQUEST_REFUSAL_REASONS: Final[dict[type[WitnessError], str]] = {
    UnknownOrigin: "unknown_origin",
    MissingLogSignature: "missing_log_signature",
    BadLogSignature: "bad_log_signature",
    MalformedRequest: "malformed_request",
    OldSizeTooLarge: "old_size_too_large",
    OldSizeMismatch: "old_size_mismatch",
    NonEmptyProofFromZero: "non_empty_proof_from_zero",
    BadConsistencyProof: "bad_consistency_proof",
}
_OTHER_REFUSAL: Final = "refused"

WITNESS_REFUSED = register(
    EventType(
        "witness.refused",
        "fork evidence: the peer's log key signed a checkpoint of the size this site cosigned, with another "
        "root",
        required={
            "origin": LABEL,
            "reason": Enum("root_mismatch_at_equal_size"),
            "old_size": COUNT,
            "size": COUNT,
        },
        optional={"checkpoint_digest": DIGEST, "cosigned_size": COUNT, "suppressed": COUNT},
    )
)
WITNESS_REQUEST_REFUSED = register(
    EventType(
        "witness.request_refused",
        "add-checkpoint requests refused that prove nothing about the peer (a proof that does not verify, a "
        "malformed body): one entry per origin and reason a minute at most, with how many it leaves out",
        required={
            "reason": Enum(*_REQUEST_REFUSAL_REASONS.values(), _OTHER_REFUSAL),
            "suppressed": COUNT,
        },
        optional={"origin": LABEL},
    )
)

REFUSAL_AUDIT_INTERVAL_S: Final = 60.0
"""A refused request that is no evidence is audited at most once per origin and reason in this window."""
MAX_EVIDENCE_REMEMBERED: Final = 1024
"""Forked checkpoints remembered as audited already, so that replaying one does not audit it again."""


class RefusalLimiter:
    """Lets one refusal per (origin, reason) and window through to the audit log, and counts the others.

    In-process: each worker of a gateway has its own. Its state stays small, since origins are those of
    registered peers (any other counts as None) and reasons a fixed set."""

    def __init__(
        self, window_s: float = REFUSAL_AUDIT_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str | None, str], float] = {}
        self._suppressed: dict[tuple[str | None, str], int] = {}

    def admit(self, origin: str | None, reason: str) -> int | None:
        """None when this refusal is only counted; when it is to be audited, how many refusals of the same
        origin and reason were counted and not audited since the last one that was."""
        key = (origin, reason)
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.window_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._suppressed.pop(key, 0)


class WitnessingError(Exception):
    """Witnessing cannot run, or a submission to a peer failed."""


class WitnessKeyError(WitnessingError):
    """The site's witness key file cannot be used."""


class SubmissionError(WitnessingError):
    """A peer did not return a cosignature this site could store."""


def witness_name(settings: SiteSettings) -> str:
    """The name of this site's witness key: its log origin with `/witness` appended."""
    return f"{settings.audit_origin}/witness"


def witness_store_url(settings: SiteSettings) -> str:
    """Where the witness keeps what it cosigned: `witness.db` beside a SQLite state database, else the
    state database itself (its own table)."""
    url = sa.make_url(settings.state_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return str(url.set(database=str(Path(str(url.database)).parent / WITNESS_DB)))
    return settings.state_url


def create_witness_key(settings: SiteSettings) -> str:
    """Create the witness key file (0600, never overwritten); return its verifier key text."""
    if settings.witness_key_file is None:
        raise WitnessKeyError("witness_key_file is not set in the site config")
    try:
        key = generate_log_key(settings.witness_key_file)
    except LogKeyError as exc:
        raise WitnessKeyError(str(exc)) from None
    return verifier_key_text(witness_name(settings), key.public_key(), ALG_COSIGNATURE_V1)


def load_witness_key(settings: SiteSettings) -> Ed25519PrivateKey | None:
    """The witness signing key, or None when the site is not configured as a witness."""
    path = settings.witness_key_file
    if path is None:
        return None
    if not path.exists():
        raise WitnessKeyError(f"{path}: witness key file not found (create it with `fedgate witness keygen`)")
    try:
        return load_log_key(path)
    except LogKeyError as exc:
        raise WitnessKeyError(str(exc)) from None


def open_witness(settings: SiteSettings) -> Witness | None:
    """This site's witness for the logs of its peers, or None without a witness key."""
    key = load_witness_key(settings)
    if key is None:
        return None
    known: dict[str, list[str]] = {}
    for peer in settings.peers:
        known.setdefault(_peer_key(peer, "log_key", ALG_ED25519).name, []).append(peer.log_key)
    url = witness_store_url(settings)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return Witness(url, witness_name(settings), key, known)


def kept_fork_evidence(settings: SiteSettings, origin: str | None = None) -> list[KeptFork]:
    """The forks the site's witness store kept, read without the witness key (none without a store)."""
    url = witness_store_url(settings)
    parsed = sa.make_url(url)
    database = parsed.database
    if parsed.get_backend_name() == "sqlite" and (not database or not Path(database).is_file()):
        return []
    return read_fork_evidence(url, origin)


@dataclass
class PeerProgress:
    """What this site knows about one peer's witnessing of its log."""

    peer: str
    cosigned_size: int | None = None  # unknown until the peer cosigns or its 409 says
    failures: int = 0
    next_attempt: float = 0.0
    last_error: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"peer": self.peer, "cosigned_size": self.cosigned_size, "failures": self.failures,
                "last_error": self.last_error}  # fmt: skip


@dataclass(frozen=True)
class SubmissionOutcome:
    """The result of offering one checkpoint to one peer."""

    peer: str
    size: int
    cosigned: bool
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"peer": self.peer, "size": self.size, "cosigned": self.cosigned, "error": self.error}


class Witnessing:
    """This site's witness (may be None) and the background submitter of its own checkpoints."""

    def __init__(
        self,
        settings: SiteSettings,
        audit: AuditLog,
        *,
        interval_s: float = 2.0,
        timeout_s: float = 5.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 300.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.audit = audit
        self.witness = open_witness(settings)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.peers: dict[str, PeerSettings] = {p.id: p for p in settings.peers if p.witness_key}
        self._witness_keys = {
            p: _peer_key(peer, "witness_key", ALG_COSIGNATURE_V1) for p, peer in self.peers.items()
        }
        self.progress = {peer_id: PeerProgress(peer_id) for peer_id in self.peers}
        self._client = http
        self._task: asyncio.Task[None] | None = None
        # The origins a refusal may be audited under; open_witness checked these keys already.
        self._peer_origins = frozenset(
            _peer_key(peer, "log_key", ALG_ED25519).name for peer in settings.peers if self.witness
        )
        self.refusals = RefusalLimiter()
        self._evidence: OrderedDict[str, None] = OrderedDict()  # checkpoint texts audited as evidence
        self._evidence_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background submitter on the running event loop.

        A no-op without witnessing peers, or outside an event loop (a CLI opening the runtime); there
        `submit_now()` still works when awaited.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._task is None and self.peers:
            self._task = loop.create_task(self._run(), name="witness-submitter")
            self._task.add_done_callback(_report_crash)

    async def aclose(self) -> None:
        """Stop the submitter and release the witness store and HTTP connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self.witness is not None:
            self.witness.close()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s)
        return self._client

    # -- submitting ----------------------------------------------------------------------------------

    async def submit_now(self, *, sign: bool = True) -> list[SubmissionOutcome]:
        """Offer the latest checkpoint to every witnessing peer now, ignoring back-off.

        With `sign`, first sign a checkpoint covering every entry so far (the latest one is reused when
        nothing was appended). Returns one outcome per peer; failures are reported, not raised.
        """
        note = await asyncio.to_thread(self.audit.checkpoint if sign else self.audit.latest_checkpoint)
        if note is None:
            return []
        return list(await asyncio.gather(*(self._offer(peer_id, note) for peer_id in self.peers)))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                note = await asyncio.to_thread(self.audit.latest_checkpoint)
            except (AuditError, sa.exc.SQLAlchemyError) as exc:
                log.warning("witnessing: cannot read the latest checkpoint: %s", exc)
                continue
            if note is None:
                continue
            size = _size_of(note)
            now = time.monotonic()
            due = [
                p for p, st in self.progress.items() if st.cosigned_size != size and st.next_attempt <= now
            ]
            if due:
                await asyncio.gather(*(self._offer(peer_id, note) for peer_id in due))

    async def _offer(self, peer_id: str, note: str) -> SubmissionOutcome:
        state = self.progress[peer_id]
        size = _size_of(note)
        async with state.lock:
            if state.cosigned_size == size:
                return SubmissionOutcome(peer_id, size, True)
            try:
                cosigned = await self._submit(self.peers[peer_id], state, note, size)
            except Exception as failure:  # noqa: BLE001 - no peer's answer may end the submitter for all
                exc = failure if isinstance(failure, SubmissionError) else _unusable(failure)
                state.failures += 1
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (state.failures - 1))
                # Jitter keeps the sites of a federation from retrying a recovered peer in lockstep.
                state.next_attempt = time.monotonic() + delay * random.uniform(0.5, 1.0)  # noqa: S311 (not a secret)
                state.last_error = str(exc)
                log.warning("witnessing: peer %s did not cosign size %d: %s", peer_id, size, exc)
                return SubmissionOutcome(peer_id, size, False, str(exc))
            state.failures = 0
            state.next_attempt = 0.0
            state.last_error = None
            return SubmissionOutcome(peer_id, cosigned, True)

    async def _submit(self, peer: PeerSettings, state: PeerProgress, note: str, size: int) -> int:
        """Send add-checkpoint from the peer's last cosigned size; on 409 learn its size and retry once.

        Returns the size now cosigned, with the peer's cosignature stored: `size`, or a later size the peer
        had cosigned already (another worker, or anyone, may send it this log's checkpoints)."""
        old = state.cosigned_size or 0
        for attempt in range(2):
            if old > size:
                later = await asyncio.to_thread(self._later_checkpoint, peer, old)
                if later is None:
                    state.cosigned_size = old
                    return old
                # Ask for the cosignature of the checkpoint the peer holds (equal sizes, empty proof).
                note, size = later, old
            try:
                proof = await asyncio.to_thread(self.audit.consistency_proof, old, size)
            except (AuditError, sa.exc.SQLAlchemyError) as exc:
                raise SubmissionError(f"no consistency proof from the peer's size {old}: {exc}") from None
            body = format_add_checkpoint_body(old, proof, note)
            try:
                status, content = await read_capped(
                    self._http(),
                    "POST",
                    f"{peer.url}{ADD_CHECKPOINT_PATH}",
                    content=body,
                    headers={"Content-Type": "text/plain"},
                    limit=MAX_WITNESS_ANSWER_BYTES,
                )
            except httpx.HTTPError as exc:
                raise SubmissionError(f"unreachable: {type(exc).__name__}") from None
            if content is None:
                raise SubmissionError(f"the answer is longer than {MAX_WITNESS_ANSWER_BYTES} bytes")
            text = content.decode("utf-8", "replace")
            if status == problems.WITNESS_STATUS[OldSizeMismatch] and attempt == 0:
                old = _parse_size_body(text)
                continue
            if status != problems.OK:
                raise SubmissionError(f"refused with {status}: {text.strip()[:200]}")
            self._store(peer, size, text)
            state.cosigned_size = size
            return size
        raise SubmissionError("the peer's size changed again after a 409")

    def _later_checkpoint(self, peer: PeerSettings, size: int) -> str | None:
        """The peer says it cosigned this log's checkpoint of `size`, later than the one offered: None when
        its cosignature of that checkpoint is stored, else that checkpoint (log signature only) to offer."""
        if size > self.audit.size:
            raise SubmissionError(f"the peer claims to have cosigned size {size}, beyond this log")
        stored = self.audit.checkpoint_note(size)
        if stored is None:
            raise SubmissionError(
                f"the peer claims to have cosigned size {size}, a size this log never signed"
            )
        note = parse_note(stored)
        key = self._witness_keys[peer.id]
        if any((sig.name, sig.key_id) == (key.name, key.key_id) for sig in note.signatures):
            return None
        origin = parse_checkpoint_body(note.text).origin
        return Note(note.text, tuple(sig for sig in note.signatures if sig.name == origin)).render()

    def _store(self, peer: PeerSettings, size: int, lines: str) -> None:
        key = self._witness_keys[peer.id]
        for line in lines.splitlines():
            if not line.startswith("— ") or line.split(" ")[1:2] != [key.name]:
                continue
            try:
                self.audit.add_cosignature(size, line, key)
            except (AuditError, sa.exc.SQLAlchemyError) as exc:
                raise SubmissionError(f"its cosignature was not stored: {exc}") from None
            return
        raise SubmissionError(f"the answer holds no cosignature by {key.name}")

    def status(self) -> list[dict[str, Any]]:
        """What each witnessing peer last cosigned and its current failure streak."""
        return [st.as_dict() for st in self.progress.values()]

    # -- witnessing ----------------------------------------------------------------------------------

    def fork_evidence(self, origin: str | None = None) -> list[KeptFork]:
        """The forked checkpoints this site's witness kept, with the cosigned ones they conflict with."""
        return [] if self.witness is None else self.witness.fork_evidence(origin)

    async def add_checkpoint(self, body: bytes) -> str:
        """Handle a tlog-witness add-checkpoint body: this site's cosignature line(s).

        Raises the `audit.errors.WitnessError` subclass of the rule that failed (the route maps it to
        its status). Every refusal is audited (`_record_refusal`): as evidence against the peer when it
        is some, otherwise as a refused request, at most once per origin and reason a minute.
        """
        try:
            if self.witness is None:
                raise UnknownOrigin("this gateway is not a witness (witness_key_file is not set)")
            if len(body) > MAX_BODY_BYTES:
                raise MalformedRequest(f"body is larger than {MAX_BODY_BYTES} bytes")
            return await asyncio.to_thread(self.witness.add_checkpoint_request, body)
        except WitnessError as exc:
            await asyncio.to_thread(self._record_refusal, body, exc)
            raise

    def _record_refusal(self, body: bytes, exc: WitnessError) -> None:
        """Audit a refused add-checkpoint request.

        Only a checkpoint of the size this site cosigned with another root, signed by the peer's log key
        (the witness checks the signature first), shows on its own that the peer signed two histories:
        the witness holds the other one. A proof that does not verify shows nothing about the peer, since
        anyone may send a peer's genuine checkpoint with a bogus proof; nor does a malformed body."""
        parsed = _parsed(body)
        if isinstance(exc, RootMismatchAtEqualSize) and parsed is not None and self.witness is not None:
            kept = exc.evidence_digest if isinstance(exc, ForkRefused) else None
            self._record_evidence(self.witness, *parsed, kept)
            return
        cp = parsed[2] if parsed is not None else None
        origin = cp.origin if cp is not None and cp.origin in self._peer_origins else None
        reason = next(
            (_REQUEST_REFUSAL_REASONS[c] for c in type(exc).__mro__ if c in _REQUEST_REFUSAL_REASONS),
            _OTHER_REFUSAL,
        )
        suppressed = self.refusals.admit(origin, reason)
        if suppressed is None:
            return
        payload: dict[str, Any] = {"reason": reason, "suppressed": suppressed}
        if origin is not None:
            payload["origin"] = origin
        self._audit(WITNESS_REQUEST_REFUSED.name, payload, origin)

    def _record_evidence(
        self, witness: Witness, request: AddCheckpointRequest, note: Note, cp: Checkpoint, kept: str | None
    ) -> None:
        """Audit a forked checkpoint once: replayed (with other signature lines, even), it is no news.

        The witness keeps both signed notes (`Witness.fork_evidence`); the entry cites the kept row by
        `kept`, its digest, or (when the log's evidence rows are full) by the refused note's digest."""
        with self._evidence_lock:
            if note.text in self._evidence:
                return
            self._evidence[note.text] = None
            while len(self._evidence) > MAX_EVIDENCE_REMEMBERED:
                self._evidence.popitem(last=False)
        payload: dict[str, Any] = {}
        if kept is None:
            # The log's evidence rows are full: this fork proves nothing the kept ones do not, and a peer
            # signing fork after fork must not grow the log by an entry each (RefusalLimiter's window).
            suppressed = self.refusals.admit(cp.origin, "fork_not_kept")
            if suppressed is None:
                return
            payload["suppressed"] = suppressed
        try:
            cosigned_size, _ = witness.cosigned(cp.origin)
        except (AuditError, sa.exc.SQLAlchemyError):
            cosigned_size = cp.size  # equal sizes were compared, whatever the store says now
        payload = {
            **payload,
            "origin": cp.origin,
            "reason": "root_mismatch_at_equal_size",
            "old_size": request.old_size,
            "size": cp.size,
            "cosigned_size": cosigned_size,
            # The digest cites the evidence the witness kept; a root is a long opaque string the log refuses.
            "checkpoint_digest": kept or note_digest(note.render()),
        }
        if not self._audit(WITNESS_REFUSED.name, payload, cp.origin):
            with self._evidence_lock:  # not on record: a replay may still put it there
                self._evidence.pop(note.text, None)

    def _audit(self, event_type: str, payload: dict[str, Any], origin: str | None) -> bool:
        try:
            self.audit.append(event_type, payload=payload)
        except (AuditError, sa.exc.SQLAlchemyError) as exc:
            whose = origin or "an unregistered origin"
            log.error("witnessing: cannot audit a refused checkpoint of %s: %s", whose, exc)
            return False
        return True


def _parsed(body: bytes) -> tuple[AddCheckpointRequest, Note, Checkpoint] | None:
    """The request, its note and checkpoint, or None when the body does not parse that far."""
    try:
        request = parse_add_checkpoint_body(body)
        note = parse_note(request.checkpoint)
        return request, note, parse_checkpoint_body(note.text)
    except (WitnessError, NoteError):
        return None


def _peer_key(peer: PeerSettings, field: str, alg: int) -> VerifierKey:
    """A peer's verifier key from the config; a wrong one stops start-up rather than every submission."""
    text = getattr(peer, field)
    try:
        key = parse_verifier_key(text)
    except NoteError as exc:
        raise WitnessingError(f"peers.{peer.id}.{field}: {exc}") from None
    if key.alg != alg:
        kind = "a witness (cosignature/v1)" if alg == ALG_COSIGNATURE_V1 else "a log (Ed25519 note)"
        raise WitnessingError(f"peers.{peer.id}.{field}: not {kind} verifier key")
    return key


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("witnessing: the submitter stopped", exc_info=task.exception())


def _size_of(note: str) -> int:
    return parse_checkpoint_body(parse_note(note).text).size


def _unusable(exc: Exception) -> SubmissionError:
    return SubmissionError(f"its answer could not be used ({type(exc).__name__})")


def _parse_size_body(text: str) -> int:
    """The size a 409 names: ASCII digits and a newline (str.isdigit would take digits int() refuses)."""
    size = parse_tree_size(text[:-1]) if text.endswith("\n") else None
    if size is None:
        raise SubmissionError("409 without a size body")
    return size


MAX_WITNESS_ANSWER_BYTES = 64 * 1024
"""The most of a witness's answer read: its cosignature lines are a few hundred bytes."""
