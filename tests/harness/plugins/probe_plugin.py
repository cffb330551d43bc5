#!/usr/bin/env python3
"""Test plugin: runs the PDK script in ``config.script`` (a JSON list of steps).

Steps: ``["call", method, *args]`` (result kept), ``["raise"]``, ``["sleep", seconds]``,
``["report"]`` (sends the kept results upstream as ``x-probe``: one more PDK call).
A ``kong.response.exit``/``error`` call ends the script, as it does for a real plugin.
``config.fail_init`` makes the instance constructor raise (StartInstance error).
"""

import functools
import json
import time
from typing import Any

version = "0.1.0"
priority = 10
Schema = (
    {"script": {"type": "string", "default": "[]"}},
    {"fail_init": {"type": "boolean", "default": False}},
)
TERMINAL = ("kong.response.exit", "kong.response.error")


def _json_safe(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    return value


class Plugin:
    def __init__(self, config: dict[str, Any]) -> None:
        if config.get("fail_init"):
            raise RuntimeError("probe refuses to start")
        self.script = json.loads(config["script"])

    def access(self, kong: Any) -> None:
        results: list[Any] = []
        for step in self.script:
            op = step[0]
            if op == "raise":
                raise RuntimeError("probe raised on purpose")
            if op == "sleep":
                time.sleep(step[1])
            elif op == "report":
                kong.service.request.set_header(
                    "x-probe", json.dumps(results, default=_json_safe, sort_keys=True)
                )
            elif op == "call":
                method, args = step[1], step[2:]
                func = functools.reduce(getattr, method.split(".")[1:], kong)
                results.append(func(*args))
                if method in TERMINAL:
                    return


if __name__ == "__main__":
    from kong_pdk.cli import start_dedicated_server

    start_dedicated_server("probe", Plugin, version, priority, Schema)
