"""The gateway's cookies (ASVS 3.3): ``__Host-`` prefixed, Secure, HttpOnly, SameSite=Lax, Path=/, no Domain.

The ``__Host-`` prefix makes browsers refuse the cookie unless it is Secure, host-only and Path=/ (RFC 6265bis
§4.1.3.2), so a sibling subdomain cannot plant or overwrite it. The documented development switch
``server.insecure_dev_cookies`` (loopback only) drops ``Secure`` and therefore the prefix, for plain-HTTP demos.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.responses import Response


@dataclass(frozen=True, slots=True)
class CookiePolicy:
    secure: bool

    @property
    def session_name(self) -> str:
        return "__Host-channelgate" if self.secure else "channelgate"

    @property
    def login_name(self) -> str:
        """Binds a pending OIDC login (state, nonce, PKCE verifier) to this browser (ASVS 10.1.2)."""
        return "__Host-channelgate-login" if self.secure else "channelgate-login"

    @property
    def names(self) -> frozenset[str]:
        return frozenset({self.session_name, self.login_name})

    def set(self, response: Response, name: str, value: str, max_age: int | None) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", secure=self.secure, httponly=True, samesite="lax")

    def clear(self, response: Response, name: str) -> None:
        response.delete_cookie(name, path="/", secure=self.secure, httponly=True, samesite="lax")
