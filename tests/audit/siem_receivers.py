"""Fake SIEMs speaking the real protocols: a syslog receiver over TLS or TCP (RFC 5425 octet-counting frames) and
an HTTPS collector, both on a loopback port that can be stopped and served again; and a test PKI made with
``cryptography`` (a CA, server certificates for 127.0.0.1 or for another name)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.components.asgi_server import bound_socket

HOST = "127.0.0.1"


@dataclass
class Pki:
    """A CA whose certificate is ``ca_file``, and the server certificates it issued."""

    directory: Path
    name: str = "test-ca"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = self.directory / f"{self.name}.pem"
        self.ca_file.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def server_context(self, *, ip: str | None = HOST, dns: str | None = None) -> ssl.SSLContext:
        """A server TLS context with a certificate for ``ip`` and/or ``dns`` issued by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        if ip is not None:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        if dns is not None:
            names.append(x509.DNSName(dns))
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns or ip or "server")]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        stem = self.directory / f"server-{x509.random_serial_number()}"
        cert_file, key_file = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        return context


class SyslogReceiver:
    """A syslog collector (RFC 5425 / RFC 6587 octet counting). ``messages`` keeps every complete frame across
    restarts; ``stop`` drops every connection at once (a frame cut in half is not kept, as a real receiver would)."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.sock = bound_socket()
        self.port: int = self.sock.getsockname()[1]
        self.messages: list[str] = []
        self.connections = 0
        self.handshake_failures = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.arrived = asyncio.Event()

    async def start(self) -> None:
        if self.sock.fileno() == -1:
            self.sock = bound_socket(self.port)
        self._server = await asyncio.start_server(self._handle, sock=self.sock, ssl=self.tls)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None
        self.sock.close()

    def pause(self) -> None:
        """Stop reading (a SIEM that cannot keep up): the sender's bytes pile up in the kernel, then in its own
        buffer, and its writes must wait."""
        for writer in self._writers:
            cast(asyncio.Transport, writer.transport).pause_reading()

    def resume(self) -> None:
        for writer in self._writers:
            cast(asyncio.Transport, writer.transport).resume_reading()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                length = await reader.readuntil(b" ")
                assert length[:-1].isdigit() and not length.startswith(b"0"), length  # MSG-LEN = NONZERO-DIGIT *DIGIT
                frame = await reader.readexactly(int(length[:-1]))
                self.messages.append(frame.decode("utf-8"))
                self.arrived.set()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


class HttpsCollector:
    """An HTTPS endpoint taking POSTed batches: 2xx when ``answer`` is 200, else that status (and nothing kept)."""

    def __init__(self, tls: ssl.SSLContext, token: str) -> None:
        self.tls = tls
        self.token = token
        self.sock = bound_socket()
        self.port: int = self.sock.getsockname()[1]
        self.bodies: list[tuple[str, str]] = []
        self.answer = 200
        self.refused = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}/ingest"

    async def _ingest(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            self.refused += 1
            return web.Response(status=401)
        body = await request.text()
        if self.answer != 200:
            self.refused += 1
            return web.Response(status=self.answer)
        self.bodies.append((request.headers.get("Content-Type", ""), body))
        return web.Response(status=202)

    async def start(self) -> None:
        if self.sock.fileno() == -1:
            self.sock = bound_socket(self.port)
        app = web.Application()
        app.router.add_post("/ingest", self._ingest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self.sock, ssl_context=self.tls).start()

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        self._runner = None
        with contextlib.suppress(OSError):
            self.sock.close()

    def lines(self) -> list[str]:
        return [line for _, body in self.bodies for line in body.splitlines()]
