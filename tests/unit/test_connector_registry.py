"""The registry: one connector per configured channel, built from its ``kind``; every kind the settings accept
has a connector class."""

from __future__ import annotations

import typing

from connectors.context import AgentSecrets, ConnectorContext
from connectors.registry import KINDS, build_connectors
from connectors.secret import Secret
from connectors.static import StaticCredentialConnector
from gateway.settings import ChannelSettings, StaticChannelSettings
from gateway.storage.agent_secrets import AgentSecretRepository


def _context(channel: str, settings: StaticChannelSettings) -> ConnectorContext:
    async def load() -> Secret:
        return Secret(f"{channel}-token")

    # The repository is never reached: building a connector reads nothing.
    return ConnectorContext(channel, settings, load, AgentSecrets(channel, AgentSecretRepository(None), None))  # type: ignore[arg-type]


def test_each_channel_gets_a_connector_of_its_kind_named_after_it() -> None:
    built = build_connectors(
        {
            "chat": _context("chat", StaticChannelSettings()),
            "mail": _context("mail", StaticChannelSettings(inject="basic")),
        }
    )
    assert set(built) == {"chat", "mail"}
    assert all(isinstance(c, StaticCredentialConnector) for c in built.values())
    assert [c.channel for c in built.values()] == ["chat", "mail"]


def _kinds_the_settings_accept() -> set[str]:
    union = typing.get_args(ChannelSettings)[0]
    members = [typing.get_args(member)[0] for member in typing.get_args(union)]
    return {typing.get_args(member.model_fields["kind"].annotation)[0] for member in members}


def test_every_kind_the_settings_accept_has_a_connector() -> None:
    assert _kinds_the_settings_accept() == {"static", "oauth2", "seats", "cookie_jar"}
    # Kinds still being built are listed here until their connector lands; the list may only shrink.
    pending: set[str] = set() - set(KINDS)
    assert _kinds_the_settings_accept() - pending <= set(KINDS)
