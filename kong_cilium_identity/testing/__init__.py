"""Reusable test kit: fakes that speak the real wire formats, on loopback only."""
