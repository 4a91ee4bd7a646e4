"""A legacy console's own form login (``--auth form``): the console the cookie-jar connector kind logs into.

The console keeps its own accounts (userName → password, given at start) and its own sessions, like the web
consoles that predate single sign-on:

    GET  /login                 the login form
    POST /login                 form-urlencoded ``username``, ``password`` → 303 to ``/`` with
                                ``Set-Cookie: legacy_session=…; HttpOnly; Path=/`` (256 random bits); a wrong
                                password → 401 and the form with an error
    POST /logout                ends the session the cookie names (``Idempotency-Key`` honoured) → 200
                                ``{"logged_out": bool}`` and the cookie deleted (RFC 6265 §5.3: ``Max-Age=0``)
    GET  /session               the console user of this session and the asserted agent (an agent page)
    GET  /admin/sessions?user=U live sessions of U (service route: ``Authorization: Bearer <credential>``)

Every other route is an agent page: it needs a live session cookie (none, expired or logged out → 303 to
``/login``) and the gateway's identity assertion, and the session's user must be the asserted agent, so a
session cookie that reaches the wrong agent's requests opens nothing. The gateway logs in on the agent's behalf
and keeps the cookie server-side (connectors/cookie_jar.py); a browser never holds it.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from deploy.demo.console_auth import (
    ASSERTION_HEADER,
    AssertionVerifier,
    AuthScheme,
    ConsoleRejection,
    CredentialRejected,
    agent_of,
    rejection_response,
    send_refusal,
)
from deploy.demo.effects import Answer, Call, EffectRecorder, IdempotencyKeys

SESSION_COOKIE = "legacy_session"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
SESSIONS_PATH = "/admin/sessions"
DEFAULT_SESSION_SECONDS = 900.0
#: Effects (deploy/demo/effects.py): a login opens a session, a logout that ended a live one closes it.
LOGGED_IN, LOGGED_OUT = "console session opened", "console session logged out"
#: Largest login form accepted: a username and a password, not an upload.
MAX_FORM_BYTES = 4096

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}: sign in</title></head>
<body style="font-family: sans-serif; max-width: 30rem; margin: 2rem auto">
<h1>{title}</h1>
{error}<form method="post" action="login">
<p><label>Username <input name="username" autocomplete="username" value="{username}"></label></p>
<p><label>Password <input name="password" type="password" autocomplete="current-password"></label></p>
<p><button>Sign in</button></p>
</form>
</body></html>
"""

#: Added to the console's home page in this mode.
SESSION_PANEL = """<section>
<h2>Console session</h2>
<p>Signed in through the console's own login form (<a href="session">this session</a>).</p>
<form method="post" action="logout"><button>Sign out of the console</button></form>
</section>
"""


class SessionMismatch(ConsoleRejection):
    status = 403
    code = "session_mismatch"


class NoSession(ConsoleRejection):
    """No live console session: a page answers 303 to the login form (what a legacy console does)."""

    code = "login_required"


def load_accounts(path: Path) -> dict[str, str]:
    """The console's accounts from a JSON object ``{"alice": "password", ...}``; anything else is refused."""
    document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not all(
        isinstance(user, str) and user and isinstance(password, str) and password for user, password in document.items()
    ):
        raise ValueError(f"{path}: expected a JSON object of non-empty userName → password strings")
    return dict(document)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(slots=True)
class LegacySession:
    user: str
    created: float
    expires: float


class SessionBook:
    """Live console sessions by the SHA-256 of their id: the ids themselves are only ever in the cookie."""

    def __init__(self, lifetime_seconds: float, clock: Callable[[], float]) -> None:
        self.lifetime = lifetime_seconds
        self.clock = clock
        self._by_digest: dict[str, LegacySession] = {}
        #: user → digests of their sessions, so listing one user's sessions does not read everyone's (a bulk
        #: offboarding verifies every departing agent: a scan each made it quadratic).
        self._by_user: dict[str, dict[str, None]] = {}

    def open(self, user: str) -> str:
        """A new session for ``user``; a fresh id every time, so a login never adopts an id (session fixation)."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        digest = _digest(session_id)
        self._by_digest[digest] = LegacySession(user, now, now + self.lifetime)
        self._by_user.setdefault(user, {})[digest] = None
        return session_id

    def _forget(self, digest: str) -> None:
        session = self._by_digest.pop(digest)
        self._by_user[session.user].pop(digest, None)

    def find(self, session_id: str | None) -> LegacySession | None:
        if not session_id:
            return None
        digest = _digest(session_id)
        session = self._by_digest.get(digest)
        if session is not None and session.expires <= self.clock():
            self._forget(digest)
            return None
        return session

    def close(self, session_id: str | None) -> LegacySession | None:
        """End the session ``session_id`` names; the session it was, or None when none was live."""
        session = self.find(session_id)
        if session is not None and session_id is not None:
            self._forget(_digest(session_id))
        return session

    def live(self, user: str) -> list[dict[str, str]]:
        now = self.clock()
        sessions = ((digest, self._by_digest[digest]) for digest in self._by_user.get(user, {}))
        return [
            {"id": digest[:16], "created": _iso(s.created), "expires": _iso(s.expires)}
            for digest, s in sessions
            if s.expires > now
        ]


class FormLogin:
    """The login and logout endpoints, the session listing, and the guard of every other route."""

    def __init__(
        self,
        title: str,
        accounts: Mapping[str, str],
        effects: EffectRecorder,
        keys: IdempotencyKeys,
        *,
        session_seconds: float = DEFAULT_SESSION_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.title = title
        self._accounts = dict(accounts)
        self._effects = effects
        self.sessions = SessionBook(session_seconds, clock)
        self.public_routes: list[BaseRoute] = [
            Route(LOGIN_PATH, self.login_form, methods=["GET"]),
            Route(LOGIN_PATH, self.login, methods=["POST"]),
            Route(LOGOUT_PATH, self._with_cookie_deleted(keys.endpoint(self.logout)), methods=["POST"]),
        ]
        self.agent_routes: list[BaseRoute] = [Route("/session", self.whoami, methods=["GET"])]
        self.service_routes: list[BaseRoute] = [Route(SESSIONS_PATH, self.list_sessions, methods=["GET"])]

    def _form(self, status: int, error: str = "", username: str = "") -> HTMLResponse:
        page = LOGIN_PAGE.format(
            title=html.escape(self.title),
            error=f'<p id="error" role="alert">{html.escape(error)}</p>\n' if error else "",
            username=html.escape(username),
        )
        return HTMLResponse(page, status_code=status, headers={"Cache-Control": "no-store"})

    async def login_form(self, request: Request) -> Response:
        return self._form(200)

    def _password_matches(self, username: str, password: str) -> bool:
        expected = self._accounts.get(username)
        # Compared in constant time, and against a dummy for an unknown user, so timing tells no valid names.
        same = hmac.compare_digest(password.encode(), (expected or secrets.token_urlsafe(16)).encode())
        return expected is not None and same

    async def login(self, request: Request) -> Response:
        if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
            return self._form(413, "The form is too large.")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return self._form(415, "Send the form as application/x-www-form-urlencoded.")
        form = await request.form()
        username, password = form.get("username"), form.get("password")
        if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
            return self._form(400, "Enter a username and a password.")
        if not self._password_matches(username, password):
            return self._form(401, "Wrong username or password.", username)
        session_id = self.sessions.open(username)
        self._effects.record(LOGGED_IN, username, "form login", None)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, session_id, path="/", httponly=True, samesite="lax")
        return response

    def logout(self, call: Call) -> Answer:
        session = self.sessions.close(call.request.cookies.get(SESSION_COOKIE))
        if session is None:
            return Answer(200, {"logged_out": False})
        self._effects.record(LOGGED_OUT, session.user, "session ended by logout", call.idempotency_key)
        return Answer(200, {"logged_out": True, "user": session.user})

    @staticmethod
    def _with_cookie_deleted(
        endpoint: Callable[[Request], Any],
    ) -> Callable[[Request], Any]:
        async def logout(request: Request) -> Response:
            response: Response = await endpoint(request)
            if response.status_code < 400:
                response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
            return response

        return logout

    async def list_sessions(self, request: Request) -> Response:
        user = request.query_params.get("user")
        if not user:
            return JSONResponse(
                {"error": "invalid_request", "error_description": "name the user: ?user=USERNAME"}, status_code=400
            )
        return JSONResponse({"user": user, "sessions": self.sessions.live(user)}, headers={"Cache-Control": "no-store"})

    def guard(
        self, service: AuthScheme, verifier: AssertionVerifier, service_routes: Sequence[BaseRoute]
    ) -> Middleware:
        """The middleware guarding a console in this mode; ``service`` checks the gateway's service credential."""
        return Middleware(FormLoginGuard, login=self, service=service, verifier=verifier, service_routes=service_routes)

    async def whoami(self, request: Request) -> Response:
        session: LegacySession = request.scope["state"]["legacy_session"]
        agent = agent_of(request)
        return JSONResponse({"console_user": session.user, "asserted_agent": agent.username, "sub": agent.sub})


def _matches(routes: Sequence[BaseRoute], scope: Scope) -> bool:
    return any(route.matches(scope)[0] is not Match.NONE for route in routes)


class FormLoginGuard:
    """ASGI middleware of a console in form-login mode (in place of ``ConsoleGuard``).

    The login and logout routes are open (they carry their own proof: a password, a session cookie). Service
    routes need the console's credential. Every other route needs the assertion first (so a caller that did not
    come through the gateway costs no session lookup), then a live session of the asserted agent.
    """

    def __init__(
        self, app: ASGIApp, login: FormLogin, service: AuthScheme, verifier: AssertionVerifier,
        service_routes: Sequence[BaseRoute] = (),
    ) -> None:  # fmt: skip
        self.app = app
        self.login = login
        self.service = service
        self.verifier = verifier
        self.service_routes = [*login.service_routes, *service_routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"} or _matches(self.login.public_routes, scope):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        try:
            if _matches(self.service_routes, scope):
                if not self.service.accepts(connection.headers):
                    raise CredentialRejected("missing or wrong console service credential", self.service.challenge)
            else:
                agent = await self.verifier.verify(connection.headers.get(ASSERTION_HEADER))
                session = self.login.sessions.find(connection.cookies.get(SESSION_COOKIE))
                if session is None:
                    raise NoSession("no live console session: sign in at /login")
                if session.user != agent.username:
                    raise SessionMismatch(f"this console session belongs to another user, not to {agent.username}")
                state = scope.setdefault("state", {})
                state["agent"], state["legacy_session"] = agent, session
        except ConsoleRejection as rejection:
            await _refuse(rejection, scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _refuse(rejection: ConsoleRejection, scope: Scope, receive: Receive, send: Send) -> None:
    response: Response
    if isinstance(rejection, NoSession) and scope["type"] == "http":
        # RFC 9110 §15.4.4: 303 makes the browser GET the login form, whatever the refused method was.
        response = RedirectResponse(LOGIN_PATH, status_code=303)
    else:
        response = rejection_response(rejection)
    await send_refusal(response, scope, receive, send)
