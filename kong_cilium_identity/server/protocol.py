"""Kong's msgpack-RPC plugin protocol: method names, message shapes, error wording.

A request is ``[0, msgid, "plugin.<Method>", [params...]]`` and its reply
``[1, msgid, error | None, result | None]``. An event runs as ``HandleEvent`` followed by
one ``Step*`` per PDK call; each reply carries ``{"EventId", "Data"}`` where ``Data`` is the
plugin's next PDK call ``{"Method", "Args"}`` or ``"ret"`` when the phase returned.
"""

from __future__ import annotations

from typing import Any, Final

from kong_cilium_identity.kong_contract import APPLY_METHOD

REQUEST: Final = 0
RESPONSE: Final = 1

HANDLE_EVENT: Final = "plugin.HandleEvent"
START_INSTANCE: Final = "plugin.StartInstance"
CLOSE_INSTANCE: Final = "plugin.CloseInstance"
INSTANCE_STATUS: Final = "plugin.InstanceStatus"
GET_STATUS: Final = "plugin.GetStatus"
GET_PLUGIN_INFO: Final = "plugin.GetPluginInfo"
STEP: Final = "plugin.Step"
STEP_ERROR: Final = "plugin.StepError"
# Kong picks the variant by PDK method; the payload is the same for all of them.
STEP_VARIANTS: Final = frozenset(
    {
        STEP,
        "plugin.StepConsumer",
        "plugin.StepCredential",
        "plugin.StepRoute",
        "plugin.StepService",
        "plugin.StepPlugin",
        "plugin.StepMemoryStats",
        "plugin.StepMultiMap",
    }
)

RETURNED: Final = "ret"
TERMINAL_METHODS: Final = frozenset({"kong.response.exit", "kong.response.error"})
# Calls that end the plugin's part of the event but that Kong may still answer: the
# cilium-identity-guard companion's ``apply`` either ends the request inside Kong (no Step
# follows) or returns, and Kong then sends one more Step, answered with "ret".
SETTLING_METHODS: Final = frozenset({APPLY_METHOD})
ENDING_METHODS: Final = TERMINAL_METHODS | SETTLING_METHODS
# Phases kong-pdk detects on a Plugin class, in kong-pdk's order.
PHASES: Final = ("certificate", "rewrite", "log", "access", "preread", "response")
# Phases that run after the response is sent: refusing the request is no longer possible.
AFTER_RESPONSE_PHASES: Final = frozenset({"log"})

FAIL_CLOSED: Final[dict[str, Any]] = {"Method": "kong.response.error", "Args": [500]}


def fail_closed_for(phase: str) -> dict[str, Any] | str:
    """What Kong is told when plugin code failed in ``phase``: end the request with a 500,
    or, once the response is gone (log phase), just end the event."""
    return RETURNED if phase in AFTER_RESPONSE_PHASES else FAIL_CLOSED


def no_instance(instance_id: object) -> str:
    """Kong matches "no plugin instance" and then restarts its instances."""
    return f"no plugin instance #{instance_id}"


def event_not_found(event_id: object) -> str:
    return f"event id {event_id} not found"


def event_result(event_id: Any, data: Any) -> dict[str, Any]:
    return {"EventId": event_id, "Data": data}
