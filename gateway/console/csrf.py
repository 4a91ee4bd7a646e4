"""Cross-site request forgery defences for the console's state-changing requests (POST only).

Two independent checks, as the OWASP CSRF Prevention Cheat Sheet recommends:

1. Fetch metadata and origin: a browser says where a request came from (``Sec-Fetch-Site``, W3C Fetch Metadata;
   ``Origin``, RFC 6454 §7). Anything but same-origin is refused before the body is read.
2. A synchronizer token bound to the session: HMAC-SHA256 over the session id with a server key, sent in a
   hidden form field. Another site cannot read it (same-origin policy) and a token of another session does not
   verify. The key is derived (HKDF, RFC 5869) from the vault's active key, which every replica shares, so a
   page served by one replica posts to any other.

The session cookie is also ``SameSite=Lax`` (``gateway/sessions/cookies.py``): a third layer, not relied upon.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import AccessDenied
from gateway.settings import Settings

#: The hidden form field carrying the token.
FIELD = "csrf_token"
_INFO = b"channelgate console csrf v1"
#: Without a vault key the token key is this process's own: fine for one replica, not for several.
_PROCESS_KEY = secrets.token_bytes(32)


class CsrfRejected(AccessDenied):
    """A state-changing request that did not come from the console's own page."""

    code = "csrf_rejected"


def csrf_key(settings: Settings) -> bytes:
    """The server key of the tokens: derived from the vault's active key, else a per-process key."""
    vault = settings.vault
    if vault.active_key is None or vault.active_key not in vault.keys:
        return _PROCESS_KEY
    material = vault.keys[vault.active_key].get_secret_value().encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(material)


def token_for(key: bytes, session_id: str) -> str:
    """The session's token (the raw id never leaves the server: only this one-way MAC of it is in the page)."""
    mac = hmac.new(key, b"session\x00" + session_id.encode("ascii", "replace"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lower-cased, default ports dropped (RFC 6454 §6.1)."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    default = {"http": 80, "https": 443}.get(scheme)
    port = parts.port
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


def refuse_cross_site(headers: Mapping[str, str], public_origin: str) -> None:
    """Raise unless the browser's own metadata says the request came from the console's origin.

    ``Sec-Fetch-Site`` decides when present: every current browser sends it and a page cannot forge it. Without
    it, ``Origin`` must be the public origin. (``Origin`` alone cannot decide: under ``Referrer-Policy:
    no-referrer``, which the console sends, Chromium sends ``Origin: null`` even on same-origin form posts.)
    A client that sends neither (not a browser) is left to the token check.
    """
    site = headers.get("sec-fetch-site")
    if site is not None:
        if site != "same-origin":
            raise CsrfRejected(
                f"This request came from another site (Sec-Fetch-Site: {site[:40]}) and was refused. "
                "Use the console's own buttons."
            )
        return
    origin = headers.get("origin")
    if origin is not None and (origin == "null" or origin_of(origin) != public_origin):
        raise CsrfRejected(
            "This request came from another origin and was refused. Open the console at its own address "
            f"({public_origin}) and use its buttons."
        )


def check_token(key: bytes, session_id: str, presented: str | None) -> None:
    """Raise unless ``presented`` is this session's token (compared in constant time)."""
    if not presented:
        raise CsrfRejected("The form's security token is missing. Reload the page and try again.")
    if not hmac.compare_digest(presented.encode("ascii", "replace"), token_for(key, session_id).encode("ascii")):
        raise CsrfRejected("The form's security token is not valid for your session. Reload the page and try again.")
