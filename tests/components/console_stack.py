"""The security console's test deployment: the offboarding stack's three demo consoles (OAuth 2.0, seats, legacy
form login: ``tests.components.offboarding``), a real OpenID provider whose accounts carry the console's groups,
and the gateway in this process with ``[console]`` configured, so a deprovisioning started from the console really
reaches the consoles and its receipts really arrive.

Accounts: ``rita`` (security reviewer), ``adam`` (console admin); ``alice``, ``bob`` and ``carol`` are directory
agents (alice's manager is carol) with access at every channel once ``give_access`` ran; alice can also sign in.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from connectors.base import AgentRef, UpstreamRequest
from connectors.secret import Secret
from gateway.services import Services
from gateway.settings import load_settings
from tests.components.asgi_server import bound_socket
from tests.components.inprocess import running_gateway
from tests.components.offboarding import PASSWORD, OffboardingStack, offboarding_stack
from tests.components.oidc_provider import DEMO_PASSWORD, TEST_CLIENT_SECRET, OidcAccount, OidcProvider
from tests.components.ports import LOOPBACK

CONSOLE = "/.channelgate/console"
REVIEWER_GROUP = "security-reviewers"
ADMIN_GROUP = "gateway-admins"
CONSOLE_TOML = f'\n[console]\nreviewer_groups = ["{REVIEWER_GROUP}"]\nadmin_groups = ["{ADMIN_GROUP}"]\n'
#: Retries fast enough to watch a channel go from retrying to dead in a few seconds.
FAST_RETRIES = "max_attempts = 4\nretry_base_seconds = 0.3\nretry_max_seconds = 0.6\npoll_seconds = 0.1\n"
DIRECTORY_AGENTS = ("alice", "bob", "carol")


def console_account(name: str, *groups: str) -> OidcAccount:
    return OidcAccount(f"{name}-sub", name, DEMO_PASSWORD, f"{name}@example.com", name.title(), groups)


#: alice's login links to her directory agent (userName = preferred_username); her groups come from the directory.
CONSOLE_ACCOUNTS = (
    console_account("rita", REVIEWER_GROUP),
    console_account("adam", ADMIN_GROUP),
    console_account("alice"),
)

ProviderStarter = Callable[..., OidcProvider]


@dataclass
class ConsoleStack:
    offboarding: OffboardingStack
    services: Services
    provider: OidcProvider

    @property
    def url(self) -> str:
        return self.offboarding.gateway_url

    async def give_access(self, user_name: str) -> AgentRef:
        """What an agent's first requests leave behind: a token at chat, a seat at phone, a session at mail."""
        agent = await self.services.agents.find(user_name)
        assert agent is not None
        ref = AgentRef(agent_id=agent.id, user_name=agent.user_name, email=agent.email)
        await self.services.connector_contexts["mail"].secrets.put(agent.id, "password", Secret(PASSWORD))
        for channel in ("chat", "phone", "mail"):
            await self.services.connectors[channel].prepare(ref, UpstreamRequest("GET", f"http://c/{channel}", []))
        return ref


def _with_provider(config: str, issuer: str) -> str:
    """The offboarding configuration, trusting ``issuer`` (its placeholder provider is never contacted)."""
    placeholder = f'issuer = "http://{LOOPBACK}:9"\n'
    secret = 'client_secret = "unused-in-these-tests"\n'
    assert placeholder in config and secret in config
    config = config.replace(placeholder, f'issuer = "{issuer}"\n')
    scopes = 'scopes = ["openid", "profile", "email", "groups"]\n'
    return config.replace(secret, f'client_secret = "{TEST_CLIENT_SECRET}"\n{scopes}') + CONSOLE_TOML


@contextlib.asynccontextmanager
async def console_stack(start_provider: ProviderStarter, open_tickets: dict[str, int]) -> AsyncIterator[ConsoleStack]:
    """Consoles, provider and gateway up; the directory agents added. ``start_provider(redirect_uris,
    accounts=...)`` is ``oidc_provider_factory`` (or a module's provider pool)."""
    async with offboarding_stack(open_tickets, DIRECTORY_AGENTS, deprovision_toml=FAST_RETRIES) as stack:
        stack.add_agents(DIRECTORY_AGENTS, managers={"alice": "carol", "bob": "carol"})
        provider = start_provider([stack.gateway_url + "/.channelgate/callback"], accounts=CONSOLE_ACCOUNTS)
        stack.config_path.write_text(_with_provider(stack.config_path.read_text(), provider.issuer), encoding="utf-8")
        sock = bound_socket(stack.gateway_port)
        try:
            async with running_gateway(load_settings(stack.config_path, environ={}), sock) as services:
                yield ConsoleStack(stack, services, provider)
        finally:
            sock.close()
