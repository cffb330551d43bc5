"""The test kit: never part of the wheel (tests/packaging checks), importable from tests and
benchmarks as ``tests.kit``.

``kong`` is a fake Kong 3.9 gateway that speaks the external-plugin wire protocol to a real
plugin server process; it is built from ``msgpack_rpc`` (Kong's RPC client and Lua-value
encoding), the runtime's ``kong_cilium_identity.kong.kong_schema`` (Kong's schema rules)
and ``pdk`` (the PDK functions)::

    from tests.kit.kong import KongHarness, KongRequest

    with KongHarness(query_cmd=[py, plugin, "--dump"],
                     start_cmd=[py, plugin, "--kong-prefix", str(prefix),
                                "--socket-name", "cilium-identity.socket"],
                     prefix=prefix, read_timeout=1.0) as kong:
        kong.query()
        kong.start()
        plugin = kong.add_plugin({"mode": "enforce"})
        out = kong.request(plugin, KongRequest(client_ip="10.0.1.7"))
        assert out.status == 403 and not out.failed_open
"""
