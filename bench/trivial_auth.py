"""The reference decision endpoint: uvicorn + Starlette answering 200 with one header, deciding nothing.

What nginx ``auth_request`` to a Python process costs before any session, policy or credential work; the issue's
goal for channelgate's forward-auth (≥ 0.4× nginx ``proxy_pass``) is about what such an endpoint reaches here.

    python -m bench.trivial_auth --port 9000
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def decide(request: Request) -> Response:
    return Response(status_code=200, headers={"X-Channelgate-Assertion": "trivial", "Cache-Control": "no-store"})


app = Starlette(routes=[Route("/.channelgate/auth", decide, methods=["GET"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
