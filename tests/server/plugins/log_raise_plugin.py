#!/usr/bin/env python3
"""Test plugin: the access phase passes, the log phase raises after one PDK call."""

version = "0.1.0"
priority = 10
Schema = ()


class Plugin:
    def __init__(self, config):
        self.config = config

    def access(self, kong):
        return None

    def log(self, kong):
        kong.log.serialize()
        raise RuntimeError("log phase failed on purpose")
