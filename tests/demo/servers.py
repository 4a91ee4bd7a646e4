"""Real servers for the demo tests: the IdP in a thread, a JWKS the tests control, consoles as child processes."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from flask import Flask
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from werkzeug.serving import make_server

from tests.components.ports import LOOPBACK, free_port, port_is_open
from tests.components.process import ChildProcess

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def serve_wsgi(make_app: Callable[[str], Flask]) -> Iterator[str]:
    """Serve ``make_app(base_url)`` with werkzeug's threaded server on a free loopback port; yield the base URL."""
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    server = make_server(LOOPBACK, port, make_app(base), threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="demo-idp", daemon=True)
    thread.start()
    try:
        yield base
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class GatewaySigner:
    """Stands in for the gateway's assertion signer: keys it signs with, and the JWKS it publishes."""

    issuer: str = "http://gateway.test"
    keys: dict[str, ECKey | RSAKey] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    fetches: int = 0

    def add_key(self, kid: str, algorithm: str = "ES256", *, publish: bool = True) -> None:
        parameters: Any = {"kid": kid, "use": "sig", "alg": algorithm}
        key = (
            ECKey.generate_key("P-256", parameters=parameters)
            if algorithm == "ES256"
            else RSAKey.generate_key(2048, parameters=parameters)
        )
        self.keys[kid] = key
        if publish:
            self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.keys[kid].as_dict(private=False) for kid in self.published]}

    def sign(self, kid: str, **overrides: Any) -> str:
        """An assertion for alice at the chat console, with ``overrides`` applied (``None`` removes a claim)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": "chat",
            "sub": "agent-alice",
            "preferred_username": "alice",
            "groups": ["chat-agents", "supervisors"],
            "iat": now,
            "exp": now + 60,
        }
        claims.update(overrides)
        claims = {name: value for name, value in claims.items() if value is not None}
        key = self.keys[kid]
        algorithm = "ES256" if isinstance(key, ECKey) else "RS256"
        return jwt.encode({"alg": algorithm, "kid": kid, "typ": "JWT"}, claims, key)


@contextmanager
def serve_jwks(signer: GatewaySigner) -> Iterator[str]:
    """Serve ``signer``'s current JWKS over HTTP; yield its URL. Counts fetches, to test caching."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            signer.fetches += 1
            body = json.dumps(signer.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="demo-jwks", daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_port}/.channelgate/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def demo_process(module: str, args: Mapping[str, str], log_dir: Path) -> Iterator[str]:
    """Run ``python -m module --port P ...`` from the repository root; yield ``http://127.0.0.1:P`` once it listens."""
    port = free_port()
    argv = [sys.executable, "-m", module, "--port", str(port)]
    for name, value in args.items():
        argv += [f"--{name}", value]
    child = ChildProcess(argv, log_dir / f"{module}.log", name=module, cwd=ROOT)
    child.start()
    try:
        child.wait_until(lambda: port_is_open(LOOPBACK, port), timeout=20, what="listening port")
        yield f"http://{LOOPBACK}:{port}"
    finally:
        child.stop()
