"""The ``cilium_identity`` log entry Kong's log plugins receive: every field an operator
needs, nothing a client sent or a credential holds."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kong_cilium_identity.identity.model import Identity, Lookup, Peer
from kong_cilium_identity.identity.resolver import (
    CachedSource,
    CacheSettings,
    Resolver,
    ResolverSettings,
)
from kong_cilium_identity.kong.access import handle_access, log_entry
from kong_cilium_identity.policy.decision import Decision
from kong_cilium_identity.schema import Config, parse_config
from kong_cilium_identity.token import TokenVerifier
from tests.kit.fake_issuer import FakeIssuer
from tests.ops.companion import CompanionKong, PdkOnlyKong
from tests.scenario import (
    CHECKOUT_BINDING,
    CHECKOUT_ID,
    CHECKOUT_IP,
    PAYMENTS_ENTRY,
    PAYMENTS_IP,
    static_entry,
)

SECRET_KEY = "kA9-very-secret-api-key-4f1e"
FORGED = "forged-identity-value-77"
CLIENT_HEADER = "client-header-value-1234"
CHECKOUT = {
    "id": "0c1f0b0e-1c1a-4e44-9a39-4a0d4b5a0001",
    "username": "checkout",
    "custom_id": None,
    "tags": [],
}
CREDENTIAL = {
    "id": "7a0e1e4c-5d3b-4b1d-8f6e-000000000001",
    "key": SECRET_KEY,
    "consumer": {"id": CHECKOUT["id"]},
}
CHECKOUT_LABELS = [
    "k8s:app=checkout",
    "k8s:io.kubernetes.pod.namespace=shop",
    "k8s:io.cilium.k8s.policy.serviceaccount=checkout-sa",
    "k8s:io.cilium.k8s.policy.cluster=east",
    "k8s:secret-looking-label=do-not-log",
]
COMMON_KEYS = {"decision", "reason", "mode", "enforced", "consumer"}
IDENTITY_KEYS = {"identity", "namespace", "service_account", "cluster", "source", "cache"}


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    with FakeIssuer(audience="kong") as fake:
        yield fake


def raw_config(issuer: FakeIssuer, mode: str = "enforce") -> dict[str, Any]:
    return {
        "mode": mode,
        "sources": ["static"],
        "static": {
            "entries": [
                static_entry(CHECKOUT_IP, CHECKOUT_ID, *CHECKOUT_LABELS),
                PAYMENTS_ENTRY,
            ]
        },
        "bindings": [CHECKOUT_BINDING],
        "token": {
            "enabled": True,
            "issuer": issuer.issuer,
            "audiences": ["kong"],
            "public_keys": [issuer.public_pem("rsa1")],
        },
    }


@pytest.fixture
def token(issuer: FakeIssuer) -> str:
    return issuer.sign(issuer.claims(sub="checkout-workload"))


class Plugin:
    """One parsed configuration with its own resolver and token verifier."""

    def __init__(self, issuer: FakeIssuer, mode: str = "enforce") -> None:
        from kong_cilium_identity.identity.resolver import RESOLVERS

        self.config: Config = parse_config(raw_config(issuer, mode))
        self.resolver = RESOLVERS.acquire(self.config.resolver)
        self.verifier = TokenVerifier(self.config.token)

    def close(self) -> None:
        from kong_cilium_identity.identity.resolver import RESOLVERS

        RESOLVERS.release(self.config.resolver)
        self.verifier.close()

    def native(self, ip: str, token: str) -> tuple[Decision, CompanionKong]:
        kong = CompanionKong(consumer=CHECKOUT, ip=ip, tokens=[f"Bearer {token}"])
        decision = handle_access(kong, self.config, self.resolver, self.verifier)
        return decision, kong


@pytest.fixture
def enforce(issuer: FakeIssuer) -> Iterator[Plugin]:
    plugin = Plugin(issuer)
    yield plugin
    plugin.close()


@pytest.fixture
def monitor(issuer: FakeIssuer) -> Iterator[Plugin]:
    plugin = Plugin(issuer, "monitor")
    yield plugin
    plugin.close()


def assert_clean(entry: dict[str, Any], token: str) -> None:
    """No token (nor any of its three parts), secret, label dump or header value."""
    text = json.dumps(entry)
    for needle in (token, *token.split("."), SECRET_KEY, FORGED, CLIENT_HEADER, "do-not-log"):
        assert needle not in text
    assert "labels" not in entry and "detail" not in entry


def test_allowed_entry(enforce: Plugin, token: str) -> None:
    decision, kong = enforce.native(CHECKOUT_IP, token)
    assert decision.allowed
    entry = kong.entry
    assert set(entry) == COMMON_KEYS | IDENTITY_KEYS
    assert entry["decision"] == "allow"
    assert entry["reason"] == "allowed"
    assert entry["mode"] == "enforce"
    assert entry["enforced"] is True
    assert entry["consumer"] == "checkout"
    assert entry["identity"] == 48861
    assert entry["namespace"] == "shop"
    assert entry["service_account"] == "checkout-sa"
    assert entry["cluster"] == "east"
    assert entry["source"] == "static"
    assert entry["cache"] == "none"  # an in-memory index has no cache in front of it
    assert "age" not in entry  # a static entry is configured, not observed: it has no age
    assert_clean(entry, token)


def test_denied_entry(enforce: Plugin, token: str) -> None:
    decision, kong = enforce.native(PAYMENTS_IP, token)
    assert not decision.allowed
    entry = kong.entry
    assert kong.applied[0]["allow"] is False
    assert entry["decision"] == "deny"
    assert entry["reason"] == "identity_mismatch"
    assert entry["enforced"] is True
    assert entry["identity"] == 51022
    assert entry["source"] == "static"
    assert "namespace" not in entry  # the payments identity has no namespace label
    assert_clean(entry, token)


def test_monitor_entry_says_would_deny(monitor: Plugin, token: str) -> None:
    decision, kong = monitor.native(PAYMENTS_IP, token)
    assert not decision.allowed
    assert kong.applied[0]["allow"] is True  # monitor mode lets it through
    entry = kong.entry
    assert entry["decision"] == "would_deny"
    assert entry["reason"] == "identity_mismatch"
    assert entry["mode"] == "monitor"
    assert entry["enforced"] is False
    assert_clean(entry, token)


def test_unknown_address_names_the_source_that_answered(enforce: Plugin, token: str) -> None:
    _, kong = enforce.native("10.9.9.9", token)
    entry = kong.entry
    assert entry["reason"] == "identity_unknown"
    assert entry["source"] == "static"
    assert entry["cache"] == "none"
    assert "identity" not in entry and "age" not in entry
    assert_clean(entry, token)


def test_invalid_token_entry_has_no_lookup(enforce: Plugin, token: str) -> None:
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    _, kong = enforce.native(CHECKOUT_IP, tampered)
    entry = kong.entry
    assert entry["reason"] == "invalid_token"
    assert set(entry) == COMMON_KEYS - {"consumer"}  # the token check failed first
    assert_clean(entry, tampered)


def test_pdk_only_path_never_logs_the_credential(
    enforce: Plugin, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the companion the plugin reads the credential row (secret key included) and
    every header: neither reaches the entry nor the decision log line."""
    kong = PdkOnlyKong(
        consumer=CHECKOUT,
        credential=CREDENTIAL,
        ip=PAYMENTS_IP,
        headers={
            "authorization": f"Bearer {token}",
            "x-cilium-identity": FORGED,
            "x-request-note": CLIENT_HEADER,
        },
    )
    with caplog.at_level(logging.INFO, logger="kong_cilium_identity.decision"):
        decision = handle_access(kong, enforce.config, enforce.resolver, enforce.verifier)
    assert decision.reason == "identity_mismatch" and kong.errors
    entry = log_entry(enforce.config, decision)
    assert entry["consumer"] == "checkout" and entry["identity"] == 51022
    assert_clean(entry, token)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "identity_mismatch" in logged
    for needle in (token, SECRET_KEY, FORGED, CLIENT_HEADER):
        assert needle not in logged


class RemoteSource:
    """A cacheable source (like the agent or Hubble) that knows one address."""

    name = "agent"
    cacheable = True

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.calls = 0

    def lookup(self, peer: Peer, timeout: float) -> Lookup:
        self.calls += 1
        return Lookup.found(self.identity)

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


def test_cache_hit_and_miss_and_age(issuer: FakeIssuer, token: str) -> None:
    observed = time.time() - 2.0
    identity = Identity.build(48861, CHECKOUT_LABELS, source="agent", observed_at=observed)
    remote = RemoteSource(identity)
    settings = ResolverSettings((), timeout=1.0)
    resolver = Resolver([CachedSource(remote, CacheSettings(ttl=60))], settings)
    config = parse_config(raw_config(issuer))
    verifier = TokenVerifier(config.token)
    try:
        entries = []
        for _ in range(2):
            kong = CompanionKong(consumer=CHECKOUT, ip=CHECKOUT_IP, tokens=[f"Bearer {token}"])
            handle_access(kong, config, resolver, verifier)
            entries.append(kong.entry)
    finally:
        verifier.close()
    assert remote.calls == 1
    assert [e["cache"] for e in entries] == ["miss", "hit"]
    assert all(e["source"] == "agent" and e["decision"] == "allow" for e in entries)
    assert all(2.0 <= e["age"] < 60 for e in entries)
