"""Timeouts that fit: the budget check, and a hung source through the real server."""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest

from kong_cilium_identity import budget, hosting
from kong_cilium_identity.identity.sources import SOURCE_KINDS
from kong_cilium_identity.schema import parse_config
from tests.kit.fake_agent import FakeAgent
from tests.kit.fake_relay import FakeRelay
from tests.kit.kong import KongRequest
from tests.server.conftest import SERVERS, MakeKong

TOKEN = {
    "enabled": True,
    "issuer": "https://issuer.example",
    "audiences": ["kong"],
    "jwks_uri": "https://issuer.example/jwks",
}


def config(**raw: Any) -> Any:
    return parse_config({"agent": {}, "hubble": {}, "kubernetes": {}, **raw})


def test_defaults_fit_ours_and_stock() -> None:
    assert budget.timeout_violations(config(), 10.0) == []
    assert budget.timeout_violations(config(), None) == []
    remote = config(sources=["agent", "hubble"], token=TOKEN)  # 2 x 0.5 s + 5 s
    assert budget.worst_case(remote).total == 6.0
    assert budget.timeout_violations(remote, 10.0) == []


def test_a_lookup_timeout_at_the_deadline_is_named() -> None:
    (problem,) = budget.timeout_violations(config(sources=["agent"], lookup_timeout=10), 10.0)
    assert problem.startswith("lookup_timeout (10 s) x 1 remote source (agent; asked in turn)")
    assert "does not fit in the event deadline 10 s (serve --event-deadline)" in problem
    assert "minus a 1 s margin (9 s)" in problem


def test_remote_sources_are_asked_in_turn_local_ones_cost_nothing() -> None:
    sources = ["static", "kubernetes", "agent", "hubble"]
    fits = config(sources=sources, lookup_timeout=2.2)  # 4.4 s of 4.5 s
    assert budget.worst_case(fits).waiting_sources == ("agent", "hubble")
    assert budget.timeout_violations(fits, 5.0) == []
    (problem,) = budget.timeout_violations(config(sources=sources, lookup_timeout=2.3), 5.0)
    assert "x 2 remote sources (agent, hubble; asked in turn) = 4.6 s" in problem


def test_require_agreement_asks_in_turn_too() -> None:
    agreed = config(sources=["agent", "hubble"], lookup_timeout=2.3, require_agreement=True)
    (problem,) = budget.timeout_violations(agreed, 5.0)
    assert "(agent, hubble; asked in turn, require_agreement) = 4.6 s" in problem


def test_token_fetch_timeout_alone_and_in_sum() -> None:
    alone = config(token={**TOKEN, "fetch_timeout": 5})
    (problem,) = budget.timeout_violations(alone, 5.0)
    assert problem.startswith("token.fetch_timeout 5 s does not fit in the event deadline 5 s")
    both = config(sources=["agent", "hubble"], lookup_timeout=2.5, token=TOKEN)
    (problem,) = budget.timeout_violations(both, 10.0)
    assert "= 5 s + token.fetch_timeout 5 s = 10 s does not fit" in problem
    slow_token = {**TOKEN, "fetch_timeout": 20}
    both_too_long = config(sources=["agent"], lookup_timeout=20, token=slow_token)
    problems = budget.timeout_violations(both_too_long, 10.0)
    assert [p.split(" ", 1)[0] for p in problems] == ["lookup_timeout", "token.fetch_timeout"]


def test_keys_that_are_never_fetched_never_wait() -> None:
    pem_only = config(token={**TOKEN, "jwks_uri": None, "public_keys": [_public_pem()]})
    assert budget.worst_case(pem_only).token_wait == 0.0
    disabled = config(token={**TOKEN, "enabled": False, "fetch_timeout": 30})
    assert budget.worst_case(disabled).token_wait == 0.0


def test_without_our_server_kongs_read_timeout_is_the_limit() -> None:
    slow = config(sources=["agent", "hubble"], lookup_timeout=30)
    (problem,) = budget.timeout_violations(slow, None)
    assert "does not fit in Kong's 60 s plugin-socket read timeout minus a 6 s margin" in problem


def test_local_sources_are_exactly_the_ones_that_never_wait() -> None:
    """budget.LOCAL_SOURCES must follow the sources' own ``cacheable`` flags (a remote
    source is cached by the resolver and bounded by lookup_timeout)."""
    local = set()
    for name in SOURCE_KINDS:
        module = import_module(f"kong_cilium_identity.identity.sources.{name}")
        (cls,) = [
            c
            for _, c in inspect.getmembers(module, inspect.isclass)
            if c.__module__ == module.__name__ and hasattr(c, "cacheable")
        ]
        if not cls.cacheable:
            local.add(name)
    assert local == budget.LOCAL_SOURCES


@pytest.mark.parametrize("server", SERVERS)
def test_serve_records_its_deadline_for_the_plugin(make_kong: MakeKong, server: str) -> None:
    assert hosting.event_deadline() is None  # nothing set it in this process
    kong = make_kong(server, "deadline", deadline=7.5)
    out = kong.request(kong.add_plugin({}))
    assert out.proxied, out.kong_log
    assert out.upstream_headers["x-deadline"] == ["7.5" if server == "ours" else "None"]


# --------------------------------------------------------------------------- end to end

CONSUMER = {"id": "0c1f0b0e-1c1a-4e44-9a39-4a0d4b5a0001", "username": "checkout", "tags": []}
CREDENTIAL = {"id": "7a0e1e4c-5d3b-4b1d-8f6e-000000000001", "consumer": {"id": CONSUMER["id"]}}
REQUEST = KongRequest(client_ip="10.0.1.200", consumer=CONSUMER, credential=CREDENTIAL)
NO_CACHE = {"ttl": 0, "negative_ttl": 0, "size": 1024}


@pytest.fixture(params=["agent", "hubble"])
def hung_source(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The config record of a remote source that accepts the lookup and never answers."""
    if request.param == "hubble":
        relay = FakeRelay().start()
        relay.mode = "stall"
        try:
            yield {"sources": ["hubble"], "hubble": {"address": relay.address}}
        finally:
            relay.stop()
        return
    with tempfile.TemporaryDirectory(prefix="kci-") as scratch:
        agent = FakeAgent(Path(scratch) / "cilium.sock").start()
        agent.set_mode("stall")
        try:
            yield {"sources": ["agent"], "agent": {"socket_path": str(agent.socket_path)}}
        finally:
            agent.stop()


def plugin_config(source: dict[str, Any], lookup_timeout: float) -> dict[str, Any]:
    return {
        **source,
        "lookup_timeout": lookup_timeout,
        "cache": NO_CACHE,
        "bindings": [{"consumer": "checkout", "selectors": ["k8s:app=checkout"]}],
    }


def test_a_hung_source_with_a_fitting_config_is_503_source_unavailable(
    make_kong: MakeKong, hung_source: dict[str, Any]
) -> None:
    deadline = 3.0
    raw = plugin_config(hung_source, lookup_timeout=0.3)
    assert budget.timeout_violations(config(**raw), deadline) == []
    kong = make_kong("ours", "cilium-identity", deadline=deadline)
    plugin = kong.add_plugin(raw)
    kong.request(plugin, REQUEST)  # StartInstance (and the gRPC channel) out of the way
    out = kong.request(plugin, REQUEST)
    assert not out.proxied and not out.failed_open, out.kong_log
    assert out.status == 503 and "source_unavailable" in out.body["message"], out.body
    assert out.elapsed < deadline  # decided by lookup_timeout, long before the deadline


def test_a_config_that_cannot_fit_is_what_gives_500_at_the_deadline(
    make_kong: MakeKong, hung_source: dict[str, Any]
) -> None:
    """What the budget check prevents: the deadline answers (500) before the lookup
    times out, so the client never learns the source is unavailable."""
    deadline = 0.8
    raw = plugin_config(hung_source, lookup_timeout=1.0)
    (problem,) = budget.timeout_violations(config(**raw), deadline)
    assert problem.startswith("lookup_timeout (1 s) x 1 remote source")
    kong = make_kong("ours", "cilium-identity", deadline=deadline)
    out = kong.request(kong.add_plugin(raw), REQUEST)
    assert not out.proxied and not out.failed_open, out.kong_log
    assert out.status == 500


def _public_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
