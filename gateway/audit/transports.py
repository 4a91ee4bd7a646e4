"""How a batch of formatted records reaches a SIEM: syslog over TCP or TLS, or an HTTPS POST.

``send`` returns only once the batch is delivered as far as the protocol can tell, and raises ``ForwardingFailed``
otherwise; the forwarder advances its cursor only after ``send`` returned, so a failure means a resend (at least
once), never a gap.

Syslog (RFC 5425 over TLS, RFC 6587 over plain TCP) uses octet-counting framing (``MSG-LEN SP SYSLOG-MSG``,
RFC 5425 §4.3, RFC 6587 §3.4.1): a record is never split or joined by a line break inside it. Syslog has no
acknowledgement, so "delivered" means handed to the receiver's TCP stack: the write buffer is drained to zero
and, after a short settle time, the connection must still be open. A receiver that closed (or reset) the
connection in between makes the batch fail and be sent again — the known weakness of plain TCP syslog
("On the (un)reliability of plain tcp syslog", R. Gerhards, 2008) narrowed, not removed. HTTPS is acknowledged:
only a 2xx answer to the POST counts.

TLS always verifies the certificate chain (``ca_file`` or the system's store) and the host name
(RFC 5425 §5.2, RFC 9110 §4.3.4), with TLS 1.2 at least; there is no switch to turn that off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp

from gateway.audit.settings import ForwarderSettings, host_port
from gateway.errors import ChannelgateError

CONNECT_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0
#: How long a drained syslog batch waits for a closing receiver to show itself before it counts as delivered.
SETTLE_SECONDS = 0.05


class ForwardingFailed(ChannelgateError):
    """A batch could not be delivered to the SIEM; it is sent again after a backoff."""

    status = 503
    code = "siem_forwarding_failed"


class Transport(Protocol):
    async def send(self, lines: Sequence[str]) -> None: ...

    async def close(self) -> None: ...


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificate and host name verified (``create_default_context``), TLS 1.2 or later."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ForwardingFailed(f"cannot read the CA file {ca_file!r}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def octet_counted(line: str) -> bytes:
    """One syslog frame: ``MSG-LEN SP SYSLOG-MSG`` (RFC 5425 §4.3), the length in octets of the UTF-8 message."""
    message = line.encode("utf-8")
    return b"%d %s" % (len(message), message)


class SyslogTransport:
    def __init__(self, name: str, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self._name = name
        self._host = host
        self._port = port
        self._tls = tls
        self._writer: asyncio.StreamWriter | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._peer_closed = False

    async def send(self, lines: Sequence[str]) -> None:
        writer = await self._connection()
        try:
            for line in lines:
                writer.write(octet_counted(line))
            await asyncio.wait_for(self._flushed(writer), SEND_TIMEOUT)
            await asyncio.sleep(SETTLE_SECONDS)
        except (OSError, TimeoutError) as exc:
            await self.close()
            where, reason = f"{self._host}:{self._port}", str(exc) or type(exc).__name__
            raise ForwardingFailed(f"forwarder {self._name}: sending to {where} failed: {reason}") from None
        if self._peer_closed or writer.is_closing():
            await self.close()
            raise ForwardingFailed(f"forwarder {self._name}: {self._host}:{self._port} closed the connection")

    async def _flushed(self, writer: asyncio.StreamWriter) -> None:
        """Wait until the transport handed every byte to the socket (``drain`` alone only waits for the buffer to
        fall below its high-water mark). A receiver that stops reading keeps this waiting: back-pressure."""
        await writer.drain()
        while writer.transport.get_write_buffer_size() > 0:
            if self._peer_closed or writer.is_closing():
                raise ConnectionResetError("the receiver closed the connection")
            await asyncio.sleep(0.005)

    async def _connection(self) -> asyncio.StreamWriter:
        if self._writer is not None and (self._peer_closed or self._writer.is_closing()):
            await self.close()
        if self._writer is not None:
            return self._writer
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self._host, self._port, ssl=self._tls, server_hostname=self._host if self._tls else None
                ),
                CONNECT_TIMEOUT,
            )
        except ssl.SSLCertVerificationError as exc:
            raise ForwardingFailed(
                f"forwarder {self._name}: the certificate of {self._host}:{self._port} is not trusted "
                f"({exc.verify_message}); nothing was sent"
            ) from None
        except (OSError, TimeoutError) as exc:
            raise ForwardingFailed(
                f"forwarder {self._name}: cannot connect to {self._host}:{self._port}: {exc or 'timed out'}"
            ) from None
        self._writer, self._peer_closed = writer, False
        self._watcher = asyncio.create_task(self._watch(reader), name=f"channelgate-forwarder-{self._name}-peer")
        return writer

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        """A syslog receiver never answers: anything but silence (EOF, a reset) means the connection is gone."""
        with contextlib.suppress(OSError, ssl.SSLError):
            while await reader.read(4096):
                pass
        self._peer_closed = True

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        watcher, self._watcher = self._watcher, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2.0)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


class HttpsTransport:
    """One POST per batch: the records joined by ``\\n``; a 2xx answer is the acknowledgement. Redirects are
    not followed (the bearer token would go where the forwarder was not configured to send it)."""

    def __init__(self, name: str, url: str, media_type: str, token: str | None, tls: ssl.SSLContext | None) -> None:
        self._name = name
        self._url = url
        self._headers = {"Content-Type": media_type}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None

    async def send(self, lines: Sequence[str]) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._tls if self._tls is not None else False, limit=1)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT, connect=CONNECT_TIMEOUT),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        body = ("\n".join(lines) + "\n").encode("utf-8")
        try:
            async with self._session.post(
                self._url, data=body, headers=self._headers, allow_redirects=False
            ) as response:
                status = response.status
                await response.read()
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ForwardingFailed(
                f"forwarder {self._name}: the certificate of {host_port(self._url)} is not trusted "
                f"({exc.certificate_error}); nothing was sent"
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ForwardingFailed(f"forwarder {self._name}: POST to the SIEM failed: {type(exc).__name__}") from None
        if not 200 <= status < 300:
            raise ForwardingFailed(f"forwarder {self._name}: the SIEM answered HTTP {status}")

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def transport_for(settings: ForwarderSettings, media_type: str) -> Transport:
    parts = urlsplit(settings.url)
    host = parts.hostname or ""
    if parts.scheme in ("syslog+tcp", "syslog+tls"):
        tls = tls_context(settings.ca_file) if parts.scheme == "syslog+tls" else None
        return SyslogTransport(settings.name, host, parts.port or 6514, tls)
    token = settings.token.get_secret_value() if settings.token is not None else None
    tls = tls_context(settings.ca_file) if parts.scheme == "https" else None
    return HttpsTransport(settings.name, settings.url, media_type, token, tls)
