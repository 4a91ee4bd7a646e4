"""The request context a policy sees: named networks, MFA from amr/acr, the local clock of a shift, and device
posture believed only from a trusted front proxy."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from gateway.policy_point import PolicyPoint
from gateway.settings_policies import PolicySettings

SETTINGS = PolicySettings(
    networks={"office": ("10.20.0.0/16",), "vpn": ("10.99.0.0/16", "fd00:99::/48")},
    timezone="Asia/Seoul",
    mfa_acr_values=("phr",),
    device_header="X-Device-Posture",
    reload_interval_seconds=0,
)
POINT = PolicyPoint(SETTINGS, trusted_proxies=("127.0.0.1/32",))
NOON_SEOUL = datetime(2026, 12, 7, 12, 30, tzinfo=ZoneInfo("Asia/Seoul")).timestamp()  # a Monday


def _context(**overrides: object):  # type: ignore[no-untyped-def]
    values: dict[str, object] = {
        "client_ip": "10.20.1.2", "peer": "127.0.0.1", "acr": None, "amr": ("pwd",),
        "device_header": None, "via": "inline", "now": NOON_SEOUL,
    }  # fmt: skip
    values.update(overrides)
    return POINT.context(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "network"),
    [("10.20.1.2", "office"), ("10.99.0.1", "vpn"), ("fd00:99::7", "vpn"), ("192.0.2.1", "other"), ("junk", "other"),
     ("::ffff:10.20.1.2", "office"), ("::ffff:192.0.2.1", "other")],  # IPv4-mapped (RFC 4291 §2.5.5.2)
)  # fmt: skip
def test_the_client_address_is_named_by_the_first_network_holding_it(address: str, network: str) -> None:
    assert _context(client_ip=address).network == network


@pytest.mark.parametrize(
    ("acr", "amr", "mfa"),
    [(None, ("pwd",), False), (None, ("pwd", "otp"), True), (None, ("hwk",), True), ("phr", ("pwd",), True),
     ("silver", ("pwd", "kba"), False)],
)  # fmt: skip
def test_mfa_comes_from_the_amr_values_or_a_configured_acr(acr: str | None, amr: tuple[str, ...], mfa: bool) -> None:
    assert _context(acr=acr, amr=amr).mfa is mfa


def test_the_clock_is_local_time_in_the_configured_zone() -> None:
    clock = _context().time
    assert (clock.weekday, clock.hour, clock.minute_of_day) == (1, 12, 750)


@pytest.mark.parametrize(
    ("peer", "header", "device"),
    [
        ("127.0.0.1", "managed", "managed"),
        ("127.0.0.1", " Unmanaged ", "unmanaged"),
        ("::ffff:127.0.0.1", "managed", "managed"),  # a dual-stack listener's spelling of the trusted proxy
        ("::ffff:10.20.1.2", "managed", "unknown"),
        ("127.0.0.1", "jailbroken", "unknown"),
        ("127.0.0.1", None, "unknown"),
        ("10.20.1.2", "managed", "unknown"),  # a client cannot claim a managed device itself
        (None, "managed", "unknown"),
    ],
)
def test_device_posture_is_believed_only_from_a_trusted_proxy(
    peer: str | None, header: str | None, device: str
) -> None:
    assert _context(peer=peer, device_header=header).device == device


def test_without_trusted_proxies_the_device_header_is_ignored() -> None:
    point = PolicyPoint(SETTINGS, trusted_proxies=())
    context = point.context(
        client_ip="10.20.1.2", peer="127.0.0.1", acr=None, amr=(), device_header="managed", via="inline", now=0.0
    )
    assert context.device == "unknown"


def test_a_bad_time_zone_or_network_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="IANA time zone"):
        PolicySettings(timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="not an IP address"):
        PolicySettings(networks={"office": ("10.20.0.0/33",)})
    with pytest.raises(ValueError, match='"other"'):
        PolicySettings(networks={"other": ("10.0.0.0/8",)})
