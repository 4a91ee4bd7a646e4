"""Real servers for channelgate's tests: each starts on a free 127.0.0.1 port and stops when the test is done.

Nothing here is a fake: Redis, PostgreSQL and a certified OpenID provider (npm ``oidc-provider``) run as child
processes, so integration tests exercise the same protocols production does. Missing binaries raise
:class:`MissingComponent`, which tells you to run ``make test`` (it installs the system packages).
"""

from tests.components.process import MissingComponent

__all__ = ["MissingComponent"]
