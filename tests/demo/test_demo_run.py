"""``make demo`` itself: the launcher starts everything, and the commands it prints do what it says.

The launcher runs as ``make demo`` runs it (``python -m deploy.demo.run``), on free ports and in a temporary
state directory. alice signs in through the demo OpenID provider's form, opens the chat console through the
gateway, opens each console kind (OAuth tokens, a seat, a form-login console), and then the commands the
terminal prints are run as printed: the SCIM PATCH shuts bob out, and ``agents deprovision alice --wait`` shows
every channel's pipeline step done. A SIGTERM to the launcher stops every process it started.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from tests.components.gateway import ROOT
from tests.components.ports import free_port
from tests.components.process import ChildProcess

pytestmark = pytest.mark.timeout(120)


class Demo:
    def __init__(self, process: ChildProcess, url: str, output: Path) -> None:
        self.process, self.url, self.output = process, url, output

    def printed(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    port = free_port()
    output = tmp_path / "demo.log"
    process = ChildProcess(
        [
            sys.executable, "-m", "deploy.demo.run", "--state", str(tmp_path / "state"), "--port", str(port),
            "--idp-port", str(free_port()), "--console-ports", ",".join(str(free_port()) for _ in range(3)),
        ],
        output,
        name="make demo",
        cwd=ROOT,
    )  # fmt: skip
    running = Demo(process, f"http://127.0.0.1:{port}", output)
    process.start()
    try:
        process.wait_until(lambda: "Ctrl-C stops everything" in running.printed(), timeout=60, what="the demo")
        yield running
    finally:
        process.stop()


def _sign_in(client: httpx.Client, url: str, user: str) -> None:
    """Follow the login redirects by hand and fill in the demo provider's form with the demo password."""
    response = client.get(url + "/.channelgate/login?rd=/chat/")
    for _ in range(10):
        if response.is_redirect:
            response = client.get(urljoin(str(response.url), response.headers["location"]))
        elif 'name="password"' in response.text:
            response = client.post(str(response.url), data={"username": user, "password": "demo"})
        else:
            break
    assert response.status_code == 200 and user in response.text, response.text[:300]


def _printed_step(printed: str, pattern: str) -> str:
    step = re.search(pattern + r".*?\n\n(.*?)\n\n", printed, re.S)
    assert step is not None, printed
    return textwrap.dedent(step.group(1))


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=90, cwd=ROOT
    )


def test_the_demo_starts_and_its_printed_commands_end_access_at_every_channel(demo: Demo) -> None:
    with httpx.Client(timeout=10) as alice, httpx.Client(timeout=10) as bob:
        _sign_in(alice, demo.url, "alice")
        _sign_in(bob, demo.url, "bob")
        # Each console kind through the gateway: a per-agent OAuth token (chat), a seat (phone), a console
        # session the gateway signed into (mail); the browser gets none of their credentials or cookies.
        for channel in ("chat", "phone", "mail"):
            page = alice.get(f"{demo.url}/{channel}/")
            assert page.status_code == 200 and "alice" in page.text, (channel, page.text[:300])
            assert "set-cookie" not in page.headers
        tickets = alice.get(f"{demo.url}/chat/tickets")
        assert tickets.status_code == 200 and "Refund for order 1042" in tickets.text
        assert bob.get(demo.url + "/chat/").status_code == 200

        printed = demo.printed()
        script = _printed_step(printed, r"4\. Or deactivate bob")
        assert "demo-scim-token" in script and demo.url + "/scim/v2" in script
        ran = _run(script)
        assert ran.returncode == 0, ran.stderr
        assert bob.get(demo.url + "/chat/", headers={"Accept": "application/json"}).status_code == 401

        command = _printed_step(printed, r"3\. End alice's access").splitlines()[0]
        assert "agents deprovision alice" in command and "--wait" in command
        ran = _run(command)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "DONE" in ran.stdout
        for channel, step in [("chat", "revoke"), ("chat", "hand_over"), ("chat", "verify"), ("phone", "remove"),
                              ("mail", "revoke"), ("mail", "verify")]:  # fmt: skip
            assert re.search(rf"{channel}\s+{step}\s+done", ran.stdout), ran.stdout
        assert alice.get(demo.url + "/chat/", headers={"Accept": "application/json"}).status_code == 401

        verify = re.search(r"CHANNELGATE_CONFIG=\S+ \.venv/bin/channelgate audit verify", printed)
        assert verify is not None, printed
        ran = _run(verify.group(0))
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert ran.stdout.startswith("OK: ") and "signed checkpoint" in ran.stdout

    demo.process.stop()
    assert not demo.process.running
    with pytest.raises(httpx.TransportError):
        httpx.get(demo.url + "/.channelgate/healthz", timeout=2)
