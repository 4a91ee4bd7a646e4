"""A Shared Signals transmitter speaks only for the account issuers it is bound to (RFC 9493 subjects, RFC 8935).

One gateway (real, with npm oidc-provider for the logins) hears three transmitters that speak the real protocol:
the IdP itself (its SETs' ``iss`` is its OIDC issuer), the IdP's signals service (another ``iss``, configured with
``subject_issuers = [<the IdP's issuer>]``) and a chat vendor's (its own ``iss`` only). The vendor must not be able
to log out or disable the IdP's agents by naming them, whichever way it names them.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.sessions.base import UseState
from gateway.signals.events import CAEP, RISC
from tests.components.echo_gateway import Deployment, deployment
from tests.components.oidc_provider import OidcProviderFactory
from tests.components.ssf_transmitter import Transmitter, published, push
from tests.unit.test_settings import GOOD

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]
JSON = {"Accept": "application/json"}
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Signals:
    gateway: Deployment
    idp: Transmitter
    signals: Transmitter
    vendor: Transmitter


@pytest.fixture
async def stack(oidc_provider_factory: OidcProviderFactory) -> AsyncIterator[Signals]:
    async with (
        published("") as idp,
        published("https://signals.idp.example") as signals,
        published("https://chat-vendor.example") as vendor,
    ):

        def tables(idp_issuer: str) -> str:
            idp.issuer = idp_issuer  # the IdP signs its SETs as its OIDC issuer
            return idp.toml() + signals.toml(subject_issuers=[idp_issuer]) + vendor.toml()

        async with deployment(oidc_provider_factory, extra_toml=tables) as gateway:
            yield Signals(gateway, idp, signals, vendor)


async def _alice(gateway: Deployment) -> tuple[httpx.AsyncClient, Any]:
    client = await gateway.login("alice")
    agent = await gateway.services.agents.find("alice")
    assert agent is not None and agent.oidc_issuer and agent.oidc_subject and agent.email
    return client, agent


async def _chat(client: httpx.AsyncClient, gateway: Deployment) -> int:
    return (await client.get(gateway.url + "/chat/", headers=JSON)).status_code


async def _last_record(gateway: Deployment) -> Any:
    await gateway.services.audit.flush()
    return [r for r in await gateway.services.audit._repository.tail(20) if r.kind == "security_event"][-1]


def _iss_sub(agent: Any) -> dict[str, str]:
    return {"format": "iss_sub", "iss": agent.oidc_issuer, "sub": agent.oidc_subject}


#: How the vendor names alice, an account of the IdP: claims of its SET, built from alice's agent.
FOREIGN: dict[str, Any] = {
    "iss_sub as sub_id, disabling": lambda a: {"events": {RISC + "account-disabled": {}}, "sub_id": _iss_sub(a)},
    "iss_sub in the event, logging out": lambda a: {"events": {CAEP + "session-revoked": {"subject": _iss_sub(a)}}},
    "her email, disabling": lambda a: {
        "events": {RISC + "account-disabled": {"subject": {"format": "email", "email": a.email}}}
    },
    "beside an event about its own account": lambda a: {
        "events": {
            CAEP + "session-revoked": {"subject": {"format": "opaque", "id": "vendor-user-1"}},
            RISC + "account-disabled": {"subject": _iss_sub(a)},
        }
    },
}


@pytest.mark.parametrize("case", FOREIGN, ids=list(FOREIGN))
async def test_a_transmitter_naming_an_account_of_an_issuer_it_does_not_speak_for_is_refused_and_changes_nothing(
    stack: Signals, case: str
) -> None:
    gateway, vendor = stack.gateway, stack.vendor
    alice, agent = await _alice(gateway)
    jti = uuid.uuid4().hex

    response = await push(gateway.url, vendor.sign(aud=gateway.url, jti=jti, **FOREIGN[case](agent)), vendor.token)

    # RFC 8935 §2.4: not acknowledged, and the transmitter's administrator is told what to change.
    assert response.status_code == 400, response.text
    assert response.json()["err"] == "access_denied"
    description = response.json()["description"]
    assert "not acted on" in description and agent.oidc_issuer in description and "subject_issuers" in description
    assert await _chat(alice, gateway) == 200  # her session survives
    after = await gateway.services.agents.find("alice")
    assert after is not None and after.active
    assert await gateway.services.pipeline.runs_of_agent(agent.id) == []
    record = await _last_record(gateway)
    assert (record.decision, record.status, record.reason) == ("refused", 400, description)
    assert record.actor == "ssf:https://chat-vendor.example"
    assert record.detail["foreign_issuers"] == [agent.oidc_issuer]
    # The jti was never claimed: refusing it used nothing up.
    claim = await gateway.services.sessions.claim_use(f"set:{vendor.issuer}:{jti}", 5)
    assert claim.state is UseState.CLAIMED
    await gateway.services.sessions.release_use(claim)


async def test_the_idp_as_transmitter_speaks_for_its_own_accounts_by_default(stack: Signals) -> None:
    gateway, idp = stack.gateway, stack.idp
    alice, agent = await _alice(gateway)
    assert idp.issuer == agent.oidc_issuer

    body = idp.sign({RISC + "account-disabled": {}}, aud=gateway.url, sub_id=_iss_sub(agent))
    response = await push(gateway.url, body, idp.token)

    assert response.status_code == 202, response.text
    assert await _chat(alice, gateway) == 401
    after = await gateway.services.agents.find("alice")
    assert after is not None and not after.active
    assert len(await gateway.services.pipeline.runs_of_agent(agent.id)) == 1
    assert (await _last_record(gateway)).decision == "deprovisioned"


async def test_a_transmitter_speaks_for_the_issuers_its_settings_list_by_iss_sub_and_by_email(stack: Signals) -> None:
    gateway, signals = stack.gateway, stack.signals
    laptop, agent = await _alice(gateway)
    email = {"format": "email", "email": agent.email}
    logout = signals.sign({CAEP + "session-revoked": {"subject": email}}, aud=gateway.url)
    assert (await push(gateway.url, logout, signals.token)).status_code == 202
    assert await _chat(laptop, gateway) == 401

    phone = await gateway.login("alice")
    disable = signals.sign({RISC + "account-disabled": {}}, aud=gateway.url, sub_id=_iss_sub(agent))
    response = await push(gateway.url, disable, signals.token)

    assert response.status_code == 202, response.text
    assert await _chat(phone, gateway) == 401
    after = await gateway.services.agents.find("alice")
    assert after is not None and not after.active
    record = await _last_record(gateway)
    assert (record.decision, record.actor) == ("deprovisioned", "ssf:https://signals.idp.example")


async def test_an_opaque_subject_is_an_account_of_the_transmitters_own_issuer_only(stack: Signals) -> None:
    gateway = stack.gateway
    alice, agent = await _alice(gateway)
    opaque = {"format": "opaque", "id": agent.oidc_subject}

    # Neither the vendor nor the signals service (which may name the IdP's accounts by iss_sub) has an account
    # with that id: the SET is about nobody, and alice's sub is not read as theirs.
    for sender in (stack.vendor, stack.signals):
        body = sender.sign({CAEP + "session-revoked": {"subject": opaque}}, aud=gateway.url)
        response = await push(gateway.url, body, sender.token)
        assert response.status_code == 202, response.text
        assert (await _last_record(gateway)).decision == "no such agent"
        assert await _chat(alice, gateway) == 200

    body = stack.idp.sign({CAEP + "session-revoked": {"subject": opaque}}, aud=gateway.url)
    assert (await push(gateway.url, body, stack.idp.token)).status_code == 202
    assert await _chat(alice, gateway) == 401


def test_a_bad_subject_issuers_list_stops_the_gateway_at_start_naming_each_problem(tmp_path: Path) -> None:
    table = (
        '\n[[ssf.transmitters]]\nissuer = "https://chat-vendor.example"\njwks_uri = "https://chat-vendor.example/jwks"'
        f'\ntoken = "{"t" * 40}"\n'
        'subject_issuers = ["*", "https://idp.example/?tenant=1", "idp.example", "https://a.example", "https://a.example"]\n'
    )  # fmt: skip
    path = tmp_path / "channelgate.toml"
    path.write_text(GOOD + table, encoding="utf-8")

    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(path), "serve", "--no-migrate"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip

    assert result.returncode == 2, result.stderr
    message = result.stderr
    assert "ssf.transmitters.0.subject_issuers" in message and "Traceback" not in message
    assert "'*': wildcards are not supported" in message
    assert "'https://idp.example/?tenant=1': the issuer must be an https URL without query or fragment" in message
    assert "'idp.example'" in message and "an issuer is listed twice" in message


async def test_an_account_named_twice_in_two_forms_is_acted_on_only_if_both_name_the_same_agent(
    stack: Signals,
) -> None:
    """SSF 1.0's sub_id and the CAEP drafts' event subject, both sent for receivers of either generation: the same
    account as an iss_sub and as its email (in any letter case) is one subject; naming bob's email beside alice's
    iss_sub is two people and nothing is done."""
    gateway, idp = stack.gateway, stack.idp
    alice, agent = await _alice(gateway)
    bob = await gateway.login("bob")
    bob_agent = await gateway.services.agents.find("bob")
    assert bob_agent is not None and bob_agent.email

    mixed = idp.sign(
        {CAEP + "session-revoked": {"subject": {"format": "email", "email": bob_agent.email.upper()}}},
        aud=gateway.url, sub_id=_iss_sub(agent),
    )  # fmt: skip
    refused = await push(gateway.url, mixed, idp.token)
    assert refused.status_code == 400, refused.text
    assert refused.json()["err"] == "invalid_request" and "two forms" in refused.json()["description"]
    assert await _chat(alice, gateway) == 200 and await _chat(bob, gateway) in (200, 403)

    same = idp.sign(
        {CAEP + "session-revoked": {"subject": {"format": "email", "email": agent.email.upper()}}},
        aud=gateway.url, sub_id=_iss_sub(agent),
    )  # fmt: skip
    assert (await push(gateway.url, same, idp.token)).status_code == 202
    assert await _chat(alice, gateway) == 401
    assert await _chat(bob, gateway) in (200, 403)  # bob's session survives (403: chat may not be his console)


async def test_a_transmitter_that_may_not_name_the_idps_accounts_is_named_at_start(
    stack: Signals, caplog: pytest.LogCaptureFixture
) -> None:
    """After an upgrade a transmitter signing as another issuer than the login IdP's gets every SET about the IdP's
    agents refused until subject_issuers is set: the start says so, once per such transmitter."""
    warnings = [r.getMessage() for r in caplog.get_records("setup") if "Shared Signals transmitter" in r.getMessage()]
    assert len(warnings) == 1
    assert stack.vendor.issuer in warnings[0] and "subject_issuers" in warnings[0]
