"""Rendering the console's pages, with the strict headers every console response carries.

Templates are autoescaped (Jinja2 ``select_autoescape(default=True)``): userNames, paths and reasons from the
access log are attacker-influenced text and must render as text. The Content-Security-Policy allows scripts and
styles from the gateway's own origin only, so even an escaping mistake could not run an injected script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse

from gateway.settings import Settings

_env = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parents[1] / "templates"),
    autoescape=select_autoescape(default=True),
)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: HSTS for two years (RFC 6797 §6.1), sent only over an https public URL (browsers ignore it over http).
HSTS = "max-age=63072000; includeSubDomains"


def security_headers(settings: Settings) -> dict[str, str]:
    """The headers of every console response (ASVS 3.4): CSP, no sniffing, no referrer, no caching, no framing."""
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
    if str(settings.server.public_url).startswith("https://"):
        headers["Strict-Transport-Security"] = HSTS
    return headers


def page(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A console page; the console's ASGI wrapper adds the security headers to it (and to every other answer)."""
    return HTMLResponse(_env.get_template(f"console/{name}").render(**context), status_code=status_code)
