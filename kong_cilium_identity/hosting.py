"""What the process hosting the plugin tells plugin code about itself.

Our plugin server (``kong-cilium-identity serve``) records its event deadline here when it
starts, so that the plugin can refuse configurations whose waits cannot fit in it. Under
stock ``kong-python-pluginserver`` nothing sets it and it stays None. This module imports
nothing, so the plugin can read it without importing the server.
"""

from __future__ import annotations

# `serve --event-deadline` default: seconds before an event is answered with a 500.
DEFAULT_EVENT_DEADLINE = 10.0

_event_deadline: float | None = None


def event_deadline() -> float | None:
    """Seconds the serving process gives a request between two messages to Kong, or None
    when the plugin is not served by ``kong-cilium-identity serve``."""
    return _event_deadline


def set_event_deadline(seconds: float | None) -> None:
    global _event_deadline
    _event_deadline = seconds
