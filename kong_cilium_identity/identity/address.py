"""Client addresses as Kong reports them, folded to one canonical form."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> IPAddress:
    """Parse an IPv4 or IPv6 address; ``::ffff:a.b.c.d`` is the IPv4 address a.b.c.d.

    Raises ValueError for anything else (including a scoped ``fe80::1%eth0``: a link-local
    peer never has a cluster-wide identity).
    """
    address = ipaddress.ip_address(text.strip())
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            raise ValueError(f"scoped address {text!r} has no cluster-wide identity")
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


def parse_network(text: str) -> IPNetwork:
    """Parse an address or CIDR; an IPv4-mapped IPv6 prefix becomes the IPv4 prefix."""
    network = ipaddress.ip_network(text.strip(), strict=True)
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None and network.prefixlen >= 96:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network
