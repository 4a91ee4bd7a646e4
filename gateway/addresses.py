"""Client and proxy addresses as the access rules compare them with configured networks.

An IPv4 host can be named in IPv4-mapped IPv6 form, ``::ffff:10.20.1.2`` (RFC 4291 §2.5.5.2): a dual-stack
listener (bound to ``::``) reports every IPv4 peer that way, and a front proxy may write it into
``X-Forwarded-For``. Python's ``ipaddress`` keeps the two forms apart (``::ffff:10.20.1.2`` is not in
``10.20.0.0/16``), so a policy network, a trusted proxy or a forward-auth caller written in IPv4 form would not
hold the same host spelled the other way: a ``forbid`` for that network bypassed by spelling, a trusted proxy not
recognised. An address is therefore in a network when it is in either spelling, and a network may be written in
either.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> IPAddress | None:
    """``text`` as an address; None when it is not one (a Unix socket's name, a proxy's ``unknown``)."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def within(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    """Whether ``address`` is in one of ``networks``, whichever of the two forms either is written in: an IPv4
    address is also looked for as ``::ffff:a.b.c.d`` (a network copied from a dual-stack listener's logs), an
    IPv4-mapped one also as the IPv4 address it maps."""
    if isinstance(address, ipaddress.IPv6Address):
        other: IPAddress | None = address.ipv4_mapped
    else:
        other = ipaddress.IPv6Address(f"::ffff:{address}")
    return any(address in network or (other is not None and other in network) for network in networks)
