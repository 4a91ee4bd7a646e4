"""``make demo`` itself: the launcher starts everything, and the commands it prints do what it says.

The launcher runs as ``make demo`` runs it (``python -m deploy.demo.run``), on free ports and in a temporary
state directory. alice signs in through the demo OpenID provider's form, opens the chat console through the
gateway, and then the SCIM commands the terminal prints (curl, the development token) are run as printed: her
next request is refused. A SIGTERM to the launcher stops every process it started.
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


def test_the_demo_starts_and_its_printed_scim_commands_end_an_agents_access(demo: Demo) -> None:
    with httpx.Client(timeout=10) as alice:
        _sign_in(alice, demo.url, "alice")
        chat = alice.get(demo.url + "/chat/", headers={"Accept": "application/json"})
        assert chat.status_code == 200 and "alice" in chat.text

        printed = demo.printed()
        step = re.search(r"4\. Or deactivate alice.*?\n\n(.*?)\n\n", printed, re.S)
        assert step is not None, printed
        script = textwrap.dedent(step.group(1))
        assert "demo-scim-token" in script and demo.url + "/scim/v2" in script
        ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=30)
        assert ran.returncode == 0, ran.stderr

        assert alice.get(demo.url + "/chat/", headers={"Accept": "application/json"}).status_code == 401

    demo.process.stop()
    assert not demo.process.running
    with pytest.raises(httpx.TransportError):
        httpx.get(demo.url + "/.channelgate/healthz", timeout=2)
