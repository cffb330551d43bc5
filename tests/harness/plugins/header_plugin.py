#!/usr/bin/env python3
"""Test plugin: a realistic header-setting plugin with schema defaults and a log phase.

access: reads the consumer, credential, headers, route and service, then sets upstream
headers; it also reports the config it was started with (``x-config``).
log: checks that ``kong.log.serialize()`` arrives as a JSON string.
"""

import json
from typing import Any

version = "1.2.3"
priority = 1000
Schema = (
    {"header": {"type": "string", "default": "x-consumer-id"}},
    {"mode": {"type": "string", "default": "enforce", "one_of": ["enforce", "monitor"]}},
    {
        "limits": {
            "type": "record",
            "fields": [
                {"max": {"type": "integer", "default": 5, "between": [1, 10]}},
                {"note": {"type": "string"}},
            ],
        }
    },
    {"tags": {"type": "array", "elements": {"type": "string"}}},
)


class Plugin:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def access(self, kong: Any) -> None:
        consumer = kong.client.get_consumer()
        kong.client.get_credential()
        headers = kong.request.get_headers()
        kong.router.get_route()
        kong.router.get_service()
        missing = kong.ctx.shared.get("missing")
        consumer_id = consumer["id"] if consumer else "anonymous"
        kong.service.request.set_header(self.config["header"], consumer_id)
        kong.service.request.set_headers(
            {
                "x-config": json.dumps(self.config, sort_keys=True),
                "x-seen-headers": json.dumps(headers, sort_keys=True),
                "x-missing": repr(missing),
            }
        )

    def log(self, kong: Any) -> None:
        serialized = kong.log.serialize()
        kong.log.notice("serialize type: ", type(serialized).__name__)


if __name__ == "__main__":
    from kong_pdk.cli import start_dedicated_server

    start_dedicated_server("header-plugin", Plugin, version, priority, Schema)
