"""The authorization-code flow with PKCE, state and nonce (OIDC Core §3.1, RFC 7636, RFC 9700 §2.1).

``begin`` makes the single-use request state that the callback must present; ``complete`` checks the
authorization response (state, RFC 9207 ``iss``), redeems the code with the PKCE verifier and validates the ID
token (OIDC Core §3.1.3.7) with an asymmetric algorithm allowlist. Agents are keyed on (iss, sub) (ASVS 6.8.1).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError

from gateway.errors import LoginFailed
from gateway.oidc.discovery import ProviderKeys, ProviderMetadata, ProviderUnavailable, discover
from gateway.sessions.base import PendingLogin
from gateway.settings import OidcSettings

#: Clock skew tolerated on exp/iat/nbf (seconds).
LEEWAY = 60


@dataclass(frozen=True, slots=True)
class Identity:
    """Who logged in, from a validated ID token."""

    issuer: str
    subject: str
    user_name: str
    email: str | None
    #: ``email_verified`` is exactly true (OIDC Core §5.1): only then may the email link a directory agent.
    email_verified: bool
    display_name: str | None
    groups: frozenset[str]
    idp_session_id: str | None
    acr: str | None
    amr: tuple[str, ...]
    auth_time: float | None
    id_token: str


def _fail(reason: str, message: str, detail: str | None = None) -> LoginFailed:
    return LoginFailed(message, reason=reason, detail=detail)


class OidcClient:
    """One relying party registration at one provider."""

    def __init__(self, settings: OidcSettings, redirect_uri: str, http: aiohttp.ClientSession) -> None:
        self._settings = settings
        self._issuer = settings.issuer
        self.redirect_uri = redirect_uri
        self._http = http
        self._metadata: ProviderMetadata | None = None
        self._keys: ProviderKeys | None = None
        self._lock = asyncio.Lock()

    @property
    def issuer(self) -> str:
        return self._issuer

    async def metadata(self) -> ProviderMetadata:
        async with self._lock:
            if self._metadata is None:
                self._metadata = await discover(self._http, self._issuer)
                self._keys = ProviderKeys(self._http, self._metadata.jwks_uri)
            return self._metadata

    async def begin(self, return_to: str, now: float) -> tuple[str, PendingLogin]:
        """The authorization URL and the state to keep for the callback."""
        metadata = await self.metadata()
        pending = PendingLogin(
            state=generate_token(43),
            nonce=generate_token(43),
            code_verifier=generate_token(64),
            return_to=return_to,
            created_at=now,
        )
        query = {
            "response_type": "code",
            "client_id": self._settings.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(self._settings.scopes),
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": create_s256_code_challenge(pending.code_verifier),
            "code_challenge_method": "S256",
        }
        separator = "&" if "?" in metadata.authorization_endpoint else "?"
        return metadata.authorization_endpoint + separator + urlencode(query), pending

    async def complete(self, params: Mapping[str, str], pending: PendingLogin, now: float) -> Identity:
        """Check the authorization response, redeem the code and validate the ID token."""
        metadata = await self.metadata()
        state = params.get("state", "")
        if not hmac.compare_digest(state.encode(), pending.state.encode()):
            raise _fail("state_mismatch", "This sign-in link does not belong to this browser. Please sign in again.")
        iss = params.get("iss")
        if (iss is not None or metadata.iss_parameter_supported) and iss != metadata.issuer:
            # RFC 9207 §2.4: a missing or different iss means the response may come from another provider.
            raise _fail(
                "iss_mismatch", "The sign-in response came from an unexpected identity provider.", detail=f"iss={iss!r}"
            )
        if "error" in params:
            raise _fail(
                "provider_error", "The identity provider did not sign you in.", detail=f"error={params.get('error')!r}"
            )
        code = params.get("code")
        if not code:
            raise _fail("missing_code", "The sign-in response carried no authorization code.")
        tokens = await self._redeem(metadata, code, pending.code_verifier)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise _fail("missing_id_token", "The identity provider returned no ID token.")
        claims = await self._validate_id_token(id_token, pending.nonce, now)
        return self._identity(claims, id_token)

    async def _redeem(self, metadata: ProviderMetadata, code: str, verifier: str) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }
        headers = {"Accept": "application/json"}
        secret = self._settings.client_secret.get_secret_value()
        if "client_secret_basic" in metadata.token_auth_methods:
            # RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
            pair = f"{quote(self._settings.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form.update(client_id=self._settings.client_id, client_secret=secret)
        try:
            async with self._http.post(
                metadata.token_endpoint, data=form, headers=headers, allow_redirects=False
            ) as response:
                body = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ProviderUnavailable(f"the token endpoint could not be reached: {type(exc).__name__}") from exc
        if status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise _fail(
                "token_error",
                "The identity provider refused to complete the sign-in. Please try again.",
                detail=f"token endpoint status={status} error={error!r}",
            )
        return body

    async def verify_signature(self, token: str) -> jwt.Token:
        """The JWT, its signature checked against the provider's keys with the algorithm allowlist (no ``none``,
        no HMAC); an unknown ``kid`` re-reads the JWKS once (rotation). Raises joserfc's ``JoseError``."""
        if self._keys is None:
            await self.metadata()
        assert self._keys is not None
        algorithms = list(self._settings.allowed_algorithms)
        try:
            return jwt.decode(token, await self._keys.key_set(), algorithms=algorithms)
        except InvalidKeyIdError:
            # The provider may have rotated its keys since we last read them.
            return jwt.decode(token, await self._keys.key_set(refresh=True), algorithms=algorithms)

    @property
    def client_id(self) -> str:
        return self._settings.client_id

    async def _validate_id_token(self, id_token: str, nonce: str, now: float) -> dict[str, Any]:
        """Validate the ID token (OIDC Core §3.1.3.7); the nonce binds it to this login, so a replay fails."""
        try:
            token = await self.verify_signature(id_token)
        except JoseError as exc:
            raise _fail(
                "invalid_id_token",
                "The identity provider's ID token could not be verified.",
                detail=f"{type(exc).__name__}: {exc}",
            ) from exc
        if token.header.get("crit"):
            raise _fail("invalid_id_token", "The ID token uses critical extensions we do not understand.")
        claims = CodeIDToken(
            token.claims,
            token.header,
            options={
                "iss": {"essential": True, "value": self._issuer},
                "aud": {"essential": True, "value": self._settings.client_id},
                "sub": {"essential": True},
            },
            params={"nonce": nonce, "client_id": self._settings.client_id},
        )
        try:
            claims.validate(now=int(now), leeway=LEEWAY)
        except JoseError as exc:
            raise _fail(
                "invalid_id_token",
                "The identity provider's ID token is not valid for this sign-in.",
                detail=f"{type(exc).__name__}: {exc}",
            ) from exc
        if claims["aud"] not in (self._settings.client_id, [self._settings.client_id]):
            # §3.1.3.7 step 3: refuse a token that also names audiences we do not trust (ASVS 10.5.4).
            raise _fail(
                "invalid_id_token", "The ID token was issued to other parties too.", detail=f"aud={claims['aud']!r}"
            )
        return dict(claims)

    def _identity(self, claims: dict[str, Any], id_token: str) -> Identity:
        username_claim = self._settings.username_claim
        user_name = claims.get(username_claim)
        if not isinstance(user_name, str) or not user_name.strip():
            raise _fail("missing_username", f"The ID token carries no {username_claim!r} claim to name you by.")
        if username_claim == "email" or "@" in user_name:
            # CVE-2026-40574: "a@evil@corp.com" must not be read as a corp.com address.
            if user_name.count("@") > 1:
                raise _fail("invalid_username", "Your account name is not a valid address.")
            if username_claim == "email" and claims.get("email_verified") is not True:
                raise _fail("unverified_email", "Your e-mail address is not verified at the identity provider.")
        raw_groups = claims.get(self._settings.groups_claim, [])
        groups = frozenset(g for g in raw_groups if isinstance(g, str)) if isinstance(raw_groups, list) else frozenset()
        amr = claims.get("amr")
        email = claims.get("email")
        name = claims.get("name")
        auth_time = claims.get("auth_time")
        sid = claims.get("sid")
        acr = claims.get("acr")
        return Identity(
            issuer=self._issuer,
            subject=str(claims["sub"]),
            user_name=user_name.strip(),
            email=email if isinstance(email, str) else None,
            email_verified=claims.get("email_verified") is True,
            display_name=name if isinstance(name, str) else None,
            groups=groups,
            idp_session_id=sid if isinstance(sid, str) else None,
            acr=acr if isinstance(acr, str) else None,
            amr=tuple(a for a in amr if isinstance(a, str)) if isinstance(amr, list) else (),
            auth_time=float(auth_time) if isinstance(auth_time, int | float) else None,
            id_token=id_token,
        )

    async def logout_url(self, id_token: str | None, post_logout_redirect_uri: str) -> str | None:
        """RP-initiated logout (OIDC RP-Initiated Logout 1.0 §2), or None if the provider has none."""
        try:
            metadata = await self.metadata()
        except ProviderUnavailable:
            return None
        if not metadata.end_session_endpoint:
            return None
        query = {"client_id": self._settings.client_id, "post_logout_redirect_uri": post_logout_redirect_uri}
        if id_token:
            query["id_token_hint"] = id_token
        separator = "&" if "?" in metadata.end_session_endpoint else "?"
        return metadata.end_session_endpoint + separator + urlencode(query)
