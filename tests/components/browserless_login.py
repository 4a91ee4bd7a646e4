"""Drive a full OIDC authorization-code login through the gateway with plain HTTP, no browser.

Redirects are followed by hand so a test can stop anywhere; cookies live in the httpx client's jar, per host,
as a browser keeps them. The path is::

    GET {gateway}/.channelgate/login?rd=RETURN_TO   -> 302 to the provider's authorize endpoint
    provider: /auth -> /interaction/UID (login form) -> POST credentials -> /auth/UID (resume)
    -> 303 to {gateway}/.channelgate/callback?code=..&state=..&iss=..   <- login_steps() stops here
    GET callback -> gateway sets its session cookie, redirects to RETURN_TO  <- login() stops here
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

import httpx

MAX_STEPS = 20
LOGIN_PATH = "/.channelgate/login"
USERNAME_FIELDS = ("username", "login", "user", "email")


class LoginError(AssertionError):
    """The login did not go as a browser's would; carries the last response for the test report."""

    def __init__(self, message: str, response: httpx.Response | None = None) -> None:
        if response is not None:
            message = f"{message} [{response.request.method} {response.url} -> {response.status_code}]"
            if response.is_error:  # the gateway's or provider's own words, for a failure seen once in a while
                message = f"{message}: {response.text[:300]!r}"
        super().__init__(message)
        self.response = response


class LoginRejected(LoginError):
    """The provider showed its login form again after the credentials were submitted (wrong password)."""


@dataclass
class HtmlForm:
    """One ``<form>`` of a page: where it posts and the values a browser would send without user input."""

    action: str
    method: str
    form_id: str | None
    fields: dict[str, str] = field(default_factory=dict)
    password_field: str | None = None
    text_fields: list[str] = field(default_factory=list)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[HtmlForm] = []
        self._current: HtmlForm | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._current = HtmlForm(
                action=attributes.get("action", ""),
                method=attributes.get("method", "get").lower(),
                form_id=attributes.get("id"),
            )
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and "name" in attributes:
            name, kind = attributes["name"], attributes.get("type", "text").lower()
            if kind == "password":
                self._current.password_field = name
            elif kind in {"text", "email"}:
                self._current.text_fields.append(name)
            elif kind not in {"submit", "button", "checkbox", "radio"}:
                self._current.fields[name] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def parse_forms(html: str) -> list[HtmlForm]:
    """The forms of an HTML page (enough HTML for provider login, consent and logout pages)."""
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    return parser.forms


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def _is_html(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("text/html")


async def _submit(
    client: httpx.AsyncClient, page: httpx.Response, form: HtmlForm, data: dict[str, str]
) -> httpx.Response:
    target = page.url.join(form.action) if form.action else page.url
    if form.method == "post":
        return await client.post(target, data=data, follow_redirects=False)
    return await client.get(target, params=data, follow_redirects=False)


def _credentials(form: HtmlForm, username: str, password: str) -> dict[str, str]:
    assert form.password_field is not None
    user_field = next((name for name in USERNAME_FIELDS if name in form.text_fields), None)
    if user_field is None and form.text_fields:
        user_field = form.text_fields[0]
    if user_field is None:
        raise LoginError(f"login form has no username field: {form}")
    return {**form.fields, user_field: username, form.password_field: password}


async def provider_login(
    client: httpx.AsyncClient, authorize_url: str | httpx.URL, username: str, password: str, *, stop_at: str
) -> httpx.URL:
    """Follow the provider from ``authorize_url`` until it redirects to the origin of ``stop_at``.

    Submits the login form with the credentials, and any other form (consent) as it is. Returns the URL the
    provider redirected to, normally the relying party's callback with ``code``, ``state`` and ``iss``
    (or ``error``), without requesting it. Raises :class:`LoginRejected` if the credentials are refused.
    """
    relying_party = _origin(httpx.URL(stop_at))
    url = httpx.URL(str(authorize_url))
    response = await client.get(url, follow_redirects=False)
    submitted_credentials = False
    for _ in range(MAX_STEPS):
        if response.is_redirect:
            url = response.url.join(response.headers["location"])
            if _origin(url) == relying_party:
                return url
            response = await client.get(url, follow_redirects=False)
            continue
        forms = parse_forms(response.text) if _is_html(response) else []
        if not forms:
            raise LoginError(f"provider page has no form: {response.text[:500]!r}", response)
        form = forms[0]
        if form.password_field is not None:
            if submitted_credentials:
                raise LoginRejected(f"provider refused the credentials of {username!r}", response)
            submitted_credentials = True
            response = await _submit(client, response, form, _credentials(form, username, password))
        elif response.is_success:
            response = await _submit(client, response, form, form.fields)
        else:
            raise LoginError(f"provider error page: {response.text[:500]!r}", response)
    raise LoginError(f"no redirect to {stop_at} after {MAX_STEPS} steps", response)


@dataclass(frozen=True)
class LoginSteps:
    """A login stopped just before the callback: replay or tamper with ``callback_url`` from here."""

    client: httpx.AsyncClient
    callback_url: httpx.URL


async def login_steps(
    gateway_url: str,
    username: str,
    password: str,
    return_to: str = "/",
    client: httpx.AsyncClient | None = None,
) -> LoginSteps:
    """Start a login at the gateway and stop at the provider's redirect back to it (not yet requested).

    Without ``client`` a new one is made; the caller closes the client it gets back (``await client.aclose()``).
    """
    own_client = client is None
    client = httpx.AsyncClient(timeout=10.0) if client is None else client
    try:
        start = await client.get(
            f"{gateway_url.rstrip('/')}{LOGIN_PATH}", params={"rd": return_to}, follow_redirects=False
        )
        if not start.is_redirect:
            raise LoginError("gateway login did not redirect to the provider", start)
        authorize_url = start.url.join(start.headers["location"])
        callback_url = await provider_login(client, authorize_url, username, password, stop_at=gateway_url)
    except BaseException:
        if own_client:
            await client.aclose()
        raise
    return LoginSteps(client=client, callback_url=callback_url)


async def complete_login(client: httpx.AsyncClient, callback_url: str | httpx.URL) -> httpx.Response:
    """Request the gateway callback (the gateway validates state, exchanges the code, sets its cookie)."""
    return await client.get(callback_url, follow_redirects=False)


async def login(
    gateway_url: str,
    username: str,
    password: str,
    return_to: str = "/",
    client: httpx.AsyncClient | None = None,
) -> httpx.AsyncClient:
    """Log in through the gateway and return the client whose cookie jar holds the gateway session.

    Raises :class:`LoginError` unless the gateway's callback redirects back to ``return_to``. Without
    ``client`` a new one is made, and the caller closes it with ``await client.aclose()`` (httpx refuses
    ``async with`` on a client that has already sent requests).
    """
    steps = await login_steps(gateway_url, username, password, return_to, client)
    try:
        response = await complete_login(steps.client, steps.callback_url)
        if not response.is_redirect:
            raise LoginError(f"gateway callback did not redirect: {response.text[:500]!r}", response)
        if return_to.startswith("/") and not return_to.startswith("//"):
            landed = response.url.join(response.headers["location"])
            expected = response.url.join(return_to)
            if (_origin(landed), landed.raw_path) != (_origin(expected), expected.raw_path):
                raise LoginError(f"gateway redirected to {landed}, not to {expected}", response)
    except BaseException:
        if client is None:
            await steps.client.aclose()
        raise
    return steps.client


async def provider_logout(client: httpx.AsyncClient, logout_url: str | httpx.URL) -> httpx.Response:
    """Confirm an RP-initiated logout (OIDC RP-Initiated Logout 1.0 §2) at the provider.

    ``logout_url`` is the end-session URL the gateway redirected to. Submits the provider's confirmation form
    with ``logout=yes`` and returns the provider's last response: a redirect to the
    ``post_logout_redirect_uri`` (not followed) or its "signed out" page.
    """
    url = httpx.URL(str(logout_url))
    provider = _origin(url)
    response = await client.get(url, follow_redirects=False)
    confirmed = False
    for _ in range(MAX_STEPS):
        if response.is_redirect:
            target = response.url.join(response.headers["location"])
            if _origin(target) != provider:
                return response
            response = await client.get(target, follow_redirects=False)
            continue
        forms = [form for form in parse_forms(response.text) if form.form_id == "op.logoutForm"]
        if confirmed or not forms:
            return response
        confirmed = True
        response = await _submit(client, response, forms[0], {**forms[0].fields, "logout": "yes"})
    raise LoginError(f"provider logout did not finish after {MAX_STEPS} steps", response)
