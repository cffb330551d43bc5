#!/usr/bin/env python3
"""Test plugin: allows a request only with a valid UTF-8 ``x-token: open`` header.

On allow it marks ``kong.ctx.shared`` like cilium-identity does for the Kong-side guard.
``config.marker``: a file the instance's ``close()`` writes (CloseInstance must call it).
``config.init_sleep``: seconds the constructor takes (a slow StartInstance).
Works in both return conventions.
"""

import time

from kong_cilium_identity.kong import pdk

version = "0.1.0"
priority = 1000
Schema = (
    {"marker": {"type": "string"}},
    {"init_sleep": {"type": "number", "default": 0}},
)


class Plugin:
    def __init__(self, config):
        self.marker = config.get("marker")
        time.sleep(config["init_sleep"])

    def access(self, kong):
        headers = pdk.call(kong.request.get_headers)
        token = pdk.text(headers.get("x-token"))
        if token != "open":
            kong.response.error(403, "invalid token")
            return
        pdk.call(kong.ctx.shared.set, "cilium_identity_decided", True)

    def close(self):
        if self.marker:
            with open(self.marker, "w") as marker:
                marker.write("closed")
