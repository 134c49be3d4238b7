"""Reading a peer gateway's answer: bounded in size, and its reasons taken whatever it sent. Shared by the
federated queries' coordinator, the federated GLM's client and the witness submitter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_ANSWER_BYTES = 16 * 2**20
"""The most of a peer's answer a site reads: a released table of four group columns, or a GLM iteration's
matrices, is far smaller."""
TOO_LARGE = f"the answer is larger than {MAX_ANSWER_BYTES // 2**20} MiB"


async def read_capped(
    client: Any,
    method: str,
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    timeout: float | None = None,
    limit: int = MAX_ANSWER_BYTES,
) -> tuple[int, bytes | None]:
    """Send a request on `client` (an httpx.AsyncClient) and read the answer: its status and body, or None
    for a body past `limit` bytes, read no further (a peer cannot make a site hold an answer of any size).
    `timeout` is each read's (the client's own without it); the caller bounds the whole exchange."""
    extra = {} if timeout is None else {"timeout": timeout}
    request = client.build_request(method, url, content=content, headers=headers, **extra)
    response = await client.send(request, stream=True)
    try:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                return response.status_code, None
            chunks.append(chunk)
        return response.status_code, b"".join(chunks)
    finally:
        await response.aclose()


def peer_reasons(data: Any, otherwise: str) -> list[str]:
    """A peer's reasons as text, whatever it sent: its list of reasons, or its title, or `otherwise`
    (at most 20, each cut at 2,000 characters)."""
    given = data.get("reasons") if isinstance(data, dict) else None
    if isinstance(given, list) and given:
        return [str(r)[:2000] for r in given][:20]
    title = data.get("title") if isinstance(data, dict) else None
    return [str(title)[:2000] if title else otherwise]
