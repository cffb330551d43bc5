"""The ``hubble`` source: the caller's identity from flows Hubble Relay has observed.

Asks ``observer.Observer/GetFlows`` for the newest flows sent from the peer address
(optionally pinned to the connection's ports) and weighs the ones that can be evidence
(see ``hubble_flows`` and ``hubble_evidence``). Hubble only knows traffic it saw, and
Relay's ring buffers are lossy, so a miss is UNKNOWN and a miss with lost events is
UNAVAILABLE.

Optionally a background ``follow`` stream of flows towards Kong's own pods pre-warms
answers so most requests never wait on Relay (``hubble_follow``).

One gRPC channel per connection settings is shared process-wide; every call carries the
caller's deadline and fails fast (no wait-for-ready) while Relay is unreachable; gRPC
reconnects in the background with backoff capped at ``reconnect_backoff_max``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from kong_cilium_identity.errors import ConfigError
from kong_cilium_identity.fields import Field, Group
from kong_cilium_identity.identity.address import parse_address
from kong_cilium_identity.identity.model import Lookup, Peer
from kong_cilium_identity.identity.sources.base import SourceKind
from kong_cilium_identity.identity.sources.hubble_flows import (
    NAME,
    follow_request,
    lookup_request,
    read_lookup_stream,
)
from kong_cilium_identity.identity.sources.hubble_follow import FlowFollower, WarmFlows
from kong_cilium_identity.pools import SharedPool
from kong_cilium_identity.proto.observer import observer_pb2_grpc

_STRINGS = {"type": "string"}

FIELDS = Group(
    NAME,
    (
        Field(
            "address",
            "string",
            "hubble-relay.kube-system.svc:80",
            len_min=1,
            doc="Relay `host:port`",
        ),
        Field("tls", "boolean", False, doc="use TLS (required for the `tls_*` fields)"),
        Field(
            "tls_ca_file",
            "string",
            doc="PEM CA bundle that signed Relay's certificate (e.g. Secret `cilium-ca`)",
        ),
        Field(
            "tls_cert_file",
            "string",
            doc="client certificate for mTLS (with `tls_key_file`: both or neither)",
        ),
        Field("tls_key_file", "string", doc="client key for mTLS (with `tls_cert_file`)"),
        Field("tls_server_name", "string", doc="name to verify instead of the address host"),
        Field(
            "flows",
            "integer",
            1,
            between=(1, 1000),
            doc="last flows *per node* per lookup",
        ),
        Field(
            "match_ports",
            "boolean",
            False,
            doc="pin lookups to the connection's ports (see above)",
        ),
        Field(
            "max_flow_age",
            "number",
            600,
            between=(0, 86400),
            doc="seconds; older flows do not count (0: no limit)",
        ),
        Field(
            "reconnect_backoff_max",
            "number",
            5,
            between=(0.1, 300),
            doc="seconds; cap of gRPC and follow-stream reconnect backoff",
        ),
        Field(
            "follow",
            "boolean",
            False,
            doc="run the follow stream (needs a destination filter)",
        ),
        Field(
            "follow_destination_pods",
            "array",
            (),
            elements=_STRINGS,
            doc="`namespace/pod-prefix` of Kong's pods, e.g. `kong/kong-`",
        ),
        Field(
            "follow_destination_ips",
            "array",
            (),
            elements=_STRINGS,
            doc="Kong pod IPs or CIDRs",
        ),
        Field(
            "follow_destination_ports",
            "array",
            (),
            elements=_STRINGS,
            doc="Kong's ports (strings)",
        ),
        Field(
            "follow_ttl",
            "number",
            30,
            between=(1, 3600),
            doc="seconds a followed flow answers lookups",
        ),
        Field(
            "follow_cache_size",
            "integer",
            65536,
            between=(1, 10000000),
            doc="addresses kept by the follow cache",
        ),
    ),
)

SCHEMA: dict[str, Any] = FIELDS.record()


@dataclass(frozen=True)
class ChannelSettings:
    """What makes two channels interchangeable. TLS material is held by value, so a
    config reload after certificate rotation opens a new channel."""

    address: str
    tls: bool = FIELDS.default("tls")
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None
    reconnect_backoff_max: float = FIELDS.default("reconnect_backoff_max")


@dataclass(frozen=True)
class FollowSettings:
    destination_pods: tuple[str, ...] = ()
    destination_ips: tuple[str, ...] = ()
    destination_ports: tuple[str, ...] = ()
    ttl: float = FIELDS.default("follow_ttl")
    cache_size: int = FIELDS.default("follow_cache_size")


@dataclass(frozen=True)
class HubbleSettings:
    channel: ChannelSettings
    flows: int = FIELDS.default("flows")
    match_ports: bool = FIELDS.default("match_ports")
    max_flow_age: float = FIELDS.default("max_flow_age")
    follow: FollowSettings | None = None


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"hubble.{what} {path}: {error.strerror or error}") from None


def _strings(record: Mapping[str, Any], name: str) -> tuple[str, ...]:
    return tuple(str(item) for item in FIELDS.value(record, name))


def parse_settings(record: Mapping[str, Any]) -> HubbleSettings:
    address = str(FIELDS.value(record, "address")).strip()
    tls = bool(FIELDS.value(record, "tls"))
    ca = _read(record.get("tls_ca_file"), "tls_ca_file")
    cert = _read(record.get("tls_cert_file"), "tls_cert_file")
    key = _read(record.get("tls_key_file"), "tls_key_file")
    if (cert is None) != (key is None):
        raise ConfigError("hubble: tls_cert_file and tls_key_file go together (mTLS)")
    if not tls and (ca or cert or record.get("tls_server_name")):
        raise ConfigError("hubble: TLS files or server name are set but tls is false")
    channel = ChannelSettings(
        address=address,
        tls=tls,
        ca=ca,
        cert=cert,
        key=key,
        server_name=record.get("tls_server_name") or None,
        reconnect_backoff_max=float(FIELDS.value(record, "reconnect_backoff_max")),
    )
    follow = None
    if FIELDS.value(record, "follow"):
        follow = FollowSettings(
            destination_pods=_strings(record, "follow_destination_pods"),
            destination_ips=_strings(record, "follow_destination_ips"),
            destination_ports=_strings(record, "follow_destination_ports"),
            ttl=float(FIELDS.value(record, "follow_ttl")),
            cache_size=int(FIELDS.value(record, "follow_cache_size")),
        )
        if not (follow.destination_pods or follow.destination_ips):
            raise ConfigError(
                "hubble.follow needs follow_destination_pods or follow_destination_ips "
                "(Kong's own pods); following every flow of the cluster is not supported"
            )
    return HubbleSettings(
        channel=channel,
        flows=int(FIELDS.value(record, "flows")),
        match_ports=bool(FIELDS.value(record, "match_ports")),
        max_flow_age=float(FIELDS.value(record, "max_flow_age")),
        follow=follow,
    )


def open_channel(settings: ChannelSettings) -> grpc.Channel:
    backoff_ms = max(100, int(settings.reconnect_backoff_max * 1000))
    options: list[tuple[str, Any]] = [
        ("grpc.initial_reconnect_backoff_ms", min(100, backoff_ms)),
        ("grpc.min_reconnect_backoff_ms", min(100, backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    if not settings.tls:
        return grpc.insecure_channel(settings.address, options=options)
    if settings.server_name:
        options.append(("grpc.ssl_target_name_override", settings.server_name))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=settings.ca,
        private_key=settings.key,
        certificate_chain=settings.cert,
    )
    return grpc.secure_channel(settings.address, credentials, options=options)


def _close_channel(channel: grpc.Channel) -> None:
    channel.close()


CHANNELS: SharedPool[ChannelSettings, grpc.Channel] = SharedPool(open_channel, _close_channel)


class HubbleSource:
    name = NAME
    cacheable = True

    def __init__(self, settings: HubbleSettings) -> None:
        self._settings = settings
        self._channel = CHANNELS.acquire(settings.channel)
        self._stub = observer_pb2_grpc.ObserverStub(self._channel)  # type: ignore[no-untyped-call]
        self._closed = False
        self.warm: WarmFlows | None = None
        self._follower: FlowFollower | None = None
        if settings.follow is not None:
            follow = settings.follow
            self.warm = WarmFlows(follow.ttl, follow.cache_size)
            request = follow_request(
                follow.destination_pods, follow.destination_ips, follow.destination_ports
            )
            self._follower = FlowFollower(
                self._stub.GetFlows, request, self.warm, settings.channel.reconnect_backoff_max
            )
            self._follower.start()

    def lookup(self, peer: Peer, timeout: float) -> Lookup:
        if peer.ip is None:  # made from text: canonicalise it as access does
            try:
                peer = Peer.of(parse_address(peer.address), peer.port, peer.local_port)
            except ValueError as error:
                return Lookup.unknown(NAME, str(error))
        if self._closed:
            return Lookup.unavailable(NAME, "source is closed")
        settings = self._settings
        if self.warm is not None:
            warm = self.warm.get(peer, settings.match_ports, settings.max_flow_age)
            if warm is not None:
                return warm
        request = lookup_request(peer, settings.flows, settings.match_ports)
        try:
            responses = self._stub.GetFlows(request, timeout=timeout)
            return read_lookup_stream(responses, peer, settings.match_ports, settings.max_flow_age)
        except grpc.RpcError as error:
            return Lookup.unavailable(NAME, f"relay {_status(error)}")
        except Exception as error:  # malformed answers must fail closed, not raise
            return Lookup.unavailable(NAME, f"unreadable relay answer: {error!r}")

    def ready(self) -> bool:
        return not self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._follower is not None:
            self._follower.stop()
        CHANNELS.release(self._settings.channel)


def _status(error: grpc.RpcError) -> str:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    name = code.name if code is not None else "ERROR"
    return f"{name}: {details}"


def create(settings: HubbleSettings) -> HubbleSource:
    return HubbleSource(settings)


KIND = SourceKind(name=NAME, schema=SCHEMA, parse=parse_settings, create=create)
