"""The agent source against the fake agent: the REST contract, statuses and the socket."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kong_cilium_identity.identity.model import LookupStatus, Peer
from kong_cilium_identity.identity.sources.agent import AgentSource, parse_settings
from tests.kit.fake_agent import FakeAgent

from .conftest import FIXTURES, need_fixture

APP = ["k8s:app=checkout", "k8s:io.kubernetes.pod.namespace=shop"]


@pytest.fixture
def make_source(agent: FakeAgent) -> Iterator[Callable[..., AgentSource]]:
    made: list[AgentSource] = []

    def make(**record: Any) -> AgentSource:
        source = AgentSource(parse_settings({"socket_path": str(agent.socket_path), **record}))
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


def test_found_with_pod_metadata(agent: FakeAgent, make_source: Any) -> None:
    agent.add("10.0.1.200", 48861, APP, namespace="shop", pod="checkout-7d9", host_ip="172.18.0.3")
    result = make_source().lookup(Peer("10.0.1.200"), 2.0)
    assert result.status is LookupStatus.FOUND and result.identity is not None
    identity = result.identity
    assert (identity.id, identity.namespace, identity.pod) == (48861, "shop", "checkout-7d9")
    assert identity.label_strings() == sorted(APP)
    assert identity.source == "agent"


def test_namespace_falls_back_to_labels(agent: FakeAgent, make_source: Any) -> None:
    agent.add("10.0.1.201", 48862, APP)
    result = make_source().lookup(Peer("10.0.1.201"), 2.0)
    assert result.identity is not None
    assert (result.identity.namespace, result.identity.pod) == ("shop", None)


def test_reserved_identity_from_the_real_fixture(agent: FakeAgent, make_source: Any) -> None:
    host = json.loads(
        need_fixture(
            FIXTURES / "cilium-api/identity-1-reserved-host-hubble-issue191.json"
        ).read_text()
    )
    agent.add("172.18.0.3", host["id"], host["labels"], namespace="ignored", pod="ignored")
    result = make_source().lookup(Peer("172.18.0.3"), 2.0)
    assert result.identity is not None
    assert (result.identity.id, result.identity.label_strings()) == (1, ["reserved:host"])
    assert (result.identity.namespace, result.identity.pod) == (None, None)


def test_ipv6_asks_for_a_128_prefix(agent: FakeAgent, make_source: Any) -> None:
    agent.add("fd00::5", 48861, APP)
    assert make_source().lookup(Peer("fd00::5"), 2.0).status is LookupStatus.FOUND


def test_unknown_address_is_unknown(agent: FakeAgent, make_source: Any) -> None:
    result = make_source().lookup(Peer("10.9.9.9"), 2.0)
    assert result.status is LookupStatus.UNKNOWN
    assert agent.requests("/v1/ip") == 1


def test_covering_prefix_is_not_a_match(agent: FakeAgent, make_source: Any) -> None:
    """A world/CIDR entry covering the address is not its endpoint entry."""
    agent.state.ip_entries.append({"cidr": "10.0.0.0/8", "identity": 16777217})
    assert make_source().lookup(Peer("10.1.2.3"), 2.0).status is LookupStatus.UNKNOWN


def test_identity_without_labels_on_the_agent_is_unknown(
    agent: FakeAgent, make_source: Any
) -> None:
    agent.state.ip_entries.append({"cidr": "10.0.1.9/32", "identity": 50000})
    assert make_source().lookup(Peer("10.0.1.9"), 2.0).status is LookupStatus.UNKNOWN


def test_two_identities_for_one_address_are_ambiguous(agent: FakeAgent, make_source: Any) -> None:
    agent.add("10.0.1.5", 1000, APP).add("10.0.1.5", 2000, APP)
    assert make_source().lookup(Peer("10.0.1.5"), 2.0).status is LookupStatus.AMBIGUOUS


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("fail", "500"),
        ("garbage", "non-JSON"),
        ("forbidden", "administratively disabled"),
        ("rate_limited", "rate limited"),
        ("storage", "520"),
        ("stall", "timed out"),
    ],
)
def test_failures_are_unavailable(
    agent: FakeAgent, make_source: Any, mode: str, words: str
) -> None:
    agent.add("10.0.1.200", 48861, APP)
    agent.set_mode(mode)
    result = make_source().lookup(Peer("10.0.1.200"), 0.3)
    assert result.status is LookupStatus.UNAVAILABLE
    assert words in result.detail


def test_keep_alive_reuses_one_connection(agent: FakeAgent, make_source: Any) -> None:
    agent.add("10.0.1.200", 48861, APP)
    source = make_source(identity_cache_ttl=0)
    for _ in range(5):
        assert source.lookup(Peer("10.0.1.200"), 2.0).status is LookupStatus.FOUND
    assert agent.requests("/v1/ip") == 5
    assert agent.requests("/v1/identity/48861") == 5
    assert agent.state.connections == 1
    assert source.connections_opened == 1


def test_identity_labels_are_cached_per_id(agent: FakeAgent, make_source: Any) -> None:
    agent.add("10.0.1.200", 48861, APP).add("10.0.1.201", 48861, APP)
    source = make_source()
    assert source.lookup(Peer("10.0.1.200"), 2.0).status is LookupStatus.FOUND
    assert source.lookup(Peer("10.0.1.201"), 2.0).status is LookupStatus.FOUND
    assert agent.requests("/v1/identity/48861") == 1


def test_agent_restart_recovers_without_a_new_source(agent: FakeAgent, make_source: Any) -> None:
    agent.add("10.0.1.200", 48861, APP)
    source = make_source()
    assert source.lookup(Peer("10.0.1.200"), 2.0).status is LookupStatus.FOUND
    agent.stop()
    assert source.lookup(Peer("10.0.1.200"), 0.5).status is LookupStatus.UNAVAILABLE
    agent.start()
    assert source.lookup(Peer("10.0.1.200"), 2.0).status is LookupStatus.FOUND


def test_stale_keep_alive_connection_is_redialled(agent: FakeAgent, make_source: Any) -> None:
    """The agent closed an idle connection: the next call retries once on a new one."""
    agent.add("10.0.1.200", 48861, APP)
    source = make_source(identity_cache_ttl=0)
    assert source.lookup(Peer("10.0.1.200"), 2.0).status is LookupStatus.FOUND
    agent.drop_connections()
    assert source.lookup(Peer("10.0.1.200"), 2.0).status is LookupStatus.FOUND
    assert source.connections_opened == 2


def test_closed_source_is_unavailable(agent: FakeAgent, make_source: Any) -> None:
    source = make_source()
    source.close()
    assert source.lookup(Peer("10.0.1.200"), 1.0).status is LookupStatus.UNAVAILABLE


def test_settings_defaults() -> None:
    settings = parse_settings({})
    assert settings.socket_path == "/var/run/cilium/cilium.sock"
    assert settings.max_idle_connections == 4
    assert settings == parse_settings({"socket_path": None, "identity_cache_ttl": None})
