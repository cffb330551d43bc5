"""A clock the test moves by hand (see ``kong_cilium_identity.clock``).

Waits on it end when what they wait for happens (checked every few real milliseconds) or
when ``advance`` moves the time past their deadline, never because real time went by. A
wait that nothing ends within ``SAFETY`` real seconds fails the test instead of hanging it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as futures_wait
from typing import TypeVar

T = TypeVar("T")

POLL = 0.002
SAFETY = 10.0


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Condition()
        self._waiting = 0

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            self._lock.notify_all()

    def waiting(self) -> int:
        """Threads blocked in a wait on this clock now."""
        with self._lock:
            return self._waiting

    def until_waiting(self, count: int) -> None:
        """Block (in real time, bounded) until ``count`` threads wait on this clock."""
        give_up = time.monotonic() + SAFETY
        with self._lock:
            while self._waiting < count:
                if time.monotonic() > give_up:
                    raise AssertionError(f"{self._waiting} waiters, expected {count}")
                self._lock.wait(POLL)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return self._until(event.is_set, timeout, lambda: event.wait(POLL))

    def wait_for(
        self, condition: threading.Condition, predicate: Callable[[], bool], timeout: float
    ) -> bool:
        return self._until(predicate, timeout, lambda: condition.wait(POLL))

    def result(self, future: Future[T], timeout: float) -> T:
        if not self._until(future.done, timeout, lambda: futures_wait([future], POLL)):
            raise FutureTimeout()
        return future.result()

    def _until(self, done: Callable[[], bool], timeout: float, pause: Callable[[], object]) -> bool:
        deadline = self.monotonic() + timeout
        give_up = time.monotonic() + SAFETY
        with self._lock:
            self._waiting += 1
            self._lock.notify_all()
        try:
            while not done():
                if self.monotonic() >= deadline:
                    return False
                if time.monotonic() > give_up:
                    raise AssertionError("a wait on the fake clock was never ended")
                pause()
            return True
        finally:
            with self._lock:
                self._waiting -= 1
                self._lock.notify_all()
