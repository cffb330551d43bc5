"""The time source of the caches and waits on the request path, injectable for tests.

Production code uses ``REAL_CLOCK`` (``time.monotonic`` and the waits of ``threading`` and
``concurrent.futures`` themselves). Tests hand a component a clock they move by hand, so
deadlines and expiries are driven explicitly instead of by real sleeps on a busy machine.
Every wait goes through the clock: a fake clock must be able to end a wait whose deadline
it moved past.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary start; never goes back."""
        ...

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """``event.wait(timeout)``: True when the event was set."""
        ...

    def wait_for(
        self, condition: threading.Condition, predicate: Callable[[], bool], timeout: float
    ) -> bool:
        """``condition.wait_for(predicate, timeout)``, called with the condition held."""
        ...

    def result(self, future: Future[T], timeout: float) -> T:
        """``future.result(timeout)``: raises ``concurrent.futures.TimeoutError`` late."""
        ...


class RealClock:
    """The process's monotonic clock and the standard library's own waits."""

    monotonic = staticmethod(time.monotonic)  # no extra frame: caches call it on every hit

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout)

    def wait_for(
        self, condition: threading.Condition, predicate: Callable[[], bool], timeout: float
    ) -> bool:
        return condition.wait_for(predicate, timeout=timeout)

    def result(self, future: Future[T], timeout: float) -> T:
        return future.result(timeout=timeout)


REAL_CLOCK: Clock = RealClock()
