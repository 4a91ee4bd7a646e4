"""One place mapping a channel's ``kind`` to its connector class; a new kind is one line here."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from connectors.base import Connector
from connectors.static import CredentialLoader, StaticCredentialConnector
from gateway.errors import ConfigError
from gateway.settings import ChannelSettings

ConnectorFactory = Callable[[str, ChannelSettings, CredentialLoader], Connector]

KINDS: Mapping[str, ConnectorFactory] = {
    "static": StaticCredentialConnector,
}


def build_connectors(
    channels: Mapping[str, ChannelSettings], credential_loader_factory: Callable[[str], CredentialLoader]
) -> dict[str, Connector]:
    """One connector per configured channel; ``credential_loader_factory(channel)`` reads that channel's vault entry."""
    unknown = sorted(f"{name} ({settings.kind!r})" for name, settings in channels.items() if settings.kind not in KINDS)
    if unknown:
        raise ConfigError(
            f"unknown connector kind for channel {', '.join(unknown)}: known kinds are {', '.join(sorted(KINDS))}"
        )
    return {
        name: KINDS[settings.kind](name, settings, credential_loader_factory(name))
        for name, settings in channels.items()
    }
