#!/usr/bin/env python3
"""Test plugin: passes Kong a PDK argument msgpack cannot encode (a set) - a plugin bug."""

version = "0.1.0"
priority = 10
Schema = ()


class Plugin:
    def __init__(self, config):
        self.config = config

    def access(self, kong):
        kong.client.get_ip()
        kong.service.request.set_header("x-roles", {"admin", "ops"})
