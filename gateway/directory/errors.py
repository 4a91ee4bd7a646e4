"""Errors of the directory sync, in channelgate's one hierarchy (``gateway.errors``).

ChannelgateError
└── DirectoryUnavailable     the directory cannot be reached, refused the bind or TLS: nothing is changed
"""

from __future__ import annotations

from gateway.errors import ChannelgateError


class DirectoryUnavailable(ChannelgateError):
    """The directory could not be read completely. A sync that meets this changes nobody (fail closed): an
    unreachable directory must never look like an empty one."""

    status = 503
    code = "directory_unavailable"
