"""A real nginx (Debian package) on a free loopback port, with every path inside a temporary prefix directory."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.components.ports import LOOPBACK, free_port, port_is_open
from tests.components.process import ChildProcess, Lifecycle, ServerProcess, require_executable, run

_MAIN = """
daemon off;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{http}
}}
"""


class NginxServer(ServerProcess, Lifecycle):
    """``http`` is the body of the ``http {}`` block (upstreams, servers, includes); ``{port}`` in it is replaced
    by the port chosen here."""

    def __init__(self, http: str, *, workers: int = 1, port: int | None = None) -> None:
        self.binary = require_executable("nginx", "nginx")
        self.port = port or free_port()
        directory = Path(tempfile.mkdtemp(prefix="channelgate-nginx-"))
        self.conf = directory / "nginx.conf"
        self.conf.write_text(
            _MAIN.format(workers=workers, prefix=directory, http=http.replace("{port}", str(self.port))),
            encoding="utf-8",
        )
        process = ChildProcess(
            [self.binary, "-p", str(directory), "-c", str(self.conf), "-e", "stderr"],
            directory / "nginx.log",
            name="nginx",
        )
        super().__init__(process, directory, startup_timeout=15)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def check(self) -> None:
        """``nginx -t``: the configuration parses (raises with nginx's own message when not)."""
        run([self.binary, "-t", "-p", str(self.directory), "-c", str(self.conf), "-e", "stderr"], what="nginx -t")

    def start(self) -> None:
        self.check()
        self._start_and_wait(lambda: port_is_open(LOOPBACK, self.port), what="nginx listening")
