"""`/v1/audit`: what an auditor needs to check the site's log — checkpoint, entries, proofs, export."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

from audit.errors import StorageError
from gateway.deps import AuditorDep, RuntimeDep
from gateway.problems import AUTHENTICATED, documented
from gateway.refusal import Refusal
from gateway.routes.bodies import AuditEntries, ConsistencyProof, InclusionProof

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=AUTHENTICATED)
MAX_ENTRIES = 1000


def _b64(items: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in items]


class _Binary(Response):
    """A body of bytes, so documented (the export)."""

    media_type = "application/octet-stream"


@router.get(
    "/checkpoint",
    summary="The latest signed checkpoint with its cosignatures (signed-note text)",
    response_class=PlainTextResponse,
)
async def checkpoint(_: AuditorDep, runtime: RuntimeDep) -> PlainTextResponse:
    size = await asyncio.to_thread(lambda: runtime.audit.size)
    await asyncio.to_thread(runtime.audit.checkpoint)
    note = await asyncio.to_thread(runtime.audit.checkpoint_note, size)
    return PlainTextResponse(note or await asyncio.to_thread(runtime.audit.checkpoint))


@router.get(
    "/entries",
    summary="Stored entries start ≤ index < end (at most 1000; end defaults to the next 1000 or the log's "
    "size), base64 of the hashed bytes",
    responses=documented(
        ok=("the log's size and the entries of the range", AuditEntries),
        bad_request="the range is outside the log or longer than 1000 entries",
    ),
)
async def entries(
    _: AuditorDep, runtime: RuntimeDep, start: int = 0, end: int | None = None
) -> dict[str, Any]:
    size = await asyncio.to_thread(lambda: runtime.audit.size)
    end = min(size, max(start, 0) + MAX_ENTRIES) if end is None else end  # a page, however large the log
    if not 0 <= start <= end <= size or end - start > MAX_ENTRIES:
        raise Refusal(
            "bad_request",
            "Invalid range",
            [f"need 0 ≤ start ≤ end ≤ {size} and at most {MAX_ENTRIES} entries"],
            field="start" if not 0 <= start <= size else "end",
        )  # fmt: skip
    rows = await asyncio.to_thread(runtime.audit.entries, start, end)
    return {
        "size": size,
        "entries": [
            {"index": e.index, "entry": base64.b64encode(e.data).decode(), "leaf_hash": e.leaf_hash.hex()}
            for e in rows
        ],
    }


@router.get(
    "/proofs/inclusion",
    summary="RFC 9162 inclusion proof of entry `index` in the tree of `size`",
    responses=documented(
        ok=("the proof and the root it leads to", InclusionProof),
        bad_request="no such entry or tree size",
    ),
)
async def inclusion(_: AuditorDep, runtime: RuntimeDep, index: int, size: int) -> dict[str, Any]:
    try:
        proof = await asyncio.to_thread(runtime.audit.inclusion_proof, index, size)
        root = await asyncio.to_thread(runtime.audit.root, size)
    except StorageError as exc:
        logged = await asyncio.to_thread(lambda: runtime.audit.size)
        field = "size" if not 0 <= size <= logged else "index"
        raise Refusal("bad_request", "No such proof", [str(exc)], field=field) from None
    return {"index": index, "size": size, "root": base64.b64encode(root).decode(), "proof": _b64(proof)}


@router.get(
    "/proofs/consistency",
    summary="RFC 9162 consistency proof from size `old` to size `new` (empty from size 0, which every tree "
    "extends, and between equal sizes)",
    responses=documented(
        ok=("the proof between the two sizes", ConsistencyProof),
        bad_request="the sizes are not 0 ≤ old ≤ new ≤ the log's size",
    ),
)
async def consistency(_: AuditorDep, runtime: RuntimeDep, old: int, new: int) -> dict[str, Any]:
    try:
        proof = await asyncio.to_thread(runtime.audit.consistency_proof, old, new)
    except StorageError as exc:
        logged = await asyncio.to_thread(lambda: runtime.audit.size)
        field = "new" if not 0 <= new <= logged else "old"
        raise Refusal("bad_request", "No such proof", [str(exc)], field=field) from None
    return {"old": old, "new": new, "proof": _b64(proof)}


@router.get(
    "/export",
    summary="The whole log up to the latest checkpoint, in the format `fedgate audit verify` reads",
    response_class=_Binary,
)
async def export(_: AuditorDep, runtime: RuntimeDep) -> Response:
    def write() -> bytes:
        runtime.audit.checkpoint()  # covers every entry so far; returns the last one if nothing is new
        buffer = io.BytesIO()
        runtime.audit.export(buffer)
        return buffer.getvalue()

    data = await asyncio.to_thread(write)
    return _Binary(data, headers={"Content-Disposition": 'attachment; filename="audit.export"'})
