"""A real PostgreSQL server (Debian ``postgresql-15``) in a throwaway data directory, on a free port.

PostgreSQL refuses to run as root, so under root every server command goes through ``runuser -u postgres --``
and ``base_dir`` is handed to the postgres user. ``base_dir`` and all its parents must therefore be traversable
by postgres: a fresh ``tempfile.mkdtemp()`` under /tmp is; pytest's ``tmp_path`` (below a 0700 directory) is not.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

from tests.components.ports import LOOPBACK, free_port
from tests.components.process import INSTALL_HINT, ComponentFailed, Lifecycle, MissingComponent, run

PREFERRED_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# Durability is worthless for a test cluster; these make start-up and DDL several times faster.
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
}
#: A cluster that keeps what it committed across a power cut (the defaults), for benchmarks of durable writes.
DURABLE_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_connections": "200",
    "shared_buffers": "256MB",
}


def find_bin_dir() -> Path:
    """The PostgreSQL server binaries: version 15 when installed, else the newest version present."""
    if (PREFERRED_BIN_DIR / "initdb").exists():
        return PREFERRED_BIN_DIR
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name), reverse=True
    )
    if not installed:
        raise MissingComponent(
            f"{PREFERRED_BIN_DIR / 'initdb'} not found (Debian package postgresql-15); {INSTALL_HINT}"
        )
    return installed[0].parent


class PostgresServer(Lifecycle):
    """A throwaway PostgreSQL cluster with trust authentication for the ``postgres`` superuser.

    ``create_database()`` returns the SQLAlchemy async URL of a fresh database; ``restart()`` keeps the port
    and the data, so tests can check that the gateway reconnects. ``close()`` only stops it: ``base_dir`` is the
    caller's.
    """

    def __init__(
        self,
        base_dir: Path,
        port: int | None = None,
        *,
        bin_dir: Path | None = None,
        startup_timeout: int = 30,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.settings = FAST_SETTINGS if settings is None else settings
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.log_path = base_dir / "postgres.log"
        self.port = port if port is not None else free_port()
        self.bin_dir = bin_dir if bin_dir is not None else find_bin_dir()
        self.startup_timeout = startup_timeout
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise MissingComponent(f"running as root needs the postgres user; {INSTALL_HINT}") from None

    def dsn(self, database: str = "postgres") -> str:
        """A libpq/asyncpg DSN: ``postgresql://postgres@127.0.0.1:PORT/DATABASE``."""
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{database}"

    def url(self, database: str = "postgres") -> str:
        """An SQLAlchemy async URL: ``postgresql+asyncpg://postgres@127.0.0.1:PORT/DATABASE``."""
        return f"postgresql+asyncpg://postgres@{LOOPBACK}:{self.port}/{database}"

    @property
    def running(self) -> bool:
        """Whether the postmaster of this data directory is alive."""
        status = subprocess.run(
            self._server_cmd(self._bin("pg_ctl"), "-D", str(self.data_dir), "status"),
            capture_output=True,
            check=False,
        )
        return status.returncode == 0

    def start(self) -> None:
        """Create the cluster on first use, then start it and wait until it accepts connections."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        options = " ".join(
            ["-h", LOOPBACK, "-p", str(self.port), "-k", str(self.data_dir)]
            + [f"-c {name}={value}" for name, value in self.settings.items()]
        )
        try:
            run(
                self._server_cmd(
                    self._bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path),
                    "-w", "-t", str(self.startup_timeout), "-o", options, "start",
                ),
                what="pg_ctl start",
                timeout=self.startup_timeout + 10,
            )  # fmt: skip
        except ComponentFailed as error:
            raise ComponentFailed(f"{error}\n{self.log_tail()}") from None

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are disconnected); idempotent."""
        self._pg_ctl_stop("fast")

    def kill(self) -> None:
        """Stop the server without a checkpoint (immediate shutdown), as close to a crash as pg_ctl offers."""
        self._pg_ctl_stop("immediate")

    def execute(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with ``psql`` as the superuser and return its unaligned, tuples-only output."""
        return run(
            [
                self._bin("psql"), "-h", LOOPBACK, "-p", str(self.port), "-U", "postgres", "-d", database,
                "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", sql,
            ],
            what="psql",
        ).strip()  # fmt: skip

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its SQLAlchemy async URL (``postgresql+asyncpg://...``)."""
        self._check_name(name)
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, disconnecting whoever is still connected to it."""
        self._check_name(name)
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"({self.log_path} does not exist)"
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(text.splitlines()[-lines:])

    def _initdb(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            shutil.chown(self.base_dir, "postgres", "postgres")
            if subprocess.run(self._server_cmd("test", "-w", str(self.base_dir)), check=False).returncode != 0:
                raise ComponentFailed(
                    f"the postgres user cannot write {self.base_dir}: one of its parents is not traversable "
                    "(use a tempfile.mkdtemp() directory under /tmp)"
                )
        run(
            self._server_cmd(
                self._bin("initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", "postgres",
                "-E", "UTF8", "--locale=C", "--no-sync",
            ),
            what="initdb",
        )  # fmt: skip

    def _pg_ctl_stop(self, mode: str) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        run(
            self._server_cmd(self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"),
            what="pg_ctl stop",
        )

    def _bin(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise MissingComponent(f"{path} not found (Debian package postgresql-15); {INSTALL_HINT}")
        return str(path)

    def _server_cmd(self, *argv: str) -> list[str]:
        """Server commands run as the postgres user when we are root (PostgreSQL refuses root)."""
        return ["runuser", "-u", "postgres", "--", *argv] if self._as_root else list(argv)

    @staticmethod
    def _check_name(name: str) -> None:
        if not DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r} must match {DATABASE_NAME.pattern}")
