"""Reusable test kit. ``kong``: a fake Kong 3.9 gateway speaking the external-plugin wire
protocol (``msgpack_rpc``), Kong's schema rules (``kong_schema``) and PDK (``pdk``)."""
