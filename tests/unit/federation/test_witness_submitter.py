"""Witnessing between two sites in one process: the submitter's 409 learning, back-off and cosignature
checks against a real witness behind an in-memory transport, and the witness's atomic state."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from audit.checkpoint import Checkpoint, cosign_checkpoint, parse_checkpoint_body, sign_checkpoint
from audit.errors import (
    BadConsistencyProof,
    MalformedRequest,
    NonEmptyProofFromZero,
    OldSizeMismatch,
    OldSizeTooLarge,
    RootMismatchAtEqualSize,
    UnknownOrigin,
    WitnessError,
)
from audit.keys import generate_log_key, load_log_key
from audit.log import AuditLog
from audit.notes import parse_note, verifier_key_text
from audit.witness import MAX_EVIDENCE_PER_ORIGIN, format_add_checkpoint_body, note_digest
from gateway import problems
from gateway.federation.witnessing import (
    REFUSAL_AUDIT_INTERVAL_S,
    RefusalLimiter,
    SubmissionError,
    Witnessing,
    WitnessingError,
    WitnessKeyError,
    create_witness_key,
    kept_fork_evidence,
    witness_store_url,
)
from gateway.settings import PeerSettings, SiteSettings

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def _settings(
    tmp: Path, site_id: str, peers: tuple[PeerSettings, ...] = (), witness: bool = True, state_url: str = ""
) -> SiteSettings:
    folder = tmp / site_id
    folder.mkdir(exist_ok=True)
    return SiteSettings(
        site_id=site_id, jurisdiction="DE", store_url="duckdb:///:memory:",
        audit_url=f"sqlite:///{folder}/audit.db", policy_dir=folder, master_key_env="UNUSED",
        log_key_file=folder / "log.key", witness_key_file=folder / "witness.key" if witness else None,
        peer_key_file=folder / "peer.key", peers=peers, state_url=state_url,
    )  # fmt: skip


class Pair:
    """Site `a` keeps a log; site `b` witnesses it and answers a's submissions in-process."""

    def __init__(self, tmp: Path, witness_state_url: str = "") -> None:
        a0 = _settings(tmp, "site-a")
        a_key = generate_log_key(a0.log_key_file)
        self.a_log_key = verifier_key_text(a0.audit_origin, a_key.public_key())
        b0 = _settings(tmp, "site-b")
        self.b_witness_key = create_witness_key(b0)
        a_peer = PeerSettings(
            id="site-a", url="https://site-a.test", request_key="AA==", log_key=self.a_log_key
        )
        self.b = Witnessing(_settings(tmp, "site-b", (a_peer,), state_url=witness_state_url), _null_log(tmp))
        b_peer = PeerSettings(id="site-b", url="https://site-b.test", request_key="AA==",
                              log_key=self.a_log_key, witness_key=self.b_witness_key)  # fmt: skip
        self.a_settings = _settings(tmp, "site-a", (b_peer,), witness=False)
        self.log = AuditLog.open(self.a_settings.audit_url, self.a_settings.audit_origin, a_key,
                                 checkpoint_interval_s=None)  # fmt: skip
        self.a_key = a_key
        self.requests: list[bytes] = []
        self.handler: Handler = self.witness_handler
        transport = httpx.MockTransport(self._dispatch)
        self.a = Witnessing(self.a_settings, self.log, http=httpx.AsyncClient(transport=transport),
                            backoff_s=30.0)  # fmt: skip

    async def _dispatch(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.content)
        return await self.handler(request)

    async def witness_handler(self, request: httpx.Request) -> httpx.Response:
        try:
            lines = await self.b.add_checkpoint(request.content)
        except WitnessError as exc:
            answer = problems.witness_response(exc)
            return httpx.Response(
                answer.status_code, content=bytes(answer.body), headers=dict(answer.headers)
            )
        return httpx.Response(int(problems.OK), text=lines)

    def grow(self, n: int) -> None:
        for i in range(n):
            self.log.append("auth.failed", payload={"reason": f"test-{i}"})

    async def close(self) -> None:
        await self.a.aclose()
        await self.b.aclose()
        self.log.close()


def _null_log(tmp: Path) -> AuditLog:
    # The witness site's own log: only refusals of forged checkpoints are written to it.
    (tmp / "site-b").mkdir(exist_ok=True)
    key = generate_log_key(tmp / "site-b" / "log.key")
    return AuditLog.open(
        f"sqlite:///{tmp}/site-b/audit.db", "fedgate.example/site-b", key, checkpoint_interval_s=None
    )


def _run(tmp: Path, body: Callable[[Pair], Awaitable[None]], witness_state_url: str = "") -> None:
    async def main() -> None:
        pair = Pair(tmp, witness_state_url)
        try:
            await body(pair)
        finally:
            await pair.close()

    asyncio.run(main())


def test_submission_is_cosigned_stored_and_then_extended_with_a_proof(tmp_path: Path) -> None:
    async def body(p: Pair) -> None:
        p.grow(3)
        [first] = await p.a.submit_now()
        assert first.cosigned and first.size == 3
        note = p.log.checkpoint_note(3)
        assert note is not None and "— fedgate.example/site-b/witness " in note
        p.grow(5)
        [second] = await p.a.submit_now()
        assert second.cosigned and second.size == 8
        # The second request carried the consistency proof from 3, the size b last cosigned.
        assert p.requests[-1].startswith(b"old 3\n") and p.requests[-1].count(b"\n") > 3
        assert p.b.witness is not None and p.b.witness.cosigned(p.a_settings.audit_origin)[0] == 8

    _run(tmp_path, body)


def test_a_409_teaches_the_peers_size_and_is_retried_once(tmp_path: Path) -> None:
    async def body(p: Pair) -> None:
        p.grow(2)
        assert (await p.a.submit_now())[0].cosigned
        p.a.progress["site-b"].cosigned_size = None  # as after a restart: the submitter forgot
        p.grow(2)
        [outcome] = await p.a.submit_now()
        assert outcome.cosigned and outcome.size == 4
        assert [r.split(b"\n", 1)[0] for r in p.requests[-2:]] == [b"old 0", b"old 2"]

    _run(tmp_path, body)


def test_a_409_naming_a_later_size_gets_that_checkpoint_cosigned_and_stored(tmp_path: Path) -> None:
    async def body(p: Pair) -> None:
        p.grow(2)
        early = p.log.checkpoint()
        p.grow(2)
        later = p.log.checkpoint()
        # Anyone may send a's later checkpoint to b, which cosigns it; a holds no cosignature of it yet.
        await p.b.add_checkpoint(format_add_checkpoint_body(0, [], later))
        outcome = await p.a._offer("site-b", early)  # as a worker that read the latest checkpoint earlier
        assert outcome.cosigned and outcome.size == 4, outcome
        stored = p.log.checkpoint_note(4)
        assert stored is not None and "site-b/witness" in stored
        assert [r.split(b"\n", 1)[0] for r in p.requests] == [b"old 0", b"old 4"]
        # Offered again, the stored cosignature answers without asking the peer.
        again = await p.a._offer("site-b", early)
        assert again.cosigned and again.size == 4 and len(p.requests) == 2

    _run(tmp_path, body)


def test_a_409_naming_a_size_this_log_never_signed_is_a_failure(tmp_path: Path) -> None:
    async def unsigned(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, content=b"3\n", headers={"Content-Type": problems.TLOG_SIZE})

    async def body(p: Pair) -> None:
        p.grow(2)
        early = p.log.checkpoint()
        p.grow(2)
        p.handler = unsigned
        outcome = await p.a._offer("site-b", early)
        assert not outcome.cosigned and outcome.error is not None and "never signed" in outcome.error
        assert p.a.progress["site-b"].cosigned_size is None

    _run(tmp_path, body)


def test_failures_back_off_and_are_reported_not_raised(tmp_path: Path) -> None:
    async def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def body(p: Pair) -> None:
        p.handler = down
        p.grow(1)
        [outcome] = await p.a.submit_now()
        assert not outcome.cosigned and outcome.error is not None and "unreachable" in outcome.error
        state = p.a.progress["site-b"]
        assert state.failures == 1 and state.next_attempt > asyncio.get_running_loop().time() + 10
        p.handler = p.witness_handler
        assert (await p.a.submit_now())[0].cosigned and p.a.progress["site-b"].failures == 0

    _run(tmp_path, body)


def test_a_cosignature_by_another_key_is_not_stored(tmp_path: Path) -> None:
    async def impostor(request: httpx.Request) -> httpx.Response:
        real = await Pair.witness_handler(p_ref[0], request)
        forged = real.text.replace("site-b/witness", "site-x/witness")
        return httpx.Response(200, text=forged)

    p_ref: list[Pair] = []

    async def body(p: Pair) -> None:
        p_ref.append(p)
        p.handler = impostor
        p.grow(1)
        [outcome] = await p.a.submit_now()
        assert not outcome.cosigned and outcome.error is not None and "no cosignature by" in outcome.error
        note = p.log.checkpoint_note(1)
        assert note is not None and "witness" not in note

    _run(tmp_path, body)


def test_the_background_task_submits_new_checkpoints(tmp_path: Path) -> None:
    async def body(p: Pair) -> None:
        p.a.interval_s = 0.05
        p.a.start()
        p.grow(2)
        p.log.checkpoint()
        for _ in range(100):
            if p.a.progress["site-b"].cosigned_size == 2:
                break
            await asyncio.sleep(0.05)
        assert p.a.progress["site-b"].cosigned_size == 2
        assert p.a.status() == [{"peer": "site-b", "cosigned_size": 2, "failures": 0, "last_error": None}]

    _run(tmp_path, body)


def test_concurrent_submissions_cannot_roll_the_witness_back(tmp_path: Path) -> None:
    async def body(p: Pair) -> None:
        assert p.b.witness is not None
        notes = []
        for _ in range(6):
            p.grow(1)
            notes.append(p.log.checkpoint())
        results = await asyncio.gather(
            *(p.b.add_checkpoint(format_add_checkpoint_body(0, [], n)) for n in notes), return_exceptions=True
        )
        won = [n for n, r in zip(notes, results, strict=True) if isinstance(r, str)]
        assert len(won) == 1 and all(isinstance(r, OldSizeMismatch | str) for r in results)
        size = parse_checkpoint_body(parse_note(won[0]).text).size
        assert p.b.witness.cosigned(p.a_settings.audit_origin)[0] == size
        smaller = [n for n in notes if parse_checkpoint_body(parse_note(n).text).size < size]
        for n in smaller:
            with pytest.raises(OldSizeTooLarge):
                await p.b.add_checkpoint(format_add_checkpoint_body(size, [], n))
        assert p.b.witness.cosigned(p.a_settings.audit_origin)[0] == size

    _run(tmp_path, body)


def test_witness_rules_and_their_statuses(tmp_path: Path) -> None:
    async def body(p: Pair) -> None:
        p.grow(4)
        note = p.log.checkpoint()
        with pytest.raises(NonEmptyProofFromZero):
            await p.b.add_checkpoint(format_add_checkpoint_body(0, [bytes(32)], note))
        await p.b.add_checkpoint(format_add_checkpoint_body(0, [], note))
        p.grow(3)
        later = p.log.checkpoint()
        with pytest.raises(BadConsistencyProof):
            await p.b.add_checkpoint(format_add_checkpoint_body(4, [bytes(32)] * 3, later))
        fork = sign_checkpoint(Checkpoint(p.a_settings.audit_origin, 4, bytes(32)), p.a_key)
        with pytest.raises(RootMismatchAtEqualSize):
            await p.b.add_checkpoint(format_add_checkpoint_body(4, [], fork))
        with pytest.raises(MalformedRequest):
            await p.b.add_checkpoint(b"old 0\n" * 20_000)
        # Each refusal is audited; only the fork is evidence against a.
        kinds = [e["type"] for e in _entries(p.b.audit)]
        assert kinds == ["witness.request_refused"] * 2 + ["witness.refused", "witness.request_refused"]
        statuses = {404: UnknownOrigin("x"), 409: OldSizeMismatch(7, 0), 400: OldSizeTooLarge("x"),
                    422: RootMismatchAtEqualSize("x")}  # fmt: skip
        for status, exc in statuses.items():
            assert problems.witness_response(exc).status_code == status
        conflict = problems.witness_response(OldSizeMismatch(7, 0))
        assert conflict.body == b"7\n" and conflict.headers["content-type"] == "text/x.tlog.size"

    _run(tmp_path, body)


def _entries(log: AuditLog) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in log.entries(0, log.size)]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_only_a_forked_checkpoint_is_evidence_and_other_refusals_are_audited_once_a_minute(
    tmp_path: Path,
) -> None:
    async def body(p: Pair) -> None:
        clock = _Clock()
        p.b.refusals = RefusalLimiter(clock=clock)
        origin = p.a_settings.audit_origin
        p.grow(4)
        genuine = p.log.checkpoint()

        async def refused(request: bytes, error: type[Exception], times: int = 1) -> None:
            for _ in range(times):
                with pytest.raises(error):
                    await p.b.add_checkpoint(request)

        # Anyone may replay a's genuine checkpoint with a bogus proof, or send a malformed body: refused with
        # the same statuses as ever, but one entry per origin and reason covers a flood of them.
        await refused(format_add_checkpoint_body(0, [bytes(32)], genuine), NonEmptyProofFromZero, 5)
        await p.b.add_checkpoint(format_add_checkpoint_body(0, [], genuine))
        await refused(format_add_checkpoint_body(4, [bytes(32)], genuine), BadConsistencyProof, 20)
        await refused(b"old x\n\n" + genuine.encode(), MalformedRequest, 5)
        await refused(b"old 0\n\n", MalformedRequest, 5)  # no origin to name: the same entry's kind
        assert [e["payload"] for e in _entries(p.b.audit)] == [
            {"origin": origin, "reason": "non_empty_proof_from_zero", "suppressed": 0},
            {"origin": origin, "reason": "bad_consistency_proof", "suppressed": 0},
            {"reason": "malformed_request", "suppressed": 0},
        ]
        # A minute on, the next one is audited with the count of those left out.
        clock.now += REFUSAL_AUDIT_INTERVAL_S
        await refused(format_add_checkpoint_body(4, [bytes(32)], genuine), BadConsistencyProof)
        last = _entries(p.b.audit)[-1]
        assert last["type"] == "witness.request_refused"
        assert last["payload"] == {"origin": origin, "reason": "bad_consistency_proof", "suppressed": 19}
        assert not [e for e in _entries(p.b.audit) if e["type"] == "witness.refused"]

        # a's key signing another root for the size b cosigned is evidence on its own, audited once however
        # often it is replayed.
        size = p.b.audit.size
        fork = sign_checkpoint(Checkpoint(origin, 4, bytes(32)), p.a_key)
        await refused(format_add_checkpoint_body(4, [], fork), RootMismatchAtEqualSize, 3)
        evidence = _entries(p.b.audit)[size:]
        assert [e["type"] for e in evidence] == ["witness.refused"]
        assert evidence[0]["payload"]["reason"] == "root_mismatch_at_equal_size"
        assert evidence[0]["payload"]["origin"] == origin and evidence[0]["payload"]["size"] == 4
        assert p.b.witness is not None and p.b.witness.cosigned(origin)[0] == 4
        # The witness keeps both signed notes, under the digest the entry cites, after it moves on too.
        p.grow(2)
        assert (await p.a.submit_now())[0].cosigned and p.b.witness.cosigned(origin)[0] == 6
        [kept] = kept_fork_evidence(p.b.settings)
        assert kept.digest == evidence[0]["payload"]["checkpoint_digest"] == note_digest(fork)
        assert (kept.note, kept.cosigned_note) == (fork, genuine)
        assert p.b.fork_evidence(origin) == [kept] and p.b.fork_evidence("fedgate.example/other") == []

    _run(tmp_path, body)


def test_a_refusal_limiter_counts_per_origin_and_reason() -> None:
    clock = _Clock()
    limiter = RefusalLimiter(window_s=60.0, clock=clock)
    assert limiter.admit("o", "a") == 0
    assert limiter.admit("o", "b") == 0 and limiter.admit(None, "a") == 0
    assert [limiter.admit("o", "a") for _ in range(3)] == [None, None, None]
    clock.now += 59.9
    assert limiter.admit("o", "a") is None
    clock.now += 0.1
    assert limiter.admit("o", "a") == 4 and limiter.admit("o", "a") is None


def test_a_cosignature_dated_in_the_future_is_not_stored(tmp_path: Path) -> None:
    async def far_ahead(request: httpx.Request) -> httpx.Response:
        real = await Pair.witness_handler(p_ref[0], request)
        assert real.status_code == 200
        key = load_log_key(tmp_path / "site-b" / "witness.key")
        size = int(request.content.split(b"\n\n", 1)[1].split(b"\n")[1])
        cp = parse_checkpoint_body(parse_note(p_ref[0].log.checkpoint_note(size) or "").text)
        return httpx.Response(
            200, text=cosign_checkpoint(cp, "fedgate.example/site-b/witness", key, 2**63 - 1)
        )

    p_ref: list[Pair] = []

    async def body(p: Pair) -> None:
        p_ref.append(p)
        p.handler = far_ahead
        p.grow(2)
        [outcome] = await p.a.submit_now()
        assert (
            not outcome.cosigned
            and outcome.error is not None
            and "ahead of this log's clock" in outcome.error
        )
        note = p.log.checkpoint_note(2)
        assert note is not None and "witness" not in note

    _run(tmp_path, body)


def test_a_site_without_a_witness_key_answers_unknown_origin(tmp_path: Path) -> None:
    async def body(p: Pair) -> None:
        assert p.a.witness is None
        with pytest.raises(UnknownOrigin):
            await p.a.add_checkpoint(b"old 0\n\n")

    _run(tmp_path, body)


def test_witness_key_errors_and_store_location(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "site-c")
    with pytest.raises(WitnessKeyError, match="fedgate witness keygen"):
        Witnessing(settings, _null_log(tmp_path))
    create_witness_key(settings)
    with pytest.raises(WitnessKeyError, match="refusing to overwrite"):
        create_witness_key(settings)
    assert witness_store_url(settings) == f"sqlite:///{tmp_path}/site-c/witness.db"
    pg = settings.model_copy(update={"state_url": "postgresql+psycopg://db/state"})
    assert witness_store_url(pg) == "postgresql+psycopg://db/state"
    assert issubclass(SubmissionError, Exception)


def test_a_peer_claiming_a_size_beyond_the_log_is_a_failure(tmp_path: Path) -> None:
    async def liar(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, content=b"1000\n", headers={"Content-Type": problems.TLOG_SIZE})

    async def body(p: Pair) -> None:
        p.handler = liar
        p.grow(2)
        [outcome] = await p.a.submit_now()
        assert not outcome.cosigned and outcome.error is not None and "beyond this log" in outcome.error
        assert p.a.progress["site-b"].cosigned_size is None

    _run(tmp_path, body)


@pytest.mark.parametrize(
    ("status", "content", "why"),
    [
        (409, b"9" * 5000 + b"\n", "409 without a size body"),  # more digits than int() converts
        (409, "²\n".encode(), "409 without a size body"),  # a digit to str.isdigit, not to int()
        (409, str(2**63).encode() + b"\n", "409 without a size body"),  # no tree is that large
        (200, b"\xe2\x80\x94 " * 40_000, "longer than 65536 bytes"),  # read no further than the cap
    ],
)
def test_a_peers_odd_answer_is_a_failure_not_the_end_of_the_submitter(
    tmp_path: Path, status: int, content: bytes, why: str
) -> None:
    async def odd(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers={"Content-Type": problems.TLOG_SIZE})

    async def body(p: Pair) -> None:
        p.handler = odd
        p.grow(2)
        [outcome] = await p.a.submit_now()
        assert not outcome.cosigned and outcome.error is not None and why in outcome.error
        # The peer recovers: the next offer (after the back-off) is cosigned.
        p.handler = p.witness_handler
        p.a.progress["site-b"].next_attempt = 0.0
        [again] = await p.a.submit_now()
        assert again.cosigned, again.error

    _run(tmp_path, body)


def test_even_the_empty_log_is_offered(tmp_path: Path) -> None:
    async def body(p: Pair) -> None:
        [outcome] = await p.a.submit_now()
        assert outcome.cosigned and outcome.size == 0 and len(p.requests) == 1
        note = p.log.checkpoint_note(0)
        assert note is not None and "site-b/witness" in note

    _run(tmp_path, body)


@pytest.mark.postgres
def test_a_witness_keeps_its_state_in_a_postgres_state_database(tmp_path: Path, pg_url: str) -> None:
    async def body(p: Pair) -> None:
        p.grow(3)
        assert (await p.a.submit_now())[0].cosigned
        p.grow(2)
        assert (await p.a.submit_now())[0].cosigned
        engine = sa.create_engine(pg_url)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select origin, size from witness_state")).all()
        engine.dispose()
        assert [tuple(r) for r in rows] == [(p.a_settings.audit_origin, 5)]

    _run(tmp_path, body, pg_url)


def test_a_wrong_peer_key_in_the_config_stops_start_up(tmp_path: Path) -> None:
    log = _null_log(tmp_path)
    log_key = log.verifier_key()
    as_witness = PeerSettings(id="site-x", url="https://x.test", request_key="AA==", log_key=log_key,
                              witness_key=log_key)  # fmt: skip
    with pytest.raises(WitnessingError, match=r"peers.site-x.witness_key: not a witness"):
        Witnessing(_settings(tmp_path, "site-c", (as_witness,), witness=False), log)
    garbled = PeerSettings(id="site-x", url="https://x.test", request_key="AA==", log_key="not a key")
    settings = _settings(tmp_path, "site-d", (garbled,))
    create_witness_key(settings)
    with pytest.raises(WitnessingError, match=r"peers.site-x.log_key"):
        Witnessing(settings, log)
    log.close()


def test_forks_past_the_kept_ones_are_audited_once_a_minute_with_a_count(tmp_path: Path) -> None:
    """A peer whose key signs fork after fork: the first MAX_EVIDENCE_PER_ORIGIN are kept and audited one
    by one, the rest in one entry per minute that says how many it leaves out."""

    async def body(p: Pair) -> None:
        origin = p.a_settings.audit_origin
        p.grow(4)
        await p.b.add_checkpoint(format_add_checkpoint_body(0, [], p.log.checkpoint()))
        before = p.b.audit.size
        forks = MAX_EVIDENCE_PER_ORIGIN + 40
        for i in range(forks):
            fork = sign_checkpoint(Checkpoint(origin, 4, (i + 1).to_bytes(32, "big")), p.a_key)
            with pytest.raises(RootMismatchAtEqualSize):
                await p.b.add_checkpoint(format_add_checkpoint_body(4, [], fork))
        refused = [e["payload"] for e in _entries(p.b.audit)[before:] if e["type"] == "witness.refused"]
        assert len(kept_fork_evidence(p.b.settings)) == MAX_EVIDENCE_PER_ORIGIN
        kept, beyond = refused[:MAX_EVIDENCE_PER_ORIGIN], refused[MAX_EVIDENCE_PER_ORIGIN:]
        assert all("suppressed" not in e for e in kept)
        assert beyond == [{**beyond[0], "suppressed": 0}]  # the first past the kept ones; the rest counted

    _run(tmp_path, body)
