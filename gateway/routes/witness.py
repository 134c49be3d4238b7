"""`/v1/witness`: the C2SP tlog-witness `add-checkpoint` endpoint for peers' logs, and a steward's trigger.

`add-checkpoint` takes no bearer token: the witness cosigns only checkpoints its registered peers' log
keys signed and that extend what it cosigned before, so a stranger can at most ask it to repeat a
cosignature the log could ask for anyway. Answers are the protocol's text/plain bodies, never
problem+json.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from audit.errors import MalformedRequest, OldSizeMismatch, WitnessError
from gateway import problems
from gateway.deps import RuntimeDep, StewardDep
from gateway.federation.witnessing import MAX_BODY_BYTES
from gateway.routes.bodies import WitnessSubmissions

router = APIRouter(prefix="/v1/witness", tags=["witness"])


def _documented_responses() -> dict[str, dict[str, Any]]:
    """The refusal statuses for the OpenAPI page, named by the witness rules that produce them."""
    names: dict[str, list[str]] = {}
    for error, status in problems.WITNESS_STATUS.items():
        names.setdefault(str(int(status)), []).append(error.__name__)
    responses: dict[str, dict[str, Any]] = {
        code: {"description": " or ".join(errors)} for code, errors in names.items()
    }
    conflict = str(int(problems.WITNESS_STATUS[OldSizeMismatch]))
    responses[conflict] = {
        "description": "OldSizeMismatch: the size this witness last cosigned, then a newline",
        "content": {problems.TLOG_SIZE: {"schema": {"type": "string"}}},
    }
    return responses


async def _bounded_body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise MalformedRequest(f"body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/add-checkpoint",
    summary="C2SP tlog-witness add-checkpoint: cosign a peer's checkpoint that extends the last one cosigned",
    response_class=PlainTextResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "`old <size>`, up to 63 base64 consistency-proof lines, an empty line, then the "
            "peer's signed checkpoint",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        "responses": _documented_responses(),
    },
)
async def add_checkpoint(request: Request, runtime: RuntimeDep) -> Response:
    try:
        body = await _bounded_body(request)
        lines = await runtime.witnessing.add_checkpoint(body)
    except WitnessError as exc:
        return problems.witness_response(exc)
    return PlainTextResponse(lines, status_code=int(problems.OK))


@router.post(
    "/submissions",
    summary="Sign a checkpoint now and offer it to every peer witness; the per-peer outcome",
    responses={
        **problems.AUTHENTICATED,
        **problems.documented(ok=("the outcome of each offer, and each peer's progress", WitnessSubmissions)),
    },
)
async def submit(_: StewardDep, runtime: RuntimeDep) -> dict[str, Any]:
    outcomes = await runtime.witnessing.submit_now()
    return {"outcomes": [o.as_dict() for o in outcomes], "peers": runtime.witnessing.status()}
