"""The access log: every proxied request and every auth/admin event, append-only (chained in a later issue)."""
