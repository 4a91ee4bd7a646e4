"""An address is in a configured network whichever way it is spelled: IPv4, or IPv4-mapped IPv6."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.addresses import parse_address, within

NETWORKS = (ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("fd00:99::/48"))


@pytest.mark.parametrize(
    ("text", "inside"),
    [("10.20.1.2", True), ("::ffff:10.20.1.2", True), ("fd00:99::7", True), ("10.21.0.1", False),
     ("::ffff:10.21.0.1", False), ("::10.20.1.2", False)],  # the last: IPv4-compatible, deprecated, not mapped
)  # fmt: skip
def test_an_ipv4_mapped_address_is_in_the_ipv4_network_of_the_host_it_maps(text: str, inside: bool) -> None:
    address = parse_address(text)
    assert address is not None
    assert within(address, NETWORKS) is inside


@pytest.mark.parametrize("text", ["::ffff:10.20.1.2", "10.20.1.2"])
def test_a_network_written_in_mapped_form_holds_the_host_in_either_spelling(text: str) -> None:
    # '::ffff:10.20.0.0/112' copied from a dual-stack listener's logs; the address may arrive as plain IPv4.
    address = parse_address(text)
    mapped_network = (ipaddress.ip_network("::ffff:10.20.0.0/112"),)
    assert address is not None and within(address, mapped_network)
    outside = parse_address("10.21.0.1")
    assert outside is not None and not within(outside, mapped_network)


@pytest.mark.parametrize("text", ["", "unknown", "10.20.1.256", "unix:/run/socket"])
def test_what_is_not_an_address_is_none(text: str) -> None:
    assert parse_address(text) is None
