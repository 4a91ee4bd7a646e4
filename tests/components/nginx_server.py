"""A real nginx (Debian package) on a free loopback port, with every path inside a temporary prefix directory.

:func:`nginx_conf` is the one place that writes nginx's main block; tests, ``bench/`` and the samples' checks
give it only the body of their ``http {}`` block.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.components.ports import LOOPBACK, free_port, port_is_open
from tests.components.process import ChildProcess, Lifecycle, ServerProcess, require_executable, run

_MAIN = """\
daemon off;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{keepalive}{http}
}}
"""


def nginx_conf(
    http: str,
    *,
    prefix: Path,
    workers: int = 1,
    worker_connections: int = 4096,
    keepalive_requests: int | None = None,
) -> str:
    """A whole nginx.conf around ``http``, the body of its ``http {}`` block: in the foreground, errors to stderr,
    no access log, the pid file and every temporary path inside ``prefix`` (nothing touches /var or /run).

    ``keepalive_requests``: nginx closes a keep-alive connection after 1,000 requests by default, which a
    benchmark's long-lived connections must not see.
    """
    keepalive = f"    keepalive_requests {keepalive_requests};\n" if keepalive_requests is not None else ""
    return _MAIN.format(
        workers=workers, worker_connections=worker_connections, prefix=prefix, keepalive=keepalive, http=http
    )


class NginxServer(ServerProcess, Lifecycle):
    """``http`` is the body of the ``http {}`` block (upstreams, servers, includes); ``{port}`` in it is replaced
    by the port chosen here, the one :meth:`start` waits for (a subclass listening on more overrides
    :meth:`_listening`). The other keywords are :func:`nginx_conf`'s."""

    def __init__(
        self,
        http: str,
        *,
        workers: int = 1,
        port: int | None = None,
        worker_connections: int = 4096,
        keepalive_requests: int | None = None,
        name: str = "nginx",
    ) -> None:
        self.binary = require_executable("nginx", "nginx")
        self.port = port or free_port()
        directory = Path(tempfile.mkdtemp(prefix="channelgate-nginx-"))
        self.conf = directory / "nginx.conf"
        body = http.replace("{port}", str(self.port))
        self.conf.write_text(
            nginx_conf(
                body,
                prefix=directory,
                workers=workers,
                worker_connections=worker_connections,
                keepalive_requests=keepalive_requests,
            ),
            encoding="utf-8",
        )
        process = ChildProcess(
            [self.binary, "-p", str(directory), "-c", str(self.conf), "-e", "stderr"],
            directory / "nginx.log",
            name=name,
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
        self._start_and_wait(self._listening, what="nginx listening")

    def _listening(self) -> bool:
        return port_is_open(LOOPBACK, self.port)
