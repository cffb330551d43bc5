"""The ``kong`` object plugin code receives: kong-pdk's proxy semantics on our transport.

Any attribute path is a PDK method (``kong.client.get_ip`` -> ``"kong.client.get_ip"``);
calling it sends ``{"Method", "Args"}`` to Kong and blocks until Kong answers. Returns
follow kong-pdk: ``(data, err)`` tuples by default (Lua style), or the data with errors
raised as :class:`kong_pdk.exception.PDKException` (``--no-lua-style``);
``kong.response.exit``/``error`` return None at once; ``kong.log.*`` arguments other than
str/int/list/dict are sent as ``str()``.

The proxy holds no per-event state: one tree serves every event, and a call finds its event
through the current greenlet. A call from any other thread (say, a background thread the
plugin started) has no event and raises.
"""

from __future__ import annotations

from typing import Any

from greenlet import getcurrent
from kong_pdk.exception import PDKException

from kong_cilium_identity.server.events import EVENT_ATTRIBUTE, Event


class KongProxy:
    """One node of the ``kong`` attribute tree; children are created once and cached."""

    # Plugin code may end its event with a settling call (protocol.SETTLING_METHODS): this
    # server answers Kong's possible last Step itself. kong-pdk's server would block.
    settling_calls = True

    def __init__(self, path: str) -> None:
        self._path = path

    def __getattr__(self, name: str) -> KongProxy:
        if name.startswith("__"):  # keep copy/pickle/inspection protocols sane
            raise AttributeError(name)
        child = KongProxy(f"{self._path}.{name}")
        self.__dict__[name] = child
        return child

    def __call__(self, *args: Any) -> Any:
        event: Event | None = getattr(getcurrent(), EVENT_ATTRIBUTE, None)
        if event is None:
            raise PDKException(f"{self._path}: the PDK is only available to plugin code")
        return event.pdk_call(self._path, args)

    def __repr__(self) -> str:
        return f"<PDK {self._path}>"


def new_kong() -> KongProxy:
    return KongProxy("kong")


def pdk_exception(message: str) -> BaseException:
    error: BaseException = PDKException(message)
    return error
