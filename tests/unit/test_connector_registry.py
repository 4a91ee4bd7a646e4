"""The registry: one connector per configured channel, built from its ``kind``; an unknown kind stops start-up."""

from __future__ import annotations

import pytest

from connectors.registry import KINDS, build_connectors
from connectors.secret import Secret
from connectors.static import CredentialLoader, StaticCredentialConnector
from gateway.errors import ConfigError
from gateway.settings import ChannelSettings


def _loader_for(channel: str) -> CredentialLoader:
    async def load() -> Secret:
        return Secret(f"{channel}-token")

    return load


def test_each_channel_gets_a_connector_of_its_kind_named_after_it() -> None:
    built = build_connectors({"chat": ChannelSettings(), "mail": ChannelSettings(inject="basic")}, _loader_for)
    assert set(built) == {"chat", "mail"}
    assert all(isinstance(c, StaticCredentialConnector) for c in built.values())
    assert [c.channel for c in built.values()] == ["chat", "mail"]


def test_an_unknown_kind_is_a_config_error_naming_the_channel_and_the_known_kinds() -> None:
    settings = ChannelSettings.model_construct(kind="oauth2", inject="bearer", header_name=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"voice \('oauth2'\).*static"):
        build_connectors({"chat": ChannelSettings(), "voice": settings}, _loader_for)


def test_every_kind_the_settings_accept_has_a_connector() -> None:
    assert set(ChannelSettings.model_fields["kind"].annotation.__args__) <= set(KINDS)  # type: ignore[union-attr]
