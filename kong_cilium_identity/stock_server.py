"""Runs the plugin under kong-pdk's own plugin server (threads mode)."""

from __future__ import annotations

from typing import Any

from kong_pdk.listener import UnixStreamServer
from kong_pdk.module import Module
from kong_pdk.server import PluginServer

from kong_cilium_identity import plugin


def serve(prefix: str, socket_name: str, *, lua_style: bool) -> None:
    server = PluginServer(name=f"{plugin.name} {plugin.version}", lua_style=lua_style)

    class _Module:
        Plugin: Any = plugin.Plugin
        Schema = plugin.Schema
        version = plugin.version
        priority = plugin.priority

    server.plugins[plugin.name] = Module(plugin.name, module=_Module)
    UnixStreamServer(server, prefix, sock_name=socket_name, use_gevent=False).serve_forever()
