"""Minimal wire-compatible subsets of Cilium's Hubble protos and their generated modules.

Regenerate with ``python -m kong_cilium_identity.proto.build``.
"""
