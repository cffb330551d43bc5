"""The caller's Cilium identity: model, reserved ranges, sources and the resolver."""
