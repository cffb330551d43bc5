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

from kong_cilium_identity.identity.address import parse_address
from kong_cilium_identity.identity.model import Lookup, Peer
from kong_cilium_identity.identity.shared import SharedPool
from kong_cilium_identity.identity.sources.base import ConfigError, SourceKind
from kong_cilium_identity.identity.sources.hubble_flows import (
    NAME,
    follow_request,
    lookup_request,
    read_lookup_stream,
)
from kong_cilium_identity.identity.sources.hubble_follow import FlowFollower, WarmFlows
from kong_cilium_identity.proto.observer import observer_pb2_grpc

DEFAULT_ADDRESS = "hubble-relay.kube-system.svc:80"

SCHEMA: dict[str, Any] = {
    "type": "record",
    "fields": [
        {"address": {"type": "string", "default": DEFAULT_ADDRESS, "len_min": 1}},
        {"tls": {"type": "boolean", "default": False}},
        {"tls_ca_file": {"type": "string"}},
        {"tls_cert_file": {"type": "string"}},
        {"tls_key_file": {"type": "string"}},
        {"tls_server_name": {"type": "string"}},
        {"flows": {"type": "integer", "default": 1, "between": [1, 1000]}},
        {"match_ports": {"type": "boolean", "default": False}},
        {"max_flow_age": {"type": "number", "default": 600, "between": [0, 86400]}},
        {"reconnect_backoff_max": {"type": "number", "default": 5, "between": [0.1, 300]}},
        {"follow": {"type": "boolean", "default": False}},
        {
            "follow_destination_pods": {
                "type": "array",
                "default": [],
                "elements": {"type": "string"},
            }
        },
        {
            "follow_destination_ips": {
                "type": "array",
                "default": [],
                "elements": {"type": "string"},
            }
        },
        {
            "follow_destination_ports": {
                "type": "array",
                "default": [],
                "elements": {"type": "string"},
            }
        },
        {"follow_ttl": {"type": "number", "default": 30, "between": [1, 3600]}},
        {"follow_cache_size": {"type": "integer", "default": 65536, "between": [1, 10000000]}},
    ],
}


@dataclass(frozen=True)
class ChannelSettings:
    """What makes two channels interchangeable. TLS material is held by value, so a
    config reload after certificate rotation opens a new channel."""

    address: str
    tls: bool = False
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None
    reconnect_backoff_max: float = 5.0


@dataclass(frozen=True)
class FollowSettings:
    destination_pods: tuple[str, ...] = ()
    destination_ips: tuple[str, ...] = ()
    destination_ports: tuple[str, ...] = ()
    ttl: float = 30.0
    cache_size: int = 65536


@dataclass(frozen=True)
class HubbleSettings:
    channel: ChannelSettings
    flows: int = 1
    match_ports: bool = False
    max_flow_age: float = 600.0
    follow: FollowSettings | None = None


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"hubble.{what} {path}: {error.strerror or error}") from None


def _strings(record: Mapping[str, Any], name: str) -> tuple[str, ...]:
    return tuple(str(item) for item in record.get(name) or ())


def parse_settings(record: Mapping[str, Any]) -> HubbleSettings:
    address = str(record.get("address") or DEFAULT_ADDRESS).strip()
    tls = bool(record.get("tls"))
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
        reconnect_backoff_max=float(record.get("reconnect_backoff_max") or 5.0),
    )
    follow = None
    if record.get("follow"):
        follow = FollowSettings(
            destination_pods=_strings(record, "follow_destination_pods"),
            destination_ips=_strings(record, "follow_destination_ips"),
            destination_ports=_strings(record, "follow_destination_ports"),
            ttl=float(record.get("follow_ttl") or 30.0),
            cache_size=int(record.get("follow_cache_size") or 65536),
        )
        if not (follow.destination_pods or follow.destination_ips):
            raise ConfigError(
                "hubble.follow needs follow_destination_pods or follow_destination_ips "
                "(Kong's own pods); following every flow of the cluster is not supported"
            )
    max_age = record.get("max_flow_age")
    return HubbleSettings(
        channel=channel,
        flows=int(record.get("flows") or 1),
        match_ports=bool(record.get("match_ports")),
        max_flow_age=600.0 if max_age is None else float(max_age),
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
