"""A POST a console runs as another method (``_method``: Rails, Laravel, Symfony, Spring) is decided as that
method too, through the real gateway (gateway/proxy/method_override.py).

The mail console (a hostile echo console, as in test_console_isolation.py) serves call recordings; a
``[[routes.data]]`` rule makes a GET of one a ``download`` of class ``recording``, which only supervisors may do. A
POST to the same path is a ``change`` of nothing in particular, so decided as POST alone, ``_method=GET`` would
fetch the recording for anyone.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import tests.components.echo_gateway as echo_gateway
from gateway.forward_auth import SECRET_HEADER
from gateway.storage.access_log import AccessRecord
from tests.components.echo_gateway import Deployment, deployment
from tests.components.hostile_console import HostileConsole
from tests.components.oidc_provider import OidcProviderFactory

pytestmark = [pytest.mark.oidc, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
JSON = {"Accept": "application/json"}
RECORDING = "/mail/customers/C-1/recordings/7.wav"
SUPERVISORS_DOWNLOAD = """
@id("recordings-download-supervisors-only")
@reason("Only supervisors may download call recordings.")
forbid (principal, action == Action::"download", resource)
when { resource.pii == "recording" }
unless { principal in Group::"supervisors" };
"""
# Appended after the routes, so it belongs to the last one (mail).
RULES = """
[[routes.data]]
path = "/mail/customers/{customer}/recordings/**"
methods = ["GET"]
action = "download"
subject = "path:customer"
pii = "recording"
"""
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
LARGE = 200 * 1024  # past the 64 KiB the gateway reads
SECRET = secrets.token_urlsafe(32)


@pytest.fixture
async def gateway(
    oidc_provider_factory: OidcProviderFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Deployment]:
    monkeypatch.setattr(echo_gateway, "EchoConsole", HostileConsole)
    (tmp_path / "site.cedar").write_text(SUPERVISORS_DOWNLOAD)
    policies = f'[policies]\npaths = ["{ROOT / "policies" / "default"}", "{tmp_path}"]\n'
    forward_auth = f'[forward_auth]\nenabled = true\nsecret = "{SECRET}"\n'
    async with deployment(oidc_provider_factory, extra_toml=RULES + policies + forward_auth) as deployed:
        yield deployed


def _reached(gateway: Deployment, path: str = RECORDING) -> list[bytes]:
    console = gateway.consoles["mail"]
    assert isinstance(console, HostileConsole)
    return [seen.body for seen in console.seen if seen.path.startswith(path.removeprefix("/mail"))]


async def _record_of(gateway: Deployment, path: str) -> AccessRecord:
    await gateway.services.audit.flush()
    records = [r for r in await gateway.services.access_log.tail(50) if r.path == path]
    assert records, f"no access record for {path}"
    return records[-1]


def _multipart(fields: list[tuple[str, bytes]], boundary: str = "b0undary") -> tuple[dict[str, str], bytes]:
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
        for name, value in fields
    )
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, parts + f"--{boundary}--\r\n".encode()


async def test_a_recording_is_refused_to_an_agent_as_a_get(gateway: Deployment) -> None:
    """The rule the override would dodge (a guard: this holds on the old code too)."""
    carol = await gateway.login("carol")  # mail-agents, not a supervisor
    assert (await carol.get(gateway.url + RECORDING, headers=JSON)).status_code == 403


@pytest.mark.parametrize(
    ("target", "headers", "body"),
    [
        (RECORDING, FORM, b"_method=GET"),
        (RECORDING, FORM, b"note=x&_method=get"),
        (RECORDING, FORM, b"%5Fmethod=GET"),
        (RECORDING, FORM, b".method=GET"),  # PHP stores it as _method
        (RECORDING, {}, b"_method=GET"),  # no Content-Type: Rack reads a form
        (RECORDING, {"Content-Type": ""}, b"_method=GET"),  # an empty one is none to Rack
        (RECORDING, FORM, b"_method%00=GET"),  # PHP ends a name at a NUL: Symfony and Laravel read _method
        (RECORDING + "?_method%00x=GET", {"Content-Type": "text/plain"}, b"x"),
        (RECORDING + "?_method=GET", {"Content-Type": "text/plain"}, b"x"),  # Symfony, Laravel, Spring
        (RECORDING, {"Content-Type": "application/json"}, b'{"_method": "GET"}'),  # Laravel
        (RECORDING, *_multipart([("_method", b"GET")])),
        (RECORDING, *_multipart([("\\_\\m\\e\\t\\h\\o\\d", b"GET")])),  # Rack un-escapes a quoted name
        (RECORDING, FORM, b"x=" + b"a" * LARGE + b"&_method=GET"),  # not read: it may name any method
    ],
)
async def test_a_post_the_console_would_run_as_a_refused_get_is_refused(
    gateway: Deployment, target: str, headers: dict[str, str], body: bytes
) -> None:
    carol = await gateway.login("carol")
    response = await carol.post(gateway.url + target, headers={**JSON, **headers}, content=body)
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "method_override_refused"
    assert "Only supervisors may download call recordings." in response.json()["message"]
    assert _reached(gateway) == []
    record = await _record_of(gateway, target.partition("=")[0])  # the query's keys only
    assert (record.status, record.decision, record.reason) == (403, "deny", "recordings-download-supervisors-only")
    assert record.detail == {"error": "method_override_refused"}


async def test_a_chunked_form_upload_may_name_any_method_so_it_is_decided_as_each(gateway: Deployment) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"note=x&"
        yield b"_method=GET"

    carol = await gateway.login("carol")
    response = await carol.post(gateway.url + RECORDING, headers={**JSON, **FORM}, content=chunks())
    assert response.status_code == 403
    assert _reached(gateway) == []


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (FORM, b"note=called+back&payment_method=card"),  # no _method
        (FORM, b"_method=POST"),
        ({"Content-Type": "application/json"}, b'{"method": "GET", "note": {"_method": "GET"}}'),  # top level only
        ({"Content-Type": "application/octet-stream"}, b"_method=GET" + b"\0" * LARGE),  # not a form: streams
        _multipart([("note", b"C:\\calls\\7.wav")]),  # read: plain part names, a backslash only in the data
    ],
)
async def test_a_post_that_names_no_other_method_is_decided_as_a_post_and_reaches_the_console_whole(
    gateway: Deployment, headers: dict[str, str], body: bytes
) -> None:
    carol = await gateway.login("carol")
    response = await carol.post(gateway.url + RECORDING, headers={**JSON, **headers}, content=body)
    assert response.status_code == 200, response.text
    assert _reached(gateway) == [body]


async def test_a_supervisor_may_run_it_as_any_method_and_a_large_upload_still_streams_whole(
    gateway: Deployment,
) -> None:
    alice = await gateway.login("alice")  # supervisors
    assert (await alice.post(gateway.url + RECORDING, headers=FORM, content=b"_method=GET")).status_code == 200
    headers, upload = _multipart([("_method", b"PATCH"), ("file", bytes(range(256)) * 8 * 1024)])  # 2 MiB
    response = await alice.post(gateway.url + RECORDING, headers=headers, content=upload)
    assert response.status_code == 200
    assert _reached(gateway) == [b"_method=GET", upload]
    record = await _record_of(gateway, RECORDING)
    assert (record.decision, record.reason, record.action) == ("allow", "route-groups", "change")


async def test_on_a_route_whose_rules_give_every_method_one_action_an_override_changes_nothing(
    gateway: Deployment,
) -> None:
    """/chat/ has no rules: POST, PUT, PATCH and DELETE are all a change, so ``_method=DELETE`` there is decided
    as it always was (and an agent who may change may also view, so GET adds no refusal)."""
    alice = await gateway.login("alice")
    response = await alice.post(gateway.url + "/chat/messages/1", headers=FORM, content=b"_method=DELETE")
    assert response.status_code == 200


async def test_through_forward_auth_a_post_whose_body_the_gateway_never_sees_is_decided_as_any_method(
    gateway: Deployment,
) -> None:
    """nginx's auth_request sends no body: what the console will read from it is unknown, so the POST must be
    allowed whatever it runs as. An ordinary POST elsewhere is still a change the agent may make."""
    carol, alice = await gateway.login("carol"), await gateway.login("alice")

    async def ask(agent: httpx.AsyncClient, method: str, uri: str) -> int:
        headers = {"X-Original-URI": uri, "X-Original-Method": method, SECRET_HEADER: SECRET, **JSON}
        return (await agent.get(f"{gateway.url}/.channelgate/auth", headers=headers)).status_code

    assert await ask(carol, "POST", RECORDING) == 403
    assert await ask(carol, "POST", RECORDING) == 403  # not answered from a memo of another question
    assert await ask(alice, "POST", RECORDING) == 200
    assert await ask(carol, "POST", "/mail/inbox") == 200
    record = await _record_of(gateway, RECORDING)
    assert (record.decision, record.reason) == ("allow", "route-groups")  # alice's, decided for POST


async def test_an_empty_content_type_reaches_the_console_as_sent_which_rack_reads_as_a_form(
    gateway: Deployment,
) -> None:
    """Why an empty Content-Type is read as a form: the console gets ``Content-Type:`` empty, and Rack's
    ``Request#content_type`` is nil for an empty one, so ``form_data?`` holds for a POST."""
    alice = await gateway.login("alice")
    await alice.post(gateway.url + RECORDING, headers={**JSON, "Content-Type": ""}, content=b"_method=GET")
    console = gateway.consoles["mail"]
    assert isinstance(console, HostileConsole)
    seen = [s for s in console.seen if s.body == b"_method=GET"][-1]
    assert [v for k, v in seen.headers if k.lower() == "content-type"] == [""]
