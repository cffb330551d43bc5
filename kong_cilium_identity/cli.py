"""``kong-cilium-identity``: the dump for Kong's query_cmd and the plugin server.

kong-cilium-identity --dump
kong-cilium-identity serve --kong-prefix /usr/local/kong --socket-name cilium-identity.socket
kong-cilium-identity validate kong.yaml
kong-cilium-identity explain --config kong.yaml --ip 172.28.0.10 --consumer checkout
kong-cilium-identity schema --lua > schema.lua
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kong_cilium_identity.hosting import DEFAULT_EVENT_DEADLINE
from kong_cilium_identity.kong_contract import PLUGIN_NAME

if TYPE_CHECKING:
    from kong_cilium_identity.server.socket_file import SocketFile

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
        default=DEFAULT_EVENT_DEADLINE,
        help="seconds an event may take before Kong gets a 500 (default 10, keep < 60)",
    )
    serve.add_argument(
        "--socket-mode",
        default="0660",
        help="permission bits of the socket, octal (default 0660: owner and group)",
    )
    serve.add_argument(
        "--socket-group",
        help="group of the socket, name or gid (default: the group owning its directory)",
    )
    serve.add_argument(
        "--stdin-watch",
        choices=["auto", "on", "off"],
        default="auto",
        help="stop when stdin reaches end-of-file: auto (default) watches only when stdin "
        "is a pipe or socket, as under Kong's start_cmd; off under systemd, s6, "
        "supervisord or as a sidecar",
    )
    serve.add_argument(
        "--max-backlog",
        type=int,
        default=1 << 20,
        help="bytes of unread replies after which a connection is closed (default 1 MiB)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=5.0,
        help="seconds unread replies may wait without progress before the connection is "
        "closed (default 5)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="expose Prometheus metrics, /healthz and /readyz on this port (0: off)",
    )
    serve.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        help="address of the metrics listener (default 127.0.0.1)",
    )
    serve.add_argument(
        "--preload-config",
        type=Path,
        help="plugin config (or kong.yaml) whose identity sources start at launch;"
        " /readyz waits for them",
    )
    serve.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v logs every decision, -vv debug"
    )
    validate = commands.add_parser(
        "validate", help="check the plugin configs of a kong.yaml (or one plugin config)"
    )
    validate.add_argument("file", type=Path)
    schema = commands.add_parser("schema", help="print the plugin's Kong schema (JSON, or --lua)")
    schema.add_argument(
        "--lua",
        action="store_true",
        help="print it as a Lua schema.lua (hybrid-mode control planes, Konnect upload)",
    )
    explain = commands.add_parser(
        "explain", help="resolve an address and print the decision for a consumer"
    )
    explain.add_argument(
        "--config",
        type=Path,
        required=True,
        help="plugin config (YAML/JSON) or a kong.yaml with one plugin",
    )
    explain.add_argument("--ip", required=True, help="the client address")
    explain.add_argument("--consumer", help="consumer username (omit: no consumer)")
    explain.add_argument(
        "--consumer-id", default="explain-consumer", help="consumer id (default explain-consumer)"
    )
    explain.add_argument("--custom-id", help="consumer custom_id")
    explain.add_argument("--tag", action="append", default=[], help="consumer tag (repeat)")
    explain.add_argument(
        "--anonymous",
        action="store_true",
        help="the consumer has no credential (Kong's anonymous fallback)",
    )
    explain.add_argument("--claims", type=Path, help="JSON file with token claims")
    explain.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for sources to sync (default 10)"
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
    if args.command == "validate":
        return _validate(args)
    if args.command == "explain":
        return _explain(args)
    if args.command == "schema":
        return _schema(args)
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
    from kong_cilium_identity.server.socket_file import SocketFile, parse_group, parse_mode

    try:
        socket_file = SocketFile(
            parse_mode(args.socket_mode),
            None if args.socket_group is None else parse_group(args.socket_group),
        )
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    if args.metrics_port:
        from kong_cilium_identity.ops.endpoint import serve_metrics

        socket_path = Path(args.kong_prefix) / args.socket_name
        serve_metrics(args.metrics_port, args.metrics_address, socket_path)
    if args.preload_config:
        from kong_cilium_identity.errors import ConfigError
        from kong_cilium_identity.ops.readiness import preload

        try:
            preload(args.preload_config)
        except ConfigError as error:
            print(f"--preload-config: {error}", file=sys.stderr)
            return 2
    try:
        _run_server(args, socket_file)
    except (OSError, RuntimeError) as error:  # before serving: socket path, group, stdin
        print(f"cannot serve: {error}", file=sys.stderr)
        return 1
    return 0


def _run_server(args: argparse.Namespace, socket_file: SocketFile) -> None:
    from kong_cilium_identity import plugin
    from kong_cilium_identity.server import StdinWatch, serve

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
        max_backlog=args.max_backlog,
        drain_timeout=args.drain_timeout,
        socket_file=socket_file,
        stdin_watch=StdinWatch(args.stdin_watch),
    )


def _validate(args: argparse.Namespace) -> int:
    from kong_cilium_identity.ops.tools import validate

    lines = validate(args.file)
    print("\n".join(lines))
    return 1 if any(line.startswith("ERROR") for line in lines) else 0


def _schema(args: argparse.Namespace) -> int:
    from kong_cilium_identity.kong.lua_schema import plugin_schema_lua
    from kong_cilium_identity.plugin import plugin_info

    if args.lua:
        sys.stdout.write(plugin_schema_lua())
    else:
        sys.stdout.write(json.dumps(plugin_info()["Schema"], indent=2) + "\n")
    return 0


def _explain(args: argparse.Namespace) -> int:
    import yaml

    from kong_cilium_identity.errors import ConfigError
    from kong_cilium_identity.ops.tools import explain, load_config, plugin_configs
    from kong_cilium_identity.policy.decision import Consumer

    configs = plugin_configs(yaml.safe_load(args.config.read_text(encoding="utf-8")))
    if len(configs) != 1:
        print(
            f"{args.config}: expected exactly one plugin config, found {len(configs)}",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_config(configs[0][1])
        claims = json.loads(args.claims.read_text(encoding="utf-8")) if args.claims else None
    except (ConfigError, ValueError, OSError) as error:
        print(f"{args.config}: {error}", file=sys.stderr)
        return 2
    consumer = (
        Consumer(args.consumer_id, args.consumer, args.custom_id, tuple(args.tag))
        if args.consumer
        else None
    )
    lookup, decision = explain(config, args.ip, consumer, not args.anonymous, claims, args.wait)
    report = {
        "lookup": {"status": lookup.status.value, "source": lookup.source, "detail": lookup.detail},
        "decision": {**decision.log_fields(), "status": decision.status},
    }
    if lookup.identity is not None:
        identity = lookup.identity
        report["identity"] = {
            "id": identity.id,
            "labels": identity.label_strings(),
            "namespace": identity.namespace,
            "pod": identity.pod,
            "service_account": identity.service_account,
        }
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0 if decision.allowed else 1


if __name__ == "__main__":
    sys.exit(main())
