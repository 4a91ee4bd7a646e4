"""A development OpenID provider for the demo, built on authlib's Flask authorization server.

Authorization code flow only, with PKCE S256 required of every client (RFC 9700 §2.1.1), ``iss`` in every
authorization response (RFC 9207, against mix-up attacks), RS256 ID tokens from a key made at start, UserInfo,
and RP-initiated logout. Development only: plain HTTP, demo passwords, nothing survives a restart.

    python -m deploy.demo.idp --port 8001 --client-id channelgate-demo --client-secret SECRET \\
        --redirect-uri http://127.0.0.1:8000/.channelgate/callback --post-logout-redirect-uri http://127.0.0.1:8000/
"""

from __future__ import annotations

import argparse
import secrets
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9207 import IssuerParameter
from authlib.oidc.core import UserInfo, UserInfoEndpoint
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.rpinitiated import EndSessionEndpoint, EndSessionRequest
from flask import Flask, Response, jsonify, render_template_string, request, session
from joserfc.jwk import KeySet, RSAKey
from werkzeug.serving import make_server

from deploy.demo.idp_store import (
    ACCOUNTS,
    SCOPES,
    TOKEN_AUTH_METHODS,
    Account,
    AuthorizationCode,
    Client,
    MemoryStore,
    Token,
    account_by_sub,
    check_password,
)

LOOPBACK = "127.0.0.1"
SESSION_COOKIE = "channelgate_demo_idp"

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Demo sign-in</title></head>
<body style="font-family: sans-serif; max-width: 28rem; margin: 3rem auto">
<h1>Demo OpenID provider</h1>
<p>Sign in as {{ accounts }}; the password is <code>demo</code>.</p>
{% if error %}<p role="alert" style="color: #b00020">{{ error }}</p>{% endif %}
<form method="post" action="{{ action }}">
  <p><label>Username <input name="username" autocomplete="username" autofocus required></label></p>
  <p><label>Password <input name="password" type="password" autocomplete="current-password" required></label></p>
  <p><button type="submit">Sign in</button></p>
</form>
</body></html>
"""

LOGOUT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign out</title></head>
<body style="font-family: sans-serif; max-width: 28rem; margin: 3rem auto">
{% if done %}<p>You are signed out of the demo OpenID provider.</p>
{% else %}<form method="post"><p>Sign out of the demo OpenID provider?</p>
{% for name, value in params %}<input type="hidden" name="{{ name }}" value="{{ value }}">{% endfor %}
<button type="submit">Sign out</button></form>{% endif %}
</body></html>
"""


class RequireS256(CodeChallenge):  # type: ignore[misc]
    """PKCE (RFC 7636) with S256, required of confidential clients too, since it also stops code injection."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge'.", redirect_uri=redirect_uri)
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE 'code_challenge_method' must be 'S256'.", redirect_uri=redirect_uri)
        super().validate_code_challenge(grant, redirect_uri)


class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    """RFC 6749 §4.1, with codes kept in the server's :class:`MemoryStore`."""

    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = list(TOKEN_AUTH_METHODS)

    def save_authorization_code(self, code: str, oauth_request: Any) -> None:
        data = oauth_request.payload.data
        self.server.store.save_code(
            AuthorizationCode(
                code=code,
                client_id=oauth_request.client.client_id,
                redirect_uri=oauth_request.payload.redirect_uri or "",
                scope=oauth_request.scope,
                sub=oauth_request.user.sub,
                nonce=data.get("nonce"),
                auth_time=int(session.get("auth_time", time.time())),
                code_challenge=data["code_challenge"],
                code_challenge_method=data["code_challenge_method"],
            )
        )

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        found: AuthorizationCode | None = self.server.store.find_code(code, client.client_id)
        return found

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        self.server.store.delete_code(authorization_code.code)

    def authenticate_user(self, authorization_code: AuthorizationCode) -> Account | None:
        return account_by_sub(authorization_code.sub)


class OpenIDTokens(OpenIDCode):  # type: ignore[misc]
    """OIDC Core §3.1.3.6 ID tokens: RS256 with our ``kid``, ``aud`` = the client, the login's nonce echoed."""

    def __init__(self, issuer: str, key: RSAKey, store: MemoryStore) -> None:
        super().__init__(require_nonce=False)
        self.issuer = issuer
        self.key = key
        self.store = store

    def exists_nonce(self, nonce: str, oauth_request: Any) -> bool:
        return self.store.nonce_seen(oauth_request.payload.client_id, nonce)

    def resolve_client_private_key(self, client: Client) -> RSAKey:
        return self.key

    def get_client_algorithm(self, client: Client) -> str:
        return "RS256"

    def get_encode_header(self, client: Client) -> dict[str, str]:
        return {"alg": "RS256", "kid": str(self.key.kid), "typ": "JWT"}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        return {"iss": self.issuer, "aud": client.client_id}

    def generate_user_info(self, user: Account, scope: str) -> UserInfo:
        return UserInfo(user.claims(scope))


class DemoUserInfo(UserInfoEndpoint):  # type: ignore[misc]
    """OIDC Core §5.3, for a bearer access token that has the ``openid`` scope."""

    def generate_user_info(self, user: Account, scope: str) -> UserInfo:
        return UserInfo(user.claims(scope))


class DemoEndSession(EndSessionEndpoint):  # type: ignore[misc]
    """OIDC RP-Initiated Logout 1.0: clears our session, then returns to a registered URI with ``state``."""

    def __init__(self, key: RSAKey) -> None:
        super().__init__()
        self.key = key

    def get_server_jwks(self) -> KeySet:
        return KeySet([self.key])

    def end_session(self, end_session_request: EndSessionRequest) -> None:
        session.clear()

    def is_post_logout_redirect_uri_legitimate(
        self, oauth_request: Any, post_logout_redirect_uri: str, client: Client | None, logout_hint: str | None
    ) -> bool:
        # The URI is already checked against the client's registered list, so this cannot be an open
        # redirect; without an id_token_hint the user still confirms first (see the /logout view).
        return True


class Bearer(BearerTokenValidator):  # type: ignore[misc]
    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self.store = store

    def authenticate_token(self, token_string: str) -> Token | None:
        return self.store.find_token(token_string)


class DemoAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's Flask server bound to one client and one store, with the RFC 9207 ``iss`` parameter."""

    def __init__(self, app: Flask, client: Client, store: MemoryStore, issuer: str) -> None:
        self.client = client
        self.store = store
        super().__init__(app, query_client=self._query_client_by_id, save_token=self._store_token)
        self.issuer_parameter = _Issuer(issuer)
        self.register_extension(self.issuer_parameter)

    def _query_client_by_id(self, client_id: str) -> Client | None:
        return self.client if client_id == self.client.client_id else None

    def _store_token(self, token: dict[str, Any], oauth_request: Any) -> None:
        self.store.save_token(
            Token(
                access_token=token["access_token"],
                client=oauth_request.client,
                scope=token.get("scope", ""),
                sub=oauth_request.user.sub,
                expires_in=int(token["expires_in"]),
            )
        )


class _Issuer(IssuerParameter):  # type: ignore[misc]
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def get_issuer(self) -> str:
        return self.issuer


def create_app(
    *,
    issuer: str,
    client_id: str,
    client_secret: str,
    redirect_uris: Sequence[str],
    post_logout_redirect_uris: Sequence[str] = (),
) -> Flask:
    """The provider as a Flask app; ``issuer`` must be the exact URL it is served at (OIDC Discovery §4.3)."""
    issuer = issuer.rstrip("/")
    key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, private=True)
    key.ensure_kid()
    store = MemoryStore()
    client = Client(client_id, client_secret, tuple(redirect_uris), tuple(post_logout_redirect_uris))

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),
        # Cookies ignore ports: a distinct name keeps ours apart from the gateway's on the same host.
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
    )
    server = DemoAuthorizationServer(app, client, store, issuer)
    server.register_grant(CodeGrant, [RequireS256(required=True), OpenIDTokens(issuer, key, store)])
    protector = ResourceProtector()
    protector.register_token_validator(Bearer(store))
    server.register_endpoint(DemoUserInfo(resource_protector=protector))
    server.register_endpoint(DemoEndSession(key))

    @app.get("/.well-known/openid-configuration")
    def discovery() -> Response:
        """OIDC Discovery §3 metadata, plus RFC 9207's flag so clients insist on ``iss``."""
        return jsonify(
            issuer=issuer,
            authorization_endpoint=f"{issuer}/authorize",
            token_endpoint=f"{issuer}/token",
            userinfo_endpoint=f"{issuer}/userinfo",
            jwks_uri=f"{issuer}/jwks.json",
            end_session_endpoint=f"{issuer}/logout",
            scopes_supported=list(SCOPES),
            response_types_supported=["code"],
            response_modes_supported=["query"],
            grant_types_supported=["authorization_code"],
            subject_types_supported=["public"],
            id_token_signing_alg_values_supported=["RS256"],
            token_endpoint_auth_methods_supported=list(TOKEN_AUTH_METHODS),
            code_challenge_methods_supported=["S256"],
            claims_supported=["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "preferred_username",
                              "name", "email", "email_verified", "groups"],
            authorization_response_iss_parameter_supported=True,
        )  # fmt: skip

    @app.get("/jwks.json")
    def jwks() -> Response:
        return jsonify(keys=[key.as_dict(private=False)])

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize() -> Response:
        """OIDC Core §3.1.2: sign the user in with a form, then redirect with ``code``, ``state`` and ``iss``."""
        user = account_by_sub(session.get("sub", ""))
        error = None
        if request.method == "POST":
            user = check_password(request.form.get("username", ""), request.form.get("password", ""))
            error = None if user else "Wrong username or password."
        try:
            grant = server.get_consent_grant(end_user=user)
        except OAuth2Error as exc:
            response: Response = server.handle_error_response(None, exc)
            server.issuer_parameter.add_issuer_parameter(server, response)
            return response
        if user is None or (request.method == "GET" and grant.prompt == "login"):
            page = render_template_string(
                LOGIN_PAGE, accounts=", ".join(ACCOUNTS), error=error, action=request.full_path
            )
            return Response(page, status=401 if error else 200, mimetype="text/html")
        if request.method == "POST":
            session.clear()
            session.update(sub=user.sub, auth_time=int(time.time()))
        granted: Response = server.create_authorization_response(grant=grant, grant_user=user)
        return granted

    @app.post("/token")
    def token() -> Response:
        issued: Response = server.create_token_response()
        return issued

    @app.route("/userinfo", methods=["GET", "POST"])
    def userinfo() -> Response:
        info: Response = server.create_endpoint_response("userinfo")
        return info

    @app.route("/logout", methods=["GET", "POST"])
    def logout() -> Response:
        """RP-initiated logout; a GET without a valid ``id_token_hint`` asks first, as §6 advises against CSRF."""
        try:
            end_request = server.validate_endpoint_request("end_session")
        except OAuth2Error as exc:
            failed: Response = server.handle_error_response(None, exc)
            return failed
        if end_request.needs_confirmation and request.method == "GET":
            return Response(render_template_string(LOGOUT_PAGE, done=False, params=request.args.items()))
        redirect: Response | None = server.create_endpoint_response("end_session", end_request)
        return redirect or Response(render_template_string(LOGOUT_PAGE, done=True, params=()))

    return app


def serve(app: Flask, port: int, host: str = LOOPBACK) -> None:
    """Serve with werkzeug's threaded server until interrupted."""
    server = make_server(host, port, app, threaded=True)
    print(f"demo OpenID provider on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.demo.idp", description="A development OpenID provider.")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--redirect-uri", action="append", required=True, help="repeat for several")
    parser.add_argument("--post-logout-redirect-uri", action="append", default=[], help="repeat for several")
    args = parser.parse_args(argv)
    app = create_app(
        issuer=f"http://{LOOPBACK}:{args.port}",
        client_id=args.client_id,
        client_secret=args.client_secret,
        redirect_uris=args.redirect_uri,
        post_logout_redirect_uris=args.post_logout_redirect_uri,
    )
    serve(app, args.port)


if __name__ == "__main__":
    main()
