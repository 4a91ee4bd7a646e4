"""The load test's stack and its agents: gateway replicas, nginx, the demo chat console, agents over SCIM, sessions.

Agents are provisioned the way an IdP does it, through the gateway's SCIM 2.0 service (``POST /scim/v2/Users``,
then one ``POST /scim/v2/Groups`` per group with every member) with a bearer token made by ``channelgate
scim-tokens create``. Their sessions: a sample logs in through the real OIDC flow (the provider's login form,
the code exchange, the link of the login to the provisioned agent by userName, the groups read from the
directory); the rest are written with the gateway's own ``RedisSessionStore.create`` (one Lua call each), with
the data a real login of that agent would store (copied from the sample's first session: issuer, groups, acr,
amr, an ID token of the same size for ``id_token_hint``). A thousand logins through the provider (a Node process
on the same CPUs, about 50 ms each here) would add a minute to the set-up and exercise the provider, not the
gateway under test; the request path reads a session the same way whichever wrote it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import sys
import time
from dataclasses import dataclass
from typing import Any, cast

import httpx
from redis.asyncio import Redis

from bench.load_nginx import LoadNginx
from bench.stack import Gateway, session_cookie
from gateway.sessions.base import SessionData
from gateway.sessions.redis_codec import decode_data
from gateway.sessions.redis_scripts import AGENT_PREFIX, SESSION_PREFIX
from gateway.sessions.redis_store import RedisSessionStore
from tests.components.gateway import ROOT
from tests.components.ports import LOOPBACK, free_port
from tests.components.process import ChildProcess

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
#: Every agent works on the three consoles (the routes' allowed groups).
GROUPS = ("chat-agents", "phone-agents", "mail-agents")
IDLE_SECONDS, ABSOLUTE_SECONDS = 1800, 12 * 3600


def agent_name(index: int) -> str:
    """``agent000`` …: the names of ``bench.stack.bench_accounts``, so the sample can log in at the provider."""
    return f"agent{index:03d}"


@dataclass
class LoadAgent:
    index: int
    name: str
    id: str
    cookie: str = ""
    #: The session came from the real OIDC login (else from ``RedisSessionStore.create``).
    logged_in: bool = False


class LoadStack:
    """Two replicas (or ``replicas``) on one database and one Redis, nginx in front of the upstreams, the console.

    Made before the OpenID provider starts (it must know the redirect URI), started with its issuer.
    """

    def __init__(self, database_url: str, redis_url: str, *, replicas: int = 2) -> None:
        self.redis_url = redis_url
        self.secret = secrets.token_urlsafe(32)
        self.gateway = Gateway("load", database_url, free_port(), redis_url, replicas=replicas)
        self.gateway.extra_toml = f'\n[forward_auth]\nenabled = true\nsecret = "{self.secret}"\n'
        self.console_port = free_port()
        self.nginx = LoadNginx(self.gateway.upstream_port, self.console_port, self.gateway.ports, self.secret)
        self.console: ChildProcess | None = None
        self.scim_token = ""
        self.issuer = ""
        #: What a real login stored (set by ``open_sessions``): the template of the sessions written directly.
        self.template: SessionData | None = None

    @property
    def redirect_uris(self) -> list[str]:
        return self.gateway.redirect_uris

    def start(self, issuer: str) -> None:
        self.issuer = issuer
        self.gateway.start(issuer)
        self.console = ChildProcess(
            [
                sys.executable, "-m", "deploy.demo.consoles",
                "--channel", "chat", "--host", LOOPBACK, "--port", str(self.console_port),
                "--credential", self.gateway.credentials["chat"],
                "--gateway-jwks", f"{self.gateway.url(0)}/.channelgate/jwks.json",
                "--gateway-issuer", self.gateway.url(0), "--log-level", "warning",
            ],
            self.gateway.base_dir / "console-chat.log",
            name="demo chat console",
            cwd=ROOT,
        )  # fmt: skip
        self.console.start()
        self.nginx.start()
        self.scim_token = self.gateway.cli("scim-tokens", "create", "bench-idp").stdout.strip()

    def stop(self) -> None:
        self.nginx.close()
        if self.console is not None:
            self.console.stop()
        self.gateway.stop()

    # -- agents ---------------------------------------------------------------------------------------------

    async def provision(self, count: int, *, concurrency: int = 8) -> list[LoadAgent]:
        """``count`` agents and the three groups over SCIM, spread over the replicas; returns them in order."""
        agents: list[LoadAgent | None] = [None] * count
        semaphore = asyncio.Semaphore(concurrency)
        headers = {"Authorization": f"Bearer {self.scim_token}", "Content-Type": "application/scim+json"}
        async with httpx.AsyncClient(headers=headers, timeout=60.0) as http:

            async def create(index: int) -> None:
                name = agent_name(index)
                body = {
                    "schemas": [USER], "userName": name, "displayName": f"Bench Agent {index}",
                    "emails": [{"value": f"{name}@example.com", "primary": True}], "active": True,
                }  # fmt: skip
                async with semaphore:
                    base = self.gateway.url(index % len(self.gateway.ports))
                    response = await http.post(f"{base}/scim/v2/Users", json=body)
                if response.status_code != 201:
                    raise RuntimeError(f"SCIM create {name}: {response.status_code} {response.text[:300]}")
                agents[index] = LoadAgent(index, name, str(response.json()["id"]))

            await asyncio.gather(*(create(index) for index in range(count)))
            made = [agent for agent in agents if agent is not None]
            for group in GROUPS:
                body: dict[str, Any] = {
                    "schemas": [GROUP], "displayName": group, "members": [{"value": a.id} for a in made],
                }  # fmt: skip
                response = await http.post(f"{self.gateway.url(0)}/scim/v2/Groups", json=body)
                if response.status_code != 201:
                    raise RuntimeError(f"SCIM group {group}: {response.status_code} {response.text[:300]}")
        return made

    async def open_sessions(self, agents: list[LoadAgent], logins: int) -> None:
        """The first ``logins`` agents log in for real (a few at a time); the others get a session written by the
        store with the data such a login stores."""
        semaphore = asyncio.Semaphore(4)

        async def login(agent: LoadAgent) -> None:
            async with semaphore:
                agent.cookie = await session_cookie(self.gateway, agent.name)
            agent.logged_in = True

        await asyncio.gather(*(login(agent) for agent in agents[:logins]))
        self.template = template = await self.session_data(agents[0])
        await self.write_sessions(
            [(agent, session_template(template, agent.id, agent.name, agent.index)) for agent in agents[logins:]]
        )

    async def session_data(self, agent: LoadAgent) -> SessionData:
        """What the store holds for the agent's (first) session: the template of sessions written directly."""
        redis = Redis.from_url(self.redis_url, decode_responses=True)
        try:
            # decode_responses=True: the client answers str, which its annotations (str | bytes) cannot know.
            members = sorted(cast(set[str], await redis.smembers(AGENT_PREFIX + agent.id)))
            raw = cast(str | None, await redis.hget(SESSION_PREFIX + members[0], "data"))
        finally:
            await redis.aclose()
        if raw is None:
            raise RuntimeError(f"no session stored for {agent.name}")
        return decode_data(raw)

    async def write_sessions(self, sessions: list[tuple[LoadAgent, SessionData]]) -> None:
        await write_sessions_to(self.redis_url, sessions)


async def write_sessions_to(redis_url: str, sessions: list[tuple[LoadAgent, SessionData]]) -> None:
    """Each session through ``RedisSessionStore.create``, 50 at a time; sets each agent's cookie."""
    client = Redis.from_url(redis_url, socket_timeout=10.0, socket_connect_timeout=10.0, decode_responses=True)
    store = RedisSessionStore(client, IDLE_SECONDS, ABSOLUTE_SECONDS, "bench-loader", socket_timeout=10.0)
    try:
        for start in range(0, len(sessions), 50):
            batch = sessions[start : start + 50]
            made = await asyncio.gather(*(store.create(data, time.time()) for _, data in batch))
            for (agent, _), session in zip(batch, made, strict=True):
                agent.cookie = session.id
    finally:
        await store.close()


def session_template(template: SessionData, agent_id: str, user_name: str, index: int) -> SessionData:
    """The session a login of this agent would store: the sample's, with the agent's own identifiers."""
    sid = template.idp_session_id
    return dataclasses.replace(
        template,
        agent_id=agent_id,
        user_name=user_name,
        subject=f"bench-{index:04d}",
        idp_session_id=secrets.token_urlsafe(max(8, len(sid) * 3 // 4)) if sid else None,
    )
