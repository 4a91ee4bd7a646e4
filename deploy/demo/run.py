"""``make demo``: the gateway, a development OpenID provider and three channel consoles on 127.0.0.1.

Everything the demo writes (configuration, keys, database) lives in ``.demo/``; each run makes fresh
credentials, so nothing here is a shared secret. Python only: no Node.js needed.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[2]
STATE = ROOT / ".demo"
GATEWAY = "http://127.0.0.1:8000"
IDP_PORT = 8001
CONSOLES = {"chat": 8101, "phone": 8102, "mail": 8103}
CLIENT_ID = "channelgate-demo"
#: The development SCIM token the demo IdP client uses; never use a guessable token outside the demo.
SCIM_TOKEN = "demo-scim-token"


def _write_config(client_secret: str, admin_token: str) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = STATE / "assertion-key.pem"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    vault_key = base64.b64encode(secrets.token_bytes(32)).decode()
    config = STATE / "channelgate.toml"
    config.write_text(
        f"""# Written by `make demo`: development only, plain HTTP on loopback.
[server]
host = "127.0.0.1"
port = 8000
public_url = "{GATEWAY}"
insecure_dev_cookies = true

[database]
url = "sqlite+aiosqlite:///{STATE / "channelgate.db"}"

[sessions]
store = "memory"
idle_timeout_seconds = 1800

[oidc]
issuer = "http://127.0.0.1:{IDP_PORT}"
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

[channels.chat]
display_name = "Chat console"
inject = "bearer"

[channels.phone]
display_name = "Phone (CTI) console"
inject = "header"
header_name = "X-Api-Key"

[channels.mail]
display_name = "Mail console"
inject = "basic"

[[routes]]
channel = "chat"
prefix = "/chat/"
upstream = "http://127.0.0.1:{CONSOLES["chat"]}"
allowed_groups = ["chat-agents"]

[[routes]]
channel = "phone"
prefix = "/phone/"
upstream = "http://127.0.0.1:{CONSOLES["phone"]}"
allowed_groups = ["phone-agents"]

[[routes]]
channel = "mail"
prefix = "/mail/"
upstream = "http://127.0.0.1:{CONSOLES["mail"]}"
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


def main() -> int:
    STATE.mkdir(exist_ok=True)
    for stale in STATE.glob("channelgate.db*"):
        stale.unlink()
    client_secret = secrets.token_urlsafe(24)
    admin_token = secrets.token_urlsafe(24)
    config = _write_config(client_secret, admin_token)
    python = sys.executable
    env = {**os.environ, "CHANNELGATE_CONFIG": str(config), "PYTHONUNBUFFERED": "1"}
    children: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        child = subprocess.Popen([python, *args], cwd=ROOT, env=env)  # noqa: S603 - our own modules
        children.append(child)
        return child

    try:
        idp = start(
            "-m", "deploy.demo.idp", "--port", str(IDP_PORT), "--client-id", CLIENT_ID,
            "--client-secret", client_secret, "--redirect-uri", f"{GATEWAY}/.channelgate/callback",
            "--post-logout-redirect-uri", f"{GATEWAY}/",
        )  # fmt: skip
        subprocess.run([python, "-m", "gateway", "migrate"], cwd=ROOT, env=env, check=True)  # noqa: S603
        subprocess.run(  # noqa: S603
            [python, "-m", "gateway", "scim-tokens", "create", "demo-idp", "--token-stdin"],
            cwd=ROOT, env=env, input=(SCIM_TOKEN + "\n").encode(), check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        for channel, port in CONSOLES.items():
            credential = secrets.token_urlsafe(24)
            subprocess.run(  # noqa: S603
                [python, "-m", "gateway", "channels", "set-credential", channel],
                cwd=ROOT, env=env, input=(credential + "\n").encode(), check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            start(
                "-m", "deploy.demo.consoles", "--channel", channel, "--port", str(port), "--credential", credential,
                "--gateway-jwks", f"{GATEWAY}/.channelgate/jwks.json", "--gateway-issuer", GATEWAY,
            )  # fmt: skip
        _wait(f"http://127.0.0.1:{IDP_PORT}/.well-known/openid-configuration", idp, "the OpenID provider")
        gateway = start("-m", "gateway", "serve", "--no-migrate", "--log-level", "warning")
        _wait(f"{GATEWAY}/.channelgate/healthz", gateway, "the gateway")
        print(
            f"""
  channelgate demo is running.

  1. Open {GATEWAY}/ and sign in as alice (every console), bob (chat only) or carol (phone and mail);
     the password is "demo".
  2. Open the consoles. Each one shows who the gateway says you are; none of them ever shows you its API key.
  3. End alice's access from another terminal:

       CHANNELGATE_CONFIG={config} .venv/bin/channelgate agents deprovision alice --reason "left the company"

     Her open consoles stop working at once (the chat WebSocket closes) and her next sign-in is refused.
  4. Or deactivate alice as an IdP would, over SCIM (development token {SCIM_TOKEN!r}):

       ID=$(curl -s -H "Authorization: Bearer {SCIM_TOKEN}" \\
              "{GATEWAY}/scim/v2/Users?filter=userName%20eq%20%22alice%22" | python3 -c \\
              'import json,sys; print(json.load(sys.stdin)["Resources"][0]["id"])')
       curl -X PATCH -H "Authorization: Bearer {SCIM_TOKEN}" -H "Content-Type: application/scim+json" \\
            -d '{{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                 "Operations":[{{"op":"replace","path":"active","value":false}}]}}' \\
            "{GATEWAY}/scim/v2/Users/$ID"

     (alice exists once she has signed in; the PATCH answers only after her sessions are gone.)
  5. The access log:  CHANNELGATE_CONFIG={config} .venv/bin/channelgate audit tail -n 30

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
