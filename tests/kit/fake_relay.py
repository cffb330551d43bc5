"""A fake Hubble Relay: ``observer.Observer/GetFlows`` on 127.0.0.1 with the real wire format.

Serves flows loaded from ``hubble observe -o json`` lines (or built in code), the way Relay
does: a ``node_status`` first, then the last (or ``first``) ``number`` flows *per node*
merged in time order, ``since``/``until`` windows, whitelist/blacklist (OR across filters,
AND within one), and a live tail for ``follow``. It counts requests and can be told to
fail (UNAVAILABLE), stall past the caller's deadline, answer with garbage bytes or report
lost events and unavailable nodes. Plaintext, TLS or mTLS.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from kong_cilium_identity.identity.sources.hubble_flows import ports, seconds
from kong_cilium_identity.identity.sources.hubble_json import read_line
from kong_cilium_identity.proto.flow import flow_pb2
from kong_cilium_identity.proto.observer import observer_pb2
from kong_cilium_identity.proto.relay import relay_pb2

MODES = ("ok", "fail", "stall", "garbage")
GARBAGE = b"\xff\xff\xff\xff\x0f not a protobuf"


def load_jsonl(path: Path) -> list[observer_pb2.GetFlowsResponse]:
    """Read ``hubble observe -o json`` output (one GetFlowsResponse per line) strictly:
    lines with a wrongly typed field are left out (``hubble_json``)."""
    responses = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            response = read_line(line)
            if response is not None:
                responses.append(response)
    return responses


@dataclass(frozen=True)
class ServerTLS:
    """PEM material for the fake's server side; ``client_ca`` set means mTLS is required."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None


def _address_in(text: str, candidates: Sequence[str]) -> bool:
    if not text:
        return False
    address = ipaddress.ip_address(text)
    for candidate in candidates:
        if "/" in candidate:
            if address in ipaddress.ip_network(candidate, strict=False):
                return True
        elif address == ipaddress.ip_address(candidate):
            return True
    return False


def _pod_in(endpoint: flow_pb2.Endpoint, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        namespace, slash, prefix = pattern.rpartition("/")
        if slash and namespace and namespace != endpoint.namespace:
            continue
        if endpoint.pod_name and endpoint.pod_name.startswith(prefix):
            return True
        if not prefix and namespace == endpoint.namespace:
            return True
    return False


def _event_type_in(flow: flow_pb2.Flow, wanted: Sequence[flow_pb2.EventTypeFilter]) -> bool:
    event = flow.event_type
    return any(
        event.type == f.type and (not f.match_sub_type or event.sub_type == f.sub_type)
        for f in wanted
    )


def _reply_in(flow: flow_pb2.Flow, wanted: Sequence[bool]) -> bool:
    """Hubble's rule: a flow whose ``is_reply`` is unknown matches neither value, except
    a dropped flow, which counts as not a reply."""
    if not flow.HasField("is_reply") and flow.verdict != flow_pb2.DROPPED:
        return False
    return flow.is_reply.value in wanted


def matches(flow: flow_pb2.Flow, selected: flow_pb2.FlowFilter) -> bool:
    """One FlowFilter: every field that is set must match (values of a field are ORed)."""
    flow_ports = ports(flow)
    source_port, destination_port = (
        (str(flow_ports[0]), str(flow_ports[1])) if flow_ports else ("", "")
    )
    failed = (
        (selected.source_ip and not _address_in(flow.IP.source, selected.source_ip))
        or (
            selected.destination_ip
            and not _address_in(flow.IP.destination, selected.destination_ip)
        )
        or (selected.source_pod and not _pod_in(flow.source, selected.source_pod))
        or (selected.destination_pod and not _pod_in(flow.destination, selected.destination_pod))
        or (selected.source_port and source_port not in selected.source_port)
        or (selected.destination_port and destination_port not in selected.destination_port)
        or (selected.source_identity and flow.source.identity not in selected.source_identity)
        or (
            selected.destination_identity
            and flow.destination.identity not in selected.destination_identity
        )
        or (selected.verdict and flow.verdict not in selected.verdict)
        or (selected.event_type and not _event_type_in(flow, selected.event_type))
        or (selected.reply and not _reply_in(flow, selected.reply))
        or (selected.node_name and flow.node_name not in selected.node_name)
        or (selected.traffic_direction and flow.traffic_direction not in selected.traffic_direction)
    )
    return not failed


def wanted(flow: flow_pb2.Flow, request: observer_pb2.GetFlowsRequest) -> bool:
    if request.whitelist and not any(matches(flow, f) for f in request.whitelist):
        return False
    return not any(matches(flow, f) for f in request.blacklist)


class FakeRelay:
    def __init__(
        self,
        responses: Iterable[observer_pb2.GetFlowsResponse] = (),
        *,
        tls: ServerTLS | None = None,
        unavailable_nodes: Sequence[str] = (),
    ) -> None:
        self.tls = tls
        self.mode = "ok"
        self.delay = 0.0  # seconds to wait before answering (keeps calls in flight)
        self.lost_events = 0  # lost events reported after the history
        self.unavailable_nodes = list(unavailable_nodes)
        self.requests: list[observer_pb2.GetFlowsRequest] = []
        self._flows: list[flow_pb2.Flow] = []
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._server: Any = None
        self.port = 0
        for response in responses:
            if response.WhichOneof("response_types") == "flow":
                self._flows.append(self._with_node(response))

    @staticmethod
    def _with_node(response: observer_pb2.GetFlowsResponse) -> flow_pb2.Flow:
        flow = flow_pb2.Flow()
        flow.CopyFrom(response.flow)
        if not flow.node_name:
            flow.node_name = response.node_name or "fake-node"
        return flow

    # -- control ---------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def request_count(self) -> int:
        with self._changed:
            return len(self.requests)

    def publish(self, flow: flow_pb2.Flow) -> None:
        """Add a flow; followers receive it at once."""
        if not flow.node_name:
            flow.node_name = "fake-node"
        with self._changed:
            self._flows.append(flow)
            self._changed.notify_all()

    def report_loss(self, count: int) -> None:
        """Tell followers that ``count`` events were lost (and report it to lookups)."""
        with self._changed:
            self.lost_events = count
            self._changed.notify_all()

    def start(self, port: int = 0) -> FakeRelay:
        self._stopping.clear()
        server = grpc.server(ThreadPoolExecutor(max_workers=16, thread_name_prefix="fake-relay"))
        handler = grpc.unary_stream_rpc_method_handler(
            self._get_flows,
            request_deserializer=observer_pb2.GetFlowsRequest.FromString,
            response_serializer=self._serialize,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("observer.Observer", {"GetFlows": handler}),)
        )
        target = f"127.0.0.1:{port}"
        if self.tls is None:
            self.port = server.add_insecure_port(target)
        else:
            credentials = grpc.ssl_server_credentials(
                [(self.tls.key, self.tls.cert)],
                root_certificates=self.tls.client_ca,
                require_client_auth=self.tls.client_ca is not None,
            )
            self.port = server.add_secure_port(target, credentials)
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def __enter__(self) -> FakeRelay:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving ---------------------------------------------------------------------

    def _serialize(self, response: observer_pb2.GetFlowsResponse) -> bytes:
        if self.mode == "garbage":
            return GARBAGE
        return response.SerializeToString()

    def _get_flows(
        self, request: observer_pb2.GetFlowsRequest, context: grpc.ServicerContext
    ) -> Iterator[observer_pb2.GetFlowsResponse]:
        with self._changed:
            self.requests.append(request)
            flows = list(self._flows)
        if self.delay:
            time.sleep(self.delay)
        if self.mode == "fail":
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake relay told to fail")
        if self.mode == "stall":
            while context.is_active() and not self._stopping.is_set():
                time.sleep(0.01)
            return
        yield from self._node_status(flows)
        for flow in self._history(flows, request):
            yield self._response(flow)
        if self.lost_events:
            yield self._loss(self.lost_events)
        if request.follow:
            yield from self._tail(request, context, len(flows))

    def _node_status(
        self, flows: Sequence[flow_pb2.Flow]
    ) -> Iterator[observer_pb2.GetFlowsResponse]:
        nodes = sorted({flow.node_name for flow in flows} or {"fake-node"})
        yield observer_pb2.GetFlowsResponse(
            node_status=relay_pb2.NodeStatusEvent(
                state_change=relay_pb2.NODE_CONNECTED, node_names=nodes
            )
        )
        if self.unavailable_nodes:
            yield observer_pb2.GetFlowsResponse(
                node_status=relay_pb2.NodeStatusEvent(
                    state_change=relay_pb2.NODE_UNAVAILABLE,
                    node_names=self.unavailable_nodes,
                )
            )

    @staticmethod
    def _history(
        flows: Sequence[flow_pb2.Flow], request: observer_pb2.GetFlowsRequest
    ) -> list[flow_pb2.Flow]:
        since = seconds(request.since) if request.HasField("since") else None
        until = seconds(request.until) if request.HasField("until") else None
        per_node: dict[str, list[flow_pb2.Flow]] = {}
        for flow in sorted(flows, key=lambda f: seconds(f.time)):
            at = seconds(flow.time)
            if (since is not None and at < since) or (until is not None and at > until):
                continue
            if wanted(flow, request):
                per_node.setdefault(flow.node_name, []).append(flow)
        chosen: list[flow_pb2.Flow] = []
        for node_flows in per_node.values():
            if request.number == 0:
                chosen += node_flows
            elif request.first:
                chosen += node_flows[: request.number]
            else:
                chosen += node_flows[-request.number :]
        return sorted(chosen, key=lambda f: seconds(f.time))

    def _tail(
        self,
        request: observer_pb2.GetFlowsRequest,
        context: grpc.ServicerContext,
        seen: int,
    ) -> Iterator[observer_pb2.GetFlowsResponse]:
        lost_reported = self.lost_events
        while context.is_active() and not self._stopping.is_set():
            with self._changed:
                self._changed.wait(0.05)
                fresh = self._flows[seen:]
                seen = len(self._flows)
                loss = self.lost_events if self.lost_events != lost_reported else 0
                lost_reported = self.lost_events
            if loss:
                yield self._loss(loss)
            for flow in fresh:
                if wanted(flow, request):
                    yield self._response(flow)

    @staticmethod
    def _response(flow: flow_pb2.Flow) -> observer_pb2.GetFlowsResponse:
        return observer_pb2.GetFlowsResponse(flow=flow, node_name=flow.node_name, time=flow.time)

    @staticmethod
    def _loss(count: int) -> observer_pb2.GetFlowsResponse:
        response = observer_pb2.GetFlowsResponse(
            lost_events=flow_pb2.LostEvent(
                source=flow_pb2.HUBBLE_RING_BUFFER, num_events_lost=count
            )
        )
        response.time.GetCurrentTime()
        return response


def make_flow(
    source_ip: str,
    identity: int,
    labels: Sequence[str] = (),
    *,
    namespace: str = "",
    pod: str = "",
    endpoint_id: int | None = None,
    cluster: str = "",
    destination_ip: str = "10.0.0.100",
    source_port: int = 40000,
    destination_port: int = 8000,
    at: float | None = None,
    node: str = "fake-node",
    flow_type: int = flow_pb2.L3_L4,
    event_type: int = 4,
    is_reply: bool | None = False,
    verdict: int = flow_pb2.FORWARDED,
    point: int = flow_pb2.TO_ENDPOINT,
) -> flow_pb2.Flow:
    """A TCP ingress trace flow towards Kong (forwarded, not a reply, ``TO_ENDPOINT``).

    The source names an endpoint the way Hubble does for a Cilium-managed pod: with
    ``pod`` when given, else (for a pod identity) with a local endpoint id derived from
    the identity. Pass ``endpoint_id=0`` and no pod for a flow that names no endpoint
    (a node or SNAT address). ``is_reply=None`` leaves ``is_reply`` unknown.
    """
    if endpoint_id is None:
        endpoint_id = 0 if pod or not 256 <= identity < 1 << 24 else 1 + identity % 4000
    flow = flow_pb2.Flow(
        verdict=verdict,  # type: ignore[arg-type]
        IP=flow_pb2.IP(source=source_ip, destination=destination_ip, ipVersion=flow_pb2.IPv4),
        l4=flow_pb2.Layer4(
            TCP=flow_pb2.TCP(source_port=source_port, destination_port=destination_port)
        ),
        source=flow_pb2.Endpoint(
            ID=endpoint_id,
            identity=identity,
            labels=list(labels),
            namespace=namespace,
            pod_name=pod,
            cluster_name=cluster,
        ),
        destination=flow_pb2.Endpoint(identity=4242, namespace="kong", pod_name="kong-0"),
        Type=flow_type,  # type: ignore[arg-type]
        event_type=flow_pb2.CiliumEventType(type=event_type),
        node_name=node,
        traffic_direction=flow_pb2.INGRESS,
        trace_observation_point=point,  # type: ignore[arg-type]
    )
    if is_reply is not None:
        flow.is_reply.value = is_reply
    flow.time.FromNanoseconds(int((time.time() if at is None else at) * 1e9))
    return flow
