"""Everything a running gateway holds, built once from the settings and closed once (the app's edge wiring)."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from connectors.base import Connector
from connectors.context import AgentSecrets, ConnectorContext, CredentialLoader, cached_credential
from connectors.registry import build_connectors
from connectors.secret import Secret
from connectors.vault import Vault, load_credential
from gateway.audit.chain import Sealer
from gateway.audit.checkpoints import CheckpointSigner, open_sink
from gateway.audit.retention import Retention
from gateway.audit.writer import AuditLog
from gateway.deprovision.kill import SessionKiller
from gateway.deprovision.logouts import Logouts
from gateway.deprovision.revived import RevivedSessions, clock_margin_seconds
from gateway.deprovision.runs import MassDeletionGuard, RunPlanner
from gateway.deprovision.worker import PipelineWorker
from gateway.errors import ChannelgateError, VaultError
from gateway.metrics import Metrics
from gateway.oidc.client import OidcClient
from gateway.oidc.discovery import ProviderKeys
from gateway.policy_point import PolicyPoint
from gateway.proxy.assertion import AssertionSigner
from gateway.proxy.forward import UpstreamClient
from gateway.proxy.routes import RouteTable
from gateway.proxy.streams import LiveConnections
from gateway.sessions.base import SessionStore
from gateway.sessions.cookies import CookiePolicy
from gateway.sessions.factory import create_session_store
from gateway.settings import Settings
from gateway.storage.access_log import AccessLogRepository
from gateway.storage.agent_secrets import AgentSecretRepository
from gateway.storage.agents import AgentRepository
from gateway.storage.audit_chain import ChainPurger, ChainStore
from gateway.storage.credentials import ChannelCredentialRepository
from gateway.storage.database import Database, create_engine
from gateway.storage.groups import GroupRepository
from gateway.storage.pipeline import PipelineRepository
from gateway.storage.quick_reads import QuickReads
from gateway.storage.scim_tokens import ScimTokenRepository
from gateway.storage.session_ends import SessionEndRepository

if TYPE_CHECKING:
    from gateway.collector import FullCollections
    from gateway.forward_auth_memo import ForwardAuthMemo
    from scim.app import ScimApplication

log = logging.getLogger("channelgate")


def _forward_auth_memo() -> ForwardAuthMemo:
    from gateway.forward_auth_memo import ForwardAuthMemo

    return ForwardAuthMemo()


def new_replica_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


@dataclass
class Services:
    settings: Settings
    replica_id: str
    metrics: Metrics
    database: Database
    agents: AgentRepository
    credentials: ChannelCredentialRepository
    audit: AuditLog
    sessions: SessionStore
    cookies: CookiePolicy
    killer: SessionKiller
    #: Ends again, after a session-store outage, the sessions a restarted Redis brought back (run by the heartbeat).
    revived: RevivedSessions
    #: Logouts remembered before they are reported done, for that sweep (gateway/deprovision/logouts.py).
    logouts: Logouts
    #: The deprovisioning pipeline's runs and steps (issue 4).
    pipeline: PipelineRepository
    vault: Vault | None
    connectors: dict[str, Connector]
    connector_contexts: dict[str, ConnectorContext]
    groups: GroupRepository
    scim_tokens: ScimTokenRepository
    #: Short indexed reads without a thread hop on SQLite (SCIM token checks and lookups).
    reads: QuickReads
    #: Chains committed access records and signs checkpoints (issue 5); started with the gateway.
    sealer: Sealer
    live: LiveConnections = field(default_factory=LiveConnections)
    #: Allowed forward-auth answers, reused for the same question while they hold (gateway/forward_auth_memo.py).
    forward_auth_memo: ForwardAuthMemo = field(default_factory=_forward_auth_memo)
    #: Runs the pipeline's steps (started by the gateway's lifespan, or by ``channelgate deprovision work``).
    worker: PipelineWorker | None = None
    #: Paces the full garbage collections of a serving process (``channelgate serve``; gateway/collector.py).
    collector: FullCollections | None = None
    oidc: OidcClient | None = None
    signer: AssertionSigner | None = None
    upstream: UpstreamClient | None = None
    routes: RouteTable | None = None
    #: The policy decision point (Cedar), shared by the inline proxy and the forward-auth endpoint (issue 7).
    policy: PolicyPoint | None = None
    idp_http: aiohttp.ClientSession | None = None
    #: The SCIM 2.0 endpoint mounted at /scim/v2 (issue 3).
    scim: ScimApplication | None = None
    #: JWKS of the Shared Signals transmitters, by URI, fetched on first use (``gateway.signals.receiver``).
    signal_keys: dict[str, ProviderKeys] = field(default_factory=dict)
    #: Seconds since the epoch; tests replace it to move past idle and absolute timeouts.
    clock: Callable[[], float] = time.time

    @property
    def access_log(self) -> AccessLogRepository:
        """The access log's rows (reads, searches); writes go through ``audit``."""
        return self.audit.repository

    @property
    def public_url(self) -> str:
        return str(self.settings.server.public_url).rstrip("/")

    async def _flush_logouts(self) -> None:
        """Write the ends kept in process (their first write failed) before the process goes: else a logout or a
        deprovisioning that Redis then loses could not be ended again (gateway/deprovision/logouts.py)."""
        try:
            await self.logouts.flush()
        except ChannelgateError as exc:
            log.error("%d session end(s) could not be written at shutdown and are lost: %s",
                      self.logouts.unwritten, exc.message)  # fmt: skip

    async def close(self) -> None:
        for connector in self.connectors.values():
            await connector.aclose()
        for context in self.connector_contexts.values():
            await context.aclose()
        if self.upstream is not None:
            await self.upstream.close()
        if self.idp_http is not None:
            await self.idp_http.close()
        await self._flush_logouts()
        await self.audit.stop()
        await self.sealer.stop()  # after the audit flush, so the records flushed at shutdown are sealed too
        await self.sessions.close()
        await self.reads.dispose()
        await self.database.dispose()


def open_core(settings: Settings, replica_id: str | None = None) -> Services:
    """The parts the CLI needs too: database, repositories, audit, session store, vault, killer."""
    replica_id = replica_id or new_replica_id()
    metrics = Metrics()
    database = Database(create_engine(settings.database))
    reads = QuickReads.open(settings.database, database.engine)
    agents = AgentRepository(database.engine, reads)
    credentials = ChannelCredentialRepository(database.engine)
    audit = AuditLog(
        AccessLogRepository(database.engine, busy_timeout_seconds=settings.database.connect_timeout_seconds)
    )
    sessions = create_session_store(
        settings.sessions, replica_id, on_eviction_unsafe=metrics.session_store_eviction_unsafe.inc
    )
    live = LiveConnections()
    vault = Vault.from_settings(settings.vault) if settings.vault.keys else None

    def loader_for(channel: str) -> CredentialLoader:
        async def load() -> Secret:
            if vault is None:
                raise VaultError(
                    f"No vault key is configured, so the credential of channel {channel!r} cannot be read."
                )
            return await load_credential(credentials, vault, channel)

        return load

    agent_secrets = AgentSecretRepository(database.engine)
    contexts = {
        name: ConnectorContext(
            name, channel, cached_credential(loader_for(name)), AgentSecrets(name, agent_secrets, vault)
        )
        for name, channel in settings.channels.items()
    }
    connectors = build_connectors(contexts)
    pipeline = PipelineRepository(database.engine)
    timeouts = settings.sessions
    logouts = Logouts(database, SessionEndRepository(database.engine, reads), audit)
    planner = RunPlanner(
        connectors, pipeline, MassDeletionGuard(settings.deprovision.guard, agents, pipeline), audit, metrics
    )
    killer = SessionKiller(
        database,
        agents,
        sessions,
        live,
        audit,
        metrics,
        settings.sessions.revocation_ack_timeout_seconds,
        planner,
        pipeline,
        logouts,
    )
    chain = ChainStore(database.engine)
    return Services(
        settings=settings,
        replica_id=replica_id,
        metrics=metrics,
        database=database,
        agents=agents,
        credentials=credentials,
        audit=audit,
        sessions=sessions,
        cookies=CookiePolicy(secure=not settings.server.insecure_dev_cookies),
        killer=killer,
        revived=RevivedSessions(
            agents,
            sessions,
            audit,
            metrics,
            session_lifetime_seconds=timeouts.absolute_timeout_seconds,
            idle_timeout_seconds=timeouts.idle_timeout_seconds,
            logouts=logouts,
            clock_margin=clock_margin_seconds(timeouts.redis.max_clock_skew_seconds),
        ),
        logouts=logouts,
        pipeline=pipeline,
        vault=vault,
        connectors=connectors,
        connector_contexts=contexts,
        groups=GroupRepository(database.engine),
        scim_tokens=ScimTokenRepository(database.engine, reads),
        reads=reads,
        sealer=Sealer(
            chain,
            settings.audit,
            metrics,
            CheckpointSigner(settings.audit.checkpoints),
            open_sink(settings.audit.checkpoints),
            retention=Retention(ChainPurger(chain), settings.audit),
        ),
        live=live,
    )


def start_worker(services: Services) -> PipelineWorker:
    """The pipeline worker of this process; the killer wakes it when it queues a run."""
    worker = PipelineWorker(
        services.settings.deprovision, services.pipeline, services.connectors, services.metrics, services.replica_id
    )
    services.worker = worker
    services.killer.on_enqueued = worker.wake
    return worker


def open_gateway(settings: Settings, replica_id: str | None = None) -> Services:
    """Everything the HTTP gateway needs on top of the core."""
    services = open_core(settings, replica_id)
    # A serving replica stamps session ends with its own clock while the replicas' vote agrees with it.
    sessions = services.sessions
    services.killer.end_clock.trusted = lambda: not sessions.clock_skewed
    timeout = aiohttp.ClientTimeout(total=settings.oidc.http_timeout_seconds)
    services.idp_http = aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar())
    services.oidc = OidcClient(settings.oidc, services.public_url + "/.channelgate/callback", services.idp_http)
    services.signer = AssertionSigner(settings.assertion, services.public_url)
    for context in services.connector_contexts.values():
        context.assertions = services.signer
    services.upstream = UpstreamClient()
    services.routes = RouteTable(settings.routes)
    services.policy = PolicyPoint(settings.policies, settings.server.trusted_proxies)
    services.scim = open_scim(services)
    return services


def open_scim(services: Services, *, fast_lookups: bool = True) -> ScimApplication:
    """The SCIM endpoint on the gateway's database, deprovisioning through the gateway's killer.

    ``fast_lookups=False`` serves every request through the engine (the reference the lookup path is tested
    against).
    """
    # Imported here: the CLI opens only the core, and the SCIM stack is half of its start-up time.
    from scim.app import ScimApplication
    from scim.storage import DatabaseStorage
    from scim.triggers import GatewayLifecycle

    lifecycle = GatewayLifecycle(
        services.killer, services.sessions, services.groups, services.agents, lambda: services.clock()
    )
    storage = DatabaseStorage(
        services.database.engine, services.agents, services.groups, lifecycle, reads=services.reads
    )
    return ScimApplication(
        storage,
        services.scim_tokens,
        services.agents,
        lifecycle,
        services.audit,
        services.public_url,
        fast_lookups=fast_lookups,
    )
