"""Fixtures of the demo-console tests: the gateway's signer (one key, ``gw-1``) and the JWKS it publishes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.demo.servers import GatewaySigner, serve_jwks


@pytest.fixture
def signer() -> GatewaySigner:
    signer = GatewaySigner()
    signer.add_key("gw-1")
    return signer


@pytest.fixture
def jwks_url(signer: GatewaySigner) -> Iterator[str]:
    """``signer``'s JWKS served over HTTP, as the gateway publishes it."""
    with serve_jwks(signer) as url:
        yield url
