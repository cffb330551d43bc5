"""Reading the exporter: a live scrape over HTTP, and the names a registry exports."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from kong_cilium_identity.ops.metrics import PREFIX

# The series names Prometheus stores for each family type (OpenMetrics suffixes).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fetch(port: int, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
                return str(reply.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def parse(text: str) -> tuple[set[str], Samples]:
    """(our family names, samples keyed by series name and label set)."""
    families: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(PREFIX):
            continue
        families.add(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def family_names(registry: CollectorRegistry) -> set[str]:
    """Our family names as a live registry reports them."""
    return {family.name for family in registry.collect() if family.name.startswith(PREFIX)}


def series_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a PromQL query may use for our families, from a live registry
    (families with no sample yet included: their names follow from their type)."""
    names: set[str] = set()
    for family in registry.collect():
        if not family.name.startswith(PREFIX):
            continue
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def names_in(texts: Iterable[str]) -> set[str]:
    """Metric names (our prefix) that appear in PromQL expressions."""
    pattern = re.compile(rf"\b{PREFIX}[a-zA-Z0-9_]+")
    return {match for text in texts for match in pattern.findall(text)}
