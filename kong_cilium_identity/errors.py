"""Errors shared by every subsystem (the plugin, sources, token check, operator tools)."""


class ConfigError(ValueError):
    """Plugin configuration that cannot be used; the message is shown to the operator."""
