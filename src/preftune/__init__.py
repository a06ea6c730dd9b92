"""preftune: align language models with human preferences, measured against a built-in world."""

__version__ = "0.1.0"
