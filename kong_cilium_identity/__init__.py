"""Kong Gateway plugin that binds the authenticated consumer to the caller pod's Cilium identity."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kong-cilium-identity")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
