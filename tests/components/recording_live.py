"""Live connections that record what the session sweep closed, and why (gateway/sessions/watch.py tests)."""

from __future__ import annotations

from gateway.proxy.streams import LiveConnections


class RecordingLive(LiveConnections):
    """``close_session`` records the key and the reason, and counts one connection closed."""

    def __init__(self) -> None:
        super().__init__()
        self.closed: list[tuple[str, str]] = []

    async def close_session(self, key: str, reason: str = "session ended") -> int:
        self.closed.append((key, reason))
        return 1
