"""The ``agent`` source: the node-local Cilium agent's REST API over its Unix socket.

``GET /v1/ip?cidr=<ip>/32`` (``/128`` for IPv6) gives the ipcache entry of the address:
its identity id and, for pods, ``metadata{source, namespace, name}``; then
``GET /v1/identity/{id}`` gives the identity labels. The ipcache is the userspace copy of
what the node's datapath enforces, cluster-wide.

Answers are read strictly (``agent_json``): a wrongly typed field is logged and the
lookup is UNAVAILABLE, never a match. Status handling: 200 answers; 404 means the agent
knows no such entry (UNKNOWN, not an error); 400, 403 (API administratively disabled),
429, 5xx (520/521: identity storage unreachable or invalid) and anything unreadable are
UNAVAILABLE with the reason.
Identity labels per id are kept ``identity_cache_ttl`` seconds: an id names a fixed
label set, and many pods share one id.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache

from kong_cilium_identity.fields import Field, Group
from kong_cilium_identity.identity import reserved
from kong_cilium_identity.identity.model import Identity, Lookup, Peer
from kong_cilium_identity.identity.sources.agent_json import (
    AnswerError,
    IPEntry,
    NoEntry,
    SeveralIdentities,
    read_identity_answer,
    read_ip_answer,
)
from kong_cilium_identity.identity.sources.base import SourceKind
from kong_cilium_identity.identity.sources.unix_http import UnixHTTPPool
from kong_cilium_identity.policy.labels import LabelError

log = logging.getLogger(__name__)

NAME = "agent"
BASE_PATH = "/v1"

FIELDS = Group(
    NAME,
    (
        Field(
            "socket_path",
            "string",
            "/var/run/cilium/cilium.sock",
            len_min=1,
            doc="the agent API socket (`CILIUM_SOCK` in Cilium)",
        ),
        Field(
            "max_idle_connections",
            "integer",
            4,
            between=(0, 64),
            doc="keep-alive connections kept for reuse (0: a new connection per request)",
        ),
        Field(
            "identity_cache_ttl",
            "number",
            60,
            between=(0, 3600),
            doc="seconds to keep `id → labels` (0: ask `/v1/identity/{id}` every time)",
        ),
        Field(
            "identity_cache_size",
            "integer",
            4096,
            between=(1, 1000000),
            doc="identity ids kept",
        ),
    ),
)

SCHEMA: dict[str, Any] = FIELDS.record()

_POD_CLASSES = (reserved.IdentityClass.CLUSTER, reserved.IdentityClass.WELL_KNOWN)
_REFUSALS = {
    400: "rejected the request",
    403: "API is administratively disabled (allow GetIP and GetIdentityID)",
    429: "rate limited the request",
}


@dataclass(frozen=True)
class AgentSettings:
    socket_path: str = FIELDS.default("socket_path")
    max_idle_connections: int = FIELDS.default("max_idle_connections")
    identity_cache_ttl: float = FIELDS.default("identity_cache_ttl")
    identity_cache_size: int = FIELDS.default("identity_cache_size")


def parse_settings(record: Mapping[str, Any]) -> AgentSettings:
    def setting(name: str) -> Any:
        return FIELDS.value(record, name)

    return AgentSettings(
        socket_path=str(setting("socket_path")),
        max_idle_connections=int(setting("max_idle_connections")),
        identity_cache_ttl=float(setting("identity_cache_ttl")),
        identity_cache_size=int(setting("identity_cache_size")),
    )


class _Unavailable(Exception):
    """Ends a lookup as UNAVAILABLE with this message."""


class _Unknown(Exception):
    """Ends a lookup as UNKNOWN with this message."""


class _Ambiguous(Exception):
    """Ends a lookup as AMBIGUOUS with this message."""


class AgentSource:
    name = NAME
    cacheable = True

    def __init__(self, settings: AgentSettings) -> None:
        self._settings = settings
        self._http = UnixHTTPPool(settings.socket_path, settings.max_idle_connections)
        self._labels_lock = threading.Lock()
        self._labels: TTLCache[int, tuple[str, ...]] | None = (
            TTLCache(settings.identity_cache_size, settings.identity_cache_ttl, time.monotonic)
            if settings.identity_cache_ttl > 0
            else None
        )
        self._closed = False

    @property
    def connections_opened(self) -> int:
        return self._http.opened

    def lookup(self, peer: Peer, timeout: float) -> Lookup:
        if self._closed:
            return Lookup.unavailable(NAME, "source is closed")
        deadline = time.monotonic() + timeout
        try:
            address = peer.parsed()
        except ValueError as error:
            return Lookup.unknown(NAME, str(error))
        try:
            entry = self._ipcache_entry(f"{address}/{address.max_prefixlen}", deadline)
            labels = self._identity_labels(entry.identity, deadline)
            is_pod = reserved.classify(entry.identity) in _POD_CLASSES
            identity = Identity.build(
                entry.identity,
                labels,
                namespace=entry.namespace if is_pod else None,
                pod=entry.name if is_pod else None,
                source=NAME,
            )
        except _Unknown as reason:
            return Lookup.unknown(NAME, str(reason))
        except _Ambiguous as reason:
            return Lookup.ambiguous(NAME, str(reason))
        except _Unavailable as reason:
            return Lookup.unavailable(NAME, str(reason))
        except (LabelError, TypeError, ValueError, AttributeError) as error:
            return Lookup.unavailable(NAME, f"unreadable agent answer: {error}")
        return Lookup.found(identity, NAME)

    def _get(self, target: str, deadline: float) -> tuple[int, Any]:
        try:
            status, body = self._http.get(BASE_PATH + target, deadline - time.monotonic())
        except (OSError, http.client.HTTPException) as error:
            raise _Unavailable(f"agent at {self._settings.socket_path}: {error!r}") from None
        if status in (200, 400):
            try:
                return status, json.loads(body)
            except (ValueError, RecursionError):
                raise _Unavailable(f"agent sent non-JSON for {target} ({status})") from None
        return status, body.decode("utf-8", "replace").strip()

    def _ipcache_entry(self, cidr: str, deadline: float) -> IPEntry:
        target = "/ip?" + urllib.parse.urlencode({"cidr": cidr})
        status, body = self._get(target, deadline)
        if status == 404:
            raise _Unknown(f"no ipcache entry for {cidr}")
        _raise_for(status, body, target)
        try:
            return read_ip_answer(body, cidr)
        except NoEntry:
            raise _Unknown(f"no ipcache entry for {cidr}") from None
        except SeveralIdentities as error:
            raise _Ambiguous(str(error)) from None
        except AnswerError as error:
            log.warning("agent: ignored an unreadable answer for %s: %s", target, error)
            raise _Unavailable(f"agent sent an unreadable answer for {target}: {error}") from None

    def _identity_labels(self, identity_id: int, deadline: float) -> tuple[str, ...]:
        if self._labels is not None:
            with self._labels_lock:
                cached = self._labels.get(identity_id)
            if cached is not None:
                return cached
        target = f"/identity/{identity_id}"
        status, body = self._get(target, deadline)
        if status == 404:
            raise _Unknown(f"identity {identity_id} is not known to the agent")
        _raise_for(status, body, target)
        try:
            result = read_identity_answer(body, identity_id)
        except AnswerError as error:
            log.warning("agent: ignored an unreadable answer for %s: %s", target, error)
            raise _Unavailable(f"agent sent an unreadable answer for {target}: {error}") from None
        if self._labels is not None:
            with self._labels_lock:
                self._labels[identity_id] = result
        return result

    def ready(self) -> bool:
        return not self._closed

    def close(self) -> None:
        self._closed = True
        self._http.close()


def _raise_for(status: int, body: Any, target: str) -> None:
    if status == 200:
        return
    what = _REFUSALS.get(status, f"failed with {status}")
    detail = body if isinstance(body, str) else json.dumps(body)
    raise _Unavailable(f"agent {what} for {target}: {detail[:200]}")


def create(settings: AgentSettings) -> AgentSource:
    return AgentSource(settings)


KIND = SourceKind(name=NAME, schema=SCHEMA, parse=parse_settings, create=create)
