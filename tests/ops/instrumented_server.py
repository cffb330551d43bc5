"""The real plugin server with faults on cue, to drive every metric family end to end.

* a lookup of ``10.66.6.6`` raises inside the access phase (caught: internal_error);
* a lookup of ``10.77.7.7`` sleeps ``SLOW_SECONDS`` (past ``--event-deadline``);
* an instance whose ``header_prefix`` is ``X-Explode-`` raises out of its phase handler.
"""

import sys
import time
from typing import Any

from kong_cilium_identity import cli, plugin
from kong_cilium_identity.identity.model import Lookup
from kong_cilium_identity.kong import access

FAULTY_ADDRESS = "10.66.6.6"
SLOW_ADDRESS = "10.77.7.7"
SLOW_SECONDS = 2.5
EXPLODING_PREFIX = "X-Explode-"
_real_lookup = access._lookup
_real_handle_access = plugin.handle_access


def _lookup(resolver: Any, client_ip: str | None, *rest: Any) -> Any:
    if client_ip == FAULTY_ADDRESS:
        raise RuntimeError("injected fault")
    if client_ip == SLOW_ADDRESS:
        time.sleep(SLOW_SECONDS)
        return Lookup.unknown("kong", "slept past the deadline")
    return _real_lookup(resolver, client_ip, *rest)


def _handle_access(kong: Any, config: Any, *rest: Any) -> Any:
    if config.header_prefix == EXPLODING_PREFIX:
        raise RuntimeError("injected phase fault")
    return _real_handle_access(kong, config, *rest)


access._lookup = _lookup
plugin.handle_access = _handle_access  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
