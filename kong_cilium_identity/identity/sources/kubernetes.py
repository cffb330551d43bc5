"""The ``kubernetes`` source: a live, cluster-wide index of Cilium endpoints.

At start the source reads the API's discovery documents (``/apis/cilium.io/v2`` and
``/apis/cilium.io/v2alpha1``) and watches what is served: ``ciliumendpoints`` (v2),
``ciliumendpointslices`` (v2alpha1, together with ``ciliumidentities``, which names the
labels of the identity ids the slices carry), or both. It lists and watches them in all
namespaces and answers lookups from memory.

It fails closed: until discovery found a resource and every watch applied its first
list, it answers UNAVAILABLE, with the reason (not served, forbidden by RBAC, not
synced), and so it does when a watch has been down longer than ``max_stale`` seconds. The
index applies deletions at once, so ``cacheable`` is False: the resolver must not keep
its answers.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kong_cilium_identity.errors import ConfigError
from kong_cilium_identity.fields import Field, Group
from kong_cilium_identity.identity.cep_index import EndpointIndex
from kong_cilium_identity.identity.cep_watch import (
    Codec,
    ListWatch,
    Relist,
    WatchSettings,
    backoff_delay,
)
from kong_cilium_identity.identity.ces_decode import SLICE_CODEC
from kong_cilium_identity.identity.crd_discovery import (
    ENDPOINTS,
    GROUP,
    IDENTITIES,
    SLICES,
    Served,
    discover,
)
from kong_cilium_identity.identity.crd_parse import canonical_address
from kong_cilium_identity.identity.model import Lookup, Peer
from kong_cilium_identity.identity.sources.base import SourceKind
from kong_cilium_identity.ops import metrics

NAME = "kubernetes"
WAIT_LOG_INTERVAL = 10.0
HTTP_UNAUTHORIZED = 401
HTTP_FORBIDDEN = 403
KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
# slices are read member by member (``ces_decode``); the other resources decoded whole
CODECS = {ENDPOINTS: Codec(), SLICES: SLICE_CODEC, IDENTITIES: Codec()}

log = logging.getLogger(__name__)

FIELDS = Group(
    NAME,
    (
        Field(
            "api_url",
            "string",
            description="API server URL; unset: kubeconfig if given, else in-cluster",
            doc="API server URL (`https://…` or `http://…`). If unset, `kubeconfig` is used "
            "when given, otherwise the pod's service account (in-cluster config)",
        ),
        Field(
            "token_file",
            "string",
            description="bearer token file (with api_url)",
            doc="bearer token file for `api_url`. It is re-read before each request, so "
            "projected tokens can rotate",
        ),
        Field(
            "ca_file",
            "string",
            description="CA bundle for an https api_url",
            doc="CA bundle to verify an `https` `api_url`",
        ),
        Field(
            "kubeconfig",
            "string",
            description="kubeconfig path (not with api_url)",
            doc="kubeconfig path. Cannot be combined with `api_url`",
        ),
        Field(
            "context",
            "string",
            description="kubeconfig context",
            doc="kubeconfig context (needs `kubeconfig`). Unset: the file's current context",
        ),
        Field(
            "watch_identities",
            "boolean",
            False,
            doc="also list + watch `ciliumidentities` (cluster-scoped; name = id; labels in "
            "the top-level `security-labels`). These fill the labels of endpoints that carry "
            "only the numeric id. Readiness then needs both lists",
        ),
        Field(
            "max_stale",
            "number",
            15,
            between=(1, 3600),
            doc="seconds the source may keep answering from its index after a watch "
            "broke. After that it answers `source_unavailable` (503) until a watch is open "
            "again",
        ),
        Field(
            "page_size",
            "integer",
            500,
            between=(1, 10000),
            doc="list page size (`limit`/`continue`)",
        ),
        Field(
            "watch_timeout",
            "integer",
            300,
            between=(1, 3600),
            doc="server-side `timeoutSeconds` of one watch request. The watch then "
            "resumes at once from the last version. The client read timeout is this + 15 s",
        ),
        Field(
            "request_timeout",
            "number",
            10,
            between=(0.1, 300),
            doc="connect timeout, and read timeout of list pages, in seconds",
        ),
        Field(
            "backoff_initial",
            "number",
            0.5,
            between=(0.01, 60),
            doc="first retry delay after an error, in seconds",
        ),
        Field(
            "backoff_max",
            "number",
            30,
            between=(0.01, 600),
            doc='cap of the retry delay. The delay doubles per consecutive failure, with "equal '
            'jitter": half fixed, half random',
        ),
    ),
)

SCHEMA: dict[str, Any] = FIELDS.record()


@dataclass(frozen=True)
class KubernetesSettings:
    api_url: str | None = None
    token_file: str | None = None
    ca_file: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    watch_identities: bool = FIELDS.default("watch_identities")
    max_stale: float = FIELDS.default("max_stale")
    watch: WatchSettings = field(default_factory=WatchSettings)


def _optional(record: Mapping[str, Any], name: str) -> str | None:
    value = record.get(name)
    return str(value) if value else None


def parse_settings(record: Mapping[str, Any]) -> KubernetesSettings:
    def setting(name: str) -> Any:
        return FIELDS.value(record, name)

    try:
        settings = KubernetesSettings(
            api_url=_optional(record, "api_url"),
            token_file=_optional(record, "token_file"),
            ca_file=_optional(record, "ca_file"),
            kubeconfig=_optional(record, "kubeconfig"),
            context=_optional(record, "context"),
            watch_identities=bool(setting("watch_identities")),
            max_stale=float(setting("max_stale")),
            watch=WatchSettings(
                page_size=int(setting("page_size")),
                watch_timeout=int(setting("watch_timeout")),
                request_timeout=float(setting("request_timeout")),
                backoff_initial=float(setting("backoff_initial")),
                backoff_max=float(setting("backoff_max")),
            ),
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"kubernetes: {error}") from None
    if settings.api_url and not settings.api_url.startswith(("http://", "https://")):
        raise ConfigError("kubernetes.api_url must start with http:// or https://")
    if settings.api_url and (settings.kubeconfig or settings.context):
        raise ConfigError("kubernetes: set api_url or kubeconfig, not both")
    if (settings.token_file or settings.ca_file) and not settings.api_url:
        raise ConfigError("kubernetes.token_file and ca_file go with api_url")
    if settings.context and not settings.kubeconfig:
        raise ConfigError("kubernetes.context needs kubeconfig")
    if settings.watch.backoff_initial > settings.watch.backoff_max:
        raise ConfigError("kubernetes.backoff_initial must not exceed backoff_max")
    return settings


def _read_token(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def _token_refresher(path: str) -> Callable[[Any], None]:
    """Re-read a projected service-account token (it rotates) before each request."""

    def refresh(configuration: Any) -> None:
        try:
            configuration.api_key["authorization"] = _read_token(path)
        except OSError as error:
            log.warning("cannot re-read token file %s (%s); keeping the last token", path, error)

    return refresh


def keepalive_socket_options() -> list[tuple[int, int, int]]:
    """urllib3's defaults plus TCP keepalive, so that a watch whose peer vanished without
    a FIN (node gone, NAT entry dropped) breaks after about ``KEEPALIVE_IDLE +
    KEEPALIVE_INTERVAL * KEEPALIVE_COUNT`` seconds instead of hanging until its read
    timeout; the source then counts as stale and the loop reconnects."""
    options = list(urllib3.connection.HTTPConnection.default_socket_options)
    options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        if hasattr(socket, name):  # Linux names; other platforms keep their defaults
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


def _configuration(settings: KubernetesSettings) -> Any:
    configuration: Any = client.Configuration()
    if settings.api_url:
        configuration.host = settings.api_url.rstrip("/")
        if settings.ca_file:
            configuration.ssl_ca_cert = settings.ca_file
        if settings.token_file:
            configuration.api_key["authorization"] = _read_token(settings.token_file)
            configuration.api_key_prefix["authorization"] = "Bearer"
            configuration.refresh_api_key_hook = _token_refresher(settings.token_file)
    elif settings.kubeconfig:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=settings.kubeconfig,
            context=settings.context,
            client_configuration=configuration,
            persist_config=False,
        )
    else:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


def api_client(settings: KubernetesSettings) -> Any:
    """A kubernetes ``ApiClient`` for the configured API server (api_url, else kubeconfig,
    else the pod's service account)."""
    try:
        configuration = _configuration(settings)
    except (OSError, config.ConfigException) as error:
        raise ConfigError(f"kubernetes: cannot configure the API client: {error}") from None
    configuration.socket_options = keepalive_socket_options()
    return client.ApiClient(configuration)


def plan_watches(
    served: Served, watch_identities: bool
) -> tuple[list[tuple[str, str]], str | None]:
    """The (plural, version) pairs to watch, and a note on what cannot be used (the
    reason for refusing every request when the list is empty)."""
    watches: list[tuple[str, str]] = []
    note: str | None = None
    if served.endpoints:
        watches.append((ENDPOINTS, served.endpoints))
    if served.slices:
        if served.identities:
            watches.append((SLICES, served.slices))
        else:
            note = (
                f"{SLICES}.{GROUP} is served but {IDENTITIES}.{GROUP} is not: slices carry "
                "only identity ids, whose labels cannot be known (kvstore identity mode?)"
            )
    if not watches:
        return [], note or (
            f"neither {ENDPOINTS}.{GROUP}/v2 nor {SLICES}.{GROUP}/v2alpha1 is served by "
            "the API server (is Cilium installed?)"
        )
    wants_identities = watch_identities or any(plural == SLICES for plural, _ in watches)
    if wants_identities:
        if served.identities:
            watches.append((IDENTITIES, served.identities))
        else:
            note = f"watch_identities is set but {IDENTITIES}.{GROUP} is not served"
    return watches, note


def _failure_text(error: Exception | None) -> str | None:
    """Why a watch cannot list, when the API server refused it outright."""
    if isinstance(error, ApiException) and error.status == HTTP_FORBIDDEN:
        return "forbidden (RBAC): grant get/list/watch on it (deploy/kubernetes/rbac.yaml)"
    if isinstance(error, ApiException) and error.status == HTTP_UNAUTHORIZED:
        return "unauthorized: the API server rejected the credentials"
    return None


class KubernetesSource:
    """Answers from the endpoint index kept current by background watches."""

    name = NAME
    cacheable = False

    def __init__(self, http_client: Any, settings: KubernetesSettings) -> None:
        """``http_client`` is a kubernetes ``ApiClient``; the source closes it."""
        self.index = EndpointIndex(NAME)
        metrics.track_endpoint_index("endpoints", self.index)
        self.served: Served | None = None
        self.watches: list[ListWatch] = []
        self._client = http_client
        self._settings = settings
        self._max_stale = settings.max_stale
        self._last_wait_log = 0.0
        self._last_wait_problem = ""
        self._api = client.CustomObjectsApi(http_client)
        self._plan_problem: str | None = f"not synced: discovering the {GROUP} resources served"
        self._planned = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._discovery = threading.Thread(
            target=self._discover, name="cilium-identity-discovery", daemon=True
        )
        self._discovery.start()

    # -- discovery ------------------------------------------------------------------------

    def _discover(self) -> None:
        """Find what is served and start the watches; retry (with backoff) while the API
        cannot be read or serves neither endpoint resource."""
        watch = self._settings.watch
        failures = 0
        while not self._stopping.is_set():
            try:
                served = discover(self._api, watch.request_timeout)
            except Exception as error:
                problem = f"not synced: cannot read the {GROUP} discovery documents: {error}"
            else:
                plan, note = plan_watches(served, self._settings.watch_identities)
                if plan:
                    if note:
                        log.warning("kubernetes source: %s", note)
                    self._start(served, plan)
                    return
                problem = note or ""
            failures += 1
            self._plan_problem = problem
            delay = backoff_delay(failures, watch.backoff_initial, watch.backoff_max)
            log.error(
                "kubernetes source unavailable, denying (503): %s; asking again in %.1fs",
                problem,
                delay,
            )
            self._stopping.wait(delay)

    def _start(self, served: Served, plan: list[tuple[str, str]]) -> None:
        apply: dict[str, tuple[Callable[[], Relist], Callable[[str, Mapping[str, Any]], None]]]
        apply = {
            ENDPOINTS: (self.index.begin_relist, self.index.apply),
            SLICES: (self.index.begin_slice_relist, self.index.apply_slice),
            IDENTITIES: (self.index.begin_identity_relist, self.index.apply_identity),
        }
        with self._lock:
            if self._stopping.is_set():
                return
            settings = self._settings.watch
            watches = [
                ListWatch(self._api, plural, *apply[plural], settings, version, CODECS[plural])
                for plural, version in plan
            ]
            for watch in watches:
                watch.start()
            self.served = served
            self.watches = watches
            self._plan_problem = None
            self._planned.set()
        log.info(
            "kubernetes source: watching %s",
            ", ".join(f"{plural}.{GROUP}/{version}" for plural, version in plan),
        )

    def watch_of(self, plural: str) -> ListWatch | None:
        """The watch of one resource, once discovery started it."""
        return next((w for w in self.watches if w.plural == plural), None)

    @property
    def endpoints(self) -> ListWatch | None:
        return self.watch_of(ENDPOINTS)

    @property
    def slices(self) -> ListWatch | None:
        return self.watch_of(SLICES)

    # -- answering ------------------------------------------------------------------------

    def lookup(self, peer: Peer, timeout: float) -> Lookup:
        try:
            problem = self._problem()
            if problem is not None:
                return Lookup.unavailable(NAME, problem)
            answer = self.index.lookup(peer.address)
            if answer is None and peer.ip is None and ":" in peer.address:  # made from text
                canonical = canonical_address(peer.address)
                if canonical != peer.address:
                    answer = self.index.lookup(canonical)
            return answer or Lookup.unknown(NAME, f"no Cilium endpoint has address {peer.address}")
        except ValueError as error:
            return Lookup.unknown(NAME, f"not an address: {error}")
        except Exception as error:  # the contract: never raise, fail closed
            return Lookup.unavailable(NAME, f"lookup failed: {error!r}")

    def _problem(self, quiet: bool = False) -> str | None:
        """Why answers cannot be trusted right now, or None."""
        planned = self._plan_problem
        if planned is not None:
            return planned
        for watch in self.watches:
            if not watch.synced:
                refused = _failure_text(watch.last_failure)
                what = f"{watch.plural}.{GROUP}/{watch.version}"
                if refused is not None:
                    problem = f"not synced: {what} {refused}"
                else:
                    problem = f"not synced: waiting for the first list of {watch.plural}"
                if not quiet:
                    self._log_waiting(problem)
                return problem
            out_of_touch = watch.out_of_touch_for()
            if out_of_touch > self._max_stale:
                return (
                    f"stale: the {watch.plural} watch has been down for {out_of_touch:.1f}s "
                    f"(max_stale {self._max_stale:g}s)"
                )
        return None

    def _log_waiting(self, problem: str) -> None:
        """Log why requests are refused: when the reason changes, else every 10 s."""
        now = time.monotonic()
        if problem != self._last_wait_problem or now - self._last_wait_log >= WAIT_LOG_INTERVAL:
            self._last_wait_log = now
            self._last_wait_problem = problem
            log.warning("kubernetes source %s; denying (503) until then", problem)

    def ready(self) -> bool:
        return self._problem(quiet=True) is None

    def problem(self) -> str | None:
        """Why the source is not ready (for /readyz), or None."""
        return self._problem(quiet=True)

    def wait_ready(self, timeout: float) -> bool:
        """Block until discovery is done and every watch has applied its first list, at
        most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        if not self._planned.wait(timeout):
            return False
        for watch in self.watches:
            if not watch.wait_synced(max(0.0, deadline - time.monotonic())):
                return False
        return self.ready()

    def close(self) -> None:
        with self._lock:
            self._stopping.set()
            watches = list(self.watches)
        self._discovery.join(5.0)
        for watch in watches:
            watch.close()
        self._client.close()
        self._client.rest_client.pool_manager.clear()


def create(settings: KubernetesSettings) -> KubernetesSource:
    return KubernetesSource(api_client(settings), settings)


KIND = SourceKind(name=NAME, schema=SCHEMA, parse=parse_settings, create=create)
