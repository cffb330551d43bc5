"""Shared pieces: a fake issuer on loopback and settings/stores pointed at it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from kong_cilium_identity.token import KeyStore, TokenSettings, parse_settings
from tests.kit.fake_issuer import FakeIssuer


def record(fake: FakeIssuer, /, **overrides: Any) -> dict[str, Any]:
    """A ``config.token`` record as Kong hands it over (defaults filled, unset = None)."""
    base: dict[str, Any] = {
        "enabled": True,
        "header": "authorization",
        "issuer": fake.issuer,
        "audiences": ["kong"],
        "jwks_uri": None,
        "discovery_url": fake.discovery_url,
        "public_keys": [],
        "algorithms": ["RS256", "ES256"],
        "leeway": 30,
        "required_claims": [],
        "refresh_interval": 300,
        "min_refetch_interval": 30,
        "fetch_timeout": 5,
        "max_keys": 32,
        "ca_file": None,
        "fetch_token_file": None,
        "consumer_claim": None,
        "consumer_by": "username",
        "service_account_token": False,
        "pod_binding": False,
    }
    return {**base, **overrides}


def settings_for(
    fake: FakeIssuer, /, min_refetch_interval: float = 3600.0, **overrides: Any
) -> TokenSettings:
    """Parsed settings; the refetch interval is set past the schema's bounds so tests
    choose between "every unknown kid refetches" (0) and "never again" (3600)."""
    settings = parse_settings(record(fake, **overrides))
    keys = dataclasses.replace(
        settings.keys, min_refetch_interval=min_refetch_interval, refresh_interval=3600.0
    )
    return dataclasses.replace(settings, keys=keys)


@pytest.fixture
def issuer() -> Iterator[FakeIssuer]:
    with FakeIssuer() as fake:
        yield fake


@pytest.fixture
def open_store() -> Iterator[Any]:
    """Opens KeyStores and closes them after the test."""
    stores: list[KeyStore] = []

    def open_(settings: TokenSettings, **options: Any) -> KeyStore:
        store = KeyStore(settings.keys, **options)
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.close()
