"""The real plugin server with a fault injected: lookups of 10.66.6.6 raise.

Used as Kong's start_cmd in tests to prove that an exception inside the plugin never lets
a request through.
"""

import sys
from typing import Any

from kong_cilium_identity import cli
from kong_cilium_identity.kong import access

FAULTY_ADDRESS = "10.66.6.6"
_real_lookup = access._lookup


def _exploding_lookup(resolver: Any, client_ip: str | None, *ports: Any) -> Any:
    if client_ip == FAULTY_ADDRESS:
        raise RuntimeError("injected fault")
    return _real_lookup(resolver, client_ip, *ports)


access._lookup = _exploding_lookup

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
