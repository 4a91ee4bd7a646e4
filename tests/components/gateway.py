"""The gateway and the demo channel consoles as real child processes, for end-to-end tests.

``GatewayStack`` writes a channelgate.toml for a given OpenID provider, database and session store, stores
each channel's credential through the real CLI (``channelgate channels set-credential``), starts the demo
consoles and any number of gateway replicas (``python -m gateway serve``) on free loopback ports.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.components.oidc_provider import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tests.components.ports import LOOPBACK, free_port
from tests.components.process import ChildProcess

ROOT = Path(__file__).resolve().parents[2]

#: channel → (inject scheme, extra TOML, allowed groups)
CHANNELS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "chat": ("bearer", "", ("chat-agents",)),
    "phone": ("header", 'header_name = "X-Api-Key"\n', ("phone-agents",)),
    "mail": ("basic", "", ("mail-agents",)),
}


def _url_ok(url: str) -> bool:
    """True once the server answers HTTP at all with a status below 500 (a 401 is an answer)."""
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:  # noqa: S310 - loopback test URL
            return bool(response.status < 500)
    except urllib.error.HTTPError as error:
        return error.code < 500
    except OSError:
        return False


def config_toml(
    *,
    base_dir: Path,
    public_url: str,
    issuer: str,
    database_url: str,
    console_ports: dict[str, int],
    admin_token: str,
    redis_url: str | None = None,
    idle_timeout_seconds: int = 1800,
    upstreams: Mapping[str, str] | None = None,
    route_timeouts: Mapping[str, float] | None = None,
) -> str:
    """A complete channelgate.toml for tests: three channels (bearer, header, basic), a fresh vault key and an
    ES256 assertion key written under ``base_dir``. ``upstreams`` sends a channel's route elsewhere than its
    console (a fault proxy in front of it); ``route_timeouts`` sets a channel's route timeout (default 5 s)."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = base_dir / "assertion.pem"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    sessions = f'store = "redis"\nredis_url = "{redis_url}"\n' if redis_url else 'store = "memory"\n'
    channels = "".join(
        f'[channels.{name}]\ninject = "{inject}"\n{extra}\n' for name, (inject, extra, _) in CHANNELS.items()
    )
    upstream = {name: f"http://{LOOPBACK}:{port}" for name, port in console_ports.items()} | dict(upstreams or {})
    timeout = {name: 5.0 for name in CHANNELS} | dict(route_timeouts or {})
    routes = "".join(
        f'[[routes]]\nchannel = "{name}"\nprefix = "/{name}/"\nupstream = "{upstream[name]}"\n'
        f"allowed_groups = {list(groups)!r}\ntimeout_seconds = {timeout[name]:g}\n\n".replace("'", '"')
        for name, (_, _, groups) in CHANNELS.items()
    )
    vault_key = base64.b64encode(secrets.token_bytes(32)).decode()
    port = public_url.rsplit(":", 1)[1]
    return f"""
[server]
host = "{LOOPBACK}"
port = {port}
public_url = "{public_url}"
insecure_dev_cookies = true

[database]
url = "{database_url}"

[sessions]
{sessions}idle_timeout_seconds = {idle_timeout_seconds}
revocation_ack_timeout_seconds = 2.0

[oidc]
issuer = "{issuer}"
client_id = "{TEST_CLIENT_ID}"
client_secret = "{TEST_CLIENT_SECRET}"
scopes = ["openid", "profile", "email", "groups"]

[assertion]
private_key_files = ["{key_file}"]

[vault]
active_key = "k1"
keys = {{ k1 = "{vault_key}" }}

[admin]
tokens = ["{admin_token}"]

{channels}
{routes}
"""


@dataclass
class GatewayStack:
    issuer: str
    database_url: str
    redis_url: str | None = None
    gateway_ports: list[int] = field(default_factory=list)
    base_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="channelgate-e2e-")))
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    credentials: dict[str, str] = field(default_factory=dict)
    console_ports: dict[str, int] = field(default_factory=dict)
    idle_timeout_seconds: int = 1800
    #: channel → base URL its route forwards to instead of its console (a fault proxy in front of it)
    upstreams: dict[str, str] = field(default_factory=dict)
    #: channel → its route's timeout in seconds (5 unless given)
    route_timeouts: dict[str, float] = field(default_factory=dict)
    #: Appended to the generated channelgate.toml (new tables only, e.g. ``[sessions.redis]``).
    extra_toml: str = ""
    _children: list[ChildProcess] = field(default_factory=list)
    _gateways: list[ChildProcess] = field(default_factory=list)

    @property
    def public_url(self) -> str:
        return f"http://{LOOPBACK}:{self.gateway_ports[0]}"

    def url(self, replica: int = 0) -> str:
        return f"http://{LOOPBACK}:{self.gateway_ports[replica]}"

    @property
    def redirect_uris(self) -> list[str]:
        return [f"{self.url(i)}/.channelgate/callback" for i in range(len(self.gateway_ports))]

    @property
    def config_path(self) -> Path:
        return self.base_dir / "channelgate.toml"

    def allocate(self, replicas: int) -> None:
        """Choose ports before the provider starts: it must know every replica's redirect URI."""
        self.gateway_ports = [free_port() for _ in range(replicas)]
        self.console_ports = {channel: free_port() for channel in CHANNELS}

    def write_config(self) -> Path:
        self.config_path.write_text(
            config_toml(
                base_dir=self.base_dir,
                public_url=self.public_url,
                issuer=self.issuer,
                database_url=self.database_url,
                redis_url=self.redis_url,
                console_ports=self.console_ports,
                admin_token=self.admin_token,
                idle_timeout_seconds=self.idle_timeout_seconds,
                upstreams=self.upstreams,
                route_timeouts=self.route_timeouts,
            )
            + self.extra_toml,
            encoding="utf-8",
        )
        return self.config_path

    def cli(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(self.config_path), *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=check,
        )

    def start(self) -> None:
        self.write_config()
        self.cli("migrate")
        for channel in CHANNELS:
            credential = "cred-" + channel + "-" + secrets.token_urlsafe(18)
            self.credentials[channel] = credential
            self.cli("channels", "set-credential", channel, stdin=credential + "\n")
            console = ChildProcess(
                [
                    sys.executable,
                    "-m",
                    "deploy.demo.consoles",
                    "--channel",
                    channel,
                    "--port",
                    str(self.console_ports[channel]),
                    "--credential",
                    credential,
                    "--gateway-jwks",
                    f"{self.public_url}/.channelgate/jwks.json",
                    "--gateway-issuer",
                    self.public_url,
                    "--log-level",
                    "warning",
                ],
                self.base_dir / f"console-{channel}.log",
                name=f"{channel} console",
                cwd=ROOT,
            )
            self._children.append(console)
            console.start()
        for index, port in enumerate(self.gateway_ports):
            gateway = ChildProcess(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "--config",
                    str(self.config_path),
                    "serve",
                    "--no-migrate",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ],
                self.base_dir / f"gateway-{index}.log",
                name=f"gateway replica {index}",
                cwd=ROOT,
            )
            self._children.append(gateway)
            self._gateways.append(gateway)
            gateway.start()
        for index in range(len(self._gateways)):
            self.wait_ready(index)
        for channel, port in self.console_ports.items():
            self._children[list(CHANNELS).index(channel)].wait_until(
                partial(_url_ok, f"http://{LOOPBACK}:{port}/"), timeout=30, what="HTTP"
            )

    def wait_ready(self, replica: int) -> None:
        """Wait until the replica answers its readiness check with 200 (its database and session store are up)."""
        self._gateways[replica].wait_until(
            lambda: _url_ok(f"{self.url(replica)}/.channelgate/readyz"), timeout=30, what="readiness"
        )

    def replica_pid(self, replica: int) -> int:
        """The process id of a running gateway replica (for /proc and signals)."""
        pid = self._gateways[replica].pid
        if pid is None or not self._gateways[replica].running:
            raise RuntimeError(f"gateway replica {replica} is not running")
        return pid

    def kill_replica(self, replica: int) -> None:
        """SIGKILL one gateway replica, as a crash would: no shutdown, its connections are cut."""
        self._gateways[replica].kill()

    def restart_replica(self, replica: int) -> None:
        """Start a stopped or killed replica again on its port (same configuration) and wait until it is ready."""
        if not self._gateways[replica].running:
            self._gateways[replica].start()
            self.wait_ready(replica)

    def gateway_logs(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.base_dir.glob("gateway-*.log")))

    def stop(self) -> None:
        for child in reversed(self._children):
            child.stop()
        self._children.clear()
        self._gateways.clear()
