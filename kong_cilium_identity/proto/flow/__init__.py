"""Generated from flow/flow.proto; do not edit."""
