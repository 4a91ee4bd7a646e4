"""A real Redis Sentinel set-up (Debian ``redis-server``, run with ``--sentinel``): a primary and a replica, both
asking for a password, watched by one sentinel that asks for its own; and a TLS-only Redis. Everything on free
loopback ports, nothing persisted.

One sentinel with a quorum of 1 is enough to test what the gateway does (ask the sentinel for the primary, follow
a failover); production runs three or more on separate hosts.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from tests.components.ports import LOOPBACK, free_port
from tests.components.process import ChildProcess, Lifecycle, ServerProcess, require_executable

MASTER_NAME = "channelgate"
PRIMARY_PASSWORD = "primary-s3cret"
SENTINEL_PASSWORD = "sentinel-s3cret"


def _answers(port: int, password: str | None, **tls: Any) -> bool:
    try:
        with redis.Redis(LOOPBACK, port, password=password, socket_timeout=0.5, **tls) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def _server_argv(port: int, directory: Path, *extra: str) -> list[str]:
    return [
        require_executable("redis-server", "redis-server"),
        "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no", "--daemonize", "no",
        "--dir", str(directory), "--logfile", "", "--loglevel", "warning", *extra,
    ]  # fmt: skip


class SentinelGroup(Lifecycle):
    """A primary, its replica and one sentinel monitoring them as ``MASTER_NAME``."""

    def __init__(self, *, startup_timeout: float = 15.0) -> None:
        self.startup_timeout = startup_timeout
        self.directory = Path(tempfile.mkdtemp(prefix="channelgate-sentinel-"))
        self.primary_port, self.replica_port, self.sentinel_port = free_port(), free_port(), free_port()
        # No 5 s wait for more replicas before a full synchronisation (Redis 7's diskless-sync delay).
        auth = ("--requirepass", PRIMARY_PASSWORD, "--masterauth", PRIMARY_PASSWORD, "--repl-diskless-sync-delay", "0")
        self.primary = ChildProcess(
            _server_argv(self.primary_port, self.directory, *auth),
            self.directory / "primary.log",
            name=f"redis primary :{self.primary_port}",
        )
        replica_of = ("--replicaof", LOOPBACK, str(self.primary_port))
        self.replica = ChildProcess(
            _server_argv(self.replica_port, self.directory, *auth, *replica_of),
            self.directory / "replica.log",
            name=f"redis replica :{self.replica_port}",
        )
        conf = self.directory / "sentinel.conf"  # sentinel rewrites its file: it must be writable
        conf.write_text(
            "\n".join(
                [
                    f"bind {LOOPBACK}",
                    f"port {self.sentinel_port}",
                    "daemonize no",
                    f"dir {self.directory}",
                    'logfile ""',
                    f"sentinel monitor {MASTER_NAME} {LOOPBACK} {self.primary_port} 1",
                    f"sentinel auth-pass {MASTER_NAME} {PRIMARY_PASSWORD}",
                    f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
                    f"sentinel failover-timeout {MASTER_NAME} 10000",
                    f"requirepass {SENTINEL_PASSWORD}",
                ]
            )
            + "\n",
            encoding="utf-8",
        )
        self.sentinel = ChildProcess(
            [require_executable("redis-server", "redis-server"), str(conf), "--sentinel"],
            self.directory / "sentinel.log",
            name=f"redis sentinel :{self.sentinel_port}",
        )

    @property
    def sentinel_address(self) -> str:
        return f"{LOOPBACK}:{self.sentinel_port}"

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(LOOPBACK, self.sentinel_port, password=SENTINEL_PASSWORD, decode_responses=True)

    def primary_port_now(self) -> int:
        """The primary's port as clients learn it (``SENTINEL MASTERS``, which names the promoted replica only
        once the failover is over; ``GET-MASTER-ADDR-BY-NAME`` names it earlier)."""
        with self.sentinel_client() as client:
            return int(client.sentinel_masters()[MASTER_NAME]["port"])

    def failover(self) -> int:
        """Have the sentinel promote the replica; wait until it names the new primary and that primary takes
        writes. Returns the new primary's port. The old primary is reconfigured as a replica only later (Sentinel
        looks at it every 10 s), and keeps serving its existing connections until then."""
        before = self.primary_port_now()
        with self.sentinel_client() as client:
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            port = self.primary_port_now()
            if port != before and self.role(port) == "master":
                return port
            time.sleep(0.05)
        raise TimeoutError(f"no failover within {self.startup_timeout} s")

    def keys(self, port: int, pattern: str) -> set[str]:
        """The keys matching ``pattern`` on the server at ``port``, asked directly."""
        with redis.Redis(LOOPBACK, port, password=PRIMARY_PASSWORD, decode_responses=True) as client:
            return {str(key) for key in client.keys(pattern)}

    def start(self) -> None:
        self.primary.start()
        self.primary.wait_until(
            lambda: _answers(self.primary_port, PRIMARY_PASSWORD), timeout=self.startup_timeout, what="primary PONG"
        )
        self.replica.start()
        self.replica.wait_until(self._replica_linked, timeout=self.startup_timeout, what="replication link up")
        self.sentinel.start()
        self.sentinel.wait_until(self._sentinel_knows_replica, timeout=self.startup_timeout, what="sentinel ready")

    def stop(self) -> None:
        for process in (self.sentinel, self.replica, self.primary):
            process.stop()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def role(self, port: int) -> str:
        with redis.Redis(LOOPBACK, port, password=PRIMARY_PASSWORD, decode_responses=True) as client:
            return str(client.info("replication")["role"])

    def _replica_linked(self) -> bool:
        try:
            with redis.Redis(LOOPBACK, self.replica_port, password=PRIMARY_PASSWORD, decode_responses=True) as c:
                return bool(c.info("replication").get("master_link_status") == "up")
        except redis.RedisError:
            return False

    def _sentinel_knows_replica(self) -> bool:
        try:
            with self.sentinel_client() as client:
                replicas = client.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
        except redis.RedisError:
            return False
        # Until the sentinel has its own link to the replica it would refuse a failover (NOGOODSLAVE).
        return bool(replicas) and all("disconnected" not in replica["flags"] for replica in replicas)


class TlsRedis(ServerProcess):
    """A Redis that speaks only TLS and asks every client for a certificate issued by ``ca_file``'s CA."""

    def __init__(self, ca_file: Path, cert_file: Path, key_file: Path, *, startup_timeout: float = 10.0) -> None:
        self.port = free_port()
        self.ca_file = ca_file
        directory = Path(tempfile.mkdtemp(prefix="channelgate-redis-tls-"))
        self._client_tls = {"ssl": True, "ssl_ca_certs": str(ca_file), "ssl_cert_reqs": "required"}
        argv = _server_argv(
            0, directory,
            "--tls-port", str(self.port), "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file),
            "--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "yes", "--requirepass", PRIMARY_PASSWORD,
        )  # fmt: skip
        process = ChildProcess(argv, directory / "redis.log", name=f"redis tls :{self.port}")
        super().__init__(process, directory, startup_timeout=startup_timeout)

    @property
    def url(self) -> str:
        return f"rediss://{LOOPBACK}:{self.port}/0"

    def start(self, client_cert: Path, client_key: Path) -> None:
        """Start and wait until a client with this certificate gets PONG over TLS."""
        tls = self._client_tls | {"ssl_certfile": str(client_cert), "ssl_keyfile": str(client_key)}
        self._start_and_wait(lambda: _answers(self.port, PRIMARY_PASSWORD, **tls), what="TLS PONG")
