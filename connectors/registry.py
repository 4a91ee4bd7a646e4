"""One place mapping a channel's ``kind`` to its connector class."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from connectors.base import Connector
from connectors.static import CredentialLoader, StaticCredentialConnector
from gateway.errors import ConfigError
from gateway.settings import ChannelSettings


def build_connectors(
    channels: Mapping[str, ChannelSettings], loader_for: Callable[[str], CredentialLoader]
) -> dict[str, Connector]:
    connectors: dict[str, Connector] = {}
    for name, settings in channels.items():
        if settings.kind == "static":
            connectors[name] = StaticCredentialConnector(name, settings, loader_for(name))
        else:  # pragma: no cover - the settings model admits only known kinds
            raise ConfigError(f"channel {name!r}: unknown connector kind {settings.kind!r}")
    return connectors
