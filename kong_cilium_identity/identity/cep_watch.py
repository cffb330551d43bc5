"""List + watch of one cluster-wide ``cilium.io`` resource with the kubernetes client.

The loop, on one background thread:

1. **List** (paged with ``limit``/``continue``) into a fresh relist target, committed
   only when the last page arrived: the new state replaces the old one whole, so entries
   missing from the list disappear.
2. **Watch** from the list's ``resourceVersion`` with ``allowWatchBookmarks``; each event
   and each BOOKMARK advances the version to resume from.
3. When a stream ends (server ``timeoutSeconds``) the watch resumes at once; when it
   breaks (cut, refused, error status) it resumes after a backoff with jitter.
4. ``410 Gone`` (as the HTTP status or as an ERROR event carrying a 410 Status) means the
   version to resume from has been compacted away: the loop lists again.

The kubernetes client's own ``Watch`` helper is not used: it retries a 410 once with the
same stale version and re-serializes every object. Raw response lines are decoded here,
once, by the resource's ``Codec``, and handed over as plain dicts.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from kubernetes.client.exceptions import ApiException

from kong_cilium_identity.ops import metrics

log = logging.getLogger(__name__)

GROUP = "cilium.io"
VERSION = "v2"
HTTP_GONE = 410
READ_SLACK = 15.0  # seconds a watch read may exceed the server-side timeout
QUICK_END = 1.0  # a stream that ends sooner than this with no event counts as a failure


@dataclass(frozen=True)
class Codec:
    """How one resource's list pages and watch lines are decoded. Decoding is the largest
    cost of both; msgspec does it in under half the time of ``json``, and a resource may
    decode less than everything (``ces_decode``)."""

    page: Callable[[bytes | str], Any] = msgspec.json.decode
    event: Callable[[bytes | str], Any] = msgspec.json.decode


@dataclass(frozen=True)
class WatchSettings:
    page_size: int = 500
    watch_timeout: int = 300  # server-side timeoutSeconds of one watch request
    request_timeout: float = 10.0  # connect timeout, and read timeout of list pages
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


class Relist(Protocol):
    def add(self, items: Iterable[Mapping[str, Any]]) -> None: ...

    def commit(self, resource_version: str) -> None: ...


class ResourceGone(Exception):
    """The resourceVersion to resume from is too old: list again."""


class WatchError(Exception):
    """The API server ended a watch with an ERROR event other than 410."""


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped."""
    ceiling = min(maximum, initial * 2.0 ** max(0, attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class _GcPause:
    """Pause the cyclic garbage collector while a list is loaded, then freeze what it built.

    A list of 100,000 endpoints allocates millions of containers that mostly survive;
    the collector would walk the growing heap again and again, and that costs more than
    the parsing (measured: 4.1 s instead of 2.8 s). Reference counting still frees
    everything that is not cyclic. Nested pauses (two watches listing at once) restore
    the collector when the last one ends, and only if it was enabled before the first.

    When the last pause ends, everything alive is moved to the collector's permanent
    generation (``gc.freeze``): the index is long-lived and holds no reference cycles, so
    no full collection needs to walk it again. Without this, the full collections that
    watch events trigger walked the whole index while holding the GIL (about 300 ms each
    with 100,000 slice members, one every few thousand events: a stall for every lookup).
    Frozen objects are still freed by reference counting when the index drops them; only
    cyclic garbage alive at that moment would stay, and the index makes none.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._was_enabled = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    gc.freeze()
                    if self._was_enabled:
                        gc.enable()


gc_paused = _GcPause()


def _describe(error: Exception) -> str:
    """One line for the log (ApiException's own text spans headers and body)."""
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"


def _response_lines(response: Any) -> Iterator[bytes]:
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line.strip():
                yield line
    if pending.strip():
        yield pending


class ListWatch:
    """Keeps one relist target in step with a cluster-wide resource, on its own thread."""

    def __init__(
        self,
        api: Any,
        plural: str,
        begin_relist: Callable[[], Relist],
        apply: Callable[[str, Mapping[str, Any]], None],
        settings: WatchSettings,
        version: str = VERSION,
        codec: Codec = Codec(),
    ) -> None:
        self.plural = plural
        self.version = version
        self._codec = codec
        self._api = api
        self._begin_relist = begin_relist
        self._apply = apply
        self._settings = settings
        self._stopping = threading.Event()
        self._synced = threading.Event()
        self._response: Any = None
        self._disconnected_since: float | None = time.monotonic()
        self.resource_version: str | None = None
        self.last_failure: Exception | None = None  # cleared by the next successful list
        self.stats = dict.fromkeys(("lists", "watches", "events", "bookmarks", "gone", "errors"), 0)
        self._thread = threading.Thread(
            target=self._run, name=f"cilium-identity-watch-{plural}", daemon=True
        )

    # -- state for readers ----------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """True once a first full list has been applied."""
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def out_of_touch_for(self) -> float:
        """Seconds since the last stream broke and no new list or stream replaced it
        (0 while a watch is open)."""
        since = self._disconnected_since
        return 0.0 if since is None else time.monotonic() - since

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        log.info("waiting for the first list of %s.%s/%s", self.plural, GROUP, self.version)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._abort_response()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _abort_response(self) -> None:
        """Unblock a read in progress by shutting the socket under the open stream."""
        response = self._response
        connection = getattr(response, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if self.resource_version is None:
                    self.list_once()
                if self._watch():
                    failures = 0
                    continue
                failures += 1
            except ResourceGone as gone:
                self.stats["gone"] += 1
                metrics.watch_restarted(self.plural, "expired")
                log.info("%s: %s; listing again", self.plural, gone)
                self.resource_version = None
                failures += 1
                if failures == 1:
                    continue  # a first 410 relists at once; repeated ones back off
            except Exception as error:
                if self._stopping.is_set():
                    break
                self.stats["errors"] += 1
                metrics.watch_restarted(self.plural, "error")
                self.last_failure = error
                failures += 1
                self._mark_disconnected()
                delay = backoff_delay(
                    failures, self._settings.backoff_initial, self._settings.backoff_max
                )
                log.warning(
                    "%s list/watch failed (%s); retrying in %.2fs",
                    self.plural,
                    _describe(error),
                    delay,
                )
                self._stopping.wait(delay)
                continue
            delay = backoff_delay(
                failures, self._settings.backoff_initial, self._settings.backoff_max
            )
            self._stopping.wait(delay)
        self._mark_disconnected()

    def _mark_disconnected(self) -> None:
        if self._disconnected_since is None:
            self._disconnected_since = time.monotonic()

    def _call(self, **params: Any) -> Any:
        try:
            return self._api.list_cluster_custom_object(
                GROUP, self.version, self.plural, _preload_content=False, **params
            )
        except ApiException as error:
            if error.status == HTTP_GONE:
                raise ResourceGone(f"HTTP 410: {error.reason}") from None
            raise

    def list_once(self) -> None:
        """List every object (paged) and commit them as the new state; used by the loop
        (and by the benchmark, to time the production path)."""
        with gc_paused():
            version, pages = self._load_pages()
        self.resource_version = version
        self._disconnected_since = None
        self.last_failure = None
        self.stats["lists"] += 1
        metrics.watch_relisted(self.plural)
        if not self._synced.is_set():
            log.info("%s synced at resourceVersion %s (%d pages)", self.plural, version, pages)
            self._synced.set()

    def _load_pages(self) -> tuple[str, int]:
        relist = self._begin_relist()
        token: str | None = None
        pages = 0
        while True:
            response = self._call(
                limit=self._settings.page_size,
                _continue=token,
                _request_timeout=self._settings.request_timeout,
            )
            try:
                body = self._codec.page(response.data)
            finally:
                response.release_conn()
            relist.add(body.get("items") or ())
            pages += 1
            metadata = body.get("metadata") or {}
            token = metadata.get("continue") or None
            if token is None:
                break
            if self._stopping.is_set():
                raise WatchError("stopped while listing")
        version = str(metadata.get("resourceVersion") or "")
        if not version:
            raise WatchError(f"{self.plural} list carries no metadata.resourceVersion")
        relist.commit(version)
        return version, pages

    def _watch(self) -> bool:
        """One watch request; True when it ended normally after doing some work."""
        started = time.monotonic()
        timeout = self._settings.watch_timeout
        response = self._call(
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=self.resource_version,
            timeout_seconds=timeout,
            _request_timeout=(self._settings.request_timeout, timeout + READ_SLACK),
        )
        self._response = response  # set before the check below: close() sees one or the other
        self._disconnected_since = None
        self.stats["watches"] += 1
        events = 0
        try:
            if self._stopping.is_set():
                return False
            for line in _response_lines(response):
                if self._stopping.is_set():
                    break
                self._handle(self._codec.event(line))
                events += 1
        finally:
            self._response = None
            self._mark_disconnected()
            response.close()  # a stream is never reused half-read
            response.release_conn()
        return events > 0 or time.monotonic() - started >= QUICK_END

    def _handle(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            raise WatchError(f"{self.plural} watch event without an object: {kind}")
        if kind == "ERROR":
            if obj.get("code") == HTTP_GONE:
                raise ResourceGone(f"ERROR event 410 {obj.get('reason')}: {obj.get('message')}")
            raise WatchError(f"ERROR event {obj.get('code')}: {obj.get('message')}")
        metadata = obj.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
        if kind == "BOOKMARK":
            self.stats["bookmarks"] += 1
        elif kind in ("ADDED", "MODIFIED", "DELETED"):
            self._apply(kind, obj)
            self.stats["events"] += 1
        else:
            log.warning("%s: ignoring watch event of type %r", self.plural, kind)
        if version:
            self.resource_version = str(version)
