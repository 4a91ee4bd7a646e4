"""The real components a benchmark needs: an OpenID provider with many agents, and gateway replicas.

A gateway here is exactly what production runs: ``python -m gateway migrate``, ``channels set-credential`` through
the CLI, then ``python -m gateway serve --no-migrate`` as a child process (uvicorn's defaults: uvloop + httptools).
Every channel routes to the benchmark's nginx upstream, so no demo console is started.
"""

from __future__ import annotations

import atexit
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

from tests.components.browserless_login import login
from tests.components.gateway import CHANNELS, ROOT, _url_ok, config_toml
from tests.components.oidc_provider import DEMO_PASSWORD, OidcAccount
from tests.components.ports import LOOPBACK, free_port
from tests.components.process import ChildProcess

SESSION_COOKIE = "channelgate"


def bench_accounts(count: int) -> tuple[OidcAccount, ...]:
    """``agent000``… with the chat group: one per revocation trial, since a deprovisioned agent cannot log in."""
    return tuple(
        OidcAccount(
            sub=f"bench-{index:04d}",
            username=f"agent{index:03d}",
            password=DEMO_PASSWORD,
            email=f"agent{index:03d}@example.com",
            name=f"Bench Agent {index}",
            groups=("chat-agents",),
        )
        for index in range(count)
    )


def temporary_dir(prefix: str) -> Path:
    """A directory removed when the benchmark process exits: a gateway may be stopped and started again, and its
    configuration, database and logs are wanted until the end (its logs explain a failure)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


@dataclass
class Gateway:
    """One gateway configuration (database, session store) served by ``replicas`` processes."""

    label: str
    database_url: str
    upstream_port: int
    redis_url: str | None = None
    replicas: int = 1
    ports: list[int] = field(default_factory=list)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    #: Appended to the generated channelgate.toml (new tables only, e.g. ``[forward_auth]``).
    extra_toml: str = ""
    #: channel → the credential stored for it by ``start`` (a console that checks it needs it).
    credentials: dict[str, str] = field(default_factory=dict)
    base_dir: Path = field(default_factory=lambda: temporary_dir("channelgate-bench-gw-"))
    _children: list[ChildProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ports = [free_port() for _ in range(self.replicas)]

    def url(self, replica: int = 0) -> str:
        return f"http://{LOOPBACK}:{self.ports[replica]}"

    @property
    def redirect_uris(self) -> list[str]:
        # The login always starts on replica 0: public_url (and so the redirect URI) is replica 0's.
        return [f"{self.url(0)}/.channelgate/callback"]

    @property
    def config_path(self) -> Path:
        return self.base_dir / "channelgate.toml"

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(self.config_path), *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=True,
        )

    def start(self, issuer: str) -> None:
        self.config_path.write_text(
            config_toml(
                base_dir=self.base_dir,
                public_url=self.url(0),
                issuer=issuer,
                database_url=self.database_url,
                redis_url=self.redis_url,
                console_ports=dict.fromkeys(CHANNELS, self.upstream_port),
                admin_token=self.admin_token,
            )
            + self.extra_toml,
            encoding="utf-8",
        )
        self.cli("migrate")
        for channel in CHANNELS:
            self.credentials[channel] = f"bench-{channel}-{secrets.token_urlsafe(12)}"
            self.cli("channels", "set-credential", channel, stdin=self.credentials[channel] + "\n")
        for index, port in enumerate(self.ports):
            child = ChildProcess(
                [
                    sys.executable, "-m", "gateway", "--config", str(self.config_path),
                    "serve", "--no-migrate", "--port", str(port), "--log-level", "warning",
                ],
                self.base_dir / f"gateway-{index}.log",
                name=f"gateway {self.label} replica {index}",
                cwd=ROOT,
            )  # fmt: skip
            self._children.append(child)
            child.start()
        for index, child in enumerate(self._children):
            child.wait_until(partial(_url_ok, f"{self.url(index)}/.channelgate/readyz"), timeout=30, what="readiness")

    @property
    def pids(self) -> list[int]:
        """The replicas' process ids, in replica order."""
        return [child.pid for child in self._children if child.pid is not None]

    def logs(self) -> str:
        return "\n".join(child.log_tail(60) for child in self._children)

    def stop(self) -> None:
        for child in reversed(self._children):
            child.stop()
        self._children.clear()


async def session_cookie(gateway: Gateway, username: str) -> str:
    """Log ``username`` in through the real OIDC flow on replica 0 and return the gateway's session cookie."""
    client = await login(gateway.url(0), username, DEMO_PASSWORD, return_to="/chat/")
    try:
        values = [cookie.value for cookie in client.cookies.jar if cookie.name == SESSION_COOKIE]
        if len(values) != 1 or values[0] is None:
            raise RuntimeError(f"expected one {SESSION_COOKIE} cookie after login, got {len(values)}")
        return values[0]
    finally:
        await client.aclose()


def check_one_request(url: str, cookie: str | None) -> httpx.Response:
    """One request by hand before a load run: wrk counts a 3xx (the login redirect) as a success."""
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
    response = httpx.get(url, headers=headers, timeout=5.0)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url} answered {response.status_code}: {response.text[:300]}")
    return response
