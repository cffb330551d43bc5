"""The key store: verification keys from static PEMs and a JWKS, refreshed in the background.

One store exists per ``KeySettings`` in the whole process (``KEY_STORES``), with at
most one background thread that fetches the JWKS (through OIDC discovery when
configured) at start and every ``refresh_interval`` seconds, and sooner after a failure.

Reading keys never does I/O on the request path, with one bounded exception: a token
whose ``kid`` is not in the cache asks for one refetch, at most one per
``min_refetch_interval`` for the whole process, and waits for it at most
``fetch_timeout`` seconds; every other request keeps reading the cached snapshot.
While the JWKS endpoint is down the last good keys stay in use; if there are none the
store says so (the verifier turns that into 503, never into an allow).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from kong_cilium_identity.clock import REAL_CLOCK, Clock
from kong_cilium_identity.ops import metrics
from kong_cilium_identity.pools import SharedPool
from kong_cilium_identity.token.algorithms import SUPPORTED_ALGORITHMS, PublicKey, key_fits
from kong_cilium_identity.token.fetch import FetchError, fetch_json, resolve_jwks_uri
from kong_cilium_identity.token.settings import KeySettings, load_public_pem

log = logging.getLogger("kong_cilium_identity.token")

MIN_RETRY = 1.0
"""Seconds between background retries while fetching fails, at the least."""


@dataclass(frozen=True)
class VerificationKey:
    key: PublicKey
    kid: str | None = None
    algorithm: str | None = None
    """The JWK's ``alg`` member; None lets every algorithm the key fits use it."""

    def usable_with(self, algorithm: str) -> bool:
        return self.algorithm in (None, algorithm) and key_fits(algorithm, self.key)


@dataclass(frozen=True)
class KeyMatch:
    """Keys that may have signed a token. With no keys, ``unavailable`` says whether that
    is because the store could not load its keys (503) rather than an unknown key (401)."""

    keys: tuple[VerificationKey, ...]
    unavailable: str | None = None


def parse_jwks(document: Mapping[str, Any], max_keys: int) -> list[VerificationKey]:
    """Usable signature keys of a JWKS document, at most ``max_keys``; others are skipped."""
    raw_keys = document.get("keys")
    if not isinstance(raw_keys, list):
        raise FetchError("JWKS document has no 'keys' list")
    keys: list[VerificationKey] = []
    for index, jwk in enumerate(raw_keys):
        try:
            key = _jwk_key(jwk)
        except (ValueError, jwt.PyJWTError) as error:
            log.info("JWKS key %d skipped: %s", index, error)
            continue
        if len(keys) == max_keys:
            log.warning("JWKS has more than %d usable keys; the rest are ignored", max_keys)
            break
        keys.append(key)
    return keys


def _jwk_key(jwk: Any) -> VerificationKey:
    if not isinstance(jwk, Mapping):
        raise ValueError("not a JSON object")
    if jwk.get("kty") not in ("RSA", "EC", "OKP"):
        raise ValueError(f"key type {jwk.get('kty')!r} is not an asymmetric signature key")
    if "d" in jwk:
        raise ValueError("a private key was published; refusing it")
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"use is {jwk.get('use')!r}, not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ValueError("key_ops does not include 'verify'")
    algorithm = jwk.get("alg")
    if algorithm is not None and algorithm not in SUPPORTED_ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r} is not supported")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid is not a string")
    key = jwt.PyJWK(dict(jwk)).key
    if not any(key_fits(name, key) for name in SUPPORTED_ALGORITHMS):
        raise ValueError(f"{type(key).__name__} is not a supported public key (RSA < 2048 bits?)")
    return VerificationKey(key, kid, algorithm)


class KeyStore:
    """Cached verification keys for one ``KeySettings``; see the module docstring.

    ``clock`` times the refetch limit and every wait (tests move a fake one by hand)."""

    def __init__(self, settings: KeySettings, clock: Clock = REAL_CLOCK) -> None:
        self.settings = settings
        self._clock = clock
        self._static = tuple(
            VerificationKey(load_public_pem(pem, f"public_keys[{index}]"))
            for index, pem in enumerate(settings.public_keys)
        )
        self._remote: tuple[VerificationKey, ...] = ()
        self._loaded = False
        self._error: str | None = "keys not fetched yet" if settings.remote else None
        self._jwks_uri: str | None = None
        self._fetching = settings.remote
        self._last_started = clock.monotonic()
        self._started = 1 if settings.remote else 0
        """Sequence number of the latest fetch started; fetches run one at a time."""
        self._finished = 0
        """Sequence number of the latest fetch finished (successfully or not)."""
        self._closed = False
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        if settings.remote:
            self._thread = threading.Thread(
                target=self._run, name="cilium-identity-jwks", daemon=True
            )
            self._thread.start()

    def ready(self) -> bool:
        """True when the store holds keys from every configured source."""
        return not self.settings.remote or self._loaded

    def keys_for(self, kid: str | None, algorithm: str) -> KeyMatch:
        """Keys that fit ``algorithm`` and ``kid``; an unknown kid may wait for one refetch.

        The wait is for a fetch that started after this call arrived (a fetch already
        running may predate the key), bounded by ``fetch_timeout`` in total.
        """
        keys = self._match(kid, algorithm)
        if keys or not self.settings.remote:
            return KeyMatch(keys)
        deadline = self._clock.monotonic() + self.settings.fetch_timeout
        with self._cond:
            arrived = self._started
            while self._finished <= arrived and not self._closed:
                if not self._fetching:
                    if not self._refetch_allowed():
                        break
                    self._start_fetch()
                target = self._started
                done = self._clock.wait_for(
                    self._cond,
                    functools.partial(self._caught_up, target),
                    max(0.0, deadline - self._clock.monotonic()),
                )
                keys = self._match(kid, algorithm)
                if keys:
                    return KeyMatch(keys)
                if not done:
                    return KeyMatch((), "the key refetch did not finish in time")
            return KeyMatch((), "key store closed" if self._closed else self._error)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.settings.fetch_timeout + 1.0)

    def _match(self, kid: str | None, algorithm: str) -> tuple[VerificationKey, ...]:
        return tuple(
            key
            for key in (*self._remote, *self._static)
            if (kid is None or key.kid in (None, kid)) and key.usable_with(algorithm)
        )

    def _caught_up(self, target: int) -> bool:
        return self._finished >= target or self._closed

    def _refetch_allowed(self) -> bool:
        elapsed = self._clock.monotonic() - self._last_started
        return elapsed >= self.settings.min_refetch_interval

    def _start_fetch(self) -> None:
        """Called with the lock held: hand one fetch to the background thread."""
        self._mark_started()
        self._wake.set()

    def _mark_started(self) -> None:
        self._fetching = True
        self._started += 1
        self._last_started = self._clock.monotonic()

    def _run(self) -> None:
        rediscover = True
        while not self._closed:
            self._refresh(rediscover)
            with self._cond:
                failing = self._error is not None
            interval = self.settings.refresh_interval
            if failing:
                interval = min(interval, max(self.settings.min_refetch_interval, MIN_RETRY))
            requested = self._clock.wait(self._wake, interval)
            self._wake.clear()
            rediscover = not requested
            with self._cond:
                if self._closed:
                    return
                if not self._fetching:
                    self._mark_started()

    def _refresh(self, rediscover: bool) -> None:
        try:
            if rediscover or self._jwks_uri is None:
                self._jwks_uri = resolve_jwks_uri(self.settings)
            keys = parse_jwks(fetch_json(self._jwks_uri, self.settings), self.settings.max_keys)
            error = None
        except FetchError as failure:
            keys, error = [], str(failure)
            log.warning("cilium-identity: JWKS refresh failed: %s", error)
        except Exception as failure:  # a bug must not kill the thread and freeze the store
            keys, error = [], f"{type(failure).__name__}: {failure}"
            log.exception("cilium-identity: JWKS refresh failed unexpectedly")
        metrics.jwks_refreshed(error is None)
        with self._cond:
            if error is None:
                self._remote = tuple(keys)
                self._loaded = True
            self._error = error
            self._fetching = False
            self._finished = self._started
            self._cond.notify_all()


KEY_STORES: SharedPool[KeySettings, KeyStore] = SharedPool(KeyStore, KeyStore.close)
"""Process-wide key stores, one per KeySettings, shared by every plugin instance."""
