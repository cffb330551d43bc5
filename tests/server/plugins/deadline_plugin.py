#!/usr/bin/env python3
"""Test plugin: sends the serving process's event deadline upstream as ``x-deadline``."""

from kong_cilium_identity import hosting

version = "0.1.0"
priority = 10
Schema = ()


class Plugin:
    def __init__(self, config):
        self.config = config

    def access(self, kong):
        kong.service.request.set_header("x-deadline", str(hosting.event_deadline()))
