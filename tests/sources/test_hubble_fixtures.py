"""Every real Hubble capture parses and its source endpoint maps to the right identity.

The captures are read from ``../shared/fixtures/real/hubble`` beside the repository; without
them these tests are skipped with that reason.

Expected values come from the JSON with plain ``json`` and Cilium's rules written out here
(namespace from the endpoint or the namespace label; pod-level fields only for pod ids),
not from the mapper under test.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format

from kong_cilium_identity.identity.model import LookupStatus, Peer
from kong_cilium_identity.identity.sources.hubble_flows import (
    identity_from_endpoint,
    read_lookup_stream,
    seconds,
)
from kong_cilium_identity.proto.observer import observer_pb2
from tests.kit.fake_relay import load_jsonl
from tests.shared_captures import absent

from .conftest import FIXTURES, HUBBLE_FIXTURES, need_fixture, need_hubble_fixtures

NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace="


def _lines() -> list[tuple[str, int, str]]:
    cases = []
    for path in HUBBLE_FIXTURES:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                cases.append((path.name, number, line))
    return cases


CASES = _lines() or [("absent", 0, "")]  # absent: the test skips naming the path


def _is_pod_id(identity: int) -> bool:
    return 256 <= identity < (1 << 24) or 100 <= identity <= 115


def _expected(endpoint: dict[str, Any]) -> dict[str, Any]:
    identity = int(endpoint.get("identity", 0))
    labels = sorted(endpoint.get("labels", []))
    from_label = next(
        (label[len(NAMESPACE_LABEL) :] for label in labels if label.startswith(NAMESPACE_LABEL)),
        None,
    )
    pod_id = _is_pod_id(identity)
    return {
        "id": identity,
        "labels": labels,
        "namespace": (endpoint.get("namespace") or from_label) if pod_id else from_label,
        "pod": endpoint.get("pod_name") if pod_id else None,
    }


def test_all_fixture_files_are_covered() -> None:
    assert len(need_hubble_fixtures()) == 3
    assert len(_lines()) == 33


@pytest.mark.parametrize(
    ("file", "line_number", "line"),
    [pytest.param(*c, id=f"{c[0]}:{c[1]}") for c in CASES] or [absent("hubble", 3)],
)
def test_source_endpoint_maps_to_identity(file: str, line_number: int, line: str) -> None:
    if not line:
        need_hubble_fixtures()
    raw = json.loads(line)
    response = json_format.Parse(line, observer_pb2.GetFlowsResponse(), ignore_unknown_fields=True)
    assert response.WhichOneof("response_types") == "flow"
    flow = response.flow
    assert flow.IP.source == raw["flow"]["IP"]["source"]
    expected = _expected(raw["flow"]["source"])
    identity = identity_from_endpoint(flow.source, seconds(flow.time))
    assert identity is not None
    assert identity.id == expected["id"]
    assert identity.label_strings() == expected["labels"]
    assert identity.namespace == expected["namespace"]
    assert identity.pod == expected["pod"]
    assert identity.source == "hubble"


# What a lookup of each source address of the real captures must answer, worked out by
# hand from the JSON: (status, identity id when found).
EXPECTED_LOOKUPS: dict[str, dict[str, tuple[LookupStatus, int | None]]] = {
    "hubble-otel-basic-sample-10-flows.json": {
        "10.0.2.16": (LookupStatus.FOUND, 25339),  # reviews, local endpoint (ID 1231)
        "10.0.2.1": (LookupStatus.FOUND, 1),  # reserved:host
        "10.0.1.4": (LookupStatus.FOUND, 35369),  # remote prometheus: pod name, no ID
        "10.0.2.14": (LookupStatus.FOUND, 1518),
        "10.0.0.53": (LookupStatus.FOUND, 59286),
        "35.246.31.234": (LookupStatus.FOUND, 2),  # reserved:world
        "10.0.2.13": (LookupStatus.FOUND, 1299),
        "10.0.2.12": (LookupStatus.FOUND, 36522),
    },
    "hubble-otel-basic-sample-400-icmpv4-flows.json": {
        # the router address as host (TO_ENDPOINT) and remote-node (TO_OVERLAY): both
        # node identities, no pod identity: the newest answers (remote-node), denied
        "10.244.0.148": (LookupStatus.FOUND, 6),
        "10.244.0.160": (LookupStatus.FOUND, 4),  # reserved:health, incl. its L3/L4 replies
        "10.244.1.29": (LookupStatus.FOUND, 6),
    },
    "hubble-otel-basic-sample-5-http-flows.json": {
        "10.156.2.7": (LookupStatus.FOUND, 16781),  # L7 requests (is_reply false) count
        "10.156.1.2": (LookupStatus.UNKNOWN, None),  # only an L7 reply tagged world
        "10.156.0.2": (LookupStatus.UNKNOWN, None),
    },
}


def test_expectations_cover_every_source_address() -> None:
    for path in need_hubble_fixtures():
        raws = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        assert {raw["flow"]["IP"]["source"] for raw in raws} == set(EXPECTED_LOOKUPS[path.name])


@pytest.mark.parametrize(
    ("name", "address"),
    [(name, address) for name, table in EXPECTED_LOOKUPS.items() for address in table],
)
def test_lookup_over_a_real_capture(name: str, address: str) -> None:
    path = need_fixture(FIXTURES / "hubble" / name)
    responses = load_jsonl(path)
    assert len(responses) == len([line for line in path.read_text().splitlines() if line])
    result = read_lookup_stream(responses, Peer(address), False, max_flow_age=0)
    status, identity_id = EXPECTED_LOOKUPS[name][address]
    assert result.status is status, result
    if identity_id is not None:
        assert result.identity is not None and result.identity.id == identity_id


def test_world_identity_with_a_pod_name_keeps_the_datapath_id() -> None:
    """The caveat vector: node-local-dns flows say pod/namespace while identity is world."""
    path = need_fixture(FIXTURES / "hubble" / "hubble-otel-basic-sample-5-http-flows.json")
    world = [
        raw["flow"]["source"]
        for raw in map(json.loads, path.read_text().splitlines())
        if raw["flow"]["source"].get("identity") == 2 and raw["flow"]["source"].get("pod_name")
    ]
    assert world, "the capture should hold the caveat"
    response = observer_pb2.GetFlowsResponse()
    json_format.ParseDict({"flow": {"source": world[0]}}, response, ignore_unknown_fields=True)
    identity = identity_from_endpoint(response.flow.source, 0.0)
    assert identity is not None
    assert (identity.id, identity.pod, identity.namespace) == (2, None, None)
