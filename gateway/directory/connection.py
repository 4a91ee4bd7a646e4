"""Connections to the directory with ldap3: TLS verified by default, a bounded wait for every operation.

LDAPS or StartTLS (RFC 4511 §4.14) with the certificate chain and host name checked against the system's CAs
or ``ca_file``; the bind password comes from the settings or the vault and never reaches a log line or an error
message. ``get_info=NONE``: the server's schema is not re-read on every connection.
"""

from __future__ import annotations

import contextlib
import ssl
from urllib.parse import urlsplit

from ldap3 import NONE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException, LDAPInvalidCredentialsResult, LDAPSocketOpenError

from gateway.directory.errors import DirectoryUnavailable
from gateway.directory.settings import LdapSettings


def _server(settings: LdapSettings) -> Server:
    url = urlsplit(settings.url)
    tls = None
    if settings.tls:
        tls = Tls(
            validate=ssl.CERT_REQUIRED if settings.verify_certificates else ssl.CERT_NONE,
            version=ssl.PROTOCOL_TLS_CLIENT if settings.verify_certificates else ssl.PROTOCOL_TLS,
            ca_certs_file=str(settings.ca_file) if settings.ca_file is not None else None,
        )
    port = url.port or (636 if url.scheme == "ldaps" else 389)
    assert url.hostname is not None  # checked by the settings
    return Server(
        url.hostname,
        port=port,
        use_ssl=url.scheme == "ldaps",
        tls=tls,
        get_info=NONE,
        connect_timeout=settings.timeout_seconds,
    )


def open_connection(settings: LdapSettings, password: str, *, client_strategy: str = "SYNC") -> Connection:
    """A bound connection; raises :class:`DirectoryUnavailable` naming what failed (never the password)."""
    where = settings.url
    connection = Connection(
        _server(settings),
        user=settings.bind_dn,
        password=password,
        client_strategy=client_strategy,
        receive_timeout=settings.timeout_seconds,
        read_only=True,
        raise_exceptions=True,
        auto_referrals=False,
    )
    try:
        connection.open()
        if settings.start_tls:
            connection.start_tls()
        connection.bind()
    except LDAPInvalidCredentialsResult:
        raise DirectoryUnavailable(
            f"The directory {where} refused the bind of {settings.bind_dn!r}: check bind_dn and the bind password "
            "(channelgate ldap set-bind-password)."
        ) from None
    except LDAPSocketOpenError as exc:
        hint = " (is its certificate issued by a CA in ca_file?)" if settings.tls else ""
        raise DirectoryUnavailable(f"Cannot connect to the directory {where}{hint}: {_reason(exc)}") from None
    except (LDAPException, OSError, ssl.SSLError) as exc:
        raise DirectoryUnavailable(f"The directory {where} failed during connect or bind: {_reason(exc)}") from None
    return connection


def _reason(exc: BaseException) -> str:
    """The error's type and text; ldap3 messages name hosts and causes, not credentials."""
    text = str(exc).strip() or type(exc).__name__
    return text[:300]


def close(connection: Connection) -> None:
    with contextlib.suppress(LDAPException, OSError):
        connection.unbind()
