"""Reading the small bodies that identity providers push to the gateway (logout tokens, security events).

Both endpoints take one token of a few hundred bytes from a server, not a browser: the media type is checked
before anything is read, and the body is read only up to ``max_bytes``, so a large or endless upload costs at
most that much memory before it is refused.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_small_body(
    request: Request, *, expected_type: str, max_bytes: int, refuse: Callable[[str], Exception]
) -> bytes:
    """The whole body, or ``refuse(message)`` raised for another media type or a body over ``max_bytes``."""
    if media_type(request) != expected_type:
        raise refuse(f"send it as {expected_type}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise refuse(f"the request body is larger than {max_bytes} bytes")
    return body
