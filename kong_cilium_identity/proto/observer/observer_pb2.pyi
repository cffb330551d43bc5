import datetime

from kong_cilium_identity.proto.flow import flow_pb2 as _flow_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from kong_cilium_identity.proto.relay import relay_pb2 as _relay_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union
from kong_cilium_identity.proto.flow.flow_pb2 import Flow as Flow
from kong_cilium_identity.proto.flow.flow_pb2 import CiliumEventType as CiliumEventType
from kong_cilium_identity.proto.flow.flow_pb2 import EventTypeFilter as EventTypeFilter
from kong_cilium_identity.proto.flow.flow_pb2 import Endpoint as Endpoint
from kong_cilium_identity.proto.flow.flow_pb2 import Workload as Workload
from kong_cilium_identity.proto.flow.flow_pb2 import IP as IP
from kong_cilium_identity.proto.flow.flow_pb2 import Layer4 as Layer4
from kong_cilium_identity.proto.flow.flow_pb2 import TCP as TCP
from kong_cilium_identity.proto.flow.flow_pb2 import TCPFlags as TCPFlags
from kong_cilium_identity.proto.flow.flow_pb2 import UDP as UDP
from kong_cilium_identity.proto.flow.flow_pb2 import SCTP as SCTP
from kong_cilium_identity.proto.flow.flow_pb2 import ICMPv4 as ICMPv4
from kong_cilium_identity.proto.flow.flow_pb2 import ICMPv6 as ICMPv6
from kong_cilium_identity.proto.flow.flow_pb2 import FlowFilter as FlowFilter
from kong_cilium_identity.proto.flow.flow_pb2 import LostEvent as LostEvent
from kong_cilium_identity.proto.flow.flow_pb2 import TraceObservationPoint as TraceObservationPoint
from kong_cilium_identity.proto.flow.flow_pb2 import Verdict as Verdict
from kong_cilium_identity.proto.flow.flow_pb2 import FlowType as FlowType
from kong_cilium_identity.proto.flow.flow_pb2 import TrafficDirection as TrafficDirection
from kong_cilium_identity.proto.flow.flow_pb2 import IPVersion as IPVersion
from kong_cilium_identity.proto.flow.flow_pb2 import LostEventSource as LostEventSource

DESCRIPTOR: _descriptor.FileDescriptor
UNKNOWN_POINT: _flow_pb2.TraceObservationPoint
TO_PROXY: _flow_pb2.TraceObservationPoint
TO_HOST: _flow_pb2.TraceObservationPoint
TO_STACK: _flow_pb2.TraceObservationPoint
TO_OVERLAY: _flow_pb2.TraceObservationPoint
TO_ENDPOINT: _flow_pb2.TraceObservationPoint
FROM_ENDPOINT: _flow_pb2.TraceObservationPoint
FROM_PROXY: _flow_pb2.TraceObservationPoint
FROM_HOST: _flow_pb2.TraceObservationPoint
FROM_STACK: _flow_pb2.TraceObservationPoint
FROM_OVERLAY: _flow_pb2.TraceObservationPoint
FROM_NETWORK: _flow_pb2.TraceObservationPoint
TO_NETWORK: _flow_pb2.TraceObservationPoint
FROM_CRYPTO: _flow_pb2.TraceObservationPoint
TO_CRYPTO: _flow_pb2.TraceObservationPoint
VERDICT_UNKNOWN: _flow_pb2.Verdict
FORWARDED: _flow_pb2.Verdict
DROPPED: _flow_pb2.Verdict
ERROR: _flow_pb2.Verdict
AUDIT: _flow_pb2.Verdict
REDIRECTED: _flow_pb2.Verdict
TRACED: _flow_pb2.Verdict
TRANSLATED: _flow_pb2.Verdict
UNKNOWN_TYPE: _flow_pb2.FlowType
L3_L4: _flow_pb2.FlowType
L7: _flow_pb2.FlowType
SOCK: _flow_pb2.FlowType
TRAFFIC_DIRECTION_UNKNOWN: _flow_pb2.TrafficDirection
INGRESS: _flow_pb2.TrafficDirection
EGRESS: _flow_pb2.TrafficDirection
IP_NOT_USED: _flow_pb2.IPVersion
IPv4: _flow_pb2.IPVersion
IPv6: _flow_pb2.IPVersion
UNKNOWN_LOST_EVENT_SOURCE: _flow_pb2.LostEventSource
PERF_EVENT_RING_BUFFER: _flow_pb2.LostEventSource
OBSERVER_EVENTS_QUEUE: _flow_pb2.LostEventSource
HUBBLE_RING_BUFFER: _flow_pb2.LostEventSource

class GetFlowsRequest(_message.Message):
    __slots__ = ("number", "follow", "blacklist", "whitelist", "since", "until", "first")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    BLACKLIST_FIELD_NUMBER: _ClassVar[int]
    WHITELIST_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    number: int
    follow: bool
    blacklist: _containers.RepeatedCompositeFieldContainer[_flow_pb2.FlowFilter]
    whitelist: _containers.RepeatedCompositeFieldContainer[_flow_pb2.FlowFilter]
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    first: bool
    def __init__(self, number: _Optional[int] = ..., follow: _Optional[bool] = ..., blacklist: _Optional[_Iterable[_Union[_flow_pb2.FlowFilter, _Mapping]]] = ..., whitelist: _Optional[_Iterable[_Union[_flow_pb2.FlowFilter, _Mapping]]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., first: _Optional[bool] = ...) -> None: ...

class GetFlowsResponse(_message.Message):
    __slots__ = ("flow", "node_status", "lost_events", "node_name", "time")
    FLOW_FIELD_NUMBER: _ClassVar[int]
    NODE_STATUS_FIELD_NUMBER: _ClassVar[int]
    LOST_EVENTS_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    flow: _flow_pb2.Flow
    node_status: _relay_pb2.NodeStatusEvent
    lost_events: _flow_pb2.LostEvent
    node_name: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, flow: _Optional[_Union[_flow_pb2.Flow, _Mapping]] = ..., node_status: _Optional[_Union[_relay_pb2.NodeStatusEvent, _Mapping]] = ..., lost_events: _Optional[_Union[_flow_pb2.LostEvent, _Mapping]] = ..., node_name: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
