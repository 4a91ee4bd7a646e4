"""Settings of the channel consoles (``[channels.NAME]``, by connector ``kind``) and of the routes to them
(``[[routes]]`` with their personal-data rules ``[[routes.data]]``); part of ``gateway.settings``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AnyHttpUrl,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from gateway.settings_section import HeaderName
from gateway.settings_section import Section as _Section


class TicketSettings(_Section):
    """A channel's REST ticket API, used to hand a departing agent's open tickets to a successor (issue 4)."""

    #: Base URL of the ticket API (``GET {url}tickets?assignee=…&status=open``, ``POST {url}tickets/{id}/assign``).
    url: AnyHttpUrl
    #: Where open tickets go when the agent has no successor (no manager, none given on the command line).
    fallback_queue: str

    @field_validator("url")
    @classmethod
    def _trailing_slash(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        if not str(value).endswith("/"):
            raise ValueError("url must end with '/' (the ticket API's base, for example http://host/api/)")
        return value


class _ChannelBase(_Section):
    display_name: str | None = None
    #: The channel's ticket API, if it has one: the deprovisioning pipeline hands open tickets over through it.
    tickets: TicketSettings | None = None
    #: Time limit of one call to the channel's admin, token or ticket API (the pipeline retries after it).
    api_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0


class StaticChannelSettings(_ChannelBase):
    """``kind = "static"``: one shared credential from the vault, injected for every agent."""

    kind: Literal["static"] = "static"
    #: How the credential is presented upstream.
    inject: Literal["bearer", "header", "basic"] = "bearer"
    #: For ``inject = "header"``: the header name.
    header_name: HeaderName | None = None

    @model_validator(mode="after")
    def _header_name(self) -> StaticChannelSettings:
        if self.inject == "header" and not self.header_name:
            raise ValueError("inject = 'header' needs header_name")
        return self


class OAuth2ChannelSettings(_ChannelBase):
    """``kind = "oauth2"``: per-agent OAuth 2.0 tokens the gateway obtains at the channel's authorization server
    (RFC 8693 token exchange, the gateway's identity assertion as subject token), caches, refreshes, and revokes
    on deprovisioning (RFC 7009); verified gone by introspection (RFC 7662). The client secret is the channel's
    vault credential (``channelgate channels set-credential``)."""

    kind: Literal["oauth2"]
    token_url: AnyHttpUrl
    revocation_url: AnyHttpUrl
    introspection_url: AnyHttpUrl
    client_id: str
    scope: str | None = None
    #: Refresh an access token this long before it expires, so a request never carries one about to lapse.
    refresh_margin_seconds: Annotated[float, Field(ge=0)] = 30.0


class SeatsChannelSettings(_ChannelBase):
    """``kind = "seats"``: a per-agent seat created through the vendor's REST admin API (admin key = the
    channel's vault credential); the seat's own API key is kept in the vault and injected upstream. On
    deprovisioning the seat is disabled, and deleted once approved when ``remove = "delete"``."""

    kind: Literal["seats"]
    #: Base URL of the seats admin API (``{admin_url}seats``, ``{admin_url}seats/{userName}``).
    admin_url: AnyHttpUrl
    inject: Literal["bearer", "header"] = "bearer"
    header_name: HeaderName | None = None
    remove: Literal["disable", "delete"] = "disable"
    #: A side-effect-free URL at the console that answers 2xx to a live seat key and 401/403 to any other (like
    #: Slack's ``auth.test``); when set, the final check also proves the agent's old key is refused there.
    key_check_url: AnyHttpUrl | None = None

    @field_validator("admin_url")
    @classmethod
    def _admin_base(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        if not str(value).endswith("/"):
            raise ValueError("admin_url must end with '/' (the admin API's base, for example http://host/admin/)")
        return value

    @model_validator(mode="after")
    def _header_name(self) -> SeatsChannelSettings:
        if self.inject == "header" and not self.header_name:
            raise ValueError("inject = 'header' needs header_name")
        return self


class CookieJarChannelSettings(_ChannelBase):
    """``kind = "cookie_jar"``: a legacy console with a login form. The gateway logs in as the agent (the
    agent's console password is in the vault: ``channelgate channels set-agent-password``), keeps the console's
    cookies server-side (never sent to the browser) and logs the console session out on deprovisioning."""

    kind: Literal["cookie_jar"]
    #: The console's origin (the login form and logout are under it).
    console_url: AnyHttpUrl
    #: Paths on the console's origin. A redirect to ``login_path`` means "session gone": the gateway logs in again.
    login_path: str = "/login"
    logout_path: str = "/logout"
    username_field: str = "username"
    password_field: str = "password"  # noqa: S105 - the form field's name, not a password
    #: The console's listing of a user's live sessions (``GET {sessions_path}?user=U``, the channel's vault
    #: credential as ``Authorization: Bearer``), asked to verify that none survived a deprovisioning. Leave it
    #: empty for a console without one: the kind then does not declare ``verify``.
    sessions_path: str = "/admin/sessions"

    @field_validator("login_path", "logout_path", "sessions_path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if value and (not value.startswith("/") or value.startswith("//") or any(c in value for c in "?#\\")):
            raise ValueError("must be an absolute path on the console's origin, such as '/login'")
        return value

    @model_validator(mode="after")
    def _login_path_is_set(self) -> CookieJarChannelSettings:
        if not self.login_path or not self.logout_path:
            raise ValueError("login_path and logout_path are required (the console's form login and logout)")
        return self


def _channel_kind(value: Any) -> str:
    # ``kind`` may be left out for the first kind, as before other kinds existed.
    if isinstance(value, Mapping):
        return str(value.get("kind", "static"))
    return str(getattr(value, "kind", "static"))


#: One channel console's connector settings, by ``kind`` (connectors/registry.py maps kinds to classes).
ChannelSettings = Annotated[
    Annotated[StaticChannelSettings, Tag("static")]
    | Annotated[OAuth2ChannelSettings, Tag("oauth2")]
    | Annotated[SeatsChannelSettings, Tag("seats")]
    | Annotated[CookieJarChannelSettings, Tag("cookie_jar")],
    Discriminator(_channel_kind),
]


#: What a request does with personal data (PIPA's access-record "action"; the policy actions of issue 7).
DataAction = Literal["view", "change", "download", "export"]
_SUBJECT_SOURCES = ("path", "query", "body", "header")


class DataRuleSettings(_Section):
    """Which requests of a route touch whose personal data, and what they do with it: the access log's
    ``subject`` (e.g. a customer id) and ``action`` (PIPA safety-measure standard art. 8). The first rule that
    matches decides; a request no rule matches is logged with its method's action (GET: view, else change)."""

    #: The request path (after normalisation): ``{name}`` captures one segment, ``*`` matches one, ``**`` the rest.
    path: str
    #: Methods the rule applies to (any when empty). ``WEBSOCKET`` names WebSocket upgrades, and only them (an
    #: agent sends data over one: give it ``action = "change"``); a rule naming ``GET`` applies to upgrades too.
    methods: tuple[str, ...] = ()
    action: DataAction | None = None
    #: Where the data subject is: ``path:NAME`` (a ``{NAME}`` of ``path``), ``query:NAME``, ``body:NAME`` (a JSON
    #: member, dotted for nested ones, or a form field; bodies up to 64 KiB) or ``header:NAME``.
    subject: str | None = None
    #: The class of personal data the route serves ("customer", "recording", ...), for policies.
    pii: str | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("path must start with '/' (the full request path, prefix included)")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(method.upper() for method in value)

    @model_validator(mode="after")
    def _subject(self) -> DataRuleSettings:
        if self.subject is None:
            return self
        source, _, name = self.subject.partition(":")
        if source not in _SUBJECT_SOURCES or not name:
            raise ValueError("subject must be path:NAME, query:NAME, body:NAME or header:NAME")
        if source == "path" and "{" + name + "}" not in self.path:
            raise ValueError(f"subject names path:{name} but path has no {{{name}}} segment")
        return self


class RouteSettings(_Section):
    """A path prefix (and optional host) mapped to one channel console."""

    channel: str
    prefix: str
    upstream: AnyHttpUrl
    host: str | None = None
    #: IdP groups allowed to open this route (any of them). Empty means nobody.
    allowed_groups: tuple[str, ...] = ()
    strip_prefix: bool = True
    timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    #: Personal-data rules of this route: the access log's subject and action (``[[routes.data]]``).
    data: tuple[DataRuleSettings, ...] = ()

    @model_validator(mode="after")
    def _data_rules_under_prefix(self) -> RouteSettings:
        for rule in self.data:
            if not rule.path.startswith(self.prefix):
                raise ValueError(f"data rule path {rule.path!r} is outside the route's prefix {self.prefix!r}")
        return self

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or not value.endswith("/"):
            raise ValueError("prefix must start and end with '/' (for example '/chat/')")
        if value.startswith("/.channelgate/") or value.startswith("/scim/"):
            raise ValueError("prefix must not shadow /.channelgate/ or /scim/")
        return value


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def check_cookie_jar_routes(channels: Mapping[str, object], routes: Sequence[RouteSettings]) -> None:
    """Every route of a ``cookie_jar`` channel must go to its ``console_url``'s origin (RFC 6454): the agent's
    console session is sent with each of its requests, and must reach no other host."""
    for route in routes:
        channel = channels.get(route.channel)
        if isinstance(channel, CookieJarChannelSettings) and _origin(str(route.upstream)) != _origin(
            str(channel.console_url)
        ):
            raise ValueError(
                f"route {route.prefix!r}{f' on host {route.host!r}' if route.host else ''} of cookie_jar channel "
                f"{route.channel!r} goes to {route.upstream}, another origin than its console_url "
                f"{channel.console_url}: the console's session cookies would be sent there"
            )
