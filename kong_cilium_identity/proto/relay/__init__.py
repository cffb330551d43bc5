"""Generated from relay/relay.proto; do not edit."""
