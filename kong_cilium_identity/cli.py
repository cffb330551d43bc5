"""``kong-cilium-identity``: the dump for Kong's query_cmd and the plugin server.

kong-cilium-identity --dump
kong-cilium-identity serve --kong-prefix /usr/local/kong --socket-name cilium-identity.socket
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from kong_cilium_identity import PLUGIN_NAME

DEFAULT_SOCKET = f"{PLUGIN_NAME}.socket"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kong-cilium-identity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dump",
        action="store_true",
        help="print the plugin info JSON for Kong's query_cmd and exit",
    )
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the plugin server Kong talks to")
    serve.add_argument(
        "-p",
        "--kong-prefix",
        default="/usr/local/kong",
        help="Kong's prefix directory; the socket is created in it",
    )
    serve.add_argument(
        "--socket-name",
        default=DEFAULT_SOCKET,
        help=f"socket file name under the prefix (default {DEFAULT_SOCKET})",
    )
    serve.add_argument(
        "--no-lua-style",
        action="store_true",
        help="PDK calls return data or raise instead of (data, err) tuples",
    )
    serve.add_argument(
        "--event-deadline",
        type=float,
        default=10.0,
        help="seconds an event may take before Kong gets a 500 (default 10, keep < 60)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="expose Prometheus metrics on this port (0: off)",
    )
    serve.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        help="address of the metrics listener (default 127.0.0.1)",
    )
    serve.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v logs every decision, -vv debug"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dump:
        from kong_cilium_identity.plugin import plugin_info

        sys.stdout.write(json.dumps([plugin_info()]))
        return 0
    if args.command == "serve":
        return _serve(args)
    build_parser().print_help(sys.stderr)
    return 2


def _serve(args: argparse.Namespace) -> int:
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    if not os.path.isdir(args.kong_prefix):
        print(f"kong prefix {args.kong_prefix} does not exist", file=sys.stderr)
        return 1
    if args.metrics_port:
        from kong_cilium_identity.metrics import serve_metrics

        serve_metrics(args.metrics_port, args.metrics_address)
    from kong_cilium_identity import plugin
    from kong_cilium_identity.server import serve

    serve(
        plugin.Plugin,
        name=plugin.name,
        version=plugin.version,
        priority=plugin.priority,
        schema=plugin.Schema,
        prefix=args.kong_prefix,
        socket_name=args.socket_name,
        lua_style=not args.no_lua_style,
        event_deadline=args.event_deadline,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
