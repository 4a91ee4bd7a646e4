"""Connections to the directory with ldap3: TLS verified by default, a bounded wait for every operation.

LDAPS or StartTLS (RFC 4511 §4.14) with the certificate chain and host name checked against the system's CAs
or ``ca_file``; the bind password comes from the settings or the vault and never reaches a log line or an error
message. ``get_info=NONE``: the server's schema is not re-read on every connection.
"""

from __future__ import annotations

import contextlib
import math
import ssl
from urllib.parse import urlsplit

from ldap3 import ASYNC_STREAM, NONE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException, LDAPInvalidCredentialsResult, LDAPSocketOpenError

from gateway.directory.errors import DirectoryUnavailable
from gateway.directory.settings import LdapSettings


class _StdlibTls(Tls):  # type: ignore[misc]
    """ldap3's ``Tls`` with the standard library doing every check during the handshake (chain, host name or IP
    address, TLS 1.2 at least). ldap3 itself turns the context's host name check off and calls the deprecated
    ``ssl.match_hostname`` afterwards."""

    def __init__(self, settings: LdapSettings) -> None:
        super().__init__(
            validate=ssl.CERT_REQUIRED if settings.verify_certificates else ssl.CERT_NONE,
            ca_certs_file=str(settings.ca_file) if settings.ca_file is not None else None,
        )
        self._verify = settings.verify_certificates

    def wrap_socket(self, connection: Connection, do_handshake: bool = False) -> None:
        context = ssl.create_default_context(cafile=self.ca_certs_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if not self._verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        connection.socket = context.wrap_socket(
            connection.socket, server_hostname=connection.server.host, do_handshake_on_connect=do_handshake
        )


def _server(settings: LdapSettings) -> Server:
    url = urlsplit(settings.url)
    tls = _StdlibTls(settings) if settings.tls else None
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
    connection = Connection(
        _server(settings),
        user=settings.bind_dn,
        password=password,
        client_strategy=client_strategy,
        # Whole seconds (ldap3 packs it into SO_RCVTIMEO). None for the feed: ldap3's receiver thread retries a
        # failed recv forever when a receive timeout is set, spinning once the connection is closed.
        receive_timeout=None if client_strategy == ASYNC_STREAM else math.ceil(settings.timeout_seconds),
        read_only=True,
        raise_exceptions=True,
        auto_referrals=False,
    )
    try:
        _bind(connection, settings)
    except BaseException:
        close(connection)  # a failed open or bind must not leave its socket behind
        raise
    return connection


def _bind(connection: Connection, settings: LdapSettings) -> None:
    where = settings.url
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


def _reason(exc: BaseException) -> str:
    """The error's type and text; ldap3 messages name hosts and causes, not credentials."""
    text = str(exc).strip() or type(exc).__name__
    return text[:300]


def close(connection: Connection) -> None:
    with contextlib.suppress(LDAPException, OSError):
        connection.unbind()
    sock = connection.socket
    if sock is not None:
        # unbind leaves the socket open when the connect or bind never completed
        with contextlib.suppress(OSError):
            sock.close()
