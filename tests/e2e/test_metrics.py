"""Decisions are counted by reason code and exposed for Prometheus."""

from __future__ import annotations

import socket
import time
import urllib.request

from tests.e2e.conftest import running_server
from tests.e2e.test_plugin import CHECKOUT, CHECKOUT_IP, CONFIG, CREDENTIAL, PAYMENTS_IP
from tests.kit.kong import KongRequest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    deadline = time.monotonic() + 5
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
                text = reply.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    samples = {}
    for line in text.splitlines():
        if line.startswith("cilium_identity_decisions_total{"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_decisions_are_counted_by_reason() -> None:
    port = free_port()
    with running_server("--metrics-port", str(port)) as kong:
        plugin = kong.add_plugin(CONFIG)
        for client_ip in (CHECKOUT_IP, CHECKOUT_IP, PAYMENTS_IP):
            kong.request(
                plugin, KongRequest(client_ip=client_ip, consumer=CHECKOUT, credential=CREDENTIAL)
            )
        samples = scrape(port)
    allowed = 'cilium_identity_decisions_total{enforced="false",mode="enforce",reason="allowed"}'
    denied = (
        'cilium_identity_decisions_total{enforced="true",mode="enforce",reason="identity_mismatch"}'
    )
    assert samples[allowed] == 2
    assert samples[denied] == 1
