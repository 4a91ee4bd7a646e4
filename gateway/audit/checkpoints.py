"""Signed checkpoints of the chain, written outside the database.

A hash chain alone proves nothing against someone who can rewrite the database: they rewrite the chain too, or
cut its tail. So the head is signed (Ed25519, RFC 8032) every ``[audit.checkpoints] interval_seconds`` and the
signed line is written to a sink the database cannot reach (a file on other storage, or an HTTPS collector) —
CloudTrail's digest files and RFC 5848's signature blocks do the same. Each checkpoint names the SHA-256 of the
previous one, so a deleted checkpoint is seen too, and the id of the key that signed it, so keys can rotate:
retired public keys stay in ``trusted_keys``.

A checkpoint line is JSON: ``{"v":1,"number":n,"chain_pos":p,"seq":s,"hash":h,"time":t,"key_id":k,
"previous":sha256(previous line),"signature":base64(Ed25519 over the line without "signature")}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.audit.canonical import GENESIS, canonical_time
from gateway.audit.settings import CheckpointSettings, host_port
from gateway.errors import ChannelgateError, ConfigError
from gateway.storage.audit_chain import ChainHead

FORMAT_VERSION = 1


class CheckpointSinkError(ChannelgateError):
    """A checkpoint could not be written to its sink; it stays queued and is retried."""

    status = 503
    code = "checkpoint_sink_unavailable"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    number: int
    chain_pos: int
    seq: int
    hash: str
    time: str
    key_id: str
    previous: str
    signature: str
    #: The line exactly as written (what ``previous`` of the next one hashes).
    line: str


def generate_key() -> tuple[str, str]:
    """A new Ed25519 key pair as (private, public), each base64 of its 32 raw bytes."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes_raw()
    return base64.b64encode(private).decode(), public_key_text(key.public_key())


def public_key_text(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def _raw_key(name: str, text: str, kind: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"[audit.checkpoints] {kind} {name!r} must be base64 of 32 bytes (channelgate audit keygen)")
    return raw


class CheckpointSigner:
    """Signs with the active key; knows every trusted public key (the signing keys' own and retired ones)."""

    def __init__(self, settings: CheckpointSettings) -> None:
        self._keys = {
            name: Ed25519PrivateKey.from_private_bytes(_raw_key(name, secret.get_secret_value(), "signing key"))
            for name, secret in settings.signing_keys.items()
        }
        self.active_key = settings.active_key
        self.trusted: dict[str, Ed25519PublicKey] = {
            name: Ed25519PublicKey.from_public_bytes(_raw_key(name, value, "trusted key"))
            for name, value in settings.trusted_keys.items()
        }
        for name, key in self._keys.items():
            self.trusted[name] = key.public_key()

    @property
    def enabled(self) -> bool:
        return self.active_key is not None

    def sign(self, number: int, head: ChainHead, previous_line: str | None, at: datetime) -> tuple[str, str]:
        """The checkpoint line of ``head`` and the key id that signed it."""
        if self.active_key is None:
            raise ConfigError("[audit.checkpoints] has no signing key (channelgate audit keygen)")
        body = {
            "v": FORMAT_VERSION,
            "number": number,
            "chain_pos": head.chain_pos,
            "seq": head.seq or 0,
            "hash": head.hash,
            "time": canonical_time(at),
            "key_id": self.active_key,
            "previous": GENESIS if previous_line is None else line_digest(previous_line),
        }
        signature = self._keys[self.active_key].sign(_signed_bytes(body))
        line = json.dumps({**body, "signature": base64.b64encode(signature).decode()}, separators=(",", ":"))
        return line, self.active_key


def _signed_bytes(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def line_digest(line: str) -> str:
    return hashlib.sha256(line.strip().encode()).hexdigest()


def parse_checkpoint(line: str, trusted: Mapping[str, Ed25519PublicKey]) -> Checkpoint:
    """Parse and verify one line; raise ValueError saying what is wrong with it."""
    try:
        data = json.loads(line)
        body = {key: data[key] for key in ("v", "number", "chain_pos", "seq", "hash", "time", "key_id", "previous")}
        signature = base64.b64decode(data["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise ValueError("not a checkpoint line") from None
    if set(data) != {*body, "signature"} or body["v"] != FORMAT_VERSION:
        raise ValueError("unknown checkpoint format")
    key = trusted.get(str(body["key_id"]))
    if key is None:
        raise ValueError(f"signed by key {body['key_id']!r}, which is not trusted ([audit.checkpoints] trusted_keys)")
    try:
        key.verify(signature, _signed_bytes(body))
    except InvalidSignature:
        raise ValueError("bad signature (the checkpoint was altered or signed by another key)") from None
    return Checkpoint(
        number=int(body["number"]),
        chain_pos=int(body["chain_pos"]),
        seq=int(body["seq"]),
        hash=str(body["hash"]),
        time=str(body["time"]),
        key_id=str(body["key_id"]),
        previous=str(body["previous"]),
        signature=str(data["signature"]),
        line=line.strip(),
    )


class CheckpointSink(Protocol):
    async def write(self, line: str) -> None: ...

    async def aclose(self) -> None: ...


class FileSink:
    """Appends each checkpoint as a line and fsyncs it before it counts as delivered."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    async def write(self, line: str) -> None:
        try:
            await asyncio.to_thread(self._append, line)
        except OSError as exc:
            raise CheckpointSinkError(f"cannot append to the checkpoint file {self.path}: {exc.strerror}") from None

    async def aclose(self) -> None:
        return None

    def read_lines(self) -> list[str]:
        return [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


class HttpSink:
    """POSTs each checkpoint line (``application/json``) to a collector; any 2xx answer means stored."""

    def __init__(self, url: str, token: str | None) -> None:
        self._url = url
        self._headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
        self._http: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def write(self, line: str) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            async with self._http.post(
                self._url, data=line.encode(), headers=self._headers, timeout=aiohttp.ClientTimeout(total=10)
            ) as response:
                if not 200 <= response.status < 300:
                    raise CheckpointSinkError(f"the checkpoint collector answered {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            host = host_port(self._url)
            reason = type(exc).__name__
            raise CheckpointSinkError(f"the checkpoint collector at {host} is unreachable: {reason}") from None


def open_sink(settings: CheckpointSettings) -> CheckpointSink | None:
    if settings.sink is None:
        return None
    path = file_sink_path(settings)
    if path is not None:
        return FileSink(path)
    token = settings.sink_token.get_secret_value() if settings.sink_token else None
    return HttpSink(settings.sink, token)


def file_sink_path(settings: CheckpointSettings) -> Path | None:
    if settings.sink is None or not settings.sink.startswith("file:"):
        return None
    return Path(urlsplit(settings.sink).path)
