"""Do a plugin config's waits fit in the event deadline? (a pure check, no I/O)

When a request waits longer than the plugin server's event deadline, the server answers
Kong with a 500 at the deadline, so a hung source gives 500 instead of the 503
``source_unavailable`` the plugin would have decided. This module works out the longest
a request can wait between two messages to Kong and names the fields that make it too long.

The worst case, from the code that waits:

- Identity sources are asked one after another, never in parallel (``Resolver.lookup``).
  Without ``require_agreement`` the chain moves on when a source is unavailable, so when
  every remote source hangs, each is asked and each costs ``lookup_timeout``. With
  ``require_agreement`` every source is always asked, also in turn: the same worst case.
- Only remote sources wait (``agent``, ``hubble``: ``CachedSource`` bounds each call to
  ``lookup_timeout``); in-memory indexes (``static``, ``kubernetes``) answer at once.
  A source kind not listed here is assumed to wait.
- The token check waits at most ``token.fetch_timeout`` for a key refetch when the keys
  are fetched (``jwks_uri`` or ``discovery_url``); PEM keys never wait.
- Today a PDK call (``get_ip``) separates the token check from the lookup, so each wait
  has the whole deadline to itself; a request path that gathers all facts in one read
  runs both between the same two messages. The check assumes the latter: the sum must fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from kong_cilium_identity.schema import Config

LOCAL_SOURCES: Final = frozenset({"static", "kubernetes"})
KONG_READ_TIMEOUT: Final = 60.0
"""What Kong waits for a reply when no deadline of ours applies (stock kong-pdk): past it
Kong logs the error and proxies the request."""
MIN_MARGIN: Final = 0.25
MARGIN_SHARE: Final = 0.1
"""Kept free of waits: plugin code around them, PDK round trips, a busy machine."""


@dataclass(frozen=True)
class Worst:
    """The longest waits of one request for a config."""

    waiting_sources: tuple[str, ...]  # asked in turn, each up to lookup_timeout
    lookup_timeout: float
    token_wait: float  # token.fetch_timeout when keys are fetched, else 0

    @property
    def lookup_wait(self) -> float:
        return len(self.waiting_sources) * self.lookup_timeout

    @property
    def total(self) -> float:
        return self.lookup_wait + self.token_wait


def worst_case(config: Config) -> Worst:
    resolver = config.resolver
    waiting = tuple(name for name, _ in resolver.sources if name not in LOCAL_SOURCES)
    keys = config.token.keys
    token_wait = keys.fetch_timeout if config.token.enabled and keys.remote else 0.0
    return Worst(waiting, resolver.timeout, token_wait)


def margin(deadline: float) -> float:
    return max(MIN_MARGIN, deadline * MARGIN_SHARE)


def timeout_violations(config: Config, event_deadline: float | None) -> list[str]:
    """Why ``config``'s waits cannot fit in ``event_deadline`` (None: Kong's own 60 s read
    timeout, as under stock kong-pdk); an empty list when they fit. Each message names
    the fields to change."""
    deadline = KONG_READ_TIMEOUT if event_deadline is None else event_deadline
    room = deadline - margin(deadline)
    where = (
        f"the event deadline {_s(deadline)} (serve --event-deadline)"
        if event_deadline is not None
        else f"Kong's {_s(deadline)} plugin-socket read timeout"
    )
    fits = f"does not fit in {where} minus a {_s(margin(deadline))} margin ({_s(room)})"
    worst = worst_case(config)
    lookup = _lookup_text(worst, config.resolver.require_agreement)
    token = f"token.fetch_timeout {_s(worst.token_wait)}"
    problems: list[str] = []
    if worst.lookup_wait > 0 and worst.lookup_wait > room:
        problems.append(f"{lookup} {fits}")
    if worst.token_wait > 0 and worst.token_wait > room:
        problems.append(f"{token} {fits}")
    if not problems and worst.lookup_wait > 0 and worst.token_wait > 0 and worst.total > room:
        problems.append(f"{lookup} + {token} = {_s(worst.total)} {fits}")
    return problems


def _lookup_text(worst: Worst, require_agreement: bool) -> str:
    count = len(worst.waiting_sources)
    asked = "asked in turn" + (", require_agreement" if require_agreement else "")
    return (
        f"lookup_timeout ({_s(worst.lookup_timeout)}) x {count} remote "
        f"source{'' if count == 1 else 's'} ({', '.join(worst.waiting_sources)}; {asked})"
        f" = {_s(worst.lookup_wait)}"
    )


def _s(seconds: float) -> str:
    return f"{seconds:g} s"
