"""Shared fixtures: the real CEP fixture, a fake API server, sources wired to it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kong_cilium_identity.identity.sources.kubernetes import (
    KubernetesSource,
    create,
    parse_settings,
)
from kong_cilium_identity.testing.fake_kube import FakeKubeApi
from tests.kubernetes.helpers import FAST

REPO_ROOT = Path(__file__).resolve().parents[2]


def real_fixtures() -> Path:
    """``../shared/fixtures/real`` beside the repository (as CI clones it), else /work."""
    beside = REPO_ROOT.parent / "shared" / "fixtures" / "real"
    return beside if beside.is_dir() else Path("/work/shared/fixtures/real")


@pytest.fixture
def real_cep() -> dict[str, Any]:
    path = real_fixtures() / "k8s-crd" / "ciliumendpoint-v1.15.0-rc.1-wcni-kind.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


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
