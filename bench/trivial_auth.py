"""The reference decision endpoint: uvicorn + Starlette answering 200, deciding nothing.

What nginx ``auth_request`` to a Python process costs before any session, policy or credential work; the issue's
goal for channelgate's forward-auth (≥ 0.4× nginx ``proxy_pass``) is about what such an endpoint reaches here.
With ``--answer FILE`` (a JSON list of [name, value] pairs) it answers those headers instead of one short one:
the bench gives it a copy of a real channelgate answer (credential, assertion, names), so the same endpoint
shows what carrying channelgate's answer through nginx costs by itself.

    python -m bench.trivial_auth --port 9000 [--answer headers.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER: list[tuple[bytes, bytes]] = [(b"x-channelgate-assertion", b"trivial"), (b"cache-control", b"no-store")]


async def decide(request: Request) -> Response:
    response = Response(status_code=200)
    response.raw_headers.extend(ANSWER)
    return response


app = Starlette(routes=[Route("/.channelgate/auth", decide, methods=["GET"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--answer", type=Path, help="JSON list of [name, value] headers to answer with")
    args = parser.parse_args()
    if args.answer is not None:
        pairs = json.loads(args.answer.read_text(encoding="utf-8"))
        ANSWER[:] = [(str(name).lower().encode("latin-1"), str(value).encode("latin-1")) for name, value in pairs]
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
