"""`verify_export`: every check an auditor runs on an export, raising one AuditIntegrityError on failure."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from audit.checkpoint import (
    Checkpoint,
    OpenedCheckpoint,
    open_checkpoint,
    require_witness_keys,
    verify_cosignatures,
)
from audit.errors import AuditIntegrityError, ForkEvidence, NoteError, SignatureError
from audit.merkle import CompactRange
from audit.notes import VerifierKey, b64, parse_note, parse_verifier_key, public_key_bytes
from audit.verify import reader as export_reader
from audit.verify.chain import ChainState, check_chunk, parse_entry
from audit.verify.parallel import Chunk, chunk_table, read_lines, scan_in_workers
from audit.verify.reader import ExportReader

# Below this many entries, starting worker processes costs more than it saves.
PARALLEL_MIN_ENTRIES = 200_000
MAX_WORKERS = 4
# Cosignatures dated further ahead than this are not counted (C2SP lets verifiers reject future ones).
MAX_CLOCK_SKEW_S = 600
# The name of a site's own witness key (`fedgate witness keygen`): its log origin and this suffix.
OWN_WITNESS_SUFFIX = "/witness"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class VerificationSummary:
    """What held: log, size, root, log key, the witnesses that cosigned, and the kept checkpoint.

    `skipped` names each verified cosignature that was not counted, and why (the log's own witness, a
    date in the future)."""

    origin: str
    size: int
    root: bytes
    log_key: str
    witnesses: tuple[str, ...]
    since_size: int | None
    checkpoint: str
    skipped: tuple[str, ...] = ()


def _key(key: str | VerifierKey) -> VerifierKey:
    return parse_verifier_key(key) if isinstance(key, str) else key


def _open(note: bytes | str, key: VerifierKey, what: str) -> OpenedCheckpoint:
    try:
        return open_checkpoint(note, [key])
    except SignatureError as exc:
        raise AuditIntegrityError(f"{what}_signature", f"{what} signature check failed: {exc}") from None
    except NoteError as exc:
        raise AuditIntegrityError(f"malformed_{what}", f"{what} is malformed: {exc}") from None


def verify_export(
    source: Path | str | IO[bytes],
    log_key: str | VerifierKey,
    witness_keys: Sequence[str | VerifierKey] = (),
    min_witnesses: int = 0,
    since: str | bytes | None = None,
    *,
    progress: Progress | None = None,
    now: float | None = None,
    workers: int = 1,
) -> VerificationSummary:
    """Verify an export: entries, chain, Merkle root, checkpoint signature, cosignatures, and (with
    `since`, a checkpoint kept earlier) that the log only grew. Raises AuditIntegrityError.

    `workers`: processes that hash and parse entries (1: in this process; 0: the idle cores, on exports
    of PARALLEL_MIN_ENTRIES or more). Worker processes are spawned, so a script that passes anything but 1
    must guard its entry point with `if __name__ == "__main__":`, as multiprocessing requires.
    """
    if isinstance(source, Path | str):
        with Path(source).open("rb") as f:
            return _verify(
                f, str(source), log_key, witness_keys, min_witnesses, since, progress, now, workers
            )
    return _verify(source, None, log_key, witness_keys, min_witnesses, since, progress, now, workers)


def _verify(
    source: IO[bytes],
    path: str | None,
    log_key: str | VerifierKey,
    witness_keys: Sequence[str | VerifierKey],
    min_witnesses: int,
    since: str | bytes | None,
    progress: Progress | None,
    now: float | None,
    workers: int,
) -> VerificationSummary:
    lkey = _key(log_key)
    wkeys = require_witness_keys([_key(k) for k in witness_keys])  # a wrong kind fails before any hashing
    kept = _open(since, lkey, "since_checkpoint") if since is not None else None
    reader = ExportReader(source)
    if kept is not None and kept.checkpoint.origin != reader.origin:
        raise AuditIntegrityError(
            "since_checkpoint_origin", "the kept checkpoint is of another log",
            expected=reader.origin, found=kept.checkpoint.origin,
        )  # fmt: skip
    size, snapshot_at = reader.size, kept.checkpoint.size if kept else None
    tree, snapshot = CompactRange(), None
    state = ChainState(reader.origin)
    if workers <= 0:
        workers = _workers() if size >= PARALLEL_MIN_ENTRIES else 1
    if workers > 1 and path is not None:
        chunks = _checked_in_workers(source, path, reader, state, workers, snapshot_at)
    else:
        chunks = _checked_here(reader, state)
    for start, count, leaves, root in chunks:
        if snapshot_at is not None and start <= snapshot_at < start + count:
            cut = snapshot_at - start
            tree.extend(leaves[:cut])
            snapshot = tree.root()
            tree.extend(leaves[cut:])
        elif not leaves and root is not None:
            tree.push_subtree(count.bit_length() - 1, root)
        else:
            tree.extend(leaves)
        if progress is not None:
            progress(state.index, size)
    if snapshot_at is not None and snapshot is None and snapshot_at == tree.size:
        snapshot = tree.root()
    if state.index < size:
        raise AuditIntegrityError(
            "truncated", f"the export announces {size} entries but holds {state.index}",
            index=state.index, expected=str(size), found=str(state.index),
        )  # fmt: skip
    note = reader.rest()
    _check_no_more_entries(note, size)
    current = _open(note, lkey, "checkpoint")
    cp = current.checkpoint
    _check_checkpoint(cp, reader.origin, size, tree.root())
    if kept is not None:
        _check_grew(kept, current, snapshot)
    witnesses, skipped = _check_witnesses(note, wkeys, min_witnesses, now, cp.origin, lkey)
    return VerificationSummary(
        origin=cp.origin, size=cp.size, root=cp.root, log_key=lkey.text(), witnesses=witnesses,
        since_size=kept.checkpoint.size if kept else None, checkpoint=current.text, skipped=skipped,
    )  # fmt: skip


def _workers() -> int:
    """Worker processes for the cores that are idle: on a busy machine, workers only add overhead.

    The load average counts this process too (it is about to be the busiest one), so one unit of load is
    ours, not another program's.
    """
    cores = os.cpu_count() or 1
    try:
        others = max(0.0, os.getloadavg()[0] - 1.0)
    except OSError:  # no load average on this platform
        others = 0.0
    return max(1, min(MAX_WORKERS, cores, round(cores - others)))


Checked = Iterator[tuple[int, int, list[bytes], bytes | None]]  # start, count, leaves, perfect root


def _checked_here(reader: ExportReader, state: ChainState) -> Checked:
    """Chunks checked in this process."""

    def peek_more() -> bytes | None:
        return reader.peek() if reader.consumed < reader.size else None

    for lines in reader.entry_chunks():
        start = state.index
        more = state.index + len(lines) < reader.size
        leaves = check_chunk(state, lines, peek_more if more else lambda: None)
        yield start, len(lines), leaves, None


def _checked_in_workers(
    source: IO[bytes],
    path: str,
    reader: ExportReader,
    state: ChainState,
    workers: int,
    snapshot_at: int | None,
) -> Checked:
    """Chunks checked by worker processes that read the file themselves."""
    size = export_reader.CHUNK
    table, end = chunk_table(source, source.tell(), reader.size, size)

    def want_leaves(chunk: Chunk) -> bool:
        partial = chunk.count != size
        return partial or (snapshot_at is not None and chunk.start <= snapshot_at < chunk.start + chunk.count)

    for k, (chunk, result) in enumerate(scan_in_workers(path, table, state.origin, workers, want_leaves)):
        if result.ok and result.first_prev == b64(state.prev_leaf):
            state.index += chunk.count
            state.prev_leaf, state.prev_line = result.last_leaf, None
            yield chunk.start, chunk.count, result.leaves, result.root
            continue
        # Something is wrong in this chunk: the sequential check names the entry and the reason.
        if k > 0:
            state.prev_line = read_lines(path, table[k - 1])[-1]
        following = table[k + 1] if k + 1 < len(table) else None
        lines = read_lines(path, chunk)

        def peek(nxt: Chunk | None = following) -> bytes | None:
            return read_lines(path, nxt)[0] if nxt else None

        leaves = check_chunk(state, lines, peek)
        yield chunk.start, len(lines), leaves, None
    source.seek(end)
    reader.skip_to_rest()


def _check_no_more_entries(note: bytes, size: int) -> None:
    """A note begins with the log's origin; an entry line where it should begin means the export holds
    more entries than its header announces."""
    first = note.split(b"\n", 1)[0]
    if first.startswith(b"{") and parse_entry(first) is not None:
        raise AuditIntegrityError(
            "size_mismatch",
            f"the export announces {size} entries, but entry {size} follows them where the checkpoint "
            "should begin",
            index=size,
            expected="the checkpoint",
            found=f"entry {size}",
        )


def _check_checkpoint(cp: Checkpoint, origin: str, size: int, root: bytes) -> None:
    if cp.origin != origin:
        raise AuditIntegrityError(
            "checkpoint_origin", "checkpoint is of another log", expected=origin, found=cp.origin
        )
    if cp.size != size:
        reason = "truncated" if size < cp.size else "size_mismatch"
        raise AuditIntegrityError(
            reason,
            f"the signed checkpoint covers {cp.size} entries but the export holds {size}",
            index=min(size, cp.size),
            expected=str(cp.size),
            found=str(size),
        )
    if cp.root != root:
        raise AuditIntegrityError(
            "root_mismatch",
            "the entries do not hash to the signed root (an entry was changed, possibly with every later "
            "hash recomputed)",
            expected=cp.root.hex(),
            found=root.hex(),
        )


def _check_grew(kept: OpenedCheckpoint, current: OpenedCheckpoint, snapshot: bytes | None) -> None:
    old, new = kept.checkpoint, current.checkpoint
    if old.size > new.size:
        raise AuditIntegrityError(
            "rollback",
            f"the log was rolled back below the kept checkpoint of size {old.size}",
            index=new.size,
            expected=f"size >= {old.size}",
            found=str(new.size),
        )
    if snapshot != old.root:
        raise AuditIntegrityError(
            "fork",
            f"the export's first {old.size} entries do not match the kept signed checkpoint: the log "
            "signed two histories",
            index=None,
            expected=old.root.hex(),
            found=snapshot.hex() if snapshot else None,
            fork=ForkEvidence(kept.text, current.text),
        )


def _check_witnesses(
    note: bytes,
    keys: list[VerifierKey],
    min_witnesses: int,
    now: float | None,
    origin: str,
    log_key: VerifierKey,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names of the witnesses counted, and why each other verified cosignature was not.

    A site's own witness never counts for its own log: an operator who rewrote history could cosign the
    forged checkpoint with it. A cosignature dated in the future is not counted either; it does not make
    the log less intact (a witness's clock is its own), but it vouches for nothing yet. Witnesses are
    counted by public key: one key trusted under two names is one witness (cosignature/v1 does not commit
    to the name, so either name's line can be made from the other's)."""
    if not keys and min_witnesses <= 0:
        return (), ()
    parsed = parse_note(note)
    try:
        verified = verify_cosignatures(parsed, keys)
    except SignatureError as exc:
        raise AuditIntegrityError("cosignature", f"witness cosignature check failed: {exc}") from None
    limit = (time.time() if now is None else now) + MAX_CLOCK_SKEW_S
    own = {public_key_bytes(log_key.public_key)}
    own.update(public_key_bytes(k.public_key) for k in keys if k.name == origin + OWN_WITNESS_SUFFIX)
    counted: dict[bytes, str] = {}  # by public key: cosignature/v1 does not commit to the witness's name
    skipped: list[str] = []
    for key in verified:
        public = public_key_bytes(key.public_key)
        if key.name == origin + OWN_WITNESS_SUFFIX or public in own:
            skipped.append(f"{key.name}: the log's own witness (a site never witnesses its own log)")
            continue
        stamps = [
            int.from_bytes(sig.signature[:8], "big")
            for sig in parsed.signatures
            if (sig.name, sig.key_id) == (key.name, key.key_id)
        ]
        if any(stamp > limit for stamp in stamps):
            skipped.append(f"{key.name}: dated {max(stamps)}, more than {MAX_CLOCK_SKEW_S} s in the future")
            continue
        if public in counted:
            skipped.append(f"{key.name}: the same key as {counted[public]} (one witness counts once)")
            continue
        counted[public] = key.name
    names = tuple(sorted(counted.values()))
    if len(names) < min_witnesses:
        not_counted = f"; not counted: {'; '.join(skipped)}" if skipped else ""
        raise AuditIntegrityError(
            "witnesses",
            f"{len(names)} known witness(es) cosigned, {min_witnesses} required{not_counted}",
            expected=str(min_witnesses),
            found=str(len(names)),
        )
    return names, tuple(skipped)


def find_fork(first: str | bytes, second: str | bytes, log_key: str | VerifierKey) -> ForkEvidence | None:
    """Fork evidence when both notes are validly signed checkpoints of one size with different roots."""
    key = _key(log_key)
    a = _open(first, key, "checkpoint").checkpoint
    b = _open(second, key, "checkpoint").checkpoint
    if a.origin == b.origin and a.size == b.size and a.root != b.root:
        as_text = [x.decode() if isinstance(x, bytes) else x for x in (first, second)]
        return ForkEvidence(as_text[0], as_text[1])
    return None
