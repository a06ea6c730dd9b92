"""preftune: align language models with human preferences, measured against a built-in world."""

import os

# Before anything imports transformers: a local path must never turn into a hub download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
