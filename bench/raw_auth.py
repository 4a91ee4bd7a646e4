"""The reference decision endpoint without an ASGI server: an ``asyncio.Protocol`` over httptools answering 200.

bench/trivial_auth.py measures what a decision endpoint costs on uvicorn + Starlette before it decides anything;
this one measures the same answer and the same access-log record without uvicorn's HTTP protocol and ASGI
plumbing (a task, scope and messages per request): the parser is the same (httptools, uvicorn's default), each
request's answer is written from its parser callback. It tells how much of the trivial endpoint's cost is the
server rather than the answer or the record — the part a leaner listener for ``/.channelgate/auth`` could save.
Bench code only: no limits, no timeouts, no error handling a server facing anything but this nginx would need.

    python -m bench.raw_auth --port 9000 --answer headers.json [--log sqlite+aiosqlite:///log.db]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import cast

import httptools
import uvloop
from pydantic import SecretStr

from bench.trivial_auth import ROW_TAIL
from gateway.audit.writer import AuditLog
from gateway.scope import new_request_id
from gateway.settings import DatabaseSettings
from gateway.storage.access_log import AccessLogRepository
from gateway.storage.database import create_engine
from gateway.storage.migrate import upgrade_to_head
from gateway.timeutil import utcnow

#: The access log, with ``--log``.
LOGS: list[AuditLog] = []


class _Answering(asyncio.Protocol):
    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self._url = b""
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_begin(self) -> None:
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        assert self._transport is not None
        if self._url == b"/queued":  # what the bench waits to see drained after a run, as trivial_auth's
            text = str(sum(log.pending for log in LOGS)).encode()
            self._transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(text), text))
            return
        for log in LOGS:
            log.submit_row((utcnow(), "request", new_request_id(), *ROW_TAIL))
        self._transport.write(self._answer)


async def serve(port: int, answer: bytes, log_url: str | None) -> None:
    if log_url is not None:
        settings = DatabaseSettings(url=SecretStr(log_url))
        await upgrade_to_head(settings)
        log = AuditLog(AccessLogRepository(create_engine(settings)))
        log.start()
        LOGS.append(log)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Answering(answer), "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--answer", type=Path, required=True, help="JSON list of [name, value] headers")
    parser.add_argument("--log", metavar="DATABASE_URL", help="queue an access-log record per answer (SQLite)")
    args = parser.parse_args()
    pairs = json.loads(args.answer.read_text(encoding="utf-8"))
    fields = b"".join(f"{str(n).lower()}: {v}\r\n".encode("latin-1") for n, v in pairs)
    uvloop.run(serve(args.port, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n" + fields + b"\r\n", args.log))


if __name__ == "__main__":
    main()
