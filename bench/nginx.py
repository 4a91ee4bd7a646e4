"""nginx as the benchmark's upstream (``return 200``) and as the reference proxy (``proxy_pass`` to it)."""

from __future__ import annotations

from tests.components.nginx_server import NginxServer
from tests.components.ports import LOOPBACK, free_port, port_is_open

#: The ``http {}`` body; ``files`` (like every relative path) is inside nginx's prefix directory.
HTTP = """
    upstream origin {{ server {host}:{upstream_port}; keepalive 64; }}
    server {{
        listen {host}:{upstream_port};
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
        location ~ /big/ {{ root files; }}
    }}
    server {{
        listen {host}:{proxy_port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


STREAMED_BODY_BYTES = 256 * 1024


class Nginx(NginxServer):
    """One nginx worker serving the upstream (``return 200 "ok"``) and a ``proxy_pass`` server in front of it.

    One worker, because the Python servers under test are single processes too.
    """

    def __init__(self) -> None:
        self.upstream_port = free_port()
        self.proxy_port = free_port()
        http = HTTP.format(host=LOOPBACK, upstream_port=self.upstream_port, proxy_port=self.proxy_port)
        super().__init__(http, port=self.proxy_port, keepalive_requests=1_000_000)

    @property
    def upstream_url(self) -> str:
        return f"http://{LOOPBACK}:{self.upstream_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://{LOOPBACK}:{self.proxy_port}"

    def start(self) -> None:
        # A body above the gateway's small-body threshold (64 KiB), so it is streamed chunk by chunk by every
        # proxy; reachable as /big/… (the gateway strips /chat/) and as /chat/big/… (the bare proxy does not).
        self.directory.chmod(0o755)  # nginx's worker (user nobody) must reach the files
        for folder in ("big", "chat/big"):
            target = self.directory / "files" / folder
            target.mkdir(parents=True, exist_ok=True)
            (target / "blob.bin").write_bytes(bytes(range(256)) * (STREAMED_BODY_BYTES // 256))
        super().start()

    def _listening(self) -> bool:
        return all(port_is_open(LOOPBACK, port) for port in (self.upstream_port, self.proxy_port))
