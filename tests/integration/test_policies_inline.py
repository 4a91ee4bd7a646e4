"""Cedar policies on the inline proxy: a forbid refuses with its own words, the access log names the deciding
policy, the personal-data class of a [[routes.data]] rule and the sign-in's MFA reach the policy, and a policy
file changed on disk applies to the next request while a broken one is refused (the set in force stays)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.storage.access_log import AccessQuery, AccessRecord
from tests.components.echo_gateway import Deployment, deployment
from tests.components.oidc_provider import OidcProviderFactory

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
JSON = {"Accept": "application/json"}
PHONE_READ_ONLY = """
@id("phone-read-only")
@reason("The phone console is read-only for agents.")
forbid (principal, action == Action::"change", resource in Channel::"phone")
unless { principal in Group::"supervisors" };
"""
CUSTOMERS_NEED_MFA = """
@id("customers-need-mfa")
@reason("Customer records need a sign-in with a second factor.")
forbid (principal, action, resource) when { resource.pii == "customer" && !context.mfa };
"""
PLACEHOLDER = '@id("placeholder")\nforbid (principal, action, resource) when { false };\n'


@pytest.fixture
async def gateway(oidc_provider_factory: OidcProviderFactory, tmp_path: Path) -> AsyncIterator[Deployment]:
    (tmp_path / "site.cedar").write_text(PHONE_READ_ONLY + CUSTOMERS_NEED_MFA)
    extra = (
        f'[policies]\npaths = ["{ROOT / "policies" / "default"}", "{tmp_path}"]\nreload_interval_seconds = 0.1\n'
        # The test provider's sign-ins carry no second factor: "pwd" does not count (RFC 8176).
        'mfa_amr_values = ["otp"]\n'
    )
    # Appended after the routes, so it belongs to the last one (mail).
    data_rule = '[[routes.data]]\npath = "/mail/customers/{id}/**"\nsubject = "path:id"\npii = "customer"\n\n'
    async with deployment(oidc_provider_factory, extra_toml=data_rule + extra) as deployed:
        yield deployed


async def _records(gateway: Deployment, user: str) -> list[tuple[str | None, str | None, str | None]]:
    await gateway.services.audit.flush()
    found = await gateway.services.access_log.search(AccessQuery(agent_name=user, kind="request", limit=50))
    return [(r.path, r.decision, r.reason) for r in found]


async def test_a_forbid_refuses_with_its_reason_and_the_log_names_it(gateway: Deployment) -> None:
    carol = await gateway.login("carol")  # phone-agents, not a supervisor
    refused = await carol.post(gateway.url + "/phone/notes", headers=JSON, content=b"x")
    assert refused.status_code == 403
    assert refused.json()["message"] == "The phone console is read-only for agents."
    assert gateway.consoles["phone"].seen == []
    html = await carol.post(gateway.url + "/phone/notes", headers={"Accept": "text/html"}, content=b"x")
    assert "The phone console is read-only for agents." in html.text
    assert (await carol.get(gateway.url + "/phone/echo", headers=JSON)).status_code == 200
    records = await _records(gateway, "carol")
    assert ("/phone/notes", "deny", "phone-read-only") in records
    assert ("/phone/echo", "allow", "route-groups") in records


async def test_the_data_class_of_a_route_rule_and_the_sign_ins_mfa_reach_the_policy(gateway: Deployment) -> None:
    carol = await gateway.login("carol")  # mail-agents; signed in with a password only
    refused = await carol.get(gateway.url + "/mail/customers/C-77/profile", headers=JSON)
    assert refused.status_code == 403
    assert refused.json()["message"] == "Customer records need a sign-in with a second factor."
    assert (await carol.get(gateway.url + "/mail/inbox", headers=JSON)).status_code == 200
    await gateway.services.audit.flush()
    [record] = await gateway.services.access_log.search(AccessQuery(agent_name="carol", subject="C-77"))
    assert (record.decision, record.reason, record.action) == ("deny", "customers-need-mfa", "view")


async def test_a_supervisor_is_not_caught_by_the_forbid(gateway: Deployment) -> None:
    alice = await gateway.login("alice")  # supervisors
    answer = await alice.post(gateway.url + "/phone/notes", headers=JSON, content=b"x")
    assert answer.status_code == 200, answer.text


async def test_a_default_deny_is_logged_as_such_and_names_the_groups(gateway: Deployment) -> None:
    carol = await gateway.login("carol")
    refused = await carol.get(gateway.url + "/chat/echo", headers=JSON)
    assert refused.status_code == 403
    assert "chat-agents" in refused.json()["message"]
    assert ("/chat/echo", "deny", "default-deny") in await _records(gateway, "carol")


async def test_a_changed_policy_file_applies_to_the_next_request_and_a_broken_one_is_refused(
    gateway: Deployment,
) -> None:
    carol = await gateway.login("carol")
    site = next(p for p in gateway.services.policy.paths if p.name != "default") / "site.cedar"  # type: ignore[union-attr]
    site.write_text(PLACEHOLDER)
    await _until(carol, gateway.url + "/phone/notes", 200)
    site.write_text(PHONE_READ_ONLY.replace("resource in", "resource inn"))  # a syntax error: refused
    reloads = await _reloads_until(gateway, ["allow", "deny"])  # the change is loaded once it has settled
    assert (await carol.post(gateway.url + "/phone/notes", headers=JSON, content=b"x")).status_code == 200
    assert "site.cedar" in str(reloads[0].detail)
    site.write_text(PHONE_READ_ONLY)
    await _until(carol, gateway.url + "/phone/notes", 403)


async def _reloads_until(gateway: Deployment, decisions: list[str]) -> list[AccessRecord]:
    for _ in range(100):
        await gateway.services.audit.flush()
        reloads = await gateway.services.access_log.search(AccessQuery(kind="policy_reload", limit=10))
        if [r.decision for r in reversed(reloads)] == decisions:
            return reloads
        await asyncio.sleep(0.05)
    raise AssertionError(f"the policy reloads never were {decisions}")


async def _until(client: httpx.AsyncClient, url: str, status: int) -> None:
    for _ in range(100):
        if (await client.post(url, headers=JSON, content=b"x")).status_code == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never answered {status}")


async def test_a_case_variant_of_a_narrower_routes_prefix_is_refused_and_recorded(
    oidc_provider_factory: OidcProviderFactory,
) -> None:
    """/phone/ADMIN/ is /phone/admin/ to a case-insensitive console: it must not be decided under /phone/."""
    admin = '[[routes]]\nchannel = "phone"\nprefix = "/phone/admin/"\nupstream = "http://127.0.0.1:9/"\n'
    async with deployment(oidc_provider_factory, extra_toml=admin + 'allowed_groups = ["supervisors"]\n') as gateway:
        carol = await gateway.login("carol")  # phone-agents, not a supervisor
        assert (await carol.get(gateway.url + "/phone/admin/users", headers=JSON)).status_code == 403
        refused = await carol.get(gateway.url + "/phone/ADMIN/users", headers=JSON)
        assert refused.status_code == 400 and "/phone/admin/" in refused.json()["message"]
        assert [seen.path for seen in gateway.consoles["phone"].seen] == []  # /phone/ would have forwarded it
        assert (await carol.get(gateway.url + "/phone/echo", headers=JSON)).status_code == 200
        await gateway.services.audit.flush()
        found = await gateway.services.access_log.search(AccessQuery(kind="request", limit=50))
        assert ("/phone/ADMIN/users", 400) in [(r.path, r.status) for r in found]
