"""The peer handed to sources carries the address access already parsed."""

from __future__ import annotations

import ipaddress

import pytest

from kong_cilium_identity.identity.address import parse_address
from kong_cilium_identity.identity.model import Identity, Lookup, Peer
from kong_cilium_identity.identity.resolver import Resolver, ResolverSettings
from kong_cilium_identity.identity.sources.static import create, parse_settings
from kong_cilium_identity.kong import access
from tests.scenario import CHECKOUT_APP_ENTRY, CHECKOUT_ID, CHECKOUT_IP


class Recording:
    """A source that keeps the peers it was asked about."""

    name = "recording"
    cacheable = False

    def __init__(self) -> None:
        self.peers: list[Peer] = []

    def lookup(self, peer: Peer, timeout: float) -> Lookup:
        self.peers.append(peer)
        return Lookup.found(Identity.build(CHECKOUT_ID, ["k8s:app=checkout"]), self.name)

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("client_ip", "address"),
    [
        (CHECKOUT_IP, CHECKOUT_IP),
        (f"::ffff:{CHECKOUT_IP}", CHECKOUT_IP),  # IPv4-mapped IPv6 is the IPv4 address
        ("FD00:10:244:0::17", "fd00:10:244::17"),
    ],
)
def test_access_hands_sources_the_parsed_canonical_address(client_ip: str, address: str) -> None:
    source = Recording()
    access._lookup(Resolver([source], ResolverSettings(())), client_ip, 4242, 8000)
    (peer,) = source.peers
    assert peer.address == address
    assert peer.ip == ipaddress.ip_address(address)
    assert peer.parsed() is peer.ip  # nothing to parse again
    assert (peer.port, peer.local_port) == (4242, 8000)


def test_a_peer_made_from_text_is_parsed_on_demand_as_before() -> None:
    assert Peer(f"::ffff:{CHECKOUT_IP}").parsed() == ipaddress.IPv4Address(CHECKOUT_IP)
    with pytest.raises(ValueError, match="scoped"):
        Peer("fe80::1%eth0").parsed()
    with pytest.raises(ValueError):
        Peer("not an address").parsed()


def test_peers_compare_by_their_text_whoever_parsed_them() -> None:
    assert Peer.of(parse_address(CHECKOUT_IP)) == Peer(CHECKOUT_IP)


def test_the_static_source_answers_parsed_and_text_peers_alike() -> None:
    source = create(parse_settings({"entries": [CHECKOUT_APP_ENTRY]}))
    for peer in (Peer.of(parse_address(f"::ffff:{CHECKOUT_IP}")), Peer(f"::ffff:{CHECKOUT_IP}")):
        found = source.lookup(peer, 0.5)
        assert found.identity is not None and found.identity.id == CHECKOUT_ID
    assert source.lookup(Peer("10.9.9.9"), 0.5).identity is None
