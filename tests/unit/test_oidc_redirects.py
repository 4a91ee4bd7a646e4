"""The post-login redirect target (``rd``): same-origin paths only, everything doubtful falls back to ``/``.

The corpus follows oauth2-proxy's ``testdata/openredirects.txt`` and the CVEs in research item 17:
``/\\`` (CVE-2020-5233), tab/whitespace (CVE-2020-11053), allowed-domain suffixes (CVE-2021-21291), ``..;/``
(Keycloak CVE-2026-3872) and multiple ``@`` (CVE-2026-7504).
"""

from __future__ import annotations

import pytest

from gateway.oidc.redirects import safe_return_to

OPEN_REDIRECTS = [
    # protocol-relative and scheme URLs
    "//evil.example",
    "//evil.example/chat/",
    "///evil.example",
    "////evil.example",
    "https://evil.example",
    "http://evil.example/",
    "HTTPS://evil.example",
    "//127.0.0.1.evil.example/",
    "https:evil.example",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "ftp://evil.example",
    # backslashes, which browsers read as slashes (CVE-2020-5233)
    "/\\evil.example",
    "\\\\evil.example",
    "\\/evil.example",
    "/\\/evil.example",
    "/%5cevil.example",
    "/%5Cevil.example",
    "%5c%5cevil.example",
    # whitespace and control characters browsers strip before parsing (CVE-2020-11053)
    "/%09/evil.example",
    "/\t/evil.example",
    "/ /evil.example",
    "/%20/evil.example",
    "/%0a/evil.example",
    "/%0d%0a/evil.example",
    "/%0d/evil.example",
    "/\r\n/evil.example",
    "/%00/evil.example",
    "/%7f/evil.example",
    " //evil.example",
    "\t//evil.example",
    # encoded slashes and double encoding
    "/%2f%2fevil.example",
    "/%2F%2Fevil.example",
    "%2f%2fevil.example",
    "/%252f%252fevil.example",
    "/%25252f%25252fevil.example",
    "/%255cevil.example",
    "/%2509/evil.example",
    "%2F%5Cevil.example",
    # userinfo: the host is what follows the last @ (CVE-2026-7504)
    "evil@host",
    "/a@evil.example",
    "//evil.example@good.example",
    "//good.example@evil.example",
    "/chat/@evil.example",
    "/%40evil.example",
    "/a@b@evil.example",
    "https://good.example@evil.example",
    # path walking out of the app (CVE-2026-3872)
    "/..;/admin",
    "/chat/..;/admin",
    "/chat/../admin",
    "/chat/%2e%2e/admin",
    "/chat/%2e%2e%2fadmin",
    "/chat/%252e%252e/admin",
    "/chat;jsessionid=1",
    # relative, empty and login-loop targets
    "evil.example",
    "chat/",
    "",
    ".",
    "/.channelgate/callback?code=x&state=y",
    "/.channelgate/login?rd=//evil.example",
    "/.channelgate/login",
    # oversized
    "/" + "a" * 5000,
    "/chat/?q=" + "x" * 3000,
]

KEPT = [
    "/",
    "/chat/",
    "/chat/?q=1",
    "/chat/?q=1&r=2",
    "/mail/inbox/42",
    "/phone/calls?from=2024-01-01",
    "/chat/a.b-c_d~e",
    "/chat/%E2%9C%93",
]


def test_the_corpus_has_at_least_forty_distinct_payloads() -> None:
    assert len(set(OPEN_REDIRECTS)) == len(OPEN_REDIRECTS) >= 40


@pytest.mark.parametrize("candidate", OPEN_REDIRECTS)
def test_an_open_redirect_payload_falls_back_to_the_home_page(candidate: str) -> None:
    assert safe_return_to(candidate) == "/"


def test_a_missing_return_target_is_the_home_page() -> None:
    assert safe_return_to(None) == "/"


@pytest.mark.parametrize("candidate", KEPT)
def test_a_same_origin_path_is_kept_as_it_is(candidate: str) -> None:
    assert safe_return_to(candidate) == candidate
