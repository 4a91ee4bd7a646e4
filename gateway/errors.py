"""The one exception hierarchy of channelgate.

Every error carries the data its protocol needs as class attributes and is rendered once, at the edge
(``gateway.pages`` for browsers, JSON for APIs). Messages are written for the person who has to act on them
and never contain a secret. When that person is an operator (``public_message`` is set: the message names the
database, a file, a setting), a client is shown ``public_message`` and the message goes to the log.

    ChannelgateError
    ├── ConfigError                      bad channelgate.toml / CHANNELGATE_* values (start-up, check-config)
    │   └── PolicySetError               a policy file does not parse or validate (the set in force stays)
    ├── StorageError                     database unreachable or a write failed
    ├── SessionStoreUnavailable   503    Redis / session store unreachable: fail closed, never a pass
    │   └── ClockSkewed                  this host's clock disagrees with Redis's: timeouts would not hold
    ├── AuthenticationRequired    401    no valid session
    │   ├── SessionExpired               idle or absolute timeout (ASVS 7.3)
    │   └── LoginFailed                  OIDC callback rejected (state, nonce, iss, signature, ...)
    ├── AccessDenied              403    authenticated but not allowed
    │   └── AgentDisabled                the agent was deprovisioned or is not active
    ├── BadRequest                400    malformed input (cookies, headers, paths)
    ├── NotFound                  404
    ├── RunSuperseded             409    a superseded deprovisioning run is never retried
    ├── UpstreamError             502    the channel console failed or timed out
    └── VaultError                       a channel credential cannot be decrypted or is missing
"""

from __future__ import annotations

from typing import ClassVar


class ChannelgateError(Exception):
    """Base of every error channelgate raises on purpose."""

    status: int = 500
    code: str = "internal_error"
    #: Shown to a client instead of ``message``, which is then only logged; None: ``message`` is for the client.
    public_message: ClassVar[str | None] = None

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: Extra, non-secret context for the access log (never shown to an unauthenticated client).
        self.detail = detail


class ConfigError(ChannelgateError):
    """The configuration is invalid; the message names every bad field."""

    code = "config_error"
    public_message = "The gateway's configuration is in error; its administrator can read why in its log."


class PolicySetError(ConfigError):
    """A policy set was refused (syntax, schema, duplicate or missing @id); the message lists every problem."""

    code = "policy_set_error"


class StorageError(ChannelgateError):
    """The message names the database (driver, user, host, port, name): for the log and the CLI, never a page."""

    status = 503
    code = "storage_unavailable"
    public_message = "The gateway's database is not answering just now. Try again in a moment."


class SessionStoreUnavailable(ChannelgateError):
    """The session store cannot be reached. Requests are refused (fail closed), never passed."""

    status = 503
    code = "session_store_unavailable"


class ClockSkewed(SessionStoreUnavailable):
    """This host's clock disagrees with the session store's (gateway/sessions/redis_clock.py): session timeouts
    would be decided wrongly, so sessions are refused here until it agrees again. The message, for the operator,
    goes to the log; an agent is shown the store's usual 503."""

    code = "clock_skew"
    public_message = "The gateway cannot check sessions just now. Try again in a moment."


class AuthenticationRequired(ChannelgateError):
    status = 401
    code = "authentication_required"
    #: The ``WWW-Authenticate`` challenge of a 401 from a bearer-token API (RFC 6750 §3); None for browsers.
    challenge: ClassVar[str | None] = None


class SessionExpired(AuthenticationRequired):
    code = "session_expired"


class LoginFailed(AuthenticationRequired):
    """The OIDC callback was rejected; ``code`` names the check that failed."""

    code = "login_failed"

    def __init__(self, message: str, *, reason: str, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.reason = reason


class AccessDenied(ChannelgateError):
    status = 403
    code = "access_denied"


class AgentDisabled(AccessDenied):
    code = "agent_disabled"


class BadRequest(ChannelgateError):
    status = 400
    code = "bad_request"


class NotFound(ChannelgateError):
    status = 404
    code = "not_found"


class RunSuperseded(ChannelgateError):
    """The run's agent was made active again before it finished: retrying it would act against an active agent."""

    status = 409
    code = "run_superseded"


class UpstreamError(ChannelgateError):
    status = 502
    code = "upstream_error"


class VaultError(ChannelgateError):
    status = 500
    code = "vault_error"
