"""Child processes for test servers: start, wait until ready, stop, and explain a failure with the server's log.

:class:`ChildProcess` is one child; :class:`ServerProcess` is a server that is one child in a directory of its own;
:class:`Lifecycle` is the start / stop / close / ``with`` contract every test server keeps.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

INSTALL_HINT = "run `make test`, which installs the system packages (scripts/system-deps.sh)"


class MissingComponent(RuntimeError):
    """A binary a test server needs is not installed. Tests fail with this; they are never silently skipped."""


class ComponentFailed(RuntimeError):
    """A test server exited or did not become ready in time; the message ends with the tail of its log."""


def require_executable(name: str, package: str) -> str:
    """Return the path of ``name`` (a command or an absolute path), or raise :class:`MissingComponent`."""
    path = shutil.which(name)
    if path is None:
        raise MissingComponent(f"{name} not found (Debian package {package}); {INSTALL_HINT}")
    return path


def run(argv: Sequence[str], *, what: str, timeout: float = 60.0, cwd: Path | None = None) -> str:
    """Run a short command to completion and return its stdout; raise :class:`ComponentFailed` with its output."""
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
    if result.returncode != 0:
        raise ComponentFailed(
            f"{what} failed (exit {result.returncode}): {' '.join(argv)}\n{result.stdout}{result.stderr}"
        )
    return result.stdout


class ChildProcess:
    """A long-running server child whose output goes to a log file.

    A pipe nobody reads would fill up and block the server, so stdout and stderr go to ``log_path``; the tail
    of that file is quoted when the server dies or never becomes ready. The child gets its own session so a
    Ctrl-C in the terminal reaches pytest first and the fixtures stop servers in order.
    """

    def __init__(self, argv: Sequence[str], log_path: Path, *, name: str, cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.name = name
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._popen.pid if self._popen is not None else None

    @property
    def running(self) -> bool:
        """Whether the child was started and has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> None:
        """Start the child; does not wait for readiness (see :meth:`wait_until`)."""
        if self.running:
            raise ComponentFailed(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            start_new_session=True,
        )

    def wait_until(self, ready: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Poll ``ready`` until it returns true; fail early, with the log, if the child exits meanwhile."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.running:
                raise ComponentFailed(f"{self.name} exited before {what}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ComponentFailed(f"{self.name}: no {what} after {timeout:.1f} s\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the child to exit (SIGTERM), SIGKILL it after ``timeout`` seconds; idempotent."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL the child, as a crash would: no clean shutdown, open connections are cut."""
        if self._popen is not None and self._popen.poll() is None:
            os.kill(self._popen.pid, signal.SIGKILL)
            self._popen.wait()
        self._close_log()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the child's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"({self.log_path} does not exist)"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last lines of {self.log_path} ---\n{tail}"

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Lifecycle(ABC):
    """A test server's contract: ``start`` returns once it is ready, ``stop`` is idempotent, ``close`` also removes
    what it keeps on disk. ``with`` starts it and closes it on the way out, and also when the start itself failed,
    so a half-started child never outlives the test."""

    @abstractmethod
    def start(self) -> None:
        """Start the server and return once it is ready."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the server; idempotent."""

    def close(self) -> None:
        """Stop the server and remove what it keeps on disk (nothing here; subclasses say otherwise)."""
        self.stop()

    def restart(self) -> None:
        """Stop (if running) and start again with the same port and configuration."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ServerProcess:
    """A server that is one :class:`ChildProcess` with a directory of its own (configuration, data, log).

    A subclass says what "ready" means by the predicate it hands :meth:`_start_and_wait`; its ``start`` may take
    what that predicate needs. With :class:`Lifecycle` as a second base it is also a context manager.
    """

    def __init__(self, process: ChildProcess, directory: Path, *, startup_timeout: float) -> None:
        self.process = process
        self.directory = directory
        self.startup_timeout = startup_timeout

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process.running

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM); idempotent."""
        self.process.stop()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: no clean shutdown, open connections are cut."""
        self.process.kill()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log(self) -> str:
        """Everything the server has written to its log so far."""
        path = self.process.log_path
        return path.read_text(errors="replace") if path.exists() else ""

    def _start_and_wait(self, ready: Callable[[], bool], *, what: str) -> None:
        """Start the child and poll ``ready`` for up to ``startup_timeout`` seconds; ``what`` names the wait."""
        self.process.start()
        self.process.wait_until(ready, timeout=self.startup_timeout, what=what)
