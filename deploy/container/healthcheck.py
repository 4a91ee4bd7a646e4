"""The container's HEALTHCHECK: exit 0 when the gateway in this container answers ``/.channelgate/healthz``.

Liveness only (the process serves requests); readiness, which also needs the database and the session store, is
``/.channelgate/readyz`` and belongs to the load balancer or Kubernetes' readiness probe.
"""

import os
import sys
import urllib.request

PORT = os.environ.get("CHANNELGATE_SERVER__PORT", "8000")

try:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/.channelgate/healthz", timeout=2) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except OSError:
    sys.exit(1)
