"""PostgreSQL connection options from ``[database]``: the password file, TLS with libpq's ``sslmode`` meaning
(PostgreSQL §34.19.1), client and server timeouts.

One function builds the TLS context for the engine and for the worker processes of ``audit verify``, which
connect by DSN: a worker must check the server exactly as the gateway does, or a verify would trust a database the
gateway refuses. A context handed to asyncpg never falls back to plain text.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy.engine import URL, make_url

from gateway.errors import ConfigError
from gateway.settings_stores import DatabaseSettings, read_secret_file

#: The DSN parameters a worker's TLS context is built from (libpq's names).
_TLS_PARAMETERS = ("sslmode", "sslrootcert", "sslcert", "sslkey")


def engine_url(settings: DatabaseSettings) -> URL:
    """``[database] url`` with the password of ``password_file`` filled in."""
    url = make_url(settings.url.get_secret_value())
    if settings.password_file is not None:
        url = url.set(password=read_secret_file(settings.password_file, "database.password_file"))
    return url


def tls_context(
    sslmode: str | None, rootcert: str | None = None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext | bool | str | None:
    """What asyncpg's ``ssl`` argument gets for ``sslmode`` (None: leave asyncpg's default, ``prefer``).

    ``require`` verifies nothing unless a root certificate is named, as in libpq; ``verify-ca`` and ``verify-full``
    fall back to the system's CAs instead of libpq's ``~/.postgresql/root.crt``.
    """
    if sslmode is None or sslmode == "prefer":
        return sslmode
    if sslmode == "disable":
        return False
    try:
        context = ssl.create_default_context(cafile=rootcert)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if sslmode == "require" and rootcert is None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context.check_hostname = sslmode == "verify-full"
        if cert is not None:
            context.load_cert_chain(cert, keyfile=key)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"database TLS files cannot be loaded: {error}") from None
    return context


def connect_args(settings: DatabaseSettings, *, read_only: bool = False) -> dict[str, Any]:
    """asyncpg's connection arguments for the engine (``create_async_engine(connect_args=...)``)."""
    server_settings = {"application_name": "channelgate"}
    if read_only:
        server_settings["default_transaction_read_only"] = "on"
    if settings.statement_timeout_seconds is not None:
        server_settings["statement_timeout"] = str(int(settings.statement_timeout_seconds * 1000))
    args: dict[str, Any] = {"timeout": settings.connect_timeout_seconds, "server_settings": server_settings}
    if settings.command_timeout_seconds is not None:
        args["command_timeout"] = settings.command_timeout_seconds
    context = tls_context(
        settings.sslmode,
        _text(settings.sslrootcert),
        _text(settings.sslcert),
        _text(settings.sslkey),
    )
    if context is not None:
        args["ssl"] = context
    return args


def worker_dsn(settings: DatabaseSettings) -> str:
    """A plain ``postgresql://`` DSN for a worker process, TLS settings as libpq query parameters."""
    url = engine_url(settings).set(drivername="postgresql")
    query = {
        name: str(value)
        for name, value in zip(
            _TLS_PARAMETERS, (settings.sslmode, settings.sslrootcert, settings.sslcert, settings.sslkey), strict=True
        )
        if value is not None
    }
    return url.update_query_dict(query).render_as_string(hide_password=False)


def worker_connect_kwargs(dsn: str) -> dict[str, Any]:
    """``asyncpg.connect`` arguments for a DSN made by :func:`worker_dsn`: its TLS parameters become the same
    context the engine uses."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    tls = {name: query.pop(name, None) for name in _TLS_PARAMETERS}
    kwargs: dict[str, Any] = {"dsn": urlunsplit(parts._replace(query=urlencode(query)))}
    context = tls_context(tls["sslmode"], tls["sslrootcert"], tls["sslcert"], tls["sslkey"])
    if context is not None:
        kwargs["ssl"] = context
    return kwargs


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)
