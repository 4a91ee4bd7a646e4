"""Settings are validated once: a bad file names every bad field in one error, and secrets cannot print."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import load_settings

GOOD = """
[server]
public_url = "https://gateway.example"

[database]
url = "postgresql+asyncpg://channelgate:db-password-s3cret@db.example/channelgate"

[sessions]
store = "redis"
redis_url = "redis://:redis-password-s3cret@redis.example:6379/0"

[oidc]
issuer = "https://idp.example"
client_id = "channelgate"
client_secret = "client-secret-from-file"

[vault]
active_key = "k1"
keys = { k1 = "dmF1bHQta2V5LXMzY3JldC0zMi1ieXRlcy1sb25nISE=" }

[admin]
tokens = ["admin-token-s3cret-of-32-characters-ok"]

[channels.chat]
inject = "bearer"

[[routes]]
channel = "chat"
prefix = "/chat/"
upstream = "http://chat.internal:8080"
allowed_groups = ["chat-agents"]
"""

SECRETS = [
    "db-password-s3cret",
    "redis-password-s3cret",
    "client-secret-from-file",
    "dmF1bHQta2V5LXMzY3JldC0zMi1ieXRlcy1sb25nISE=",
    "admin-token-s3cret-of-32-characters-ok",
]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "channelgate.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        load_settings(_write(tmp_path, text), environ=environ or {})
    return raised.value.message


def test_a_good_file_loads(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, GOOD), environ={})
    assert settings.routes[0].channel == "chat"
    assert settings.sessions.store == "redis"


def test_one_error_names_every_bad_field_at_once(tmp_path: Path) -> None:
    bad = (
        GOOD.replace('public_url = "https://gateway.example"', 'public_url = "https://gateway.example"\nport = 0')
        .replace('issuer = "https://idp.example"', 'issuer = "ftp://idp.example"')
        .replace('store = "redis"', 'store = "redis"\nidle_timeout_seconds = 5')
        .replace('prefix = "/chat/"', 'prefix = "chat"')
        .replace('inject = "bearer"', 'inject = "carrier-pigeon"')
        .replace('url = "postgresql+asyncpg://', 'url = "mysql://')
    )
    message = _error(tmp_path, bad)
    for field in (
        "server.port",
        "oidc.issuer",
        "sessions.idle_timeout_seconds",
        "routes.0.prefix",
        "channels.chat.inject",
        "database.url",
    ):
        assert field in message
    assert "6 invalid settings" in message


def test_an_unknown_key_is_named_rather_than_ignored(tmp_path: Path) -> None:
    message = _error(tmp_path, GOOD.replace("[admin]", "[admin]\ntokenz = []"))
    assert "admin.tokenz" in message


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    settings = load_settings(
        _write(tmp_path, GOOD),
        environ={"CHANNELGATE_OIDC__CLIENT_SECRET": "from-the-environment", "CHANNELGATE_SERVER__PORT": "9443"},
    )
    assert settings.oidc.client_secret.get_secret_value() == "from-the-environment"
    assert settings.server.port == 9443


@pytest.mark.parametrize("value", ["12345678", "true", "2024-01-01", "[1]", "1e5"])
def test_a_secret_from_the_environment_stays_a_string_even_when_it_looks_like_toml(tmp_path: Path, value: str) -> None:
    settings = load_settings(_write(tmp_path, GOOD), environ={"CHANNELGATE_OIDC__CLIENT_SECRET": value})
    assert settings.oidc.client_secret.get_secret_value() == value


def test_a_bad_environment_value_is_named_like_a_bad_file_value(tmp_path: Path) -> None:
    message = _error(tmp_path, GOOD, {"CHANNELGATE_SERVER__PORT": "seventy"})
    assert "server.port" in message


def test_no_secret_prints_in_the_repr_of_the_settings(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, GOOD), environ={})
    text = repr(settings) + str(settings) + settings.model_dump_json()
    assert [secret for secret in SECRETS if secret in text] == []
    assert "**********" in repr(settings)


def test_no_secret_prints_in_a_config_error(tmp_path: Path) -> None:
    message = _error(tmp_path, GOOD.replace('prefix = "/chat/"', 'prefix = "chat"'))
    assert [secret for secret in SECRETS if secret in message] == []


@pytest.mark.parametrize(
    ("server", "complaint"),
    [
        ('public_url = "http://gateway.example"\ninsecure_dev_cookies = true', "loopback"),
        ('public_url = "https://gateway.example"\ninsecure_dev_cookies = true', "loopback"),
        ('public_url = "http://10.0.0.5:8000"\ninsecure_dev_cookies = true', "loopback"),
        ('public_url = "http://gateway.example"', "plain http"),
        ('public_url = "http://127.0.0.1:8000"', "plain http"),
    ],
    ids=["http-public", "https-public", "http-private-ip", "http-without-switch", "loopback-without-switch"],
)
def test_insecure_cookies_are_refused_off_loopback_and_http_needs_the_switch(
    tmp_path: Path, server: str, complaint: str
) -> None:
    message = _error(tmp_path, GOOD.replace('public_url = "https://gateway.example"', server))
    assert "server" in message and complaint in message


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000"])
def test_insecure_cookies_are_accepted_on_a_loopback_http_url(tmp_path: Path, host: str) -> None:
    server = f'public_url = "http://{host}"\ninsecure_dev_cookies = true'
    settings = load_settings(_write(tmp_path, GOOD.replace('public_url = "https://gateway.example"', server)), {})
    assert settings.server.insecure_dev_cookies is True


def test_a_route_naming_an_unknown_channel_is_refused(tmp_path: Path) -> None:
    message = _error(tmp_path, GOOD.replace('channel = "chat"', 'channel = "fax"'))
    assert "fax" in message and "not configured" in message


def test_a_redis_store_without_a_url_is_refused(tmp_path: Path) -> None:
    message = _error(tmp_path, GOOD.replace('redis_url = "redis://:redis-password-s3cret@redis.example:6379/0"', ""))
    assert "sessions" in message and "redis_url" in message


@pytest.mark.parametrize("algorithms", ['["none"]', '["HS256"]', '["RS256", "HS512"]', "[]"])
def test_only_asymmetric_id_token_algorithms_are_accepted(tmp_path: Path, algorithms: str) -> None:
    message = _error(tmp_path, GOOD.replace("[oidc]", f"[oidc]\nallowed_algorithms = {algorithms}"))
    assert "oidc.allowed_algorithms" in message


def test_a_missing_file_and_broken_toml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_settings(tmp_path / "absent.toml", environ={})
    assert "not valid TOML" in _error(tmp_path, "[server\nport = 1")


def test_scim_links_by_preferred_username_unless_configured(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, GOOD), environ={})
    assert settings.scim.link_by == "user_name_is_preferred_username"


@pytest.mark.parametrize("rule", ["external_id_is_sub", "user_name_is_preferred_username", "user_name_is_email"])
def test_every_scim_link_rule_is_accepted_from_the_file_and_the_environment(tmp_path: Path, rule: str) -> None:
    from_file = load_settings(_write(tmp_path, GOOD + f'\n[scim]\nlink_by = "{rule}"\n'), environ={})
    from_env = load_settings(_write(tmp_path, GOOD), environ={"CHANNELGATE_SCIM__LINK_BY": rule})
    assert from_file.scim.link_by == from_env.scim.link_by == rule


@pytest.mark.parametrize("section", ['link_by = "display_name"', 'link_by = "user_name"', "link_by_email = true"])
def test_an_unknown_scim_link_rule_or_key_is_named(tmp_path: Path, section: str) -> None:
    message = _error(tmp_path, GOOD + f"\n[scim]\n{section}\n")
    assert "scim.link_by" in message


def test_a_shared_signals_transmitter_needs_a_real_url_and_a_long_token_which_never_prints(tmp_path: Path) -> None:
    transmitter = '\n[[ssf.transmitters]]\nissuer = "https://idp.example"\njwks_uri = "{uri}"\ntoken = "{token}"\n'
    good = load_settings(
        _write(tmp_path, GOOD + transmitter.format(uri="https://idp.example/jwks", token="t" * 40)), environ={}
    )
    assert good.ssf.transmitters[0].issuer == "https://idp.example"
    assert "t" * 40 not in repr(good)
    message = _error(tmp_path, GOOD + transmitter.format(uri="not a url", token="short-token"))
    assert "ssf.transmitters.0.jwks_uri" in message and "ssf.transmitters.0.token" in message
    assert "short-token" not in message
    placeholder = "change-me-transmitter-token-of-32-characters"
    message = _error(tmp_path, GOOD + transmitter.format(uri="https://idp.example/jwks", token=placeholder))
    assert "ssf.transmitters.0.token" in message and "CHANGE-ME placeholder" in message and placeholder not in message


@pytest.mark.parametrize("age", [0, 299, 7 * 86_400 + 1])
def test_a_transmitters_max_set_age_outside_five_minutes_to_a_week_is_named(tmp_path: Path, age: int) -> None:
    transmitter = (
        '\n[[ssf.transmitters]]\nissuer = "https://idp.example"\njwks_uri = "https://idp.example/jwks"\n'
        f'token = "{"t" * 40}"\nmax_set_age_seconds = {age}\n'
    )
    message = _error(tmp_path, GOOD + transmitter)
    assert "ssf.transmitters.0.max_set_age_seconds" in message


def test_a_transmitters_sets_are_acted_on_for_a_day_unless_its_settings_say_otherwise(tmp_path: Path) -> None:
    transmitter = '\n[[ssf.transmitters]]\nissuer = "https://idp.example"\njwks_uri = "https://idp.example/jwks"\n'
    table = transmitter + f'token = "{"t" * 40}"\n'
    assert load_settings(_write(tmp_path, GOOD + table), environ={}).ssf.transmitters[0].max_set_age_seconds == 86_400
    hour = load_settings(_write(tmp_path, GOOD + table + "max_set_age_seconds = 3600\n"), environ={})
    assert hour.ssf.transmitters[0].max_set_age_seconds == 3600


@pytest.mark.parametrize("token", ["", "Q", "tok-9f2k", "Q" * 31], ids=["empty", "one", "short", "31-characters"])
def test_an_admin_token_shorter_than_32_characters_is_named_and_never_printed(tmp_path: Path, token: str) -> None:
    message = _error(tmp_path, GOOD.replace("admin-token-s3cret-of-32-characters-ok", token))
    assert "admin.tokens" in message and "32 characters" in message
    assert not token or token not in message


@pytest.mark.parametrize(
    "placeholder", ["CHANGE-ME", "CHANGE-ME: openssl rand -base64 32", "change-me-admin-token-of-32-characters-or-more"]
)
def test_the_examples_placeholder_is_no_admin_token_from_the_file_or_the_environment(
    tmp_path: Path, placeholder: str
) -> None:
    from_file = _error(tmp_path, GOOD.replace("admin-token-s3cret-of-32-characters-ok", placeholder))
    from_env = _error(tmp_path, GOOD, {"CHANNELGATE_ADMIN__TOKENS": f'["{placeholder}"]'})
    for message in (from_file, from_env):
        assert "admin.tokens" in message and "placeholder" in message


#: What deploy/nginx/forward-auth.conf, deploy/envoy/forward-auth.yaml and deploy/traefik/channelgate.yml ship.
SAMPLES_FORWARD_AUTH_SECRET = "CHANGE-ME-forward-auth-secret-of-32-characters-or-more"


@pytest.mark.parametrize("placeholder", [SAMPLES_FORWARD_AUTH_SECRET, SAMPLES_FORWARD_AUTH_SECRET.lower()])
def test_the_samples_placeholder_is_no_forward_auth_secret_from_the_file_or_the_environment(
    tmp_path: Path, placeholder: str
) -> None:
    enabled = GOOD + "\n[forward_auth]\nenabled = true\n"
    from_file = _error(tmp_path, enabled + f'secret = "{placeholder}"\n')
    from_env = _error(tmp_path, enabled, {"CHANNELGATE_FORWARD_AUTH__SECRET": placeholder})
    for message in (from_file, from_env):
        assert "forward_auth.secret" in message and "placeholder" in message and "token_urlsafe" in message
        assert placeholder not in message


def test_a_configuration_file_that_is_not_utf8_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "channelgate.toml"
    path.write_bytes(GOOD.replace("client-secret-from-file", "caf\xe9-secret").encode("latin-1"))
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={})
    assert str(path) in raised.value.message and "UTF-8" in raised.value.message
    assert "caf" not in raised.value.message


def test_a_directory_given_as_the_configuration_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(tmp_path, environ={})
    assert str(tmp_path) in raised.value.message and "directory" in raised.value.message


def test_a_configuration_path_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    # Under a regular file: ENOTDIR for any user (a chmod 000 file would not do: CI runs as root, who reads it).
    path = _write(tmp_path, GOOD) / "channelgate.toml"
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={})
    assert str(path) in raised.value.message and "cannot be read: Not a directory" in raised.value.message


@pytest.mark.parametrize("name", ["X-Assertion\r\nX-Admin: yes", "X Assertion", "X-Assertion:", ""])
@pytest.mark.parametrize(
    ("section", "template"),
    [
        ("assertion", '\n[assertion]\nheader = "{name}"\n'),
        ("channels.chat", None),
    ],
)
def test_a_header_name_we_set_that_is_not_a_plain_token_is_refused(
    tmp_path: Path, name: str, section: str, template: str | None
) -> None:
    """The assertion's header and a static channel's credential header go out in every answer: a line break would
    write headers of its own, a space or colon is refused by the HTTP server at every answer."""
    escaped = name.replace("\r", "\\r").replace("\n", "\\n")
    if template is None:
        text = GOOD.replace('inject = "bearer"', f'inject = "header"\nheader_name = "{escaped}"')
    else:
        text = GOOD + template.format(name=escaped)
    message = _error(tmp_path, text)
    assert section in message and ("header" in message)


def test_plain_header_names_are_accepted(tmp_path: Path) -> None:
    text = GOOD.replace('inject = "bearer"', 'inject = "header"\nheader_name = "X-Api-Key"')
    settings = load_settings(_write(tmp_path, text + '\n[assertion]\nheader = "X-Agent-Assertion"\n'), environ={})
    assert settings.assertion.header == "X-Agent-Assertion"
