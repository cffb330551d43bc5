"""Pure decision rules: no Kong, no I/O."""
