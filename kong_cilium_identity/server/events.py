"""One plugin phase call (an *event*) and the table of live events.

An event's plugin code runs in its own greenlet. A PDK call switches back to the thread's
event loop with the call as the value; the loop sends it to Kong as the reply to the pending
``HandleEvent``/``Step``, and the next ``Step`` switches back in with Kong's answer. Plugin
code therefore stays synchronous while one thread serves every event without a thread or a
queue per event.
"""

from __future__ import annotations

import enum
import logging
import queue
import secrets
from collections.abc import Callable
from typing import Any, Final

import greenlet

from kong_cilium_identity.server import protocol

log = logging.getLogger(__name__)

ID_SPACE: Final = 2**31
LOG_METHOD_PREFIX: Final = "kong.log"
EVENT_ATTRIBUTE: Final = "cilium_event"  # set on each event's greenlet
_LOG_ARG_TYPES: Final = (str, int, list, dict)


class EventAbandoned(BaseException):
    """Raised inside plugin code whose event Kong was already answered for (deadline, expiry,
    lost connection). Derives from BaseException so ``except Exception`` in plugin code does
    not swallow it; the event ends without another word to Kong."""


class Outcome(enum.Enum):
    """How the plugin's phase method ended (the greenlet's return value)."""

    RETURNED = "returned"
    RAISED = "raised"
    ABANDONED = "abandoned"


class State(enum.Enum):
    RUNNING = "running"  # plugin code runs, or a Step for it is queued: Kong waits for us
    PARKED = "parked"  # we answered with a PDK call: we wait for Kong's Step
    FINISHED = "finished"  # Kong was told "ret"/exit/error; late plugin code may still run
    ABANDONED = "abandoned"  # Kong was answered without the plugin; its PDK calls now raise


PdkError = Callable[[str], BaseException]


class Event:
    """One phase call of one plugin instance."""

    __slots__ = (
        "greenlet",
        "handler",
        "id",
        "lua_style",
        "parked_at",
        "pdk_error",
        "pending",
        "phase",
        "state",
        "worker",
    )

    def __init__(
        self,
        event_id: int,
        phase: str,
        handler: Callable[[Any], object],
        worker: Worker,
        *,
        lua_style: bool,
        pdk_error: PdkError,
    ) -> None:
        self.id = event_id
        self.phase = phase
        self.worker = worker
        self.lua_style = lua_style
        self.pdk_error = pdk_error
        self.state = State.RUNNING
        self.parked_at = 0.0
        self.pending: Any = None  # the Kong request waiting for this event's next message
        self.handler = handler
        self.greenlet: Any = None  # created by bind() on the worker's thread

    def bind(self) -> None:
        """Create the event's greenlet on the calling thread: it can only ever run there."""
        self.greenlet = greenlet.greenlet(run=_run_phase(self.handler, self.id))
        setattr(self.greenlet, EVENT_ATTRIBUTE, self)

    @property
    def dead(self) -> bool:
        """True once the plugin code ended, or when it never started."""
        return self.greenlet is None or bool(self.greenlet.dead)

    def abandon_code(self) -> Any:
        """Unwind plugin code that is parked in a PDK call (it sees EventAbandoned)."""
        return self.greenlet.throw(EventAbandoned)

    def pdk_call(self, method: str, args: tuple[Any, ...]) -> Any:
        """Called in the event's greenlet by the ``kong`` proxy."""
        state = self.state
        if state is State.ABANDONED:
            raise EventAbandoned
        if state is State.FINISHED:
            return self._after_finish(method)
        if method.startswith(LOG_METHOD_PREFIX):
            args = tuple(a if type(a) in _LOG_ARG_TYPES else str(a) for a in args)
        answer = self.greenlet.parent.switch({"Method": method, "Args": list(args)})
        if method in protocol.ENDING_METHODS:
            return None  # kong-pdk: exit/error return at once and the code runs on
        data, err = answer
        if self.lua_style:
            return data, err
        if err:
            raise self.pdk_error(f"exception from {method}: {err}")
        return data

    def _after_finish(self, method: str) -> Any:
        """A PDK call after Kong was told the event ended (code after ``exit``): Kong will
        never answer it. Logging is dropped quietly; anything else is an error."""
        if method.startswith(LOG_METHOD_PREFIX) or method in protocol.ENDING_METHODS:
            return (None, None) if self.lua_style else None
        err = f"{method}: the request already finished"
        if self.lua_style:
            return None, err
        raise self.pdk_error(err)


class Worker:
    """A thread that runs plugin code; at any time exactly one worker owns the loop."""

    __slots__ = ("busy_since", "events", "inbox", "linger_until", "number")

    def __init__(self, number: int) -> None:
        self.number = number
        self.inbox: queue.SimpleQueue[tuple[Event, Any] | None] = queue.SimpleQueue()
        self.events: set[Event] = set()
        self.busy_since: float | None = None
        self.linger_until = 0.0  # a pool worker waits this long for new events


def _run_phase(handler: Callable[[Any], object], event_id: int) -> Callable[[Any], Outcome]:
    def run(kong: Any) -> Outcome:
        try:
            handler(kong)
        except EventAbandoned:
            return Outcome.ABANDONED
        except greenlet.GreenletExit:
            raise
        except BaseException:
            log.exception("plugin code raised in event %s; the request is refused", event_id)
            return Outcome.RAISED
        return Outcome.RETURNED

    return run


class EventTable:
    """Live events by id. Ids start at a random point of the 31-bit space so that an id
    from before a restart does not name a live event of this process.

    It also remembers *settled* events (ended by a settling call, see
    ``protocol.SETTLING_METHODS``) whose last Step Kong may or may not send, for at most
    ``SETTLED_KEEP`` of them, oldest dropped first."""

    SETTLED_KEEP: Final = 65536

    def __init__(self) -> None:
        self._events: dict[int, Event] = {}
        self._settled: dict[int, None] = {}  # insertion-ordered
        self._next = secrets.randbelow(ID_SPACE)

    def __len__(self) -> int:
        return len(self._events)

    def new_id(self) -> int:
        event_id = self._next
        while event_id in self._events or event_id in self._settled:
            event_id = (event_id + 1) % ID_SPACE
        self._next = (event_id + 1) % ID_SPACE
        return event_id

    def add(self, event: Event) -> None:
        self._events[event.id] = event

    def get(self, event_id: Any) -> Event | None:
        return self._events.get(event_id) if isinstance(event_id, int) else None

    def remove(self, event: Event) -> bool:
        return self._events.pop(event.id, None) is not None

    def settle(self, event_id: int) -> None:
        """Remember an event that ended with a settling call."""
        self._settled[event_id] = None
        if len(self._settled) > self.SETTLED_KEEP:
            del self._settled[next(iter(self._settled))]

    def take_settled(self, event_id: Any) -> bool:
        """True (once) when ``event_id`` is a settled event: its last Step gets "ret"."""
        return isinstance(event_id, int) and self._settled.pop(event_id, 0) is None
