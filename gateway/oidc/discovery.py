"""OpenID Provider discovery (OIDC Discovery 1.0 §4) and the provider's signing keys.

The metadata's ``issuer`` must equal the configured issuer exactly (OIDC Discovery §4.3, ASVS 10.5.3): a prefix
or suffix match is how CVE-2024-53861 accepted a look-alike issuer. Keys are re-read when an ID token names an
unknown ``kid`` (key rotation), at most once per ``refresh_interval`` so a forged ``kid`` cannot make us hammer
the provider.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.errors import ChannelgateError


class ProviderUnavailable(ChannelgateError):
    """The OpenID provider could not be reached or sent something unusable."""

    status = 503
    code = "idp_unavailable"


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None
    token_auth_methods: tuple[str, ...]
    #: RFC 9207 §3: when true, every authorization response must carry ``iss``.
    iss_parameter_supported: bool
    signing_algorithms: tuple[str, ...]


async def _get_json(http: aiohttp.ClientSession, url: str, what: str) -> dict[str, Any]:
    try:
        async with http.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise ProviderUnavailable(f"the OpenID provider answered {response.status} for its {what}")
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ProviderUnavailable(f"the OpenID provider's {what} could not be read: {type(exc).__name__}") from exc
    if not isinstance(body, dict):
        raise ProviderUnavailable(f"the OpenID provider's {what} is not a JSON object")
    return body


async def discover(http: aiohttp.ClientSession, issuer: str) -> ProviderMetadata:
    """Fetch and check ``{issuer}/.well-known/openid-configuration``."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    raw = await _get_json(http, url, "discovery document")
    if raw.get("issuer") != issuer:
        raise ProviderUnavailable(
            f"the discovery document names issuer {raw.get('issuer')!r}, not the configured {issuer!r}; "
            "they must match exactly (OIDC Discovery §4.3)"
        )
    metadata = OpenIDProviderMetadata(raw)
    try:
        metadata.validate_authorization_endpoint()
        metadata.validate_token_endpoint()
        metadata.validate_jwks_uri()
    except ValueError as exc:
        raise ProviderUnavailable(f"the discovery document is invalid: {exc}") from exc
    if "S256" not in raw.get("code_challenge_methods_supported", ["S256"]):
        raise ProviderUnavailable("the OpenID provider does not support PKCE with S256 (RFC 7636)")
    return ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=str(raw["authorization_endpoint"]),
        token_endpoint=str(raw["token_endpoint"]),
        jwks_uri=str(raw["jwks_uri"]),
        userinfo_endpoint=raw.get("userinfo_endpoint"),
        end_session_endpoint=raw.get("end_session_endpoint"),
        token_auth_methods=tuple(raw.get("token_endpoint_auth_methods_supported", ["client_secret_basic"])),
        iss_parameter_supported=bool(raw.get("authorization_response_iss_parameter_supported", False)),
        signing_algorithms=tuple(raw.get("id_token_signing_alg_values_supported", ["RS256"])),
    )


class ProviderKeys:
    """The provider's JWKS, cached; re-read at once on the first unknown ``kid`` (a rotation), then at most
    once per interval, so forged ``kid`` values cannot turn us into a load generator against the provider."""

    def __init__(self, http: aiohttp.ClientSession, jwks_uri: str, refresh_interval: float = 10.0) -> None:
        self._http = http
        self._jwks_uri = jwks_uri
        self._refresh_interval = refresh_interval
        self._keys: KeySet | None = None
        self._forced_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key_set(self, *, refresh: bool = False) -> KeySet:
        async with self._lock:
            now = time.monotonic()
            forced = refresh and now - self._forced_at >= self._refresh_interval
            if self._keys is None or forced:
                if forced:
                    self._forced_at = now
                raw = await _get_json(self._http, self._jwks_uri, "signing keys (JWKS)")
                try:
                    # Public keys only: a JWKS that carries private or symmetric keys is refused below.
                    keys = KeySet.import_key_set(raw)  # type: ignore[arg-type]
                except (JoseError, ValueError, TypeError) as exc:
                    raise ProviderUnavailable(f"the provider's JWKS is invalid: {exc}") from exc
                if any(key.key_type == "oct" for key in keys.keys):
                    raise ProviderUnavailable("the provider's JWKS contains a symmetric key; refusing it")
                self._keys = keys
            return self._keys
