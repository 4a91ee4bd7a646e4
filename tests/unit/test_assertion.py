"""The identity assertion: signed, verifiable against the published JWKS, rotatable, public keys only."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwt
from jose.exceptions import ExpiredSignatureError, JWTError
from pydantic import SecretStr

from gateway.errors import ConfigError
from gateway.proxy.assertion import AssertionSigner, _thumbprint
from gateway.settings import AssertionSettings

ISSUER = "https://gw.example.com"
NOW = 1_800_000_000.0


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _signer(*keys: str, algorithm: str = "ES256") -> AssertionSigner:
    return AssertionSigner(
        AssertionSettings(algorithm=algorithm, private_keys=tuple(SecretStr(k) for k in keys)),
        ISSUER,
    )


def _verify(token: str, signer: AssertionSigner, audience: str = "chat") -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(
        token, signer.jwks(), algorithms=["ES256", "RS256"], audience=audience, issuer=ISSUER,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )  # fmt: skip
    return claims


@pytest.mark.parametrize(
    ("algorithm", "key"),
    [("ES256", ec.generate_private_key(ec.SECP256R1())), ("RS256", rsa.generate_private_key(65537, 2048))],
)
def test_an_assertion_verifies_against_the_published_keys(algorithm: str, key: ec.EllipticCurvePrivateKey) -> None:
    signer = _signer(_pem(key), algorithm=algorithm)
    token = signer.sign("agent-1", "alice", frozenset({"b", "a"}), "chat", NOW)
    claims = _verify(token, signer)
    assert claims["sub"] == "agent-1"
    assert claims["preferred_username"] == "alice"
    assert claims["groups"] == ["a", "b"]
    assert claims["exp"] == int(NOW) + 60
    assert jwt.get_unverified_header(token)["kid"] == signer.kid
    assert jwt.get_unverified_header(token)["alg"] == algorithm


def test_an_assertion_for_one_channel_is_refused_by_another() -> None:
    signer = _signer(_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(JWTError):
        _verify(signer.sign("agent-1", "alice", frozenset(), "chat", NOW), signer, audience="phone")


def test_a_tampered_assertion_does_not_verify() -> None:
    signer = _signer(_pem(ec.generate_private_key(ec.SECP256R1())))
    header, _payload, signature = signer.sign("agent-1", "alice", frozenset(), "chat", NOW).split(".")
    forged = jwt.encode({"sub": "admin", "aud": "chat", "iss": ISSUER}, "x", algorithm="HS256").split(".")[1]
    with pytest.raises(JWTError):
        _verify(f"{header}.{forged}.{signature}", signer)


def test_a_token_with_a_flipped_signature_byte_does_not_verify() -> None:
    signer = _signer(_pem(ec.generate_private_key(ec.SECP256R1())))
    token = signer.sign("agent-1", "alice", frozenset(), "chat", NOW)
    flipped = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    with pytest.raises(JWTError):
        _verify(flipped, signer)


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
def test_a_fresh_token_passes_the_expiry_checks_and_an_old_one_fails_them(algorithm: str) -> None:
    signer = AssertionSigner(AssertionSettings(algorithm=algorithm, lifetime_seconds=60), ISSUER)
    fresh = signer.sign("agent-1", "alice", frozenset(), "chat", time.time())
    claims = jwt.decode(fresh, signer.jwks(), algorithms=[algorithm], audience="chat", issuer=ISSUER)
    assert claims["exp"] - claims["iat"] == 60
    assert claims["nbf"] == claims["iat"]
    stale = signer.sign("agent-1", "alice", frozenset(), "chat", time.time() - 120)
    with pytest.raises(ExpiredSignatureError):
        jwt.decode(stale, signer.jwks(), algorithms=[algorithm], audience="chat", issuer=ISSUER)


def test_an_assertion_signed_with_another_algorithm_than_configured_is_refused() -> None:
    signer = _signer(_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(JWTError):
        jwt.decode(signer.sign("agent-1", "alice", frozenset(), "chat", NOW), signer.jwks(), algorithms=["RS256"])


PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}  # RFC 7518 §6.2.2, §6.3.2, §6.4


@pytest.mark.parametrize(
    ("algorithm", "make", "public_members"),
    [
        ("RS256", lambda: rsa.generate_private_key(65537, 2048), {"kty", "n", "e"}),
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1()), {"kty", "crv", "x", "y"}),
    ],
)
def test_the_jwks_holds_no_private_key_material(algorithm: str, make: object, public_members: set[str]) -> None:
    signer = _signer(_pem(make()), _pem(make()), algorithm=algorithm)  # type: ignore[operator]
    keys = signer.jwks()["keys"]
    assert len(keys) == 2
    for key in keys:
        assert not PRIVATE_MEMBERS & set(key)
        assert set(key) == public_members | {"kid", "use", "alg"}
        assert key["alg"] == algorithm
    ephemeral = AssertionSigner(AssertionSettings(algorithm=algorithm), ISSUER)
    assert not PRIVATE_MEMBERS & set(ephemeral.jwks()["keys"][0])


def test_the_kid_is_the_rfc_7638_thumbprint() -> None:
    # RFC 7638 §3.1: the example RSA key and its thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZ"
        "Hzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEg"
        "U8awapJzKnqDKgw"
    )
    assert _thumbprint({"kty": "RSA", "n": n, "e": "AQAB"}) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    signer = _signer(_pem(ec.generate_private_key(ec.SECP256R1())))
    assert signer.kid == _thumbprint(signer.jwks()["keys"][0])


def test_a_key_configured_twice_is_refused() -> None:
    key = _pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ConfigError, match="twice"):
        _signer(key, key)


def test_during_rotation_tokens_of_the_old_key_still_verify() -> None:
    old_key, new_key = (_pem(ec.generate_private_key(ec.SECP256R1())) for _ in range(2))
    before = _signer(old_key)
    old_token = before.sign("agent-1", "alice", frozenset(), "chat", NOW)
    after = _signer(new_key, old_key)
    assert after.kid != before.kid
    assert _verify(old_token, after)["sub"] == "agent-1"
    new_token = after.sign("agent-1", "alice", frozenset(), "chat", NOW)
    assert jwt.get_unverified_header(new_token)["kid"] == after.kid


def test_a_token_is_reused_until_half_its_lifetime_then_renewed() -> None:
    signer = _signer(_pem(ec.generate_private_key(ec.SECP256R1())))
    first = signer.sign("agent-1", "alice", frozenset(), "chat", NOW)
    assert signer.sign("agent-1", "alice", frozenset(), "chat", NOW + 29) == first
    assert signer.sign("agent-1", "alice", frozenset({"new-group"}), "chat", NOW + 29) != first
    assert signer.sign("agent-1", "alice", frozenset(), "chat", NOW + 31) != first
    assert signer.sign("agent-1", "alice", frozenset(), "chat", NOW + 31) == signer.sign(
        "agent-1", "alice", frozenset(), "chat", NOW + 32
    )
    assert signer.sign("agent-1", "alice", frozenset(), "chat", NOW - 1) != first  # clock stepped back
    assert signer.sign("agent-2", "alice", frozenset(), "chat", NOW) != first
    assert signer.sign("agent-1", "alice", frozenset(), "phone", NOW) != first


def test_a_key_of_the_wrong_type_or_size_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="P-256"):
        _signer(_pem(rsa.generate_private_key(65537, 2048)))
    with pytest.raises(ConfigError, match="2048"):
        _signer(_pem(rsa.generate_private_key(65537, 1024)), algorithm="RS256")  # noqa: S505 - the point
    with pytest.raises(ConfigError, match="PEM"):
        _signer("not a key")
    with pytest.raises(ConfigError, match="cannot be read"):
        AssertionSigner(AssertionSettings(private_key_files=(tmp_path / "missing.pem",)), ISSUER)


def test_without_configured_keys_an_ephemeral_key_is_used_and_flagged() -> None:
    signer = AssertionSigner(AssertionSettings(), ISSUER)
    assert signer.ephemeral
    assert _verify(signer.sign("a", "b", frozenset(), "chat", NOW), signer)["sub"] == "a"
