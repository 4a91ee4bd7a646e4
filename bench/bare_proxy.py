"""The baseline a gateway is compared with: a pass-through proxy on the gateway's own stack, with no auth.

uvicorn (same defaults as ``channelgate serve``: loop ``auto`` → uvloop, http ``auto`` → httptools) + Starlette +
one ``aiohttp.ClientSession`` configured as ``gateway.proxy.forward.UpstreamClient`` configures its own, relaying
the response body chunk by chunk through a ``StreamingResponse``. Whatever the gateway costs beyond this is the
price of the session check, the decision, the credential, the assertion and the access log.

    python -m bench.bare_proxy --port 9000 --upstream http://127.0.0.1:9001
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from multidict import CIMultiDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from yarl import URL

#: RFC 9110 §7.6.1 connection-specific fields, never forwarded by a proxy.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
)


def create_app(upstream: str) -> Starlette:
    state: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=512, limit_per_host=128, keepalive_timeout=30.0, ttl_dns_cache=60)
        state["http"] = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        yield
        await state["http"].close()

    async def proxy(request: Request) -> Response:
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k not in HOP_BY_HOP)
        has_body = "transfer-encoding" in request.headers or request.headers.get("content-length", "0") != "0"
        url = upstream + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        answer = await state["http"].request(
            request.method,
            URL(url, encoded=True),
            headers=headers,
            data=request.stream() if has_body else None,
            allow_redirects=False,
        )

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in answer.content.iter_any():
                    yield chunk
            finally:
                answer.release()

        response = StreamingResponse(relay(), status_code=answer.status)
        response.raw_headers = [(k, v) for k, v in answer.raw_headers if k.decode("latin-1").lower() not in HOP_BY_HOP]
        return response

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", proxy, methods=methods)], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="origin to forward to, e.g. http://127.0.0.1:9001")
    args = parser.parse_args()
    uvicorn.run(create_app(args.upstream.rstrip("/")), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
