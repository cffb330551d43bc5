"""The Kong-facing adapter: the access phase, PDK calls, Kong's schema rules."""
