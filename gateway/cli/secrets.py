"""``channels set-credential|set-agent-password`` and ``vault generate-key|rotate``: what the vault holds."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from gateway.cli.common import Subparsers, settings_of
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


def cmd_channels_set_credential(args: argparse.Namespace) -> int:
    from connectors.vault import store_credential
    from gateway.services import open_core
    from gateway.timeutil import utcnow

    settings = settings_of(args)
    if args.channel not in settings.channels:
        raise ConfigError(f"channel {args.channel!r} is not configured (known: {', '.join(settings.channels)})")
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise ConfigError('no credential on standard input (pipe it in: echo "$TOKEN" | channelgate channels ...)')

    async def run() -> None:
        services = open_core(settings)
        try:
            if services.vault is None:
                raise ConfigError("[vault] has no keys: add one (channelgate vault generate-key) first")
            await store_credential(services.credentials, services.vault, args.channel, value.encode(), utcnow())
        finally:
            await services.close()

    asyncio.run(run())
    print(f"credential for channel {args.channel!r} stored (encrypted)")
    return 0


def cmd_channels_set_agent_password(args: argparse.Namespace) -> int:
    """Store an agent's own password at a ``cookie_jar`` channel's console, sealed by the vault; every replica
    signs in with it from the next login on (a password the console refused is tried again at once)."""
    from connectors.cookie_jar import PASSWORD
    from connectors.secret import Secret
    from gateway.errors import NotFound
    from gateway.services import open_core
    from gateway.settings import CookieJarChannelSettings

    settings = settings_of(args)
    channel = settings.channels.get(args.channel)
    if channel is None:
        raise ConfigError(f"channel {args.channel!r} is not configured (known: {', '.join(settings.channels)})")
    if not isinstance(channel, CookieJarChannelSettings):
        raise ConfigError(
            f'channel {args.channel!r} is kind {channel.kind!r}: only kind = "cookie_jar" channels sign in with '
            "an agent's own password"
        )
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise ConfigError(
            "no password on standard input (pipe it in: channelgate channels set-agent-password ... < FILE)"
        )

    async def run() -> str:
        services = open_core(settings)
        try:
            if services.vault is None:
                raise ConfigError("[vault] has no keys: add one (channelgate vault generate-key) first")
            agent = await services.agents.find(args.agent)
            if agent is None:
                raise NotFound(f"no agent has the id or userName {args.agent!r}")
            await services.connector_contexts[args.channel].secrets.put(agent.id, PASSWORD, Secret(value))
            return agent.user_name
        finally:
            await services.close()

    user_name = asyncio.run(run())
    print(f"console password of {user_name} for channel {args.channel!r} stored (encrypted)")
    return 0


def cmd_vault_generate_key(args: argparse.Namespace) -> int:
    from connectors.vault import generate_key

    print(generate_key())
    return 0


def cmd_vault_rotate(args: argparse.Namespace) -> int:
    """Re-seal the channel credentials and every per-agent secret under the active key. A value that cannot be
    opened is named and the rest are still re-sealed; the exit status is then 1, and the old key must stay."""
    from connectors.context import rotate_agent_secrets
    from connectors.vault import Rotation, rotate_all
    from gateway.services import open_core
    from gateway.storage.agent_secrets import AgentSecretRepository
    from gateway.timeutil import utcnow

    async def run() -> Rotation:
        services = open_core(settings_of(args))
        try:
            if services.vault is None:
                raise ConfigError("[vault] has no keys")
            engine = services.database.engine
            rotation = await rotate_all(services.credentials, services.vault, utcnow())
            rows = await _agent_secrets_to_reseal(engine, services.vault.active_key)
            rotation.add(await rotate_agent_secrets(AgentSecretRepository(engine), services.vault, rows))
            return rotation
        finally:
            await services.close()

    rotation = asyncio.run(run())
    print(f"re-encrypted {rotation.resealed} value(s) under the active key")
    for failure in rotation.failures:
        print(f"not re-encrypted: {failure}", file=sys.stderr)
    if rotation.failures:
        print(
            f"{len(rotation.failures)} value(s) are still under an old key: keep that key configured, or store "
            "them again (channels set-credential, channels set-agent-password) before removing it",
            file=sys.stderr,
        )
        return 1
    return 0


async def _agent_secrets_to_reseal(engine: AsyncEngine, active_key: str) -> list[tuple[str, str, str]]:
    """Every ``agent_secrets`` row (agent, channel, name) sealed under another key than ``active_key``, of any
    channel, configured or not."""
    from sqlalchemy import select

    from gateway.storage.schema import agent_secrets

    query = select(agent_secrets.c.agent_id, agent_secrets.c.channel, agent_secrets.c.name).where(
        agent_secrets.c.key_id != active_key
    )
    async with engine.connect() as conn:
        return [(row.agent_id, row.channel, row.name) for row in await conn.execute(query)]


def register(sub: Subparsers) -> None:
    channels = sub.add_parser("channels", help="channel credentials").add_subparsers(dest="ch_command", required=True)
    p = channels.add_parser("set-credential", help="store a channel's credential (read from stdin), encrypted")
    p.add_argument("channel")
    p.set_defaults(func=cmd_channels_set_credential)
    p = channels.add_parser(
        "set-agent-password", help="store an agent's own console password (read from stdin) for a cookie_jar channel"
    )
    p.add_argument("channel")
    p.add_argument("agent", help="agent id or userName")
    p.set_defaults(func=cmd_channels_set_agent_password)

    vault = sub.add_parser("vault", help="vault keys").add_subparsers(dest="vault_command", required=True)
    vault.add_parser("generate-key", help="print a new random AES-256 key").set_defaults(func=cmd_vault_generate_key)
    vault.add_parser("rotate", help="re-encrypt every credential and agent secret under the active key").set_defaults(
        func=cmd_vault_rotate
    )
