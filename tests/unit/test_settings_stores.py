"""``[database]`` and ``[sessions]`` connection settings: TLS, credentials from files, timeouts, pools, Sentinel.
Each mistake is a configuration error naming the field, never echoing a secret; what validates is handed to the
drivers as meant."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool

from gateway.errors import ConfigError
from gateway.sessions.redis_client import UNLIMITED_CONNECTIONS, open_redis
from gateway.settings import DatabaseSettings, SessionSettings, load_settings
from gateway.storage.postgres_options import connect_args, engine_url, worker_connect_kwargs, worker_dsn
from tests.components.pki import TestCa

OIDC = """
[server]
public_url = "https://gateway.example"

[oidc]
issuer = "https://idp.example"
client_id = "channelgate"
client_secret = "s"
"""
PG = "postgresql+asyncpg://channelgate@db.internal:5432/channelgate"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("pki"))


def _file(tmp_path: Path, name: str, text: str = "s3cret-from-file\n") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _error(tmp_path: Path, toml: str, environ: dict[str, str] | None = None) -> str:
    path = tmp_path / "channelgate.toml"
    path.write_text(OIDC + toml, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ=environ or {})
    return raised.value.message


def _sessions(**values: Any) -> SessionSettings:
    return SessionSettings.model_validate({"store": "redis", **values})


def _database(**values: Any) -> DatabaseSettings:
    return DatabaseSettings.model_validate({"url": PG, **values})


# --- [sessions]: Redis ---------------------------------------------------------------------------------------


def test_a_sentinel_deployment_loads_from_toml_with_every_connection_setting(tmp_path: Path, pki: TestCa) -> None:
    cert, key = pki.issue("client", client=True)
    path = tmp_path / "channelgate.toml"
    path.write_text(
        OIDC
        + f"""
[sessions]
store = "redis"

[sessions.redis]
username = "channelgate"
password_file = "{_file(tmp_path, "redis-password")}"
tls = true
db = 2
ca_file = "{pki.ca_file}"
cert_file = "{cert}"
key_file = "{key}"
socket_timeout_seconds = 0.5
connect_timeout_seconds = 2.0
max_connections = 64

[sessions.redis.sentinel]
master_name = "channelgate"
addresses = ["10.0.0.1:26379", "sentinel-b.internal:26379", "[fd00::3]:26379"]
password_file = "{_file(tmp_path, "sentinel-password")}"
tls = true
""",
        encoding="utf-8",
    )
    redis = load_settings(path, environ={}).sessions.redis
    assert redis.sentinel is not None
    assert redis.sentinel.addresses[2] == "[fd00::3]:26379"
    assert (redis.db, redis.max_connections, redis.socket_timeout_seconds) == (2, 64, 0.5)


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ('[sessions]\nstore = "redis"\n', "sessions: store = 'redis' needs redis_url"),
        (
            '[sessions]\nstore = "redis"\nredis_url = "redis://r:6379/0"\n'
            '[sessions.redis.sentinel]\nmaster_name = "m"\naddresses = ["s:26379"]\n',
            "not both",
        ),
        (
            '[sessions]\nstore = "redis"\n[sessions.redis.sentinel]\nmaster_name = "m"\naddresses = ["s"]\n',
            "sessions.redis.sentinel.addresses: 's' is not host:port",
        ),
        (
            '[sessions]\nstore = "redis"\n[sessions.redis.sentinel]\nmaster_name = "m"\naddresses = []\n',
            "sessions.redis.sentinel.addresses",
        ),
        (
            '[sessions]\nstore = "redis"\nredis_url = "redis://r:6379/0"\n[sessions.redis]\nca_file = "/etc/hosts"\n',
            "need a rediss:// redis_url",
        ),
        (
            '[sessions]\nstore = "redis"\nredis_url = "rediss://r:6379/0"\n[sessions.redis]\nca_file = "/nope.pem"\n',
            "sessions.redis.ca_file: /nope.pem is not a file",
        ),
        (
            '[sessions]\nstore = "redis"\nredis_url = "redis://r:6379/0"\n[sessions.redis]\ntls = true\n',
            "redis.tls and redis.db are for Sentinel",
        ),
        (
            '[sessions]\nstore = "redis"\nredis_url = "rediss://r:6379/0"\n[sessions.redis]\nkey_file = "/etc/hosts"\n',
            "key_file needs cert_file",
        ),
        (
            '[sessions]\nstore = "redis"\nredis_url = "redis://r:6379/0"\n[sessions.redis]\nmax_connections = 1\n',
            "sessions.redis.max_connections",
        ),
        (
            '[sessions]\nstore = "redis"\nredis_url = "redis://r:6379/0"\n'
            "[sessions.redis]\nmax_clock_skew_seconds = 0\n",
            "sessions.redis.max_clock_skew_seconds",
        ),
    ],
    ids=[
        "no-target",
        "url-and-sentinel",
        "address-without-port",
        "no-sentinels",
        "ca-without-tls",
        "missing-ca-file",
        "tls-flag-with-url",
        "key-without-cert",
        "pool-too-small",
        "no-clock-skew-allowed",
    ],
)
def test_a_redis_mistake_is_a_config_error_naming_the_field(tmp_path: Path, toml: str, named: str) -> None:
    assert named in _error(tmp_path, toml)


def test_a_redis_password_in_two_places_is_refused_without_echoing_either(tmp_path: Path) -> None:
    toml = (
        '[sessions]\nstore = "redis"\nredis_url = "redis://:url-s3cret@r:6379/0"\n'
        '[sessions.redis]\npassword = "table-s3cret"\n'
    )
    message = _error(tmp_path, toml)
    assert "keep it in one place" in message
    assert "url-s3cret" not in message and "table-s3cret" not in message


def test_a_numeric_redis_password_from_the_environment_stays_text(tmp_path: Path) -> None:
    path = tmp_path / "channelgate.toml"
    path.write_text(OIDC + '[sessions]\nstore = "redis"\nredis_url = "redis://r:6379/0"\n', encoding="utf-8")
    settings = load_settings(path, environ={"CHANNELGATE_SESSIONS__REDIS__PASSWORD": "12345"})
    assert settings.sessions.redis.password is not None
    assert settings.sessions.redis.password.get_secret_value() == "12345"
    assert "12345" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("CHANNELGATE_VAULT__KEYS", '{ "2026-12" = "a2V5" }', {"2026-12": "a2V5"}),
        ("CHANNELGATE_AUDIT__CHECKPOINTS__SIGNING_KEYS", '{ ck1 = "c2lnbg" }', {"ck1": "c2lnbg"}),
    ],
)
def test_a_table_of_secrets_from_the_environment_is_a_table(
    tmp_path: Path, name: str, value: str, expected: dict[str, str]
) -> None:
    """How Kubernetes Secrets and compose env files pass vault and checkpoint keys (deploy/)."""
    path = tmp_path / "channelgate.toml"
    sink = 'sink = "file:///var/lib/channelgate-checkpoints/c.jsonl"\nactive_key = "ck1"\n'
    path.write_text(OIDC + '[vault]\nactive_key = "2026-12"\n[audit.checkpoints]\n' + sink, encoding="utf-8")
    settings = load_settings(path, environ={name: value})
    table = settings.vault.keys if "VAULT" in name else settings.audit.checkpoints.signing_keys
    assert {key: secret.get_secret_value() for key, secret in table.items()} == expected


async def test_a_rediss_url_gets_the_ca_the_client_certificate_and_host_name_checks(
    tmp_path: Path, pki: TestCa
) -> None:
    cert, key = pki.issue("client", client=True)
    sessions = _sessions(
        redis_url="rediss://redis.internal:6380/3",
        redis={"password_file": _file(tmp_path, "pw"), "ca_file": str(pki.ca_file), "cert_file": str(cert),
               "key_file": str(key), "max_connections": 32, "socket_timeout_seconds": 0.25},
    )  # fmt: skip
    client, close_also = open_redis(sessions)
    try:
        options = client.connection_pool.connection_kwargs
        assert options["ssl_ca_certs"] == str(pki.ca_file)
        assert (options["ssl_certfile"], options["ssl_keyfile"]) == (str(cert), str(key))
        assert options["ssl_check_hostname"] is True and options["ssl_cert_reqs"] == "required"
        assert options["password"] == "s3cret-from-file"  # the file's first line, newline dropped
        assert (options["db"], options["socket_timeout"]) == (3, 0.25)
        assert client.connection_pool.max_connections == 32
        assert close_also is None
    finally:
        await client.aclose()


async def test_an_unset_connection_limit_is_no_limit_not_the_client_librarys_hundred(tmp_path: Path) -> None:
    """redis-py caps a pool at 100 when given no limit; a storm of deprovisionings needs more (§9 of the benchmarks)."""
    client, _ = open_redis(_sessions(redis_url="redis://redis.internal:6379/0", redis={}))
    try:
        assert client.connection_pool.max_connections == UNLIMITED_CONNECTIONS
    finally:
        await client.aclose()


async def test_sentinel_mode_asks_the_sentinels_with_their_own_password_for_the_named_primary(tmp_path: Path) -> None:
    sessions = _sessions(
        redis={
            "password": "primary-pw",
            "db": 1,
            "sentinel": {
                "master_name": "cg",
                "addresses": ["127.0.0.1:26379", "[::1]:26380"],
                "username": "watcher",
                "password_file": _file(tmp_path, "sentinel-pw", "sentinel-pw\n"),
            },
        }
    )
    client, close_also = open_redis(sessions)
    try:
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == "cg" and pool.is_master
        assert (pool.connection_kwargs["password"], pool.connection_kwargs["db"]) == ("primary-pw", 1)
        sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
        assert [(s["host"], s["port"]) for s in sentinels] == [("127.0.0.1", 26379), ("::1", 26380)]
        assert all(s["username"] == "watcher" and s["password"] == "sentinel-pw" for s in sentinels)
    finally:
        await client.aclose()
        assert close_also is not None
        await close_also()


def test_an_unreadable_password_file_is_a_config_error_naming_the_setting(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_bytes(b"\xff\xfe not text")
    sessions = _sessions(redis_url="redis://r:6379/0", redis={"password_file": str(secret)})
    with pytest.raises(ConfigError, match=r"sessions.redis.password_file: cannot read .*: not UTF-8 text"):
        open_redis(sessions)


# --- [database]: PostgreSQL ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"url": "sqlite+aiosqlite:///x.db", "sslmode": "require"}, "sslmode apply to PostgreSQL only"),
        ({"sslmode": "prefer", "sslrootcert": "/etc/hosts"}, "need sslmode = 'require'"),
        ({"sslmode": "verify-full", "sslrootcert": "/nope.pem"}, "/nope.pem is not a file"),
        ({"sslmode": "require", "sslkey": "/etc/hosts"}, "sslkey needs sslcert"),
        ({"sslmode": "sometimes"}, "sslmode"),
        ({"url": "postgresql+asyncpg://u:url-s3cret@db/cg", "password_file": "/etc/hosts"}, "one place"),
        ({"statement_timeout_seconds": 0}, "statement_timeout_seconds"),
        ({"max_overflow": -1}, "max_overflow"),
    ],
    ids=["tls-on-sqlite", "ca-without-tls", "missing-ca", "key-without-cert", "unknown-mode", "two-passwords",
         "zero-statement-timeout", "negative-overflow"],
)  # fmt: skip
def test_a_database_mistake_is_a_config_error_naming_the_field(
    tmp_path: Path, values: dict[str, Any], named: str
) -> None:
    toml = "[database]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in ({"url": PG} | values).items())
    message = _error(tmp_path, toml)
    assert named in message
    assert "url-s3cret" not in message


def _toml(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def test_verify_full_checks_the_chain_and_the_host_name_with_the_named_ca(pki: TestCa) -> None:
    cert, key = pki.issue("gateway", client=True)
    args = connect_args(
        _database(sslmode="verify-full", sslrootcert=str(pki.ca_file), sslcert=str(cert), sslkey=str(key))
    )
    context = args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "channelgate-test-ca"),),)]


@pytest.mark.parametrize(
    ("mode", "with_ca", "verify", "hostname"),
    [
        ("verify-ca", True, ssl.CERT_REQUIRED, False),
        ("require", True, ssl.CERT_REQUIRED, False),  # libpq: a root certificate given means it is checked
        ("require", False, ssl.CERT_NONE, False),
        ("verify-full", False, ssl.CERT_REQUIRED, True),  # the system's CAs
    ],
)
def test_each_sslmode_verifies_what_libpq_would(
    pki: TestCa, mode: str, with_ca: bool, verify: ssl.VerifyMode, hostname: bool
) -> None:
    extra = {"sslrootcert": str(pki.ca_file)} if with_ca else {}
    context = connect_args(_database(sslmode=mode, **extra))["ssl"]
    assert (context.verify_mode, context.check_hostname) == (verify, hostname)


def test_disable_and_the_default_leave_tls_to_what_they_say() -> None:
    assert connect_args(_database(sslmode="disable"))["ssl"] is False
    assert "ssl" not in connect_args(_database())
    assert connect_args(_database(sslmode="prefer"))["ssl"] == "prefer"


def test_timeouts_reach_the_driver_and_the_server() -> None:
    args = connect_args(_database(statement_timeout_seconds=30, command_timeout_seconds=45, connect_timeout_seconds=3))
    assert args["server_settings"]["statement_timeout"] == "30000"  # milliseconds
    assert (args["command_timeout"], args["timeout"]) == (45, 3)
    read_only = connect_args(_database(), read_only=True)["server_settings"]
    assert read_only["default_transaction_read_only"] == "on"
    assert "statement_timeout" not in read_only


def test_the_password_file_fills_the_url_and_a_worker_reaches_the_database_the_same_way(
    tmp_path: Path, pki: TestCa
) -> None:
    settings = _database(
        password_file=_file(tmp_path, "db-pw", "db-s3cret\n"), sslmode="verify-full", sslrootcert=str(pki.ca_file)
    )
    assert engine_url(settings).password == "db-s3cret"
    assert "db-s3cret" not in repr(settings)

    kwargs = worker_connect_kwargs(worker_dsn(settings))
    assert kwargs["dsn"] == "postgresql://channelgate:db-s3cret@db.internal:5432/channelgate"
    assert kwargs["ssl"].check_hostname and kwargs["ssl"].verify_mode is ssl.CERT_REQUIRED
    assert [c["subject"] for c in kwargs["ssl"].get_ca_certs()] == [((("commonName", "channelgate-test-ca"),),)]


def test_a_worker_without_tls_settings_gets_a_plain_dsn() -> None:
    assert worker_connect_kwargs(worker_dsn(_database())) == {
        "dsn": "postgresql://channelgate@db.internal:5432/channelgate"
    }


# --- deploy/channelgate.example.toml: its commented connection samples stay valid --------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "channelgate.example.toml"
_FILE_LINE = re.compile(
    r'^(?:# )?(password_file|sslrootcert|sslcert|sslkey|ca_file|cert_file|key_file) = "(/[^"]+)"', re.MULTILINE
)


def _example(tmp_path: Path, pki: TestCa, *, sentinel: bool) -> Path:
    """The example with every sample line naming a file uncommented and pointed at a real one (a CA, a client
    pair, a password), and its Sentinel block either taken in place of ``redis_url`` or left out."""
    lines, in_block = [], False
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        in_block = line == "# [sessions.redis.sentinel]" or (in_block and line.startswith("# "))
        if in_block:
            if sentinel:
                lines.append(line.removeprefix("# "))
        elif not (sentinel and line.startswith("redis_url = ")):
            lines.append(line)
    cert, key = pki.issue("example-client", client=True)
    files = {"sslrootcert": pki.ca_file, "ca_file": pki.ca_file, "sslcert": cert, "cert_file": cert,
             "sslkey": key, "key_file": key}  # fmt: skip

    def real(match: re.Match[str]) -> str:
        name = match.group(1)
        path = files.get(name) or Path(_file(tmp_path, Path(match.group(2)).name))
        return f'{name} = "{path}"'

    path = tmp_path / "example.toml"
    path.write_text(_FILE_LINE.sub(real, "\n".join(lines)), encoding="utf-8")
    return path


def test_the_example_database_and_redis_samples_load_once_their_files_exist(tmp_path: Path, pki: TestCa) -> None:
    settings = load_settings(_example(tmp_path, pki, sentinel=False), environ={})
    assert settings.database.sslmode == "verify-full" and settings.database.sslkey is not None
    assert settings.sessions.redis.ca_file == pki.ca_file and settings.sessions.redis.password_file is not None


def test_the_example_sentinel_sample_loads_in_place_of_the_url(tmp_path: Path, pki: TestCa) -> None:
    sessions = load_settings(_example(tmp_path, pki, sentinel=True), environ={}).sessions
    assert sessions.redis_url is None
    assert sessions.redis.sentinel is not None and sessions.redis.sentinel.tls
    assert len(sessions.redis.sentinel.addresses) == 3 and sessions.redis.sentinel.password_file is not None
