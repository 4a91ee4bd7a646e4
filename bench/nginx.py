"""nginx as the benchmark's upstream (``return 200``) and as the reference proxy (``proxy_pass`` to it)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.components.ports import LOOPBACK, free_port, wait_for_port
from tests.components.process import ChildProcess, require_executable

CONFIG = """
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    upstream origin {{ server {host}:{upstream_port}; keepalive 64; }}
    server {{
        listen {host}:{upstream_port};
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
        location ~ /big/ {{ root {dir}/files; }}
    }}
    server {{
        listen {host}:{proxy_port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


STREAMED_BODY_BYTES = 256 * 1024


class Nginx:
    """One nginx worker serving the upstream (``return 200 "ok"``) and a ``proxy_pass`` server in front of it.

    One worker, because the Python servers under test are single processes too.
    """

    def __init__(self) -> None:
        self.upstream_port = free_port()
        self.proxy_port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="channelgate-bench-nginx-"))
        conf = self._dir / "nginx.conf"
        conf.write_text(
            CONFIG.format(dir=self._dir, host=LOOPBACK, upstream_port=self.upstream_port, proxy_port=self.proxy_port)
        )
        binary = require_executable("nginx", "nginx")
        self._process = ChildProcess(
            [binary, "-p", str(self._dir), "-c", str(conf), "-e", "stderr"], self._dir / "nginx.log", name="nginx"
        )

    @property
    def upstream_url(self) -> str:
        return f"http://{LOOPBACK}:{self.upstream_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://{LOOPBACK}:{self.proxy_port}"

    def start(self) -> None:
        # A body above the gateway's small-body threshold (64 KiB), so it is streamed chunk by chunk by every
        # proxy; reachable as /big/… (the gateway strips /chat/) and as /chat/big/… (the bare proxy does not).
        self._dir.chmod(0o755)  # nginx's worker (user nobody) must reach the files
        for folder in ("big", "chat/big"):
            target = self._dir / "files" / folder
            target.mkdir(parents=True, exist_ok=True)
            (target / "blob.bin").write_bytes(bytes(range(256)) * (STREAMED_BODY_BYTES // 256))
        self._process.start()
        wait_for_port(LOOPBACK, self.upstream_port)
        wait_for_port(LOOPBACK, self.proxy_port)

    def close(self) -> None:
        self._process.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
