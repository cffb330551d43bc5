"""The key store: rotation, refetch rate limit, the JWKS endpoint going down, sharing."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from kong_cilium_identity.token import (
    KEY_STORES,
    KeyStore,
    TokenFailure,
    TokenReason,
    TokenVerifier,
    Verified,
    verify,
)
from kong_cilium_identity.token.fetch import FetchError
from kong_cilium_identity.token.keys import parse_jwks
from tests.fake_clock import SAFETY, FakeClock
from tests.kit.fake_issuer import FakeIssuer
from tests.token.conftest import settings_for

OpenStore = Callable[..., KeyStore]


def _reason(result: Verified | TokenFailure) -> TokenReason | None:
    return result.reason if isinstance(result, TokenFailure) else None


def test_unknown_kid_then_rotation_is_picked_up_by_a_refetch(
    issuer: FakeIssuer, open_store: OpenStore
) -> None:
    settings = settings_for(issuer, min_refetch_interval=0.0)
    store = open_store(settings)
    old = issuer.sign(issuer.claims(), key="rsa1")
    assert isinstance(verify(old, settings, store), Verified)
    fetched = issuer.jwks_requests

    issuer.add_key("rsa2", "rsa", publish=False)
    new = issuer.sign(issuer.claims(), key="rsa2")
    assert _reason(verify(new, settings, store)) is TokenReason.UNKNOWN_KEY
    assert issuer.jwks_requests == fetched + 1

    issuer.publish("rsa2", "ec1")  # rotation: rsa1 retired, rsa2 published
    assert isinstance(verify(new, settings, store), Verified)
    assert issuer.jwks_requests == fetched + 2
    # a known kid never refetches; the retired key is dropped at the refetch
    assert isinstance(verify(new, settings, store), Verified)
    assert issuer.jwks_requests == fetched + 2
    assert _reason(verify(old, settings, store)) is TokenReason.UNKNOWN_KEY


def test_unknown_kids_refetch_at_most_once_per_interval(
    issuer: FakeIssuer, open_store: OpenStore
) -> None:
    settings = settings_for(issuer, min_refetch_interval=3600.0)
    store = open_store(settings)
    assert isinstance(verify(issuer.sign(issuer.claims()), settings, store), Verified)
    fetched = issuer.jwks_requests
    issuer.add_key("rsa2", "rsa")  # published, but the store may not look yet
    for _ in range(5):
        result = verify(issuer.sign(issuer.claims(), key="rsa2"), settings, store)
        assert _reason(result) is TokenReason.UNKNOWN_KEY
    assert issuer.jwks_requests == fetched


def test_cached_keys_keep_verifying_while_the_jwks_endpoint_is_down(
    issuer: FakeIssuer, open_store: OpenStore
) -> None:
    settings = settings_for(issuer, min_refetch_interval=0.0)
    store = open_store(settings)
    token = issuer.sign(issuer.claims(sub="alice"))
    assert isinstance(verify(token, settings, store), Verified)

    issuer.down()
    issuer.add_key("rsa2", "rsa")
    unknown = issuer.sign(issuer.claims(), key="rsa2")
    # the refetch for the unknown kid fails: the key may exist, so 503, not 401
    failure = verify(unknown, settings, store)
    assert isinstance(failure, TokenFailure)
    assert (failure.reason, failure.status, failure.www_authenticate) == (
        TokenReason.KEYS_UNAVAILABLE,
        503,
        None,
    )
    assert "refused" in failure.description.lower() or "error" in failure.description.lower()
    # after that failed refetch the cached key still verifies
    for _ in range(3):
        assert isinstance(verify(token, settings, store), Verified)

    issuer.up()
    assert isinstance(verify(unknown, settings, store), Verified)


def test_empty_cache_with_the_endpoint_down_is_503_never_an_allow(
    issuer: FakeIssuer, open_store: OpenStore
) -> None:
    token = issuer.sign(issuer.claims(sub="alice"))
    issuer.down()
    settings = settings_for(issuer, min_refetch_interval=0.0)
    store = open_store(settings)
    for _ in range(3):
        result = verify(token, settings, store)
        assert isinstance(result, TokenFailure)
        assert (result.reason, result.status) == (TokenReason.KEYS_UNAVAILABLE, 503)
    assert not store.ready()


def test_discovery_issuer_must_match_the_configured_issuer(
    issuer: FakeIssuer, open_store: OpenStore
) -> None:
    issuer.discovery_issuer = "https://impostor.example"
    settings = settings_for(issuer)
    store = open_store(settings)
    result = verify(issuer.sign(issuer.claims()), settings, store)
    assert isinstance(result, TokenFailure)
    assert result.reason is TokenReason.KEYS_UNAVAILABLE
    assert "does not match the configured issuer" in result.description
    assert issuer.jwks_requests == 0


def test_jwks_uri_without_discovery(issuer: FakeIssuer, open_store: OpenStore) -> None:
    settings = settings_for(issuer, discovery_url=None, jwks_uri=issuer.jwks_uri)
    store = open_store(settings)
    assert isinstance(verify(issuer.sign(issuer.claims()), settings, store), Verified)
    assert (issuer.discovery_requests, issuer.jwks_requests) == (0, 1)


def test_the_cache_holds_at_most_max_keys(issuer: FakeIssuer, open_store: OpenStore) -> None:
    for index in range(3):
        issuer.add_key(f"extra{index}", "ec256")
    settings = settings_for(issuer)
    settings = dataclasses.replace(settings, keys=dataclasses.replace(settings.keys, max_keys=2))
    store = open_store(settings)
    assert isinstance(verify(issuer.sign(issuer.claims(), key="ec1"), settings, store), Verified)
    beyond = issuer.sign(issuer.claims(), key="extra0")
    assert _reason(verify(beyond, settings, store)) is TokenReason.UNKNOWN_KEY


def test_store_close_stops_its_thread(issuer: FakeIssuer) -> None:
    store = KeyStore(settings_for(issuer).keys)
    thread = store._thread
    assert thread is not None
    store.close()
    assert not thread.is_alive()


def test_verifiers_share_one_store_per_key_settings(issuer: FakeIssuer) -> None:
    settings = settings_for(issuer)
    other_audience = dataclasses.replace(settings, audiences=("other",))
    first, second = TokenVerifier(settings), TokenVerifier(other_audience)
    try:
        assert first.keys is second.keys
        assert isinstance(first.check(f"Bearer {issuer.sign(issuer.claims())}"), Verified)
    finally:
        first.close()
        first.close()  # idempotent: releases once
        assert KEY_STORES.acquire(settings.keys) is second.keys
        KEY_STORES.release(settings.keys)
        second.close()
    thread = first.keys._thread
    assert thread is not None and not thread.is_alive()


SKIPPED: list[tuple[str, dict[str, Any]]] = [
    ("symmetric", {"kty": "oct", "k": "c2VjcmV0", "kid": "hs"}),
    ("encryption key", {"use": "enc"}),
    ("no verify op", {"key_ops": ["encrypt"]}),
    ("unsupported alg", {"alg": "RSA-OAEP"}),
    ("kid not a string", {"kid": 5}),
    ("not an object", {}),
]


@pytest.mark.parametrize(("name", "change"), SKIPPED, ids=[name for name, _ in SKIPPED])
def test_jwks_parsing_skips_unusable_keys(
    issuer: FakeIssuer, name: str, change: dict[str, Any]
) -> None:
    good = issuer.keys["rsa1"].jwk()
    bad: Any = "not a key" if name == "not an object" else {**good, **change}
    keys = parse_jwks({"keys": [bad, good]}, max_keys=8)
    assert [key.kid for key in keys] == ["rsa1-kid"]


def test_jwks_parsing_refuses_private_and_small_keys(issuer: FakeIssuer) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    published_private = {**RSAAlgorithm.to_jwk(private, as_dict=True), "kid": "leak"}
    published_small = {**RSAAlgorithm.to_jwk(small, as_dict=True), "kid": "small"}
    assert parse_jwks({"keys": [published_private, published_small]}, max_keys=8) == []
    with pytest.raises(FetchError):
        parse_jwks({"no": "keys"}, max_keys=8)


HoldFetches = Callable[[], threading.Event]


@pytest.fixture
def hold_fetches(monkeypatch: pytest.MonkeyPatch) -> Iterator[HoldFetches]:
    """hold_fetches() -> gate: every JWKS fetch from then on waits until the gate is set.
    Listed after ``open_store``, it opens the gates before the stores close."""
    from kong_cilium_identity.token import keys as keys_module

    gates: list[threading.Event] = []
    real_fetch = keys_module.fetch_json

    def hold() -> threading.Event:
        gate = threading.Event()
        gates.append(gate)

        def held(uri: str, settings: Any) -> Any:
            assert gate.wait(SAFETY), "the test never let the fetch go"
            return real_fetch(uri, settings)

        monkeypatch.setattr(keys_module, "fetch_json", held)
        return gate

    yield hold
    for gate in gates:
        gate.set()


def test_concurrent_unknown_kids_share_one_refetch(
    issuer: FakeIssuer, open_store: OpenStore, hold_fetches: HoldFetches
) -> None:
    clock = FakeClock()
    settings = settings_for(issuer, min_refetch_interval=0.3)
    store = open_store(settings, clock=clock)
    assert store.keys_for("rsa1-kid", "RS256").keys
    clock.advance(0.31)  # the refetch interval passed once
    fetched = issuer.jwks_requests
    issuer.add_key("rsa2", "rsa")
    token = issuer.sign(issuer.claims(), key="rsa2")
    gate = hold_fetches()
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = [pool.submit(verify, token, settings, store) for _ in range(10)]
        clock.until_waiting(10)  # all ten wait for one refetch, held before the issuer
        gate.set()
        assert all(isinstance(result.result(SAFETY), Verified) for result in results)
    assert issuer.jwks_requests == fetched + 1


def test_a_request_waits_for_a_hanging_fetch_at_most_the_fetch_timeout(
    issuer: FakeIssuer, open_store: OpenStore, hold_fetches: HoldFetches
) -> None:
    clock = FakeClock()
    hold_fetches()  # the first fetch hangs
    settings = settings_for(issuer)
    settings = dataclasses.replace(
        settings, keys=dataclasses.replace(settings.keys, fetch_timeout=0.2)
    )
    store = open_store(settings, clock=clock)
    assert not store.ready()  # opening the store did not wait for the (hanging) fetch
    with ThreadPoolExecutor(max_workers=1) as pool:
        request = pool.submit(verify, issuer.sign(issuer.claims()), settings, store)
        clock.until_waiting(1)
        clock.advance(0.19)
        assert clock.waiting() == 1 and not request.done()
        clock.advance(0.02)
        result = request.result(SAFETY)
    assert isinstance(result, TokenFailure)
    assert (result.reason, result.status) == (TokenReason.KEYS_UNAVAILABLE, 503)
    assert "did not finish in time" in result.description


def test_an_unexpected_error_while_refreshing_keeps_the_store_alive(
    issuer: FakeIssuer, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kong_cilium_identity.token import keys as keys_module

    def broken(document: Any, max_keys: int) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(keys_module, "parse_jwks", broken)
    settings = settings_for(issuer, min_refetch_interval=0.0)
    store = open_store(settings)
    result = verify(issuer.sign(issuer.claims()), settings, store)
    assert isinstance(result, TokenFailure) and result.status == 503
    assert "RuntimeError: bug" in result.description
    monkeypatch.undo()
    assert isinstance(verify(issuer.sign(issuer.claims()), settings, store), Verified)
