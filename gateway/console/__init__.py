"""The web console at ``/.channelgate/console`` for security reviewers and admins (issue 5)."""
