"""kiln: one engine, one CLI and one config format for five model families."""

__version__ = "0.1.0"
