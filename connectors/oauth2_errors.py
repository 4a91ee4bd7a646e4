"""The client side of an OAuth 2.0 authorization server's answers: client authentication (RFC 6749 §2.3.1) and
error answers (§5.2) turned into a detail safe for receipts, the access log and SIEM exports."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from urllib.parse import quote_plus

from connectors.base import Outcome
from connectors.secret import Secret

#: 4xx answers that mean "not now" rather than "never" (RFC 9110 §15.5.9, §15.5.10; RFC 8470; RFC 6585 §4).
RETRY_STATUSES = frozenset({408, 409, 425, 429})
_ERROR_CODE = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}")  # RFC 6749 §5.2 "error"
_DESCRIPTION = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]{1,200}")  # RFC 6749 §5.2 "error_description"
#: An error_description repeating this many consecutive characters of anything secret we sent is withheld: an
#: echo need not be whole (a truncated token, the secret's half after a ':') to leak it.
ECHO_WINDOW = 8


class CallFailed(Exception):
    """A token, revocation or introspection call that did not succeed; ``detail`` is safe to show."""

    def __init__(self, outcome: Outcome, detail: str, code: str | None = None) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail
        self.code = code


def client_authorization(client_id: str, secret: Secret) -> str:
    """RFC 6749 §2.3.1: both parts form-urlencoded *before* Basic (RFC 7617), so a ':' in either survives."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret.reveal())}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def client_secret_forms(client_id: str, secret: Secret) -> tuple[str, ...]:
    """Every form in which the client secret travels in ``client_authorization``: raw, form-urlencoded, and as
    the Basic credentials, so an authorization server echoing any of them gets none into a receipt."""
    raw = secret.reveal()
    return raw, quote_plus(raw), client_authorization(client_id, secret).partition(" ")[2]


def repeats_any(text: str, values: Sequence[str]) -> bool:
    """Whether ``text`` holds ``ECHO_WINDOW`` consecutive characters of any of ``values`` (all of a shorter one)."""
    for value in values:
        width = min(len(value), ECHO_WINDOW)
        if width and any(value[i : i + width] in text for i in range(len(value) - width + 1)):
            return True
    return False


def token_error(
    what: str, status: int, answer: object, sent: Sequence[str], *, client_id: str, channel: str
) -> CallFailed:
    """An RFC 6749 §5.2 error as a safe, actionable detail: the server's description only if it is plain text that
    repeats no part of anything secret we ``sent`` (a hostile or careless server could echo a token or the client
    secret back, and the detail goes to receipts, the access log and SIEM exports)."""
    fields = answer if isinstance(answer, Mapping) else {}
    code = fields.get("error") if isinstance(fields.get("error"), str) else None
    code = code if code is not None and _ERROR_CODE.fullmatch(code) else None
    outcome = Outcome.RETRY if status >= 500 or status in RETRY_STATUSES else Outcome.FAILED
    if status == 401 or code == "invalid_client":
        detail = (
            f"the {what} refused the gateway's client authentication (HTTP {status} invalid_client): check "
            f"client_id {client_id!r} in [channels.{channel}] and the channel's "
            f"credential (channelgate channels set-credential {channel})"
        )
        return CallFailed(Outcome.FAILED, detail, "invalid_client")
    detail = f"the {what} answered HTTP {status}" + (f" {code}" if code else "")
    description = fields.get("error_description")
    plain = isinstance(description, str) and _DESCRIPTION.fullmatch(description) is not None
    if plain and not repeats_any(str(description), sent):
        detail += f": {description}"
    return CallFailed(outcome, detail, code)
