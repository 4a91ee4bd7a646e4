"""Server-side sessions: one protocol (``base``), an embedded in-process store and a Redis store."""
