"""The connector's part in a proxied exchange, shaped like an httpx ``Auth`` flow: inject, send, and on a refusal
refresh once and resend (connectors/base.py).

What a channel needs is decided once per connector (:class:`ChannelPlan`), never per request, so a static
channel's request pays for nothing it does not use: which client headers go (the assertion header, the
connector's own, and for a cookie jar every browser cookie, so a console cookie planted in the browser never
reaches the console), whether the upstream's headers pass through the connector first (``COOKIE_JAR``: its
``Set-Cookie`` lines are taken out before the browser sees anything), and what counts as "refused": a 401, and
for a cookie jar a redirect to the console's login form (its session is gone). A redirect answering the login
or logout page itself is passed on: following it would log in only to be sent there again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from connectors.base import AgentRef, Capability, Connector, UpstreamRequest
from connectors.cookie_jar import REDIRECTS, login_redirect
from gateway.metrics import Metrics
from gateway.proxy.forward import ResponseHook
from gateway.settings import ChannelSettings, CookieJarChannelSettings


@dataclass(frozen=True, slots=True)
class ChannelPlan:
    """What the proxy does around one channel's connector."""

    channel: str
    connector: Connector
    #: Client headers removed (any spelling) before the connector adds its own.
    strip: tuple[str, ...]
    #: ``COOKIE_JAR``: the connector sees every upstream answer's headers before the client does.
    keeps_cookies: bool = False
    #: ``COOKIE_JAR``: a redirect here means the console session is gone.
    login_path: str | None = None
    logout_path: str | None = None

    @classmethod
    def of(cls, channel: str, connector: Connector, settings: ChannelSettings, assertion_header: str) -> ChannelPlan:
        strip = (assertion_header, *connector.injected_headers())
        if Capability.COOKIE_JAR not in connector.capabilities:
            return cls(channel, connector, strip)
        login = settings if isinstance(settings, CookieJarChannelSettings) else None
        return cls(
            channel,
            connector,
            (*strip, "Cookie"),
            keeps_cookies=True,
            login_path=login.login_path if login else None,
            logout_path=login.logout_path if login else None,
        )

    def response_hook(self, agent: AgentRef) -> ResponseHook | None:
        """For a cookie jar: hand every upstream answer's headers to the connector (``on_upstream_response``)."""
        if not self.keeps_cookies:
            return None
        connector = self.connector

        async def hook(status: int, headers: list[tuple[str, str]]) -> None:
            await connector.on_upstream_response(agent, status, headers)

        return hook


class ConnectorResend:
    """One request's resend after a refusal (``forward.Resend``), counted per channel and outcome."""

    __slots__ = ("_agent", "_metrics", "_plan", "_request")

    def __init__(self, plan: ChannelPlan, agent: AgentRef, request: UpstreamRequest, metrics: Metrics) -> None:
        self._plan = plan
        self._agent = agent
        self._request = request
        self._metrics = metrics

    def wanted(self, status: int, headers: Mapping[str, str]) -> bool:
        if status == 401:
            return True
        login = self._plan.login_path
        if login is None or status not in REDIRECTS:
            return False
        if urlsplit(self._request.url).path in (login, self._plan.logout_path):
            return False
        return login_redirect(status, headers.get("Location"), self._request.url, login)

    async def fresh_headers(self) -> list[tuple[str, str]] | None:
        resend = await self._plan.connector.on_upstream_unauthorized(self._agent, self._request)
        self._metrics.upstream_refusal(self._plan.channel, "resent" if resend else "passed_on").inc()
        return self._request.headers if resend else None

    def not_replayable(self) -> None:
        self._metrics.upstream_refusal(self._plan.channel, "body_not_replayable").inc()
