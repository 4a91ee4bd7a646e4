"""The signed identity assertion sent upstream, so a console can trust who the agent is.

A short-lived JWT (RFC 7519) signed with ES256 or RS256 through python-jose, with ``kid`` = the RFC 7638 JWK
thumbprint; the public keys are served at ``/.channelgate/jwks.json``. The first configured key signs; the others
stay published so tokens signed before a rotation keep verifying until they expire. Signing is on the hot path of
every proxied request and costs ~40 µs (ES256) to ~290 µs (RS256) per token, so a token is reused for the same
agent, name, groups and channel until half its lifetime has passed (~0.3 µs): a console sees at most
``lifetime / 2`` of reuse per ``jti``, and always at least ``lifetime / 2`` of validity left.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections import OrderedDict
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jwt

from gateway.errors import ConfigError
from gateway.settings import AssertionSettings

_CACHE_SIZE = 10_000
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}


def _thumbprint(public: dict[str, Any]) -> str:
    """RFC 7638 §3: SHA-256 over the required members, lexicographically ordered, no whitespace."""
    members = {name: public[name] for name in _THUMBPRINT_MEMBERS[public["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _check_key(private: Any, algorithm: str, where: str) -> None:
    if algorithm == "ES256":
        if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
            raise ConfigError(f"assertion key {where}: ES256 needs an EC P-256 private key")
    elif not isinstance(private, rsa.RSAPrivateKey) or private.key_size < 2048:
        raise ConfigError(f"assertion key {where}: RS256 needs an RSA private key of at least 2048 bits")


class AssertionSigner:
    """Signs identity assertions with the first configured key and publishes every configured public key."""

    def __init__(self, settings: AssertionSettings, issuer: str) -> None:
        self._algorithm = settings.algorithm
        self._issuer = issuer
        self._lifetime = settings.lifetime_seconds
        pems: list[tuple[str, bytes]] = [
            (f"private_keys[{index}]", secret.get_secret_value().encode())
            for index, secret in enumerate(settings.private_keys)
        ]
        for path in settings.private_key_files:
            try:
                pems.append((str(path), Path(path).read_bytes()))
            except OSError as exc:
                raise ConfigError(f"assertion key file {path} cannot be read: {exc.strerror}") from None
        self._ephemeral = not pems
        if self._ephemeral:
            generated: Any = (
                ec.generate_private_key(ec.SECP256R1())
                if self._algorithm == "ES256"
                else rsa.generate_private_key(65537, 2048)
            )
            pems.append(
                (
                    "ephemeral",
                    generated.private_bytes(
                        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                    ),
                )
            )
        self._keys: list[tuple[str, Any, dict[str, Any]]] = []
        for where, pem in pems:
            try:
                private = serialization.load_pem_private_key(pem, password=None)
            except (ValueError, TypeError):
                raise ConfigError(f"assertion key {where} is not an unencrypted PEM private key") from None
            _check_key(private, self._algorithm, where)
            signing_key = jwk.construct(pem.decode(), self._algorithm)
            public = signing_key.public_key().to_dict()
            public = {k: v for k, v in public.items() if k in _THUMBPRINT_MEMBERS[public["kty"]]}
            kid = _thumbprint(public)
            if any(kid == known for known, _, _ in self._keys):
                raise ConfigError(f"assertion key {where} is configured twice (kid {kid})")
            public.update(kid=kid, use="sig", alg=self._algorithm)
            self._keys.append((kid, signing_key, public))
        self._cache: OrderedDict[tuple[str, str, str, frozenset[str]], tuple[str, float, float]] = OrderedDict()

    @property
    def ephemeral(self) -> bool:
        """True when no key is configured: each replica signs with its own key, so a console fetching one
        replica's JWKS cannot verify another's tokens. Multi-replica setups must configure keys."""
        return self._ephemeral

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @property
    def kid(self) -> str:
        """The signing key's RFC 7638 thumbprint."""
        return self._keys[0][0]

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """Public keys only (the members of RFC 7638 plus kid/use/alg): never a private member."""
        return {"keys": [dict(public) for _, _, public in self._keys]}

    def sign(self, agent_id: str, user_name: str, groups: frozenset[str], channel: str, now: float) -> str:
        """A JWT for ``channel`` only (``aud``), so a console cannot replay it against another one."""
        key = (agent_id, user_name, channel, groups)
        cached = self._cache.get(key)
        # Reused only inside [issued, issued + lifetime/2): a clock stepped back gets a fresh token, not one "from
        # the future" that a console would refuse as not yet valid (nbf).
        if cached is not None and cached[1] <= now < cached[2]:
            return cached[0]
        kid, signing_key, _ = self._keys[0]
        issued = int(now)
        claims = {
            "iss": self._issuer,
            "sub": agent_id,
            "aud": channel,
            "iat": issued,
            "nbf": issued,
            "exp": issued + self._lifetime,
            "jti": secrets.token_urlsafe(12),
            "preferred_username": user_name,
            "groups": sorted(groups),
        }
        token: str = jwt.encode(claims, signing_key, algorithm=self._algorithm, headers={"kid": kid, "typ": "JWT"})
        self._cache[key] = (token, now, now + self._lifetime / 2)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return token
