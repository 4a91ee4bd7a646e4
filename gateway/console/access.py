"""Who may use the console, and as what: the gateway's SSO session, with a role from its IdP groups.

The role is computed on every request from the session's groups, which SCIM and LDAP changes push into live
sessions (``SessionStore.update_agent_groups``), so a role granted or removed applies at the next request
(ASVS 8.3.2); nothing about the role is cached in a cookie or the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from starlette.requests import HTTPConnection

from gateway.authn import require_session
from gateway.console.settings import ConsoleSettings
from gateway.errors import AccessDenied
from gateway.scope import scope_of
from gateway.services import Services
from gateway.sessions.base import Session


class Role(IntEnum):
    """Ordered: an admin may do everything a reviewer may."""

    REVIEWER = 1
    ADMIN = 2


class ConsoleRoleRequired(AccessDenied):
    """Signed in, but in neither ``[console] reviewer_groups`` nor ``admin_groups``."""

    code = "console_role_required"


class AdminRoleRequired(AccessDenied):
    """A reviewer asked for an admin page or action."""

    code = "console_admin_required"


def role_of(groups: frozenset[str], settings: ConsoleSettings) -> Role | None:
    """The highest role the groups grant (pure); None when they grant none."""
    if groups & frozenset(settings.admin_groups):
        return Role.ADMIN
    if groups & frozenset(settings.reviewer_groups):
        return Role.REVIEWER
    return None


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    session: Session
    role: Role

    @property
    def user_name(self) -> str:
        return self.session.data.user_name

    @property
    def is_admin(self) -> bool:
        return self.role >= Role.ADMIN

    @property
    def actor(self) -> str:
        """How the access log names this person's console actions."""
        return f"console:{self.user_name}"


async def console_user(connection: HTTPConnection, services: Services, need: Role) -> ConsoleUser:
    """The signed-in person with at least the ``need`` role, or an error that says what is missing.

    Raises ``AuthenticationRequired`` (no or expired session: the caller sends a browser to sign in),
    ``ConsoleRoleRequired`` or ``AdminRoleRequired`` (403).
    """
    scope = scope_of(connection, services.settings.server.trusted_proxies)
    session = await require_session(connection, services, scope)
    settings = services.settings.console
    role = role_of(session.data.groups, settings)
    if role is None:
        wanted = sorted({*settings.reviewer_groups, *settings.admin_groups})
        raise ConsoleRoleRequired(
            "The security console is for security reviewers and admins. None of your groups "
            f"({', '.join(sorted(session.data.groups)) or 'none'}) gives access; ask your administrator to add "
            f"you to one of: {', '.join(wanted) or '(no group is configured in [console])'}."
        )
    if role < need:
        raise AdminRoleRequired(
            "This page is for console admins; your groups make you a reviewer (read-only). Ask your administrator "
            f"to add you to one of: {', '.join(sorted(settings.admin_groups)) or '(none configured)'}."
        )
    return ConsoleUser(session, role)
