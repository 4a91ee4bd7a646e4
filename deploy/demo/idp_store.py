"""What the development OpenID provider knows: demo accounts, the one client, and in-memory codes and tokens.

The classes implement authlib's model mixins (RFC 6749 client, code and token; OIDC Core code with nonce and
auth_time) and import no web framework. The store is locked because werkzeug's threaded server shares it.
"""

from __future__ import annotations

import hmac
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, scope_to_list
from authlib.oidc.core import AuthorizationCodeMixin

DEMO_PASSWORD = "demo"
SCOPES = ("openid", "profile", "email", "groups")
TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
#: RFC 6749 §4.1.2 recommends at most ten minutes for an authorization code.
CODE_LIFETIME_SECONDS = 600


@dataclass(frozen=True)
class Account:
    """A demo agent. ``sub`` is derived from the username, so it is stable across restarts (OIDC Core §2)."""

    username: str
    name: str
    groups: tuple[str, ...]

    @property
    def sub(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:channelgate-demo:agent:{self.username}"))

    @property
    def email(self) -> str:
        return f"{self.username}@example.org"

    def claims(self, scope: str) -> dict[str, Any]:
        """The claims the granted ``scope`` releases (OIDC Core §5.4); ``groups`` is this demo's own scope."""
        scopes = set(scope_to_list(scope) or ())
        claims: dict[str, Any] = {"sub": self.sub}
        if "profile" in scopes:
            claims.update(preferred_username=self.username, name=self.name)
        if "email" in scopes:
            claims.update(email=self.email, email_verified=True)
        if "groups" in scopes:
            claims["groups"] = list(self.groups)
        return claims


ACCOUNTS: dict[str, Account] = {
    account.username: account
    for account in (
        Account("alice", "Alice Agent", ("chat-agents", "phone-agents", "mail-agents", "supervisors")),
        Account("bob", "Bob Agent", ("chat-agents",)),
        Account("carol", "Carol Agent", ("phone-agents", "mail-agents", "security-reviewers")),
    )
}


def check_password(username: str, password: str) -> Account | None:
    """The account if the password is right; compared in constant time, like a real provider would."""
    account = ACCOUNTS.get(username)
    if account is None or not hmac.compare_digest(password.encode(), DEMO_PASSWORD.encode()):
        return None
    return account


def account_by_sub(sub: str) -> Account | None:
    return next((account for account in ACCOUNTS.values() if account.sub == sub), None)


@dataclass(frozen=True)
class Client(ClientMixin):  # type: ignore[misc]
    """The gateway, a confidential client (RFC 6749 §2.1) registered with exact redirect URIs (RFC 9700 §4.1.1)."""

    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]

    @property
    def client_metadata(self) -> dict[str, Any]:
        return {"post_logout_redirect_uris": list(self.post_logout_redirect_uris)}

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str | None) -> str:
        return " ".join(s for s in scope_to_list(scope) or () if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in TOKEN_AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass(frozen=True)
class AuthorizationCode(AuthorizationCodeMixin):  # type: ignore[misc]
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    sub: str
    nonce: str | None
    auth_time: int
    code_challenge: str
    code_challenge_method: str
    issued_at: float = field(default_factory=time.time)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def is_expired(self) -> bool:
        return time.time() - self.issued_at > CODE_LIFETIME_SECONDS


@dataclass(frozen=True)
class Token(TokenMixin):  # type: ignore[misc]
    access_token: str
    client: Client
    scope: str
    sub: str
    expires_in: int
    issued_at: float = field(default_factory=time.time)

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return False

    def get_user(self) -> Account | None:
        return account_by_sub(self.sub)

    def get_client(self) -> Client:
        return self.client


class MemoryStore:
    """Codes, tokens and seen nonces, in memory. Codes are single-use (RFC 6749 §4.1.2): ``pop_code`` removes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._codes: dict[str, AuthorizationCode] = {}
        self._tokens: dict[str, Token] = {}
        self._nonces: set[tuple[str, str]] = set()

    def save_code(self, code: AuthorizationCode) -> None:
        with self._lock:
            self._codes[code.code] = code
            if code.nonce:
                self._nonces.add((code.client_id, code.nonce))

    def find_code(self, code: str, client_id: str) -> AuthorizationCode | None:
        with self._lock:
            found = self._codes.get(code)
        if found is None or found.client_id != client_id or found.is_expired():
            return None
        return found

    def delete_code(self, code: str) -> None:
        with self._lock:
            self._codes.pop(code, None)

    def nonce_seen(self, client_id: str, nonce: str) -> bool:
        """Whether a code was already issued for this nonce (OIDC Core §3.1.2.1: a nonce is used once)."""
        with self._lock:
            return (client_id, nonce) in self._nonces

    def save_token(self, token: Token) -> None:
        with self._lock:
            self._tokens[token.access_token] = token

    def find_token(self, access_token: str) -> Token | None:
        with self._lock:
            return self._tokens.get(access_token)
