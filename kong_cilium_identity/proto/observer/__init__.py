"""Generated from observer/observer.proto; do not edit."""
