"""Operator tools and observability: validate/explain, metrics, readiness, tracing."""
