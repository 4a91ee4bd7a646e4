"""The Shared Signals receiver (RFC 8935 push, RFC 8417 SETs, CAEP and RISC events) end to end.

The transmitter here is a test double that speaks the real protocol (tests/components/ssf_transmitter.py): it
publishes its signing key as a JWKS over HTTP and pushes signed SETs with its bearer token. The gateway is real
(npm oidc-provider for the logins), and so are its consequences: sessions refused, agents disabled, records in
the access log. Only the database outage is simulated: the agents lookup raises the StorageError the repository
raises when it is down.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any

import httpx
import pytest

from gateway.errors import StorageError
from gateway.signals.events import CAEP, RISC
from gateway.timeutil import utcnow
from tests.components.echo_gateway import Deployment, deployment
from tests.components.oidc_provider import (
    DEMO_PASSWORD,
    STANDARD_ACCOUNTS,
    OidcAccount,
    OidcProvider,
    OidcProviderFactory,
    generate_signing_key,
)
from tests.components.ssf_transmitter import Transmitter, published, push

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]
JSON = {"Accept": "application/json"}
#: The IdP's transmitter signs SETs as this issuer, not as its OIDC issuer (as Okta's org-level transmitter does
#: for a custom authorization server), so it is configured to speak for the OIDC issuer too.
ISSUER = "https://signals.idp.example"


@pytest.fixture
async def transmitter() -> AsyncIterator[Transmitter]:
    async with published(ISSUER) as sender:
        yield sender


def speaking_for_the_idp(transmitter: Transmitter) -> Callable[[str], str]:
    """The transmitter's table, allowed to name the accounts of the gateway's IdP (whose issuer it is given)."""
    return lambda idp_issuer: transmitter.toml(subject_issuers=[idp_issuer])


@pytest.fixture
async def gateway(oidc_provider_factory: OidcProviderFactory, transmitter: Transmitter) -> AsyncIterator[Deployment]:
    async with deployment(oidc_provider_factory, extra_toml=speaking_for_the_idp(transmitter)) as deployed:
        yield deployed


#: A second IdP account whose verified email is alice's: some providers let two accounts share an address.
MALLORY = OidcAccount(
    sub="mallory-0009", username="mallory", password=DEMO_PASSWORD, email="alice@example.com", name="Mallory",
    groups=("chat-agents",),
)  # fmt: skip


@pytest.fixture
async def shared_email_gateway(
    oidc_provider_factory: OidcProviderFactory, transmitter: Transmitter
) -> AsyncIterator[Deployment]:
    """The gateway of an IdP where mallory's account carries alice's email."""

    def provider(redirect_uris: Sequence[str], **options: Any) -> OidcProvider:
        return oidc_provider_factory(redirect_uris, **(options | {"accounts": (*STANDARD_ACCOUNTS, MALLORY)}))

    async with deployment(provider, extra_toml=speaking_for_the_idp(transmitter)) as deployed:
        yield deployed


def fail_once(monkeypatch: pytest.MonkeyPatch, repository: object, method: str) -> None:
    """The database is down for the next call of ``repository.<method>`` (the repositories' StorageError), then
    back."""
    real = getattr(repository, method)
    calls: list[None] = []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(None)
        if len(calls) == 1:
            raise StorageError("select agents failed on sqlite:///…", detail="database is locked")
        return await real(*args, **kwargs)

    monkeypatch.setattr(repository, method, flaky)


async def _push(
    gateway: Deployment, body: str, token: str | None, content_type: str = "application/secevent+jwt"
) -> httpx.Response:
    return await push(gateway.url, body, token, content_type)


async def _alice(gateway: Deployment) -> tuple[httpx.AsyncClient, dict[str, Any]]:
    client = await gateway.login("alice")
    agent = await gateway.services.agents.find("alice")
    assert agent is not None
    subject = {"format": "iss_sub", "iss": agent.oidc_issuer, "sub": agent.oidc_subject}
    return client, subject


async def _chat(client: httpx.AsyncClient, gateway: Deployment) -> int:
    return (await client.get(gateway.url + "/chat/", headers=JSON)).status_code


async def _last_record(gateway: Deployment) -> Any:
    await gateway.services.audit.flush()
    return [r for r in await gateway.services.audit._repository.tail(20) if r.kind == "security_event"][-1]


async def test_a_risc_account_disabled_event_deprovisions_the_agent(
    gateway: Deployment, transmitter: Transmitter
) -> None:
    alice, subject = await _alice(gateway)
    response = await _push(
        gateway, transmitter.sign({RISC + "account-disabled": {}}, aud=gateway.url, sub_id=subject), transmitter.token
    )
    assert response.status_code == 202, response.text
    assert await _chat(alice, gateway) == 401
    agent = await gateway.services.agents.find_by_oidc(subject["iss"], subject["sub"])
    assert agent is not None and not agent.active
    record = await _last_record(gateway)
    assert (record.decision, record.actor, record.agent_name) == ("deprovisioned", f"ssf:{ISSUER}", "alice")


@pytest.mark.parametrize("event", ["session-revoked", "credential-change"])
async def test_a_caep_event_ends_every_session_but_leaves_the_agent_enabled(
    gateway: Deployment, transmitter: Transmitter, event: str
) -> None:
    laptop, subject = await _alice(gateway)
    phone = await gateway.login("alice")
    body = transmitter.sign({CAEP + event: {"event_timestamp": int(time.time())}}, aud=gateway.url, sub_id=subject)
    assert (await _push(gateway, body, transmitter.token)).status_code == 202
    assert (await _chat(laptop, gateway), await _chat(phone, gateway)) == (401, 401)
    assert await _chat(await gateway.login("alice"), gateway) == 200


async def test_an_email_subject_inside_the_event_is_matched(gateway: Deployment, transmitter: Transmitter) -> None:
    alice, _ = await _alice(gateway)
    agent = await gateway.services.agents.find("alice")
    assert agent is not None and agent.email
    event = {CAEP + "session-revoked": {"subject": {"format": "email", "email": agent.email.upper()}}}
    assert (await _push(gateway, transmitter.sign(event, aud=gateway.url), transmitter.token)).status_code == 202
    assert await _chat(alice, gateway) == 401


async def test_events_about_nobody_or_of_other_types_are_accepted_recorded_and_change_nothing(
    gateway: Deployment, transmitter: Transmitter
) -> None:
    alice, subject = await _alice(gateway)
    nobody = {"format": "iss_sub", "iss": subject["iss"], "sub": "nobody"}
    unknown = transmitter.sign({RISC + "account-disabled": {}}, aud=gateway.url, sub_id=nobody)
    assert (await _push(gateway, unknown, transmitter.token)).status_code == 202
    assert (await _last_record(gateway)).decision == "no such agent"
    other = transmitter.sign({CAEP + "assurance-level-change": {}}, aud=gateway.url, sub_id=subject)
    assert (await _push(gateway, other, transmitter.token)).status_code == 202
    assert (await _last_record(gateway)).decision == "ignored"
    assert await _chat(alice, gateway) == 200


def _unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'secevent+jwt'})}.{part(claims)}."


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "signed with another key": ({"key": generate_signing_key("ssf-1")}, "invalid_key"),
    "for another audience": ({"aud": "https://someone-else.example"}, "invalid_audience"),
    "from another issuer": ({"iss": "https://evil.example"}, "invalid_issuer"),
    "issued two days ago": ({"iat": int(time.time()) - 2 * 86_400}, "invalid_request"),
    "an id token (nonce)": ({"nonce": "n"}, "invalid_request"),
    "typed as a plain JWT": ({"header": {"typ": "JWT"}}, "invalid_request"),
    "without jti": ({"jti": None}, "invalid_request"),
    "without a subject": ({"sub_id": None}, "invalid_request"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
async def test_a_bad_set_is_refused_with_its_rfc_8935_error_and_changes_nothing(
    gateway: Deployment, transmitter: Transmitter, case: str
) -> None:
    alice, subject = await _alice(gateway)
    changes, err = REFUSED[case]
    claims = {"aud": gateway.url, "sub_id": subject} | changes
    response = await _push(gateway, transmitter.sign({RISC + "account-disabled": {}}, **claims), transmitter.token)
    assert response.status_code == 400, response.text
    assert response.json()["err"] == err
    assert await _chat(alice, gateway) == 200
    assert (await _last_record(gateway)).decision == "refused"


async def test_a_replayed_set_is_refused(gateway: Deployment, transmitter: Transmitter) -> None:
    _, subject = await _alice(gateway)
    body = transmitter.sign({CAEP + "session-revoked": {}}, aud=gateway.url, sub_id=subject)
    assert (await _push(gateway, body, transmitter.token)).status_code == 202
    again = await gateway.login("alice")
    replayed = await _push(gateway, body, transmitter.token)
    assert replayed.status_code == 400 and "already received" in replayed.json()["description"]
    assert await _chat(again, gateway) == 200


async def test_a_risc_account_disabled_retried_after_a_database_outage_deprovisions_the_agent(
    gateway: Deployment, transmitter: Transmitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, subject = await _alice(gateway)
    body = transmitter.sign({RISC + "account-disabled": {}}, aud=gateway.url, sub_id=subject)
    fail_once(monkeypatch, gateway.services.agents, "find_by_oidc")

    first = await _push(gateway, body, transmitter.token)
    assert first.status_code == 503 and first.json()["err"] == "temporarily_unavailable", first.text
    assert "sqlite" not in first.text  # the database's address is for the gateway's log, not the transmitter
    retry = await _push(gateway, body, transmitter.token)  # RFC 8935 §2.3: the same SET, sent again

    assert retry.status_code == 202, retry.text
    assert await _chat(alice, gateway) == 401
    agent = await gateway.services.agents.find_by_oidc(subject["iss"], subject["sub"])
    assert agent is not None and not agent.active
    assert (await _last_record(gateway)).decision == "deprovisioned"
    replayed = await _push(gateway, body, transmitter.token)  # acted on once: now it is a replay
    assert replayed.status_code == 400 and "already received" in replayed.json()["description"]


async def _made_active(gateway: Deployment, user_name: str, seconds_ago: float) -> None:
    """The agent was disabled and made active again ``seconds_ago`` (the repository's own updates, dated then)."""
    agent = await gateway.services.agents.find(user_name)
    assert agent is not None
    agents, now = gateway.services.agents, utcnow()
    await agents.set_active(agent.id, False, "on leave", now - timedelta(seconds=seconds_ago + 60))
    await agents.set_active(agent.id, True, None, now - timedelta(seconds=seconds_ago))


async def _signed_out(gateway: Deployment, user_name: str) -> None:
    agent = await gateway.services.agents.find(user_name)
    assert agent is not None
    await gateway.services.killer.endings.end_sessions(agent.id)


def _an_hour_ago(transmitter: Transmitter, gateway: Deployment, event: str, subject: dict[str, Any]) -> str:
    return transmitter.sign({event: {}}, aud=gateway.url, sub_id=subject, iat=int(time.time()) - 3600)


async def test_a_risc_account_disabled_pushed_again_an_hour_after_it_was_issued_deprovisions_the_agent(
    gateway: Deployment, transmitter: Transmitter
) -> None:
    # RFC 8935 §2.3: the transmitter retries a push the gateway could not take; the disable must still count.
    _, subject = await _alice(gateway)
    await _made_active(gateway, "alice", seconds_ago=2 * 3600)  # active since before the IdP disabled the account
    await _signed_out(gateway, "alice")  # and not signed in since (the IdP would not let her)
    agent = await gateway.services.agents.find("alice")
    assert agent is not None
    await gateway.services.agents.set_active(agent.id, True, None, utcnow())  # an update since is no re-enable

    response = await _push(
        gateway, _an_hour_ago(transmitter, gateway, RISC + "account-disabled", subject), transmitter.token
    )

    assert response.status_code == 202, response.text
    agent = await gateway.services.agents.find_by_oidc(subject["iss"], subject["sub"])
    assert agent is not None and not agent.active
    assert (await _last_record(gateway)).decision == "deprovisioned"


async def test_a_late_risc_account_disabled_about_an_agent_made_active_here_since_is_refused_and_changes_nothing(
    gateway: Deployment, transmitter: Transmitter
) -> None:
    _, subject = await _alice(gateway)
    await _made_active(gateway, "alice", seconds_ago=600)  # re-enabled 10 minutes ago, after the SET was issued
    await _signed_out(gateway, "alice")

    response = await _push(
        gateway, _an_hour_ago(transmitter, gateway, RISC + "account-disabled", subject), transmitter.token
    )

    assert response.status_code == 400, response.text
    description = response.json()["description"]
    assert response.json()["err"] == "invalid_request"
    assert "not acted on" in description and "'alice' was made active here at" in description
    agent = await gateway.services.agents.find("alice")
    assert agent is not None and agent.active
    record = await _last_record(gateway)
    assert (record.decision, record.status, record.agent_name) == ("refused", 400, "alice")
    assert record.detail["result"].startswith("stale")


async def test_a_late_risc_account_disabled_about_an_agent_the_idp_let_sign_in_since_is_refused(
    gateway: Deployment, transmitter: Transmitter
) -> None:
    alice, subject = await _alice(gateway)  # signed in now: the IdP re-enabled the account after the event
    await _made_active(gateway, "alice", seconds_ago=2 * 3600)

    response = await _push(
        gateway, _an_hour_ago(transmitter, gateway, RISC + "account-disabled", subject), transmitter.token
    )

    assert response.status_code == 400, response.text
    assert "signed in through the identity provider at" in response.json()["description"]
    assert await _chat(alice, gateway) == 200


async def test_a_late_caep_session_revoked_spares_the_sessions_signed_in_after_it(
    gateway: Deployment, transmitter: Transmitter
) -> None:
    alice, subject = await _alice(gateway)  # every session of hers began after the event

    late = _an_hour_ago(transmitter, gateway, CAEP + "session-revoked", subject)
    assert (await _push(gateway, late, transmitter.token)).status_code == 202

    assert await _chat(alice, gateway) == 200
    record = await _last_record(gateway)
    assert record.detail["spared"] == ["alice"] and record.detail["sessions"] == 0


async def test_a_recent_risc_account_disabled_is_acted_on_even_if_the_agent_changed_after_it_was_issued(
    gateway: Deployment, transmitter: Transmitter
) -> None:
    # The IdP's own updates (a rename, a group) may reach the gateway just before its disable: acted on.
    alice, subject = await _alice(gateway)
    recent = transmitter.sign(
        {RISC + "account-disabled": {}}, aud=gateway.url, sub_id=subject, iat=int(time.time()) - 120
    )

    assert (await _push(gateway, recent, transmitter.token)).status_code == 202
    assert await _chat(alice, gateway) == 401


async def test_a_set_older_than_its_transmitters_max_set_age_is_refused(
    oidc_provider_factory: OidcProviderFactory, transmitter: Transmitter
) -> None:
    def table(idp_issuer: str) -> str:
        return transmitter.toml(subject_issuers=[idp_issuer], max_set_age_seconds=600)

    async with deployment(oidc_provider_factory, extra_toml=table) as gateway:
        alice, subject = await _alice(gateway)
        old = transmitter.sign(
            {RISC + "account-disabled": {}}, aud=gateway.url, sub_id=subject, iat=int(time.time()) - 3600
        )

        response = await _push(gateway, old, transmitter.token)

        assert response.status_code == 400, response.text
        assert "outside the last 600 seconds" in response.json()["description"]
        assert await _chat(alice, gateway) == 200


async def test_a_caep_session_revoked_about_an_email_two_agents_share_ends_the_sessions_of_both(
    shared_email_gateway: Deployment, transmitter: Transmitter
) -> None:
    gateway = shared_email_gateway
    alice, mallory = await gateway.login("alice"), await gateway.login("mallory")
    event = {CAEP + "session-revoked": {"subject": {"format": "email", "email": "alice@example.com"}}}

    response = await _push(gateway, transmitter.sign(event, aud=gateway.url), transmitter.token)

    assert response.status_code == 202, response.text
    assert (await _chat(alice, gateway), await _chat(mallory, gateway)) == (401, 401)
    record = await _last_record(gateway)
    assert (record.decision, record.agent_name) == ("sessions ended", None)
    assert record.detail["candidates"] == ["alice", "mallory"] and record.detail["sessions"] == 2
    assert await _chat(await gateway.login("alice"), gateway) == 200  # a logout: both stay enabled


async def test_a_caep_logout_of_two_agents_whose_save_fails_ends_both_and_the_retry_is_acted_on(
    shared_email_gateway: Deployment, transmitter: Transmitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fails to save the logout's end once: both agents' sessions are ended all the same (not only the
    first's), the transmitter gets a 503 and retries the same SET (RFC 8935 §2.3), which is acted on, not refused
    as a replay."""
    gateway = shared_email_gateway
    alice, mallory = await gateway.login("alice"), await gateway.login("mallory")
    fail_once(monkeypatch, gateway.services.logouts._ends, "add")
    event = {CAEP + "session-revoked": {"subject": {"format": "email", "email": "alice@example.com"}}}
    body = transmitter.sign(event, aud=gateway.url)

    first = await _push(gateway, body, transmitter.token)

    assert first.status_code == 503 and first.json()["err"] == "temporarily_unavailable", first.text
    assert "sqlite" not in first.text
    assert (await _chat(alice, gateway), await _chat(mallory, gateway)) == (401, 401)
    assert (await _push(gateway, body, transmitter.token)).status_code == 202


async def test_a_risc_account_disabled_about_an_email_two_agents_share_is_refused_and_disables_nobody(
    shared_email_gateway: Deployment, transmitter: Transmitter
) -> None:
    gateway = shared_email_gateway
    alice, mallory = await gateway.login("alice"), await gateway.login("mallory")
    event = {RISC + "account-disabled": {"subject": {"format": "email", "email": "Alice@Example.com"}}}

    response = await _push(gateway, transmitter.sign(event, aud=gateway.url), transmitter.token)

    # RFC 8935 §2.3: not acknowledged, so the transmitter knows it was not acted on, and told what to do instead.
    assert response.status_code == 400, response.text
    assert response.json()["err"] == "invalid_request"
    description = response.json()["description"]
    assert "not acted on" in description and "2 agents" in description and "iss_sub" in description
    assert (await _chat(alice, gateway), await _chat(mallory, gateway)) == (200, 200)
    assert all(agent.active for agent in await gateway.services.agents.find_by_email("alice@example.com"))
    record = await _last_record(gateway)
    assert (record.decision, record.status, record.reason) == ("refused", 400, description)
    assert record.detail["candidates"] == ["alice", "mallory"] and record.detail["action"] == "deprovision"


async def test_a_push_without_the_transmitters_token_or_as_the_wrong_type_is_refused(
    gateway: Deployment, transmitter: Transmitter
) -> None:
    alice, subject = await _alice(gateway)
    body = transmitter.sign({RISC + "account-disabled": {}}, aud=gateway.url, sub_id=subject)
    assert (await _push(gateway, body, None)).status_code == 401
    assert (await _push(gateway, body, "x" * 43)).status_code == 401
    assert (await _push(gateway, body, transmitter.token, content_type="application/json")).status_code == 400
    claims = {"iss": ISSUER, "aud": gateway.url, "iat": int(time.time()), "jti": "j", "sub_id": subject,
              "events": {RISC + "account-disabled": {}}}  # fmt: skip
    assert (await _push(gateway, _unsigned(claims), transmitter.token)).status_code == 400
    assert await _chat(alice, gateway) == 200
