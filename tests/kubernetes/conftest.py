"""Fixtures: the real CEP capture (skipped without ../shared), a fake API server, sources."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kong_cilium_identity.identity.sources.kubernetes import (
    KubernetesSource,
    create,
    parse_settings,
)
from tests.kit.fake_kube import FakeKubeApi
from tests.kubernetes.helpers import FAST, load_real_cep


@pytest.fixture
def real_cep() -> dict[str, Any]:
    return load_real_cep()


@pytest.fixture
def fake() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as server:
        yield server


SourceFactory = Callable[..., KubernetesSource]


@pytest.fixture
def make_source(fake: FakeKubeApi) -> Iterator[SourceFactory]:
    made: list[KubernetesSource] = []

    def make(**overrides: Any) -> KubernetesSource:
        record: dict[str, Any] = {"api_url": fake.url, **FAST, **overrides}
        source = create(parse_settings(record))
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()
