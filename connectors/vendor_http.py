"""One call to a channel vendor's admin or ticket API, and what its answer means for a deprovisioning step.

The pipeline's rule (docs/architecture.md): a step is RETRY when the vendor could not answer for now (no
connection, timeout, 5xx, or 408/409/425/429, which RFC 9110 §15.5.9 and §15.5.10, RFC 8470 §5.2 and RFC 6585
§4 mark as "try again"), FAILED for any other refusal, which retrying cannot fix. A description of a failure
names the HTTP status and the vendor's short error code only: never a header, a body or an exception's text,
which could carry a credential or personal data into the access log.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from connectors.base import Outcome

#: Statuses that say "not now" rather than "no".
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
#: The largest answer read from a vendor; a bigger one is treated as unreadable.
MAX_ANSWER_BYTES = 1024 * 1024
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True, slots=True)
class VendorAnswer:
    status: int
    #: The decoded JSON body, or None when there is none or it is not JSON.
    body: Any = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def outcome(self) -> Outcome:
        """DONE for 2xx, RETRY for a "not now", FAILED for a definite refusal."""
        if self.ok:
            return Outcome.DONE
        if self.status >= 500 or self.status in RETRYABLE_STATUSES:
            return Outcome.RETRY
        return Outcome.FAILED

    def field(self, name: str) -> Any:
        return self.body.get(name) if isinstance(self.body, dict) else None

    def describe(self) -> str:
        """``HTTP 409 (seat_exists)``: the status and, when it looks like one, the vendor's error code."""
        code = self.field("error")
        suffix = f" ({code})" if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else ""
        return f"HTTP {self.status}{suffix}"


@dataclass(frozen=True, slots=True)
class Unreachable:
    """No answer: the connection failed, broke, or the time limit passed. Always worth another attempt."""

    reason: str

    outcome = Outcome.RETRY

    def describe(self) -> str:
        return self.reason


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    authorization: tuple[str, str],
    json_body: Any = None,
    params: dict[str, str] | None = None,
    idempotency_key: str | None = None,
) -> VendorAnswer | Unreachable:
    """Send one request with ``authorization`` (a header name and value) and, for a state-changing call, the
    step's ``Idempotency-Key`` (draft-ietf-httpapi-idempotency-key-header), so a retry has one effect."""
    headers = {authorization[0]: authorization[1], "Accept": "application/json"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    try:
        # A redirect is an answer, never followed: following it would carry the credential to wherever it points.
        async with session.request(
            method, url, headers=headers, json=json_body, params=params, allow_redirects=False
        ) as response:
            raw = await read_capped(response.content, MAX_ANSWER_BYTES)
            status = response.status
    except TimeoutError:
        return Unreachable(f"no answer within {_limit(session)}")
    except aiohttp.ClientConnectionError as exc:
        return Unreachable(f"connection failed ({type(exc).__name__})")
    except aiohttp.ClientError as exc:
        return Unreachable(f"the answer could not be read ({type(exc).__name__})")
    body: Any = None
    if raw:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
    return VendorAnswer(status, body)


async def read_capped(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body, or None once it is longer than ``limit`` bytes (nothing past ``limit + 1`` is read).

    ``StreamReader.read(n)`` returns what is buffered, up to ``n``: an answer arriving in several reads (anything
    larger than a segment, or a server flushing as it writes) needs reads until EOF."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    return None


def _limit(session: aiohttp.ClientSession) -> str:
    total = session.timeout.total
    return f"{total:g} s" if total else "the time limit"
