"""``[ldap]``: where the directory is, how to read it, and how a sync is held back when it would disable too many."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.settings_section import Section

#: How the directory says an account is disabled (any one of those configured suffices); ``account_expires`` is
#: AD's accountExpires once the sync's clock has reached it.
DisableMechanism = Literal["user_account_control", "ppolicy_lock", "ns_account_lock", "account_expires"]
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class LdapAttributeMap(Section):
    """Directory attribute names per agent field. The defaults suit OpenLDAP; Active Directory uses
    ``entry_id = "objectGUID"``, ``user_name = "sAMAccountName"`` and ``changed = "whenChanged"``."""

    #: A stable identifier that survives renames and moves (RFC 4530 entryUUID; AD objectGUID).
    entry_id: str = "entryUUID"
    user_name: str = "uid"
    email: str = "mail"
    display_name: str = "displayName"
    employee_number: str = "employeeNumber"
    #: The manager's DN; the manager, when synced too, becomes the agent's successor for open work.
    manager: str = "manager"
    group_name: str = "cn"
    member: str = "member"
    member_of: str = "memberOf"
    #: The high-water mark of the incremental sync: GeneralizedTime (RFC 4517 §3.3.13) such as modifyTimestamp
    #: or AD's whenChanged, or AD's uSNChanged (a number local to one domain controller: then name that DC).
    changed: str = "modifyTimestamp"


class LdapQuarantineSettings(Section):
    """A sync that would disable more than ``max_share`` of the directory's active agents (and at least
    ``min_agents``) within ``window_seconds`` disables nobody until an admin approves (``channelgate ldap approve``)."""

    max_share: Annotated[float, Field(gt=0, le=1)] = 0.10
    min_agents: Annotated[int, Field(ge=1)] = 10
    window_seconds: Annotated[float, Field(gt=0)] = 3600.0


class LdapSettings(Section):
    """One directory (OpenLDAP, 389 DS or Active Directory) whose agents and groups channelgate mirrors."""

    #: Names the directory in the access log (actor ``ldap:<name>``) and the vault (its bind password).
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")] = "directory"
    #: ``ldaps://host[:636]`` or ``ldap://host[:389]`` with ``start_tls = true``; plain LDAP only on loopback.
    url: str
    start_tls: bool = False
    #: Certificate verification (hostname and chain); turning it off is refused outside loopback.
    verify_certificates: bool = True
    #: PEM bundle of the CAs to trust instead of the system's.
    ca_file: Path | None = None
    bind_dn: str
    #: Prefer the vault (``channelgate ldap set-bind-password``); this setting, when present, wins.
    bind_password: SecretStr | None = None
    users_base: str
    users_filter: str = "(objectClass=inetOrgPerson)"
    groups_base: str | None = None
    groups_filter: str = "(|(objectClass=groupOfNames)(objectClass=group))"
    #: DN of the group whose (possibly nested) members are the agents: leaving it disables the agent.
    agents_group: str | None = None
    #: ``local``: nested groups resolved from the group entries read; ``in_chain``: the agents group's members
    #: asked of the server with LDAP_MATCHING_RULE_IN_CHAIN (1.2.840.113556.1.4.1941, Active Directory).
    nested_groups: Literal["local", "in_chain"] = "local"
    disabled_when: tuple[DisableMechanism, ...] = (
        "user_account_control",
        "ppolicy_lock",
        "ns_account_lock",
        "account_expires",
    )
    attributes: LdapAttributeMap = Field(default_factory=LdapAttributeMap)
    #: Simple paged results (RFC 2696): entries per page.
    page_size: Annotated[int, Field(ge=1, le=10000)] = 500
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    incremental_interval_seconds: Annotated[float, Field(gt=0)] = 60.0
    full_interval_seconds: Annotated[float, Field(gt=0)] = 3600.0
    #: ``auto``: follow the RFC 4533 refreshAndPersist feed when the server offers it (OpenLDAP syncprov).
    change_feed: Literal["auto", "off"] = "auto"
    #: Changes from the feed arriving within this window are applied together.
    feed_batch_seconds: Annotated[float, Field(ge=0, le=5)] = 0.05
    reconnect_max_seconds: Annotated[float, Field(gt=0)] = 60.0
    quarantine: LdapQuarantineSettings = Field(default_factory=LdapQuarantineSettings)

    @field_validator("ca_file")
    @classmethod
    def _ca_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(
                f"{value} is not a file (the PEM bundle of the CAs that issued the directory's certificate)"
            )
        return value

    @field_validator("bind_password", mode="before")
    @classmethod
    def _password_as_text(cls, value: object) -> object:
        # CHANNELGATE_LDAP__BIND_PASSWORD=12345 arrives parsed as a TOML integer; a password is always text.
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        url = urlsplit(value)
        if url.scheme not in {"ldap", "ldaps"} or not url.hostname or url.path not in {"", "/"}:
            raise ValueError("url must be ldaps://host[:port] or ldap://host[:port] (no base DN in the URL)")
        return value

    @model_validator(mode="after")
    def _transport_is_protected(self) -> LdapSettings:
        url = urlsplit(self.url)
        loopback = url.hostname in _LOOPBACK
        if url.scheme == "ldap" and not self.start_tls and not loopback:
            raise ValueError("plain ldap:// would send the bind password in clear: use ldaps:// or start_tls = true")
        if url.scheme == "ldaps" and self.start_tls:
            raise ValueError("start_tls is for ldap:// URLs; ldaps:// is TLS from the first byte")
        if not self.verify_certificates and not loopback:
            raise ValueError("verify_certificates = false is allowed only for a loopback directory (development)")
        if self.full_interval_seconds < self.incremental_interval_seconds:
            raise ValueError("full_interval_seconds must not be shorter than incremental_interval_seconds")
        return self

    @property
    def tls(self) -> bool:
        return self.start_tls or urlsplit(self.url).scheme == "ldaps"
