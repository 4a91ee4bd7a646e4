"""``make demo``: the gateway, a development OpenID provider and three channel consoles on 127.0.0.1.

The consoles speak issue 4's protocols: chat is an OAuth 2.0 authorization server with a ticket API (per-agent
tokens), phone a seats admin API (per-agent seats), mail a legacy form-login console with a ticket API (the
gateway's cookie jar). The directory (alice, bob, carol; carol manages the other two) is pushed over SCIM first.

Everything the demo writes (configuration, keys, database) lives in ``.demo/``; each run makes fresh
credentials, so nothing here is a shared secret. Python only: no Node.js needed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.demo.directory import provision
from deploy.demo.idp_store import ACCOUNTS
from gateway.audit.checkpoints import generate_key

ROOT = Path(__file__).resolve().parents[2]
CLIENT_ID = "channelgate-demo"
#: The development SCIM token the demo IdP client uses; never use a guessable token outside the demo.
SCIM_TOKEN = "demo-scim-token"


@dataclass(frozen=True)
class Layout:
    """Where the demo runs: the defaults are what the README promises; tests pass free ports and a temp dir."""

    state: Path = ROOT / ".demo"
    port: int = 8000
    idp_port: int = 8001
    consoles: dict[str, int] = field(default_factory=lambda: {"chat": 8101, "phone": 8102, "mail": 8103})

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _write_config(layout: Layout, client_secret: str, admin_token: str) -> Path:
    state, base_url, idp_port, consoles = layout.state, layout.gateway, layout.idp_port, layout.consoles
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = state / "assertion-key.pem"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    vault_key = base64.b64encode(secrets.token_bytes(32)).decode()
    checkpoint_key, _ = generate_key()
    config = state / "channelgate.toml"
    config.write_text(
        f"""# Written by `make demo`: development only, plain HTTP on loopback.
[server]
host = "127.0.0.1"
port = {layout.port}
public_url = "{base_url}"
insecure_dev_cookies = true

[database]
url = "sqlite+aiosqlite:///{state / "channelgate.db"}"

[sessions]
store = "memory"
idle_timeout_seconds = 1800

[oidc]
issuer = "http://127.0.0.1:{idp_port}"
client_id = "{CLIENT_ID}"
client_secret = "{client_secret}"
scopes = ["openid", "profile", "email", "groups"]

[assertion]
algorithm = "ES256"
private_key_files = ["{key_file}"]

[vault]
active_key = "demo-1"
keys = {{ demo-1 = "{vault_key}" }}

[admin]
tokens = ["{admin_token}"]

# The access log's chain: checkpoints signed with a fresh demo key, written beside the database (in production:
# on storage the database cannot reach, or an HTTPS collector).
[audit.checkpoints]
sink = "file://{state / "audit-checkpoints.jsonl"}"
signing_keys = {{ demo-ck1 = "{checkpoint_key}" }}
active_key = "demo-ck1"
interval_seconds = 30

# The web console at /.channelgate/console: carol reviews, alice (a supervisor) administers.
[console]
reviewer_groups = ["security-reviewers"]
admin_groups = ["supervisors"]

[channels.chat]
display_name = "Chat console"
# Per-agent OAuth tokens: RFC 8693 token exchange at the console's authorization server, RFC 7009 revocation,
# RFC 7662 introspection; the client secret is the channel credential in the vault.
kind = "oauth2"
token_url = "http://127.0.0.1:{consoles["chat"]}/oauth/token"
revocation_url = "http://127.0.0.1:{consoles["chat"]}/oauth/revoke"
introspection_url = "http://127.0.0.1:{consoles["chat"]}/oauth/introspect"
client_id = "channelgate"

[channels.chat.tickets]
url = "http://127.0.0.1:{consoles["chat"]}/api/"
fallback_queue = "chat-unassigned"

[channels.phone]
display_name = "Phone (CTI) console"
# A seat per agent, created through the vendor's admin API; the seat's own key stays in the vault.
kind = "seats"
admin_url = "http://127.0.0.1:{consoles["phone"]}/admin/"
key_check_url = "http://127.0.0.1:{consoles["phone"]}/api/me"
remove = "delete"

[channels.mail]
display_name = "Mail console"
# A legacy console with a login form: the gateway signs in as the agent and keeps the cookies server-side.
kind = "cookie_jar"
console_url = "http://127.0.0.1:{consoles["mail"]}"

[channels.mail.tickets]
url = "http://127.0.0.1:{consoles["mail"]}/api/"
fallback_queue = "mail-unassigned"

[[routes]]
channel = "chat"
prefix = "/chat/"
upstream = "http://127.0.0.1:{consoles["chat"]}"
allowed_groups = ["chat-agents"]

[[routes]]
channel = "phone"
prefix = "/phone/"
upstream = "http://127.0.0.1:{consoles["phone"]}"
allowed_groups = ["phone-agents"]

[[routes]]
channel = "mail"
prefix = "/mail/"
upstream = "http://127.0.0.1:{consoles["mail"]}"
allowed_groups = ["mail-agents"]
""",
        encoding="utf-8",
    )
    config.chmod(0o600)
    return config


def _wait(url: str, process: subprocess.Popen[bytes], name: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"demo: {name} exited with code {process.returncode}; see the output above")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - fixed loopback URL
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"demo: {name} did not start within {timeout:g} s")


def _layout(argv: list[str] | None) -> Layout:
    parser = argparse.ArgumentParser(prog="python -m deploy.demo.run", description=__doc__.splitlines()[0])
    default = Layout()
    parser.add_argument("--state", type=Path, default=default.state, help="directory for config, keys, database")
    parser.add_argument("--port", type=int, default=default.port, help="the gateway's port")
    parser.add_argument("--idp-port", type=int, default=default.idp_port)
    parser.add_argument(
        "--console-ports", default=",".join(str(p) for p in default.consoles.values()), help="chat,phone,mail"
    )
    args = parser.parse_args(argv)
    ports = [int(port) for port in args.console_ports.split(",")]
    if len(ports) != 3:
        parser.error("--console-ports takes three ports: chat,phone,mail")
    return Layout(args.state, args.port, args.idp_port, dict(zip(("chat", "phone", "mail"), ports, strict=True)))


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    layout = _layout(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a supervisor's stop, like Ctrl-C, stops every child too
    state, base_url, idp_port, consoles = layout.state, layout.gateway, layout.idp_port, layout.consoles
    state.mkdir(parents=True, exist_ok=True)
    for stale in state.glob("channelgate.db*"):
        stale.unlink()
    client_secret = secrets.token_urlsafe(24)
    admin_token = secrets.token_urlsafe(24)
    config = _write_config(layout, client_secret, admin_token)
    python = sys.executable
    env = {**os.environ, "CHANNELGATE_CONFIG": str(config), "PYTHONUNBUFFERED": "1"}
    children: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        child = subprocess.Popen([python, *args], cwd=ROOT, env=env)  # noqa: S603 - our own modules
        children.append(child)
        return child

    try:
        idp = start(
            "-m", "deploy.demo.idp", "--port", str(idp_port), "--client-id", CLIENT_ID,
            f"--client-secret={client_secret}", "--redirect-uri", f"{base_url}/.channelgate/callback",
            "--post-logout-redirect-uri", f"{base_url}/",
        )  # fmt: skip
        subprocess.run([python, "-m", "gateway", "migrate"], cwd=ROOT, env=env, check=True)  # noqa: S603
        subprocess.run(  # noqa: S603
            [python, "-m", "gateway", "scim-tokens", "create", "demo-idp", "--token-stdin"],
            cwd=ROOT, env=env, input=(SCIM_TOKEN + "\n").encode(), check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        # The mail console is a legacy one with its own accounts; the gateway signs in as each agent with the
        # password it keeps in the vault (fresh per run, never shown to the agent).
        passwords = {user: secrets.token_urlsafe(18) for user in ACCOUNTS}
        accounts = state / "mail-accounts.json"
        accounts.write_text(json.dumps(passwords), encoding="utf-8")
        accounts.chmod(0o600)
        console_args = {
            "chat": ["--auth", "oauth2", "--tickets"],
            "phone": ["--auth", "seats"],
            "mail": ["--auth", "form", "--accounts", str(accounts), "--tickets"],
        }
        for channel, port in consoles.items():
            credential = secrets.token_urlsafe(24)
            subprocess.run(  # noqa: S603
                [python, "-m", "gateway", "channels", "set-credential", channel],
                cwd=ROOT, env=env, input=(credential + "\n").encode(), check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            start(
                "-m", "deploy.demo.consoles", "--channel", channel, "--port", str(port), f"--credential={credential}",
                "--gateway-jwks", f"{base_url}/.channelgate/jwks.json", "--gateway-issuer", base_url,
                "--log-level", "warning", *console_args[channel],
            )  # fmt: skip
        _wait(f"http://127.0.0.1:{idp_port}/.well-known/openid-configuration", idp, "the OpenID provider")
        gateway = start("-m", "gateway", "serve", "--no-migrate", "--log-level", "warning")
        _wait(f"{base_url}/.channelgate/healthz", gateway, "the gateway")
        provision(base_url, SCIM_TOKEN)
        for user, password in passwords.items():
            subprocess.run(  # noqa: S603
                [python, "-m", "gateway", "channels", "set-agent-password", "mail", user],
                cwd=ROOT, env=env, input=(password + "\n").encode(), check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        print(
            f"""
  channelgate demo is running.

  1. Open {base_url}/ and sign in as alice (every console), bob (chat only) or carol (phone and mail);
     the password is "demo". The directory (SCIM) already knows them: carol manages alice and bob.
  2. Open the consoles. Each one shows who the gateway says you are; none of them ever shows you its
     credential: chat gets a per-agent OAuth token, phone a per-agent seat key, mail a console session the
     gateway signed into for you (its cookies never reach your browser). alice has open tickets at /chat/tickets
     and /mail/tickets.
  3. End alice's access from another terminal, and watch every channel's receipt arrive:

       CHANNELGATE_CONFIG={config} .venv/bin/channelgate agents deprovision alice --reason "left the company" --wait

     Her open consoles stop working at once (the chat WebSocket closes) and her next sign-in is refused; then
     her OAuth tokens are revoked (RFC 7009), her seat disabled and deleted, her mail session logged out, her
     open tickets handed to carol, and each channel verified (RFC 7662 introspection, seat status, session list).
     Later:  CHANNELGATE_CONFIG={config} .venv/bin/channelgate agents status alice
  4. Or deactivate bob as an IdP would, over SCIM (development token {SCIM_TOKEN!r}):

       ID=$(curl -s -H "Authorization: Bearer {SCIM_TOKEN}" \\
              "{base_url}/scim/v2/Users?filter=userName%20eq%20%22bob%22" | python3 -c \\
              'import json,sys; print(json.load(sys.stdin)["Resources"][0]["id"])')
       curl -X PATCH -H "Authorization: Bearer {SCIM_TOKEN}" -H "Content-Type: application/scim+json" \\
            -d '{{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                 "Operations":[{{"op":"replace","path":"active","value":false}}]}}' \\
            "{base_url}/scim/v2/Users/$ID"

     (the PATCH answers only after his sessions are gone; the channel steps follow in the pipeline.)
  5. The access log:  CHANNELGATE_CONFIG={config} .venv/bin/channelgate audit tail -n 30
     Prove nobody edited it (every record chained, checkpoints signed outside the database):
                         CHANNELGATE_CONFIG={config} .venv/bin/channelgate audit verify
  6. The web console: {base_url}/.channelgate/console — sign in as carol (security reviewer: log search, agent
     reports, the PIPA monthly review) or alice (admin: live sessions, deprovisioning, dead letters).

  Ctrl-C stops everything.
""",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    sys.exit(main())
