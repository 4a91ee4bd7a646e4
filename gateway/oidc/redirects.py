"""Post-login redirect targets: same-origin relative paths only (RFC 9700 §2.1: no open redirectors).

Each refusal below answers a real bypass of another proxy: ``//evil`` and ``/\\evil`` are protocol-relative
URLs to browsers (oauth2-proxy CVE-2020-5233), tabs/newlines are stripped by browsers before parsing
(CVE-2020-11053), ``@`` and schemes turn a path into a host (CVE-2026-7504), and ``..;/`` walks out of the app
on some servlet containers (Keycloak CVE-2026-3872). Anything doubtful falls back to ``/``.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

FALLBACK = "/"
_MAX_LENGTH = 2048


def safe_return_to(candidate: str | None) -> str:
    """Return ``candidate`` if it is a plain same-origin path (with optional query), else ``/``."""
    if not candidate or len(candidate) > _MAX_LENGTH:
        return FALLBACK
    # Decode up to three times so double-encoded tricks are judged on what a browser finally sees.
    views = [candidate]
    for _ in range(3):
        decoded = unquote(views[-1])
        if decoded == views[-1]:
            break
        views.append(decoded)
    for view in views:
        if not view.startswith("/") or view.startswith(("//", "/\\")):
            return FALLBACK
        if any(ord(ch) < 0x21 or ch in "\\@\x7f" for ch in view):
            return FALLBACK
        if "/.." in view or ";" in view:
            return FALLBACK
        parts = urlsplit(view)
        if parts.scheme or parts.netloc:
            return FALLBACK
    if candidate.startswith("/.channelgate/callback") or candidate.startswith("/.channelgate/login"):
        return FALLBACK
    return candidate
