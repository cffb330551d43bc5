"""Kong's start_cmd/query_cmd for a test plugin under one of three servers.

python launch.py {ours|stock|stock-gevent} PLUGIN_FILE NAME --dump
python launch.py {ours|stock|stock-gevent} PLUGIN_FILE NAME --kong-prefix P --socket-name S
    [--no-lua-style] [--event-deadline SECONDS] [--idle-event-limit SECONDS]
    [--max-backlog BYTES] [--drain-timeout SECONDS] [--stdin-watch auto|on|off]
    [--socket-mode OCTAL] [--socket-group GROUP]

The plugin module follows kong-pdk's contract (``Plugin``, ``Schema``, ``version``,
``priority``), so the very same module runs under stock kong-pdk and under ours.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from types import ModuleType


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("test_plugin_module", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("server", choices=["ours", "stock", "stock-gevent"])
    parser.add_argument("plugin")
    parser.add_argument("name")
    parser.add_argument("--dump", action="store_true")
    parser.add_argument("--kong-prefix", default="/tmp")
    parser.add_argument("--socket-name", default="test.socket")
    parser.add_argument("--no-lua-style", action="store_true")
    parser.add_argument("--event-deadline", type=float, default=10.0)
    parser.add_argument("--idle-event-limit", type=float, default=300.0)
    parser.add_argument("--max-backlog", type=int, default=1 << 20)
    parser.add_argument("--drain-timeout", type=float, default=5.0)
    parser.add_argument("--stdin-watch", default="auto")
    parser.add_argument("--socket-mode", default="0660")
    parser.add_argument("--socket-group")
    args = parser.parse_args()
    module = load(args.plugin)
    schema = list(getattr(module, "Schema", []))
    if args.server == "ours":
        from kong_cilium_identity.server import SocketFile, StdinWatch, plugin_info, serve
        from kong_cilium_identity.server.socket_file import parse_group, parse_mode

        meta = {"name": args.name, "version": module.version, "priority": module.priority}
        if args.dump:
            print(json.dumps([plugin_info(module.Plugin, schema=schema, **meta)]))
            return
        logging.basicConfig(
            level=logging.WARNING,
            stream=sys.stderr,
        )
        serve(
            module.Plugin,
            schema=schema,
            prefix=args.kong_prefix,
            socket_name=args.socket_name,
            lua_style=not args.no_lua_style,
            event_deadline=args.event_deadline,
            idle_event_limit=args.idle_event_limit,
            max_backlog=args.max_backlog,
            drain_timeout=args.drain_timeout,
            stdin_watch=StdinWatch(args.stdin_watch),
            socket_file=SocketFile(
                parse_mode(args.socket_mode),
                None if args.socket_group is None else parse_group(args.socket_group),
            ),
            **meta,
        )
    from kong_pdk.cli import start_dedicated_server

    sys.argv = [sys.argv[0]]
    if args.dump:
        sys.argv.append("--dump")
    else:
        sys.argv += ["--kong-prefix", args.kong_prefix, "--socket-name", args.socket_name]
        if args.no_lua_style:
            sys.argv.append("--no-lua-style")
        if args.server == "stock-gevent":
            sys.argv.append("-g")
    start_dedicated_server(args.name, module.Plugin, module.version, module.priority, schema)


if __name__ == "__main__":
    main()
