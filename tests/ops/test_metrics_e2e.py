"""Scripted requests through the real plugin server; its /metrics shows every family with
the values those requests must produce."""

from __future__ import annotations

import platform
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from kong_cilium_identity import __version__
from tests.e2e.conftest import running_server
from tests.kit.fake_agent import FakeAgent
from tests.kit.fake_issuer import FakeIssuer
from tests.kit.kong import KongHarness, KongRequest, Outcome
from tests.ops import instrumented_server as faults
from tests.ops.scrape import Samples, family_names, fetch, free_port, parse, value
from tests.scenario import (
    CHECKOUT,
    CHECKOUT_APP_ENTRY,
    CHECKOUT_BINDING,
    CHECKOUT_IP,
    CREDENTIAL,
    PAYMENTS_ENTRY,
    PAYMENTS_IP,
)

BINDINGS = [CHECKOUT_BINDING]
CACHE = {"ttl": 300, "negative_ttl": 300}
STATIC = {"entries": [CHECKOUT_APP_ENTRY, PAYMENTS_ENTRY]}
DEADLINE = 1.0


def agent_config(socket_path: str, **extra: Any) -> dict[str, Any]:
    return {
        "sources": ["agent"],
        "agent": {"socket_path": socket_path},
        "cache": CACHE,
        "bindings": BINDINGS,
        **extra,
    }


def static_config(**extra: Any) -> dict[str, Any]:
    return {"sources": ["static"], "static": STATIC, "bindings": BINDINGS, **extra}


def token_config(jwks_uri: str, issuer: str) -> dict[str, Any]:
    # the key fetch must fit the short event deadline, or the plugin refuses the config
    token = {
        "enabled": True,
        "issuer": issuer,
        "audiences": ["kong"],
        "jwks_uri": jwks_uri,
        "fetch_timeout": 0.5,
    }
    return static_config(token=token)


def send(kong: KongHarness, config: dict[str, Any], client_ip: str) -> Outcome:
    request = KongRequest(client_ip=client_ip, consumer=CHECKOUT, credential=CREDENTIAL)
    return kong.request(kong.add_plugin(config), request)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kci-") as folder:
        yield Path(folder)


class Run:
    """What the scripted run saw: the final scrape, and one taken mid-request."""

    def __init__(self, samples: Samples, families: set[str], in_flight_peak: float) -> None:
        self.samples = samples
        self.families = families
        self.in_flight_peak = in_flight_peak
        self.finished_at = time.time()


@pytest.fixture(scope="module")
def run(scratch: Path) -> Iterator[Run]:
    port = free_port()
    agent = FakeAgent(scratch / "cilium.sock").start()
    agent.add(CHECKOUT_IP, 48861, ["k8s:app=checkout"], namespace="shop")
    dead_agent = str(scratch / "no-agent.sock")
    issuer = FakeIssuer(audience="kong")
    dead_jwks = f"http://127.0.0.1:{free_port()}/jwks"
    try:
        with running_server(
            "--metrics-port",
            str(port),
            "--event-deadline",
            str(DEADLINE),
            script=Path(faults.__file__),
        ) as kong:
            live = agent_config(str(agent.socket_path))
            for _ in range(3):  # one miss, then two cache hits
                assert send(kong, live, CHECKOUT_IP).proxied
            assert send(kong, live, PAYMENTS_IP).status == 403  # agent: unknown
            assert send(kong, static_config(mode="monitor"), PAYMENTS_IP).proxied
            for _ in range(2):  # the agent fails twice in a row: down
                assert send(kong, agent_config(dead_agent), CHECKOUT_IP).status == 503
            assert send(kong, static_config(), faults.FAULTY_ADDRESS).status == 500
            exploding = static_config(header_prefix=faults.EXPLODING_PREFIX)
            assert send(kong, exploding, CHECKOUT_IP).status == 500
            send(kong, token_config(issuer.jwks_uri, issuer.issuer), CHECKOUT_IP)
            send(kong, token_config(dead_jwks, issuer.issuer), CHECKOUT_IP)
            peak = _slow_request_peak(kong, port)
            families, samples = parse(fetch(port))
            yield Run(samples, families, peak)
    finally:
        issuer.close()
        agent.stop()


def _slow_request_peak(kong: KongHarness, port: int) -> float:
    """Send a request that outlives the event deadline; the most in-flight events seen."""
    outcome: list[Outcome] = []
    slow = threading.Thread(
        target=lambda: outcome.append(send(kong, static_config(), faults.SLOW_ADDRESS))
    )
    slow.start()
    peak = 0.0
    while slow.is_alive():
        _, samples = parse(fetch(port))
        peak = max(peak, value(samples, "cilium_identity_server_inflight_events") or 0.0)
        time.sleep(0.05)
    slow.join()
    assert outcome and outcome[0].status == 500 and not outcome[0].proxied
    return peak


def decisions(run: Run, reason: str, mode: str = "enforce") -> float | None:
    enforced = "true" if mode == "enforce" and reason != "allowed" else "false"
    return value(
        run.samples,
        "cilium_identity_decisions_total",
        reason=reason,
        mode=mode,
        enforced=enforced,
    )


def test_every_family_is_exposed(run: Run) -> None:
    expected = family_names(REGISTRY)
    assert len(expected) >= 21
    assert expected <= run.families, expected - run.families


def test_decisions(run: Run) -> None:
    assert decisions(run, "allowed") == 3
    assert decisions(run, "identity_unknown") == 1
    assert decisions(run, "identity_mismatch", "monitor") == 1
    assert decisions(run, "source_unavailable") == 2
    assert decisions(run, "internal_error") == 1
    assert decisions(run, "claim_mismatch") == 0  # initialised: rate() sees the first one


def test_lookup_latency_and_cache(run: Run) -> None:
    count = "cilium_identity_lookup_duration_seconds_count"
    assert value(run.samples, count, source="agent", outcome="found") == 3
    assert value(run.samples, count, source="agent", outcome="unknown") == 1
    assert value(run.samples, count, source="agent", outcome="unavailable") == 2
    assert value(run.samples, count, source="static", outcome="found") == 1
    within = value(
        run.samples,
        "cilium_identity_lookup_duration_seconds_bucket",
        source="agent",
        outcome="found",
        le="2.5",
    )
    assert within == 3
    assert value(run.samples, "cilium_identity_cache_hits_total", source="agent") == 2
    assert value(run.samples, "cilium_identity_cache_misses_total", source="agent") == 4
    # the checkout answer and the negative answer for payments; failures are never kept
    assert value(run.samples, "cilium_identity_cache_entries", source="agent") == 2


def test_source_health(run: Run) -> None:
    samples = run.samples
    assert value(samples, "cilium_identity_source_synced", source="agent") == 1
    assert value(samples, "cilium_identity_source_up", source="agent") == 0
    assert value(samples, "cilium_identity_source_consecutive_failures", source="agent") == 2
    last = value(samples, "cilium_identity_source_last_success_timestamp_seconds", source="agent")
    assert last is not None and run.finished_at - 120 < last <= run.finished_at
    assert value(samples, "cilium_identity_source_up", source="static") == 1
    assert value(samples, "cilium_identity_source_consecutive_failures", source="static") == 0


def test_server_families(run: Run) -> None:
    samples = run.samples
    assert value(samples, "cilium_identity_plugin_exceptions_total", stage="access") == 1
    assert value(samples, "cilium_identity_plugin_exceptions_total", stage="phase") == 1
    assert value(samples, "cilium_identity_plugin_exceptions_total", stage="apply") == 0
    assert value(samples, "cilium_identity_event_deadline_hits_total", phase="access") == 1
    assert value(samples, "cilium_identity_event_deadline_hits_total", phase="instance") == 0
    assert run.in_flight_peak >= 1
    assert value(samples, "cilium_identity_server_inflight_events") == 0
    connections = value(samples, "cilium_identity_server_connections")
    assert connections is not None and connections >= 1
    build = value(
        samples,
        "cilium_identity_build_info",
        version=__version__,
        python=platform.python_version(),
    )
    assert build == 1


def test_jwks_and_streams(run: Run) -> None:
    samples = run.samples
    assert value(samples, "cilium_identity_jwks_refreshes_total") == 1
    failures = value(samples, "cilium_identity_jwks_refresh_failures_total")
    assert failures is not None and failures >= 1
    # no Hubble source in this run: the family is there, with nothing connected
    assert value(samples, "cilium_identity_hubble_follow_streams", state="connected") == 0
    assert value(samples, "cilium_identity_hubble_follow_restarts_total") == 0
