"""Threads, the event loop and the supervisor.

One *owner* thread runs the event loop: it reads every connection, dispatches requests and
runs plugin code in per-event greenlets (see ``events.py``), so an RPC costs a greenlet switch
rather than a thread hand-off. All shared state is guarded by one lock, which is released
while plugin code runs and while the loop waits in ``select``.

Plugin code that blocks cannot stall the server: when the owner has been inside plugin code
for longer than ``stall_after``, the supervisor hands the loop to a fresh thread and the old
thread becomes *detached*. A detached thread keeps the greenlets it created (a greenlet
cannot move between threads); the loop forwards their Steps through the thread's inbox, and
the thread ends once its last event is done. Threads are created only on such stalls, never
per event.

For a while after a stall (``SPREAD_AFTER_STALL``), new events are started on a small pool
of other threads instead of the loop thread, so that plugin code that blocks runs in
parallel instead of queueing behind one stuck thread; their Steps reach them through their
inboxes (one thread hand-off per RPC, the price of blocking code). Pool threads end after
``POOL_LINGER`` seconds without events.

Every Kong request we owe a reply is a :class:`Pending`; when one is older than
``event_deadline`` the supervisor answers it itself: ``kong.response.error(500)`` for an
event (the event is abandoned and its late PDK calls raise :class:`EventAbandoned`), an error
string for instance management. Kong never waits for its 60 s read timeout, which would
proxy the request unenforced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kong_cilium_identity.ops import metrics
from kong_cilium_identity.server import protocol
from kong_cilium_identity.server.events import (
    Event,
    EventAbandoned,
    EventTable,
    Outcome,
    State,
    Worker,
)
from kong_cilium_identity.server.instances import Instance, InstanceTable, PluginSpec
from kong_cilium_identity.server.pdk_bridge import new_kong, pdk_exception
from kong_cilium_identity.server.transport import NO_MESSAGE, Connection, Listener, Malformed

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")

SWEEP_INTERVAL = 1.0
# Messages one connection may have dispatched per loop turn. Kong never pipelines (one
# request per connection, then it waits for the reply), so only a peer that floods the
# socket ever reaches this; the rest of its batch waits for the next turn, after every
# other ready connection had its turn.
MESSAGES_PER_TURN = 16
UNWIND_ATTEMPTS = 3
SPREAD_AFTER_STALL = 10.0
POOL_LINGER = 5.0


@dataclass(frozen=True)
class Limits:
    """Timing and size limits of the runtime (see docs/server.md)."""

    event_deadline: float = 10.0
    stall_after: float = 0.025
    idle_event_limit: float = 300.0
    max_threads: int = 64
    max_backlog: int = 1 << 20  # bytes of unsent replies a connection may hold
    drain_timeout: float = 5.0  # seconds unsent replies may wait without any progress


class Pending:
    """A Kong request we owe a reply to."""

    __slots__ = ("answered", "conn", "event", "msgid", "since", "timeout_error")

    def __init__(
        self, conn: Connection, msgid: Any, event: Event | None, timeout_error: str
    ) -> None:
        self.conn = conn
        self.msgid = msgid
        self.event = event
        self.timeout_error = timeout_error
        self.since = time.monotonic()
        self.answered = False


class Runtime:
    def __init__(
        self, spec: PluginSpec, listener: Listener, *, lua_style: bool, limits: Limits
    ) -> None:
        self.spec = spec
        self.listener = listener
        self.lua_style = lua_style
        self.limits = limits
        self.lock = threading.Lock()
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener.sock, selectors.EVENT_READ, None)
        self.instances = InstanceTable()
        self.events = EventTable()
        metrics.count_in_flight(self.events.__len__)
        self.pending: set[Pending] = set()
        self.backlogged: set[Connection] = set()  # connections with unsent replies
        self.carryover: set[Connection] = set()  # connections with undispatched messages
        self.kong = new_kong()
        self.stopping = False
        self.fatal = False
        self.spread_until = 0.0
        self._workers_made = 0
        self.workers: set[Worker] = set()
        self.owner = self._new_worker()
        self._handlers: dict[str, Callable[[Worker, Connection, Any, list[Any]], None]] = {
            protocol.HANDLE_EVENT: self._handle_event,
            protocol.STEP_ERROR: self._step_error,
            protocol.START_INSTANCE: self._start_instance,
            protocol.CLOSE_INSTANCE: self._close_instance,
            protocol.INSTANCE_STATUS: self._instance_status,
            protocol.GET_STATUS: self._get_status,
            protocol.GET_PLUGIN_INFO: self._get_plugin_info,
        }
        for step in protocol.STEP_VARIANTS:
            self._handlers[step] = self._step

    # ------------------------------------------------------------------ threads

    def start(self) -> None:
        self._start_thread(self.owner)

    def _new_worker(self) -> Worker:
        self._workers_made += 1
        worker = Worker(self._workers_made)
        self.workers.add(worker)
        return worker

    def _start_thread(self, worker: Worker) -> None:
        threading.Thread(
            target=self._serve, args=(worker,), name=f"plugin-{worker.number}", daemon=True
        ).start()

    def _serve(self, worker: Worker) -> None:
        with self.lock:
            try:
                if worker is self.owner:
                    self._loop(worker)
                self._drain(worker)
            except BaseException:
                log.critical("plugin server thread failed", exc_info=True)
                self.fatal = True
                raise
            finally:
                self.workers.discard(worker)

    def _run(self, worker: Worker, code: Callable[[A], T], arg: A) -> T:
        """Run plugin code with the lock released; the supervisor watches the clock."""
        worker.busy_since = time.monotonic()
        self.lock.release()
        try:
            return code(arg)
        finally:
            self.lock.acquire()
            worker.busy_since = None

    def _loop(self, worker: Worker) -> None:
        last_sweep = time.monotonic()
        while self.owner is worker and not self.stopping:
            self.lock.release()
            try:
                ready = self.selector.select(0 if self.carryover else SWEEP_INTERVAL)
            finally:
                self.lock.acquire()
            served: set[Connection] = set()
            for key, mask in ready:
                if self.owner is not worker or self.stopping:
                    return  # the new owner's select reports the rest again
                if key.data is None:
                    self._accept()
                    continue
                conn: Connection = key.data
                if mask & selectors.EVENT_WRITE:
                    conn.flush()
                if mask & selectors.EVENT_READ:
                    served.add(conn)
                    self._read(worker, conn)
            for conn in list(self.carryover - served):
                if self.owner is not worker or self.stopping:
                    return
                self._read(worker, conn)
            now = time.monotonic()
            if now - last_sweep >= SWEEP_INTERVAL:
                last_sweep = now
                self._sweep(worker)

    def _drain(self, worker: Worker) -> None:
        """A detached or pool worker serves the events whose greenlets it holds, then ends."""
        while (worker.events or time.monotonic() < worker.linger_until) and not self.stopping:
            self.lock.release()
            try:
                item = worker.inbox.get(timeout=SWEEP_INTERVAL)
            except queue.Empty:
                item = None
            finally:
                self.lock.acquire()
            if item is None:
                self._sweep(worker)
                continue
            event, value = item
            if event.state is State.RUNNING:
                self._advance(worker, event, value)
            else:
                self._unwind(worker, event)

    # ------------------------------------------------------------------ supervisor

    def check(self) -> None:
        """Deadlines, stalls and peers that stopped reading; called by the supervisor with
        the lock held. Nothing here waits for a peer."""
        now = time.monotonic()
        for conn in list(self.backlogged):
            if conn.stalled(now):
                conn.abort(f"no reply byte was read for {self.limits.drain_timeout:g}s")
        for pending in list(self.pending):
            if now - pending.since > self.limits.event_deadline:
                self._expire(pending)
        busy_since = self.owner.busy_since
        if busy_since is not None and now - busy_since > self.limits.stall_after:
            self._migrate(now - busy_since)

    def _expire(self, pending: Pending) -> None:
        event = pending.event
        metrics.deadline_hit(event.phase if event is not None else "instance")
        if event is None:
            log.error("%s; answering Kong with an error", pending.timeout_error)
            self._answer_error(pending, pending.timeout_error)
            return
        log.error(
            "event %s (%s) exceeded the %gs deadline; the request is refused",
            event.id,
            event.phase,
            self.limits.event_deadline,
        )
        self._answer(
            pending, protocol.event_result(event.id, protocol.fail_closed_for(event.phase))
        )
        event.state = State.ABANDONED
        self._forget(None, event)

    def _migrate(self, stalled_for: float) -> None:
        if len(self.workers) >= self.limits.max_threads:
            if stalled_for > self.limits.event_deadline:
                log.critical(
                    "%d threads are stuck in plugin code; exiting so that Kong restarts us",
                    len(self.workers),
                )
                self.fatal = True
            return
        log.info("plugin code held the event loop for %.3fs; moving the loop", stalled_for)
        self.spread_until = time.monotonic() + SPREAD_AFTER_STALL
        self.owner = self._new_worker()
        self._start_thread(self.owner)

    # ------------------------------------------------------------------ requests

    def _accept(self) -> None:
        for sock in self.listener.accept_all():
            conn = Connection(
                sock,
                max_backlog=self.limits.max_backlog,
                drain_timeout=self.limits.drain_timeout,
                watch=self._watch_backlog,
            )
            self.selector.register(conn, selectors.EVENT_READ, conn)
            metrics.connection_opened()

    def _watch_backlog(self, conn: Connection, backlogged: bool) -> None:
        """Backpressure: while ``conn`` has unsent replies its peer is not reading, so the
        loop stops reading its requests and waits for writability instead; once the
        outbox drains, buffered requests are served again. Any thread may call this (with
        the lock held); epoll takes the change even mid-wait. A hang-up is reported
        whatever the interest, so a closed or aborted connection is still seen."""
        if backlogged:
            self.backlogged.add(conn)
            self.carryover.discard(conn)
        else:
            self.backlogged.discard(conn)
            if conn.buffered:
                self.carryover.add(conn)
        if not conn.closed:
            events = selectors.EVENT_WRITE if backlogged else selectors.EVENT_READ
            self.selector.modify(conn, events, conn)

    def _read(self, worker: Worker, conn: Connection) -> None:
        """Dispatch up to MESSAGES_PER_TURN messages; read the socket only once the
        messages already buffered are done. Nothing is dispatched for a connection whose
        earlier replies are still unsent (see _watch_backlog)."""
        if conn.closed or (not conn.outbox and not conn.buffered and not conn.fill()):
            self._close(conn)
            return
        for _ in range(MESSAGES_PER_TURN):
            if conn.closed:
                self._close(conn)
                return
            if conn.outbox:
                return  # resumed by _watch_backlog once the peer reads
            try:
                message = conn.next_message()
            except Malformed as error:
                log.warning("closing a connection that sent malformed msgpack: %s", error)
                self._close(conn)
                return
            if message is NO_MESSAGE:
                self.carryover.discard(conn)
                return
            if not self._dispatch(worker, conn, message):
                self._close(conn)
                return
        self.carryover.add(conn)

    def _close(self, conn: Connection) -> None:
        """Forget a connection; only the loop thread calls this (other threads abort())."""
        self.carryover.discard(conn)
        self.backlogged.discard(conn)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        conn.close()
        metrics.connection_closed()

    def _dispatch(self, worker: Worker, conn: Connection, message: Any) -> bool:
        """Handle one request; False when the connection must be dropped."""
        if (
            type(message) is not list
            or len(message) != 4
            or type(message[0]) is not int  # msgpack false or 0.0 are not the request type
            or message[0] != protocol.REQUEST
        ):
            log.warning("closing a connection that sent a non-request message")
            return False
        _, msgid, method, params = message
        handler = self._handlers.get(method) if isinstance(method, str) else None
        if handler is None:
            conn.reply_error(msgid, f"method {method!r} is not supported")
            return True
        if not isinstance(params, list):
            params = [params]
        try:
            handler(worker, conn, msgid, params)
        except Exception:
            log.exception("internal error handling %s", method)
            if method == protocol.HANDLE_EVENT or method in self._step_methods:
                conn.reply(msgid, protocol.event_result(-1, protocol.FAIL_CLOSED))
            else:
                conn.reply_error(msgid, f"internal error in {method}")
        return True

    _step_methods = protocol.STEP_VARIANTS | {protocol.STEP_ERROR}

    def _pending(
        self, conn: Connection, msgid: Any, event: Event | None = None, timeout_error: str = ""
    ) -> Pending:
        pending = Pending(conn, msgid, event, timeout_error)
        self.pending.add(pending)
        return pending

    def _answer(self, pending: Pending, result: Any) -> bool:
        """Reply once; False when the result cannot be encoded (nothing was sent)."""
        if pending.answered:
            return True
        if not pending.conn.reply(pending.msgid, result):
            return False
        pending.answered = True
        self.pending.discard(pending)
        return True

    def _answer_error(self, pending: Pending, message: str) -> None:
        if not pending.answered:
            pending.answered = True
            self.pending.discard(pending)
            pending.conn.reply_error(pending.msgid, message)

    # ------------------------------------------------------------------ events

    def _handle_event(
        self, worker: Worker, conn: Connection, msgid: Any, params: list[Any]
    ) -> None:
        request = _first_map(params)
        instance = self.instances.get(request.get("InstanceId"))
        if instance is None:
            conn.reply_error(msgid, protocol.no_instance(request.get("InstanceId")))
            return
        phase = request.get("EventName")
        event_id = self.events.new_id()
        handler = getattr(instance.plugin, phase, None) if phase in protocol.PHASES else None
        if not isinstance(phase, str) or not callable(handler):
            log.error("instance #%s has no phase %r; the request is refused", instance.id, phase)
            conn.reply(msgid, protocol.event_result(event_id, protocol.FAIL_CLOSED))
            return
        target = self._place(worker)
        event = Event(
            event_id, phase, handler, target, lua_style=self.lua_style, pdk_error=pdk_exception
        )
        self.events.add(event)
        target.events.add(event)
        event.pending = self._pending(conn, msgid, event)
        if target is worker:
            self._advance(worker, event, self.kong)
        else:
            target.inbox.put((event, self.kong))

    def _place(self, worker: Worker) -> Worker:
        """The worker a new event runs on: this one, unless plugin code stalled recently."""
        now = time.monotonic()
        if now >= self.spread_until:
            return worker
        idle = [w for w in self.workers if w is not self.owner and w.busy_since is None]
        chosen = min(idle, key=lambda w: len(w.events), default=None)
        if (chosen is None or chosen.events) and len(self.workers) < self.limits.max_threads // 2:
            chosen = self._new_worker()
            self._start_thread(chosen)
        if chosen is None:
            return worker
        chosen.linger_until = now + POOL_LINGER
        return chosen

    def _step(self, worker: Worker, conn: Connection, msgid: Any, params: list[Any]) -> None:
        self._resume(worker, conn, msgid, params, False)

    def _step_error(self, worker: Worker, conn: Connection, msgid: Any, params: list[Any]) -> None:
        self._resume(worker, conn, msgid, params, True)

    def _resume(
        self, worker: Worker, conn: Connection, msgid: Any, params: list[Any], failed: bool
    ) -> None:
        request = _first_map(params)
        event_id = request.get("EventId")
        event = self.events.get(event_id)
        if event is None and self.events.take_settled(event_id):
            conn.reply(msgid, protocol.event_result(event_id, protocol.RETURNED))
            return
        if event is None or event.state is not State.PARKED:
            # kong-pdk replies with this error and Kong then proxies the request: refuse it.
            log.warning("%s; the request is refused", protocol.event_not_found(event_id))
            conn.reply(msgid, protocol.event_result(event_id, protocol.FAIL_CLOSED))
            return
        data = request.get("Data")
        event.state = State.RUNNING
        event.pending = self._pending(conn, msgid, event)
        value = (None, data) if failed else (data, None)
        if event.worker is worker:
            self._advance(worker, event, value)
        else:
            event.worker.inbox.put((event, value))

    def _advance(self, worker: Worker, event: Event, value: Any) -> None:
        """Run the event's plugin code to its next PDK call or its end, and tell Kong."""
        if event.greenlet is None:
            event.bind()
        worker.busy_since = time.monotonic()  # _run, inlined on this hot path
        self.lock.release()
        try:
            out = event.greenlet.switch(value)
        finally:
            self.lock.acquire()
            worker.busy_since = None
        if event.state is State.ABANDONED:
            self._unwind(worker, event)
        elif event.state is State.FINISHED:
            return  # the code after exit/error ended; Kong heard all it will
        elif isinstance(out, Outcome):
            if out is Outcome.RETURNED:
                self._finish(worker, event, protocol.RETURNED)
            else:
                if out is Outcome.RAISED:
                    metrics.plugin_exception("phase")
                self._finish(worker, event, protocol.fail_closed_for(event.phase))
        elif out.get("Method") in protocol.ENDING_METHODS:
            if self._finish(worker, event, out):
                if out.get("Method") in protocol.SETTLING_METHODS:
                    self.events.settle(event.id)
                self._advance(worker, event, None)  # kong-pdk: the code runs on after exit
        elif self._send(worker, event, out):
            event.state = State.PARKED
            event.parked_at = time.monotonic()

    def _send(self, worker: Worker, event: Event, data: Any) -> bool:
        """Answer the event's pending request; data msgpack cannot carry (a plugin bug) ends
        the event with a 500 instead."""
        if self._answer(event.pending, protocol.event_result(event.id, data)):
            return True
        self._answer(event.pending, protocol.event_result(event.id, protocol.FAIL_CLOSED))
        event.state = State.ABANDONED
        self._forget(worker, event)
        self._unwind(worker, event)
        return False

    def _finish(self, worker: Worker, event: Event, data: Any) -> bool:
        if not self._send(worker, event, data):
            return False
        event.state = State.FINISHED
        self._forget(worker, event)
        return True

    def _forget(self, worker: Worker | None, event: Event) -> None:
        self.events.remove(event)
        owner = event.worker
        if event in owner.events:
            owner.events.discard(event)
            if owner is not worker:
                owner.inbox.put(None)  # a detached worker may now be done

    def _unwind(self, worker: Worker, event: Event) -> None:
        """End plugin code of an abandoned event (its PDK calls raise EventAbandoned)."""
        self._forget(worker, event)
        for _ in range(UNWIND_ATTEMPTS):
            if event.dead:
                return
            try:
                self._run(worker, _throw_abandoned, event)
            except EventAbandoned:
                return
        log.error("plugin code of event %s keeps running after it was abandoned", event.id)

    def _sweep(self, worker: Worker) -> None:
        """Drop events Kong stopped stepping (e.g. an nginx worker died mid-request)."""
        now = time.monotonic()
        for event in list(worker.events):
            if event.state is State.PARKED and now - event.parked_at > self.limits.idle_event_limit:
                log.warning(
                    "event %s got no Step for %gs; dropped", event.id, now - event.parked_at
                )
                event.state = State.ABANDONED
                self._unwind(worker, event)

    # ------------------------------------------------------------------ instances

    def _start_instance(
        self, worker: Worker, conn: Connection, msgid: Any, params: list[Any]
    ) -> None:
        request = _first_map(params)
        name = request.get("Name")
        if name != self.spec.name:
            conn.reply_error(msgid, f"{name} not initialized")
            return
        try:
            config = json.loads(request.get("Config") or "{}")
        except (TypeError, ValueError) as error:
            conn.reply_error(msgid, f"invalid config JSON: {error}")
            return
        if not isinstance(config, dict):
            conn.reply_error(msgid, "invalid config: not a JSON object")
            return
        pending = self._pending(
            conn, msgid, timeout_error=f"starting an instance of {name} exceeded the deadline"
        )
        try:
            plugin = self._run(worker, self.spec.plugin_cls, config)
        except Exception as error:
            log.exception("starting an instance of %s failed", name)
            self._answer_error(pending, f"failed to start instance: {error}")
            return
        instance = Instance(self.instances.new_id(), name, config, plugin)
        if pending.answered:  # too late: Kong was told it failed
            self._run(worker, Instance.close, instance)
            return
        self.instances.add(instance)
        log.info("instance #%s of %s started", instance.id, name)
        if not self._answer(pending, instance.status()):
            self._answer_error(pending, "instance status cannot be encoded")

    def _close_instance(
        self, worker: Worker, conn: Connection, msgid: Any, params: list[Any]
    ) -> None:
        instance_id = params[0] if params else None
        instance = self.instances.get(instance_id)
        if instance is None:
            conn.reply_error(msgid, protocol.no_instance(instance_id))
            return
        self.instances.remove(instance)
        pending = self._pending(
            conn, msgid, timeout_error=f"closing instance #{instance_id} exceeded the deadline"
        )
        self._run(worker, Instance.close, instance)
        log.info("instance #%s of %s closed", instance.id, instance.name)
        self._answer(pending, {"Name": instance.name, "Id": instance.id, "Config": instance.config})

    def _instance_status(
        self, worker: Worker, conn: Connection, msgid: Any, params: list[Any]
    ) -> None:
        instance_id = params[0] if params else None
        instance = self.instances.get(instance_id)
        if instance is None:
            conn.reply_error(msgid, protocol.no_instance(instance_id))
        else:
            conn.reply(msgid, instance.status())

    def _get_status(self, worker: Worker, conn: Connection, msgid: Any, params: list[Any]) -> None:
        spec = self.spec
        conn.reply(
            msgid,
            {
                "Pid": os.getpid(),
                "Plugins": {
                    spec.name: {
                        "Name": spec.name,
                        "Modtime": spec.loaded_at,
                        "LoadTime": spec.loaded_at,
                        "Instances": [instance.status() for instance in self.instances],
                        "LastStartInstance": self.instances.last_start,
                        "LastCloseInstance": self.instances.last_close,
                    }
                },
                # Ours, for operators and leak tests: live events and plugin threads.
                "Events": len(self.events),
                "Threads": len(self.workers),
            },
        )

    def _get_plugin_info(
        self, worker: Worker, conn: Connection, msgid: Any, params: list[Any]
    ) -> None:
        name = params[0] if params else None
        if name != self.spec.name:
            conn.reply_error(msgid, f"{name} not initialized")
        else:
            conn.reply(msgid, self.spec.info())


def _first_map(params: list[Any]) -> dict[Any, Any]:
    first = params[0] if params else None
    return first if isinstance(first, dict) else {}


def _throw_abandoned(event: Event) -> Any:
    return event.abandon_code()
