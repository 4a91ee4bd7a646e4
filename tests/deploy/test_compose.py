"""deploy/compose: one VM with nginx → two gateway replicas → PostgreSQL and Redis. No compose engine exists on
these machines (the docker CLI here has no compose plugin and no daemon), so the file is read as compose would:
YAML with its merge keys, then the structure checked — every service healthy before its dependants start, the
migration once before the replicas, the gateways hardened and read-only, the back end on an internal network.
Its nginx.conf passes the real ``nginx -t`` and its channelgate.toml loads with the documented secrets; its gateway
service runs for real in tests/deploy/test_container_build.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import build_parser
from gateway.errors import ConfigError
from gateway.settings import load_settings
from tests.components.pki import TestCa
from tests.deploy.test_front_proxies import nginx_test
from tests.deploy.tools import DEPLOY, ROOT

COMPOSE = DEPLOY / "compose"


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text(encoding="utf-8"))
    return document


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


GATEWAYS = ("gateway-1", "gateway-2")


def test_the_vm_runs_two_gateways_behind_nginx_with_postgresql_and_redis() -> None:
    assert set(services()) == {"postgres", "redis", "migrate", *GATEWAYS, "nginx"}


@pytest.mark.parametrize("name", ["postgres", "redis", "nginx"])
def test_each_server_has_a_health_check_and_a_pinned_image(name: str) -> None:
    service = services()[name]
    assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}
    # A release, never a moving major tag: PostgreSQL's minor number is its patch release (15.10).
    assert re.fullmatch(r"[a-z]+:\d+\.\d+(\.\d+)?-bookworm", service["image"]), service["image"]


def test_start_order_waits_for_health_and_for_the_migration() -> None:
    every = services()
    assert every["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert every["migrate"]["restart"] == "no"
    for name in GATEWAYS:
        assert every[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
    assert every["nginx"]["depends_on"] == {name: {"condition": "service_healthy"} for name in GATEWAYS}


def test_the_gateways_run_the_image_as_its_user_read_only_without_capabilities() -> None:
    for name in (*GATEWAYS, "migrate"):
        service = services()[name]
        assert service["build"] == {"context": "../..", "dockerfile": "deploy/container/Containerfile"}
        assert (ROOT / "deploy" / "container" / "Containerfile").is_file()
        assert service["user"] == "10001:10001" and service["read_only"] is True
        assert service["cap_drop"] == ["ALL"] and service["security_opt"] == ["no-new-privileges:true"]
        assert any(mount.startswith("/tmp:") for mount in service["tmpfs"])
        build_parser().parse_args(service["command"])
    assert [services()[name]["command"] for name in GATEWAYS] == [["serve", "--no-migrate"]] * 2


def test_postgresql_and_redis_sit_on_an_internal_network_only() -> None:
    assert compose()["networks"]["back"]["internal"] is True
    assert services()["postgres"]["networks"] == ["back"] and services()["redis"]["networks"] == ["back"]
    assert "ports" not in services()["postgres"] and "ports" not in services()["redis"]
    assert "ports" not in services()["gateway-1"]


def test_nginx_is_the_one_trusted_proxy() -> None:
    address = services()["nginx"]["networks"]["front"]["ipv4_address"]
    toml = (COMPOSE / "channelgate.toml").read_text(encoding="utf-8")
    assert f'trusted_proxies = ["{address}/32"]' in toml


def test_both_replicas_share_one_checkpoint_sink_outside_the_databases_volume() -> None:
    for name in GATEWAYS:
        assert "checkpoints:/var/lib/channelgate-checkpoints" in services()[name]["volumes"]
    assert "checkpoints" in compose()["volumes"] and "pgdata" in compose()["volumes"]
    assert 'sink = "file:///var/lib/channelgate-checkpoints/' in (COMPOSE / "channelgate.toml").read_text()


def test_every_secret_named_exists_in_the_top_level_list() -> None:
    declared = set(compose()["secrets"])
    for service in services().values():
        assert set(service.get("secrets", [])) <= declared


def test_the_configuration_loads_with_the_documented_secrets(tmp_path: Path) -> None:
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    for name in compose()["secrets"]:
        (secrets / name).write_text("placeholder\n", encoding="utf-8")
    toml = (COMPOSE / "channelgate.toml").read_text(encoding="utf-8").replace("/run/secrets/", f"{secrets}/")
    config = tmp_path / "channelgate.toml"
    config.write_text(toml, encoding="utf-8")
    environ = {}
    for line in (COMPOSE / "channelgate.env.example").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            environ[name] = value
    with pytest.raises(ConfigError, match=r"admin\.tokens"):  # the placeholder opens nothing: fill it in, as asked
        load_settings(config, environ=environ)
    environ["CHANNELGATE_ADMIN__TOKENS"] = '["compose-admin-token-of-at-least-32-characters"]'
    settings = load_settings(config, environ=environ)
    assert settings.vault.active_key == "2026-12" and "2026-12" in settings.vault.keys
    assert settings.sessions.redis.password_file == secrets / "redis-password"
    assert (COMPOSE / "policies" / "routes.cedar").read_text() == (ROOT / "policies/default/routes.cedar").read_text()


def test_nginx_accepts_the_compose_nginx_conf(tmp_path: Path) -> None:
    """The replicas' compose names resolve only inside compose's network: pointed at loopback for ``nginx -t``,
    as are the image's paths (certificates, mime.types, pid)."""
    cert, key = TestCa(tmp_path).issue("compose-nginx")
    (tmp_path / "mime.types").write_text("types { text/html html; }\n", encoding="utf-8")
    text = (COMPOSE / "nginx.conf").read_text(encoding="utf-8")
    for old, new in (
        ("gateway-1:8000", "127.0.0.1:8000"),
        ("gateway-2:8000", "127.0.0.1:8001"),
        ("/etc/nginx/tls/server.crt", str(cert)),
        ("/etc/nginx/tls/server.key", str(key)),
        ("/etc/nginx/mime.types", str(tmp_path / "mime.types")),
        ("/var/run/nginx.pid", str(tmp_path / "nginx.pid")),
    ):
        assert old in text
        text = text.replace(old, new)
    nginx_test(text, tmp_path, wrap=False)
