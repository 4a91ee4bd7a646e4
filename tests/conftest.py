"""Shared test set-up: the real-component fixtures (Redis, PostgreSQL, oidc-provider) for every test, and how
``make test`` shares the modules out among pytest-xdist's workers."""

from __future__ import annotations

from typing import Any

import pytest

pytest_plugins = ["tests.components.fixtures"]

#: Packages whose modules share a package-scoped stack (tests/faults/conftest.py) go to one worker whole, so the
#: stack starts once; every other module goes to a worker of its own choosing (``--dist loadfile``).
ONE_WORKER_PACKAGES = ("tests/faults/",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class PackageOrFileScheduling(LoadFileScheduling):  # type: ignore[misc]  # xdist ships no types
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return next((package for package in ONE_WORKER_PACKAGES if path.startswith(package)), path)

    return PackageOrFileScheduling(config, log)
