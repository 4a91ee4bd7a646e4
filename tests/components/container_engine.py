"""A real container engine for the image's tests: Debian's podman, with storage in a directory of its own
(a test starts with no image and leaves none behind), and a stand-in for the image's base.

The stand-in. The Containerfile builds ``FROM python:3.11.11-slim-bookworm``, which lives on Docker Hub; these
machines reach Debian's, PyPI's and npm's registries only. :func:`build_python_base` makes an image of the same
shape from Debian's packages — ``debootstrap`` bookworm (the official image's Debian release), Python 3.11 with
``venv``, ``python`` on ``/usr/local/bin`` as in the official image — and tags it with the Containerfile's name,
so the Containerfile is built unchanged. It also trusts what the host trusts (the host's CA bundle; these
machines reach PyPI through a TLS-inspecting egress proxy), which changes nothing on a machine that does not.

The engine's settings. podman 4.3 asks by default for open-file and process limits above what these sandboxed
machines grant a container, and its default OCI runtime (crun) refuses their hybrid cgroup layout: runc, and
limits within the host's, are given on every command instead of editing the machine's containers.conf.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.components.process import ComponentFailed, require_executable, run

#: A process limit the sandbox grants (65,536 was refused here, 32,768 not); far more than one gateway needs.
_PROCESSES = 4096
#: The packages that make the stand-in base: Python 3.11 and what ``python -m venv`` needs (debootstrap does not
#: resolve the dependencies of ``--include``d packages, so they are named), and the CA certificates.
_BASE_PACKAGES = ("python3.11", "python3.11-venv", "python3-distutils", "python3-lib2to3", "ca-certificates")
DEBIAN_MIRROR = "http://deb.debian.org/debian"


class Podman:
    """``podman`` with its storage in a directory of its own; :meth:`reset` removes every container, image and
    volume it made, and the directory."""

    def __init__(self) -> None:
        # Directly under /tmp: podman refuses a run root longer than 50 characters, which pytest's own temporary
        # directories exceed under xdist (/tmp/pytest-of-root/pytest-10/popen-gw0/… is 41 before anything).
        directory = self.directory = Path(tempfile.mkdtemp(prefix="cg-podman-", dir="/tmp"))
        for part in ("storage", "run", "tmp"):
            (directory / part).mkdir(parents=True, exist_ok=True)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._global = [
            require_executable("podman", "podman"),
            "--root", str(directory / "storage"),
            "--runroot", str(directory / "run"),
            "--tmpdir", str(directory / "tmp"),
            "--runtime", require_executable("runc", "runc"),
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
        ]  # fmt: skip
        #: For ``run`` and ``build``: limits within the host's (see the module's docstring).
        self.limits = ["--ulimit", f"nofile={min(soft, hard)}:{hard}", "--ulimit", f"nproc={_PROCESSES}:{_PROCESSES}"]

    def __call__(self, *args: str, timeout: float = 120.0, what: str = "podman") -> str:
        return run([*self._global, *args], what=what, timeout=timeout)

    def attempt(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """A command that may fail: its exit status and output, for the test to judge."""
        return subprocess.run([*self._global, *args], capture_output=True, text=True, timeout=timeout, check=False)

    def inspect(self, kind: str, name: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self(kind, "inspect", name))
        return found[0]

    def reset(self) -> None:
        """Every container stopped and removed, every image and volume of this storage removed."""
        self.attempt("system", "reset", "--force", timeout=120)
        shutil.rmtree(self.directory, ignore_errors=True)


def build_python_base(podman: Podman, directory: Path, tag: str) -> None:
    """The stand-in for ``python:3.11.11-slim-bookworm`` (the module's docstring), imported as ``tag``."""
    debootstrap = require_executable("debootstrap", "debootstrap")
    rootfs = directory / "rootfs"
    run(
        [debootstrap, "--variant=minbase", f"--include={','.join(_BASE_PACKAGES)}", "bookworm", str(rootfs),
         DEBIAN_MIRROR],
        what="debootstrap of the stand-in base image", timeout=900,
    )  # fmt: skip
    for name in ("python", "python3"):
        (rootfs / "usr/local/bin" / name).symlink_to("/usr/bin/python3.11")
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if not host_bundle.is_file():
        raise ComponentFailed(f"{host_bundle} is missing: install ca-certificates")
    shutil.copyfile(host_bundle, rootfs / "etc/ssl/certs/ca-certificates.crt")
    # pip carries its own CA list (certifi) unless told otherwise.
    (rootfs / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n", encoding="utf-8")
    for cached in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        cached.unlink()
    archive = directory / "rootfs.tar"
    run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], what="packing the stand-in base", timeout=300)
    podman("import", "--change", 'CMD ["python3"]', str(archive), tag, timeout=300, what="podman import")
    shutil.rmtree(rootfs, ignore_errors=True)
    archive.unlink()
