"""Device posture reaches a policy only as a trusted front proxy states it: once. A client's own copy of the
device header, forwarded first by a proxy that appends its line instead of replacing the client's, must not make
an unmanaged device pass for a managed one — inline or through forward-auth (memoised or not)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.forward_auth import SECRET_HEADER
from tests.components.echo_gateway import Deployment, deployment
from tests.components.oidc_provider import OidcProviderFactory

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
SECRET = secrets.token_urlsafe(32)
JSON = {"Accept": "application/json"}
MANAGED_ONLY = """
@id("phone-needs-managed-device")
@reason("The phone console opens only on a company-managed device.")
forbid (principal, action, resource in Channel::"phone") unless { context.device == "managed" };
"""


@pytest.fixture
async def gateway(oidc_provider_factory: OidcProviderFactory, tmp_path: Path) -> AsyncIterator[Deployment]:
    (tmp_path / "site.cedar").write_text(MANAGED_ONLY)
    extra = (
        f'[policies]\npaths = ["{ROOT / "policies" / "default"}", "{tmp_path}"]\n'
        'device_header = "X-Device-Posture"\n\n'
        f'[forward_auth]\nenabled = true\nsecret = "{SECRET}"\n'
    )
    async with deployment(
        oidc_provider_factory, extra_server_toml='trusted_proxies = ["127.0.0.1/32"]', extra_toml=extra
    ) as deployed:
        yield deployed


def _headers(*postures: str) -> list[tuple[str, str]]:
    return [("Accept", "application/json"), *(("X-Device-Posture", posture) for posture in postures)]


async def test_inline_a_repeated_device_header_is_read_as_an_unknown_device(gateway: Deployment) -> None:
    carol = await gateway.login("carol")  # phone-agents
    assert (await carol.get(gateway.url + "/phone/echo", headers=_headers("managed"))).status_code == 200
    for postures in (("managed", "unmanaged"), ("managed", "managed")):
        refused = await carol.get(gateway.url + "/phone/echo", headers=_headers(*postures))
        assert refused.status_code == 403, postures
        assert refused.json()["message"] == "The phone console opens only on a company-managed device."


async def test_forward_auth_reads_a_repeated_device_header_as_an_unknown_device(gateway: Deployment) -> None:
    carol = await gateway.login("carol")

    async def ask(*postures: str) -> httpx.Response:
        headers = [("X-Original-URI", "/phone/echo"), ("X-Original-Method", "GET"), (SECRET_HEADER, SECRET)]
        return await carol.get(f"{gateway.url}/.channelgate/auth", headers=headers + _headers(*postures))

    assert (await ask("managed")).status_code == 200
    assert (await ask("managed")).status_code == 200  # now answered from the memo
    assert (await ask("managed", "unmanaged")).status_code == 403
    assert (await ask("managed", "managed")).status_code == 403
    assert (await ask()).status_code == 403
