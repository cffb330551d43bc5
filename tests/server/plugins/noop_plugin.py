#!/usr/bin/env python3
"""Test plugin: an access phase that makes no PDK call (the cheapest possible event)."""

version = "0.1.0"
priority = 10
Schema = ()


class Plugin:
    def __init__(self, config):
        self.config = config

    def access(self, kong):
        return None
