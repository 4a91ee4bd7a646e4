"""One place mapping a channel's ``kind`` to its connector class; a new kind is one line here."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from connectors.base import Connector
from connectors.context import ConnectorContext
from connectors.cookie_jar import CookieJarConnector
from connectors.oauth2 import OAuth2Connector
from connectors.seats import SeatsConnector
from connectors.static import StaticCredentialConnector
from gateway.errors import ConfigError

ConnectorFactory = Callable[[ConnectorContext], Connector]

KINDS: Mapping[str, ConnectorFactory] = {
    "static": StaticCredentialConnector.from_context,
    "oauth2": OAuth2Connector.from_context,
    "seats": SeatsConnector.from_context,
    "cookie_jar": CookieJarConnector.from_context,
}


def build_connectors(contexts: Mapping[str, ConnectorContext]) -> dict[str, Connector]:
    """One connector per configured channel."""
    unknown = sorted(f"{name} ({c.settings.kind!r})" for name, c in contexts.items() if c.settings.kind not in KINDS)
    if unknown:
        raise ConfigError(
            f"unknown connector kind for channel {', '.join(unknown)}: known kinds are {', '.join(sorted(KINDS))}"
        )
    return {name: KINDS[context.settings.kind](context) for name, context in contexts.items()}
