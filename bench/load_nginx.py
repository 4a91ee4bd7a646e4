"""The load test's nginx: the consoles' upstream, which logs every tagged request it serves, the WebSocket path
to the demo chat console, and ``auth_request`` fronts for forward-auth (one replica, or both).

The upstream answers ``return 200`` for every console path, as in the other sections, so the gateway is what is
measured; ``/ws`` (the gateway's ``/chat/ws`` after the prefix is stripped) goes on to the real demo chat
console, which checks the channel credential and the gateway's signed assertion and echoes each message. A
request tagged by the load generator (``?a=AGENT&s=SEQ&t=SENT_US``) is written to ``served.log`` when the
upstream serves it: that file is what "served to an agent" means in the load test's checks.
"""

from __future__ import annotations

from pathlib import Path

from bench.forward_auth import AUTH_SERVER
from tests.components.nginx_server import NginxServer
from tests.components.ports import LOOPBACK, free_port, port_is_open

#: The ``http {}`` body; ``served.log`` (like every relative path) is inside nginx's prefix directory.
HTTP = """
    log_format served '$arg_a $arg_s $arg_t';
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream origin {{ server {host}:{upstream}; keepalive 64; }}
    upstream console {{ server {host}:{console}; }}
    upstream fa_one {{ server {host}:{replica0}; keepalive 64; }}
    upstream fa_two {{ server {host}:{replica0}; server {host}:{replica1}; keepalive 64; }}
    server {{
        listen {host}:{upstream};
        location = /ws {{
            proxy_pass http://console;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 1h;
        }}
        location / {{
            access_log served.log served if=$arg_a;
            default_type text/plain;
            return 200 "ok\\n";
        }}
    }}
{auth_servers}
"""


class LoadNginx(NginxServer):
    """One nginx worker; ``forward_auth[name]`` is the port of an ``auth_request`` front deciding by ``name``."""

    def __init__(self, upstream_port: int, console_port: int, replica_ports: list[int], secret: str) -> None:
        self.upstream_port = upstream_port
        self.forward_auth = {"fa_one": free_port(), "fa_two": free_port()}
        servers = "".join(
            AUTH_SERVER.format(host=LOOPBACK, port=port, decider=name, secret=secret)
            for name, port in self.forward_auth.items()
        )
        second = replica_ports[1] if len(replica_ports) > 1 else replica_ports[0]
        http = HTTP.format(
            host=LOOPBACK, upstream=upstream_port, console=console_port, replica0=replica_ports[0], replica1=second,
            auth_servers=servers,
        )  # fmt: skip
        super().__init__(
            http, port=upstream_port, worker_connections=16384, keepalive_requests=1_000_000, name="nginx (load test)"
        )

    @property
    def served_log(self) -> Path:
        return self.directory / "served.log"

    def forward_auth_url(self, name: str) -> str:
        return f"http://{LOOPBACK}:{self.forward_auth[name]}"

    def truncate_log(self) -> None:
        """Empty ``served.log`` in place (nginx keeps appending to the same open file)."""
        with self.served_log.open("r+b") as log:
            log.truncate(0)

    def _listening(self) -> bool:
        return all(port_is_open(LOOPBACK, port) for port in (self.upstream_port, *self.forward_auth.values()))
