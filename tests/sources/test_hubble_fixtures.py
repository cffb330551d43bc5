"""Every real Hubble capture parses and its source endpoint maps to the right identity.

The captures are read from ``../shared/fixtures/real/hubble`` beside the repository; without
them these tests are skipped with that reason.

Expected values come from the JSON with plain ``json`` and Cilium's rules written out here
(namespace from the endpoint or the namespace label; pod-level fields only for pod ids),
not from the mapper under test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from kong_cilium_identity.identity.model import Peer
from kong_cilium_identity.identity.sources.hubble_flows import (
    identity_from_endpoint,
    read_lookup_stream,
    seconds,
)
from kong_cilium_identity.proto.observer import observer_pb2
from kong_cilium_identity.testing.fake_relay import load_jsonl
from tests.shared_captures import absent, real_capture, real_captures

HUBBLE_FIXTURES = real_captures("hubble", "*.json")

NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace="


def _lines() -> list[tuple[str, int, str]]:
    cases = []
    for path in HUBBLE_FIXTURES:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                cases.append((path.name, number, line))
    return cases


CASES = _lines()


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
    real_capture("hubble")
    assert len(HUBBLE_FIXTURES) == 3
    assert len(CASES) == 33


@pytest.mark.parametrize(
    ("file", "line_number", "line"),
    [pytest.param(*c, id=f"{c[0]}:{c[1]}") for c in CASES] or [absent("hubble", 3)],
)
def test_source_endpoint_maps_to_identity(file: str, line_number: int, line: str) -> None:
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


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=p.name) for p in HUBBLE_FIXTURES] or [absent("hubble")]
)
def test_lookup_over_a_capture_takes_the_newest_flow_per_address(path: Path) -> None:
    raws = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    responses = load_jsonl(path)
    newest: dict[str, dict[str, Any]] = {}
    for raw in sorted(raws, key=lambda r: r["flow"]["time"]):
        newest[raw["flow"]["IP"]["source"]] = raw["flow"]["source"]
    for address, endpoint in newest.items():
        result = read_lookup_stream(responses, Peer(address), False, max_flow_age=0)
        assert result.identity is not None, (address, result)
        assert result.identity.id == endpoint["identity"]


def test_world_identity_with_a_pod_name_keeps_the_datapath_id() -> None:
    """The caveat vector: node-local-dns flows say pod/namespace while identity is world."""
    real_capture("hubble")
    path = next(p for p in HUBBLE_FIXTURES if "5-http" in p.name)
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
