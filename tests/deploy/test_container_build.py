"""deploy/container/Containerfile built unchanged and run by a real container engine (Debian's podman), the way
its header tells an operator to: read-only root, a tmpfs /tmp, the data volume, the configuration mounted
read-only, every capability dropped, no new privileges.

Only the base image is a stand-in (tests/components/container_engine.py says why and how it is made); every
step after ``FROM`` is the real build, pip installing the package and its dependencies from PyPI. Then
deploy/compose's gateway service, run as compose runs it, against a real PostgreSQL and Redis that want its
passwords (the compose engine itself and its other images are out of reach here).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from redis import Redis as SyncRedis

from gateway.audit.checkpoints import generate_key
from tests.components.container_engine import Podman, build_python_base
from tests.components.ports import LOOPBACK, free_port
from tests.components.postgres_server import PostgresServer
from tests.components.redis_server import RedisServer
from tests.deploy.tools import DEPLOY, ROOT

# debootstrap, pip and the build take one to three minutes the first time, in the module's first test.
pytestmark = pytest.mark.timeout(900)

CONTAINERFILE = DEPLOY / "container" / "Containerfile"
COMPOSE = DEPLOY / "compose"
IMAGE = "localhost/channelgate:test"
CLIENT_SECRET = "oidc-client-secret-never-printed-7f3a9c"
ADMIN_TOKEN = "admin-token-never-printed-0123456789abcdef"

CONFIG = f"""
[server]
public_url = "https://gateway.example.com"

[database]
url = "sqlite+aiosqlite:////var/lib/channelgate/channelgate.db"

[sessions]
store = "memory"

[oidc]
issuer = "https://login.example.com"
client_id = "channelgate"
client_secret = "{CLIENT_SECRET}"

[admin]
tokens = ["{ADMIN_TOKEN}"]
"""

#: As the Containerfile's header and deploy/compose/compose.yaml run it.
HARDENED = [
    "--read-only", "--tmpfs", "/tmp:rw,noexec,nosuid,size=64m", "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges",
]  # fmt: skip


def _base_image() -> str:
    names = re.findall(r"^FROM\s+(\S+)", CONTAINERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert len(set(names)) == 1, names
    return str(names[0])


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    engine = Podman()
    try:
        build_python_base(engine, tmp_path_factory.mktemp("base"), f"docker.io/library/{_base_image()}")
        yield engine
    finally:
        engine.reset()


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    # --format docker: the OCI image format has no HEALTHCHECK (podman drops it with a warning).
    podman(
        "build", "--pull=never", "--network", "host", "--format", "docker", *podman.limits,
        "-f", str(CONTAINERFILE), "-t", IMAGE, str(ROOT),
        timeout=900, what="podman build of deploy/container/Containerfile",
    )  # fmt: skip
    return IMAGE


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "channelgate.toml"
    path.write_text(CONFIG, encoding="utf-8")
    path.chmod(0o644)  # read by UID 10001 inside
    return path


def _get(url: str, **headers: str) -> tuple[int, bytes]:
    try:
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 - our own loopback URL
        with urllib.request.urlopen(request, timeout=2) as answer:  # noqa: S310
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _wait_until_healthy(url: str, podman: Podman, name: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if _get(url + "/.channelgate/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"the container did not answer /.channelgate/healthz in {seconds:.0f} s:\n{_logs(podman, name)}")


def _logs(podman: Podman, name: str) -> str:
    """What the container printed, on either stream (podman logs keeps them apart)."""
    printed = podman.attempt("logs", name)
    return printed.stdout + printed.stderr


def test_the_image_keeps_its_user_entrypoint_and_healthcheck(podman: Podman, image: str) -> None:
    inspected = podman.inspect("image", image)
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["channelgate"] and config["Cmd"] == ["serve"]
    assert inspected["Healthcheck"]["Test"] == ["CMD", "python", "/opt/channelgate/healthcheck.py"]
    assert "/var/lib/channelgate" in config["Volumes"]


def test_the_image_checks_its_configuration_and_runs_the_shipped_policy_tests(
    podman: Podman, image: str, config: Path
) -> None:
    mount = ["-v", f"{config}:/etc/channelgate/channelgate.toml:ro"]
    checked = podman("run", "--rm", *HARDENED, *podman.limits, *mount, image, "check-config",
                     "/etc/channelgate/channelgate.toml")  # fmt: skip
    assert "valid" in checked
    validated = podman("run", "--rm", *HARDENED, *podman.limits, *mount, image, "policy", "validate")
    assert "are valid" in validated
    tested = podman("run", "--rm", *HARDENED, *podman.limits, *mount, image, "policy", "test")
    assert re.search(r"\b[1-9]\d* passed, 0 failed", tested), tested


def test_the_gateway_serves_read_only_as_uid_10001_writing_only_its_volume_and_stops_cleanly(
    podman: Podman, image: str, config: Path
) -> None:
    port = free_port()
    name = "channelgate-serve"
    podman(
        "run", "-d", "--name", name, *HARDENED, *podman.limits,
        "-v", "channelgate-data:/var/lib/channelgate", "-v", f"{config}:/etc/channelgate/channelgate.toml:ro",
        "-p", f"{LOOPBACK}:{port}:8000", image,
    )  # fmt: skip
    url = f"http://{LOOPBACK}:{port}"
    _wait_until_healthy(url, podman, name)

    status, body = _get(url + "/.channelgate/readyz")
    assert status == 200 and b'"database":"ok"' in body and b'"sessions":"ok"' in body
    assert podman.attempt("healthcheck", "run", name).returncode == 0  # the image's own HEALTHCHECK
    assert podman("exec", name, "id", "-u").strip() == "10001"
    refused = podman.attempt("exec", name, "touch", "/opt/channelgate/written")
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    # `serve` upgraded the schema into the volume, the only writable place with data.
    volume = Path(podman.inspect("volume", "channelgate-data")["Mountpoint"])
    assert (volume / "channelgate.db").stat().st_size > 0
    assert (volume / "channelgate.db").stat().st_uid == 10001

    started = time.monotonic()
    podman("stop", "--time", "30", name)
    assert time.monotonic() - started < 15, "SIGTERM did not stop the gateway: podman had to kill it"
    state = podman.inspect("container", name)["State"]
    assert state["ExitCode"] == 0
    logs = _logs(podman, name)
    assert "Application shutdown complete" in logs
    assert CLIENT_SECRET not in logs and ADMIN_TOKEN not in logs
    podman("rm", name)


def test_a_configuration_error_stops_the_container_with_the_setting_named_and_no_secret_shown(
    podman: Podman, image: str, tmp_path: Path
) -> None:
    broken = tmp_path / "channelgate.toml"
    broken.write_text(CONFIG.replace('store = "memory"', 'store = "memcached"'), encoding="utf-8")
    broken.chmod(0o644)
    result = podman.attempt(
        "run", "--rm", *HARDENED, *podman.limits, "-v", f"{broken}:/etc/channelgate/channelgate.toml:ro", image
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "sessions" in output and "store" in output, output
    assert "Traceback" not in output, output
    assert CLIENT_SECRET not in output and ADMIN_TOKEN not in output


DB_PASSWORD = "compose-db-password-4c1e"
REDIS_PASSWORD = "compose-redis-password-9b2d"


def _compose_env(path: Path) -> Path:
    """deploy/compose/channelgate.env.example with every CHANGE-ME filled in, as its comment asks."""
    private, _ = generate_key()
    values = {
        "CHANNELGATE_OIDC__CLIENT_SECRET": CLIENT_SECRET,
        "CHANNELGATE_VAULT__KEYS": '{ "2026-12" = "' + base64.b64encode(secrets.token_bytes(32)).decode() + '" }',
        "CHANNELGATE_ADMIN__TOKENS": f'["{ADMIN_TOKEN}"]',
        "CHANNELGATE_AUDIT__CHECKPOINTS__SIGNING_KEYS": '{ ck1 = "' + private + '" }',
    }
    lines = []
    for line in (COMPOSE / "channelgate.env.example").read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition("=")
        if line and not line.startswith("#"):
            value = values.get(name, value)
            assert "CHANGE-ME" not in value, f"{name} has no test value"
            lines.append(f"{name}={value}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _compose_secrets(directory: Path) -> dict[str, Path]:
    """The three compose secrets, as deploy.md makes them (mode 0444: read inside by the containers' users)."""
    directory.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    files = {"db-password": f"{DB_PASSWORD}\n".encode(), "redis-password": f"{REDIS_PASSWORD}\n".encode(),
             "assertion.pem": pem}  # fmt: skip
    for name, content in files.items():
        (directory / name).write_bytes(content)
        (directory / name).chmod(0o444)
    return {name: directory / name for name in files}


@pytest.fixture
def compose_backends() -> Iterator[tuple[PostgresServer, RedisServer]]:
    """PostgreSQL accepting the gateway's role with a password only (scram-sha-256), Redis with ``requirepass``."""
    base = Path(tempfile.mkdtemp(prefix="cg-compose-pg-"))
    base.chmod(0o755)  # the server runs as postgres, below this root-owned directory
    postgres, redis = PostgresServer(base / "cluster"), RedisServer()
    try:
        postgres.start()
        hba = postgres.data_dir / "pg_hba.conf"
        hba.write_text(f"host all channelgate {LOOPBACK}/32 scram-sha-256\n" + hba.read_text(encoding="utf-8"))
        postgres.execute("SELECT pg_reload_conf()")
        postgres.execute(f"CREATE ROLE channelgate LOGIN PASSWORD '{DB_PASSWORD}'")
        postgres.execute("CREATE DATABASE channelgate OWNER channelgate")
        redis.start()
        with SyncRedis.from_url(redis.url) as client:
            client.config_set("requirepass", REDIS_PASSWORD)
        yield postgres, redis
    finally:
        redis.close()
        postgres.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.postgres
@pytest.mark.redis
def test_the_compose_gateway_migrates_serves_and_signs_a_checkpoint_with_postgresql_and_redis(
    podman: Podman, image: str, compose_backends: tuple[PostgresServer, RedisServer], tmp_path: Path
) -> None:
    """deploy/compose's gateway service without the compose engine: its channelgate.toml, policies, secrets under
    /run/secrets and channelgate.env (filled in), the migrate service's command then a replica's, hardened as
    compose.yaml runs them. Only the two servers' addresses differ (the test's own, on loopback ports of its own:
    the host's network, with the gateway told to listen on loopback too)."""
    postgres, redis = compose_backends
    port, name = free_port(), "channelgate-compose"
    mounts = [
        "-v", f"{COMPOSE / 'channelgate.toml'}:/etc/channelgate/channelgate.toml:ro",
        "-v", f"{COMPOSE / 'policies'}:/etc/channelgate/policies:ro",
        "-v", "checkpoints:/var/lib/channelgate-checkpoints",
        *[arg for secret, path in _compose_secrets(tmp_path / "secrets").items()
          for arg in ("-v", f"{path}:/run/secrets/{secret}:ro")],
    ]  # fmt: skip
    run = [
        "--network", "host", *HARDENED, *podman.limits, "--env-file", str(_compose_env(tmp_path / "channelgate.env")),
        "-e", f"CHANNELGATE_DATABASE__URL=postgresql+asyncpg://channelgate@{LOOPBACK}:{postgres.port}/channelgate",
        "-e", f"CHANNELGATE_SESSIONS__REDIS_URL=redis://{LOOPBACK}:{redis.port}/0",
        "-e", f"CHANNELGATE_SERVER__HOST={LOOPBACK}", "-e", f"CHANNELGATE_SERVER__PORT={port}", *mounts,
    ]  # fmt: skip
    podman("run", "--rm", *run, image, "migrate", timeout=180, what="the compose migrate service")
    podman("run", "-d", "--name", name, *run, image, "serve", "--no-migrate")
    url = f"http://{LOOPBACK}:{port}"
    _wait_until_healthy(url, podman, name)
    status, body = _get(url + "/.channelgate/readyz")
    assert status == 200 and b'"database":"ok"' in body and b'"sessions":"ok"' in body, body
    assert _get(url + "/chat/", Accept="application/json")[0] == 401  # no session: refused, and recorded

    podman("stop", "--time", "30", name)
    assert podman.inspect("container", name)["State"]["ExitCode"] == 0
    logs = _logs(podman, name)
    assert DB_PASSWORD not in logs and REDIS_PASSWORD not in logs and CLIENT_SECRET not in logs
    podman("rm", name)
    # At shutdown the replica sealed the log and signed a checkpoint into the shared volume, with the env's key.
    sink = Path(podman.inspect("volume", "checkpoints")["Mountpoint"]) / "checkpoints.jsonl"
    assert sink.is_file(), f"no checkpoint in the volume; the replica printed:\n{logs}"
    checkpoints = [json.loads(line) for line in sink.read_text(encoding="utf-8").splitlines()]
    assert checkpoints and checkpoints[-1]["key_id"] == "ck1"
